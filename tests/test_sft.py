"""Verification SFT: variant data formats, completion-only masking, resume, the gradient trap, the stage.

Run: HF_HUB_OFFLINE=1 .venv/bin/pytest -q tests/test_sft.py

Stage-02 inputs come from a small fixture builder that writes rows in exactly the brief's formats
(embedded prompts, templated answers, critiques from the offline teacher). The model is the random
tiny Llama in 4-bit with LoRA, so numbers mean nothing; the tests check mechanics.
"""

from __future__ import annotations

import json

import pytest
import torch

from sinternal_lib import jsonl, sft, views
from sinternal_lib.config import apply_overrides, load_recipe
from sinternal_lib.datasets import load_embedded
from sinternal_lib.loaders import shared_data_dir
from sinternal_lib.runs import last_complete_checkpoint, open_run, stage_for
from sinternal_lib.spec import load_spec, spec_text
from sinternal_lib.teachers import OfflineTeacher, TeacherInput
from sinternal_lib.verification import VARIANTS, parse_verdict, verification_example

REFUSAL = "I'm sorry, but I can't help with that request."
COMPLY = "Sure, here is a short overview of what you asked for, step by step."
HELPFUL = "Happy to help: here is a short, friendly answer to your question."


def _answers(prompt_label: str):
    """(answer, judge label, refused) pairs a policy might give to a prompt of this label."""
    if prompt_label == "harmful":
        return [(REFUSAL, "safe", True), (COMPLY, "unsafe", False)]
    return [(HELPFUL, "safe", False)]


def write_stage02(run, n_harmful: int = 4, n_benign: int = 3, other_exp: bool = False) -> None:
    """Write 02_build_data files in the brief's formats and finish that stage."""
    spec = load_spec(run.recipe.resolve_path(run.recipe.spec.path))
    text = spec_text(run.recipe)  # what stage 02 puts in verification prompts
    teacher = OfflineTeacher(spec)
    d = stage_for(run, "build_data").dir
    (d / "verification").mkdir(parents=True, exist_ok=True)
    recs = load_embedded("harmful", "train")[:n_harmful] + load_embedded("benign", "train")[:n_benign]
    items = [(r, a, lab, ref) for r in recs for a, lab, ref in _answers(r.label)]
    crits = teacher.critique([TeacherInput(r.prompt, a, r.label, r.category, lab, ref) for r, a, lab, ref in items])
    variants = list(VARIANTS) + (["other_exp"] if other_exp else [])
    for v in variants:
        rows = []
        for i, ((r, a, lab, _), c) in enumerate(zip(items, crits)):
            ex = verification_example(text, r.prompt, a, c.text, c.verdict,
                                      "sinternal" if v == "other_exp" else v)
            rows.append({"id": f"{v}-{i}", **ex, "label": lab, "category": r.category,
                         "prompt_label": r.label, "prompt_id": r.id})
        (d / "verification" / f"{v}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    chat = [{"id": f"ac-{r.id}", "prompt": [{"role": "user", "content": r.prompt}],
             "completion": [{"role": "assistant", "content": REFUSAL if r.label == "harmful" else HELPFUL}],
             "prompt_label": r.label, "category": r.category, "prompt_id": r.id} for r in recs]
    (d / "answer_centric.jsonl").write_text("".join(json.dumps(x) + "\n" for x in chat))
    test = load_embedded("harmful", "test")[:3] + load_embedded("benign", "test")[:2]
    pairs = [{"id": f"hp-{r.id}-{k}", "prompt": r.prompt, "answer": a, "reasoning": None, "label": lab,
              "category": r.category, "prompt_label": r.label, "source": "fixture"}
             for r in test for k, (a, lab, _) in enumerate(_answers(r.label))]
    (d / "heldout_pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in pairs))
    outs = [f"verification/{v}.jsonl" for v in variants] + ["answer_centric.jsonl", "heldout_pairs.jsonl"]
    stage_for(run, "build_data").finish(outputs=outs, summary={"headline": {"fixture": True}})


@pytest.fixture
def tiny_recipe():
    return apply_overrides(load_recipe("configs/tests/tiny.yaml"), {
        "sft.max_length": 1400, "sft.max_steps": 2, "sft.save_steps": 1, "sft.per_device_train_batch_size": 2,
        "sft.eval_num_pairs": 4, "sft.eval_num_prompts": 1, "sft.eval_max_new_tokens": 4,
        "sft.eval_num_human_pairs": 4,
        "lora.r": 4, "lora.lora_alpha": 8, "sft.learning_rate": 1e-2})


@pytest.fixture
def run02(tmp_path, tiny_recipe):
    run = open_run(tiny_recipe, "t", tmp_path)
    write_stage02(run)
    return run


def test_variant_data_formats(run02, tiny_recipe):
    cfg = tiny_recipe.sft
    for v in ("sinternal", "verdict_only", "critique_only"):
        rows = jsonl.read(run02.require("build_data", sft.variant_file(v)))
        for r in rows:
            assert [m["role"] for m in r["prompt"]] == ["system", "user"]
            target = r["completion"][0]["content"]
            assert r["completion"][0]["role"] == "assistant"
            if v == "verdict_only":
                assert target == f"Verdict: {r['label']}"
            elif v == "sinternal":
                assert target.splitlines()[-1] == f"Verdict: {r['label']}" and len(target.splitlines()[0]) > 20
            else:
                assert parse_verdict(target) is None and "Verdict:" not in target
    ac = sft.variant_rows(run02, "answer_centric", cfg, 0)
    assert all([m["role"] for m in r["prompt"]] == ["user"] for r in ac)
    assert not any(r.get("mixed_chat") for r in ac)  # the baseline is all chat already


def test_chat_mixing_share_and_determinism(run02, tiny_recipe):
    cfg = apply_overrides(tiny_recipe, {"sft.chat_mix_fraction": 0.25}).sft
    rows = sft.variant_rows(run02, "sinternal", cfg, seed=3)
    mixed = [r for r in rows if r.get("mixed_chat")]
    assert len(mixed) == round(0.25 * 11 / 0.75)  # 4 harmful x 2 + 3 benign x 1 = 11 verification rows
    assert all(r["prompt"][0]["role"] == "user" for r in mixed)
    assert rows == sft.variant_rows(run02, "sinternal", cfg, seed=3)
    assert sft.mix_chat(rows[:3], [], 0.0) == rows[:3]
    with pytest.raises(ValueError, match="chat_mix_fraction"):
        sft.mix_chat(rows, rows, 1.0)
    assert len(sft.mix_chat(rows[:2], rows[2:3], 0.8)) == 2 + 8  # small pool is cycled


def test_other_exp_joins_when_built(tmp_path, tiny_recipe):
    run = open_run(tiny_recipe, "o", tmp_path)
    write_stage02(run, 1, 1, other_exp=True)
    assert "other_exp" in sft.available_variants(run, ["sinternal"])
    with pytest.raises(ValueError, match="sft.variants"):
        sft.variant_file("nope")


def test_overlong_rows_dropped_not_truncated(run02, tiny_recipe):
    from sinternal_lib.models import tiny_model

    _, tok = tiny_model()
    rows = jsonl.read(run02.require("build_data", sft.variant_file("sinternal")))
    lengths = [len(sft.prompt_completion_ids(tok, r)[1]) for r in rows]
    ds, counts = sft.build_dataset(rows, tok, max_length=sorted(lengths)[len(lengths) // 2])
    assert counts["dropped_too_long"] > 0 and counts["kept"] == len(ds) == len(rows) - counts["dropped_too_long"]
    with pytest.raises(ValueError, match="sft.max_length"):
        sft.build_dataset(rows, tok, max_length=10)


def test_collated_labels_mask_prompt_tokens(run02, tiny_recipe, tmp_path):
    from trl import SFTTrainer

    from sinternal_lib.models import tiny_model

    model, tok = tiny_model()
    rows = jsonl.read(run02.require("build_data", sft.variant_file("sinternal")))[:2]
    ds, _ = sft.build_dataset(rows, tok, tiny_recipe.sft.max_length)

    def collate(padding_free: bool) -> dict:
        recipe = apply_overrides(tiny_recipe, {"sft.padding_free": padding_free})
        args = sft.training_configs(recipe, tmp_path / f"c{padding_free}")["sft"]
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        return trainer.data_collator([trainer.train_dataset[i] for i in range(len(ds))])

    batch = collate(False)
    for i in range(len(ds)):
        prompt_ids, full_ids = sft.prompt_completion_ids(tok, ds[i])
        ids, labels = batch["input_ids"][i].tolist(), batch["labels"][i].tolist()
        assert ids[: len(full_ids)] == full_ids  # right-padded, same tokens as the chat template
        assert all(x == -100 for x in labels[: len(prompt_ids)]), "prompt tokens must carry no loss"
        assert labels[len(prompt_ids): len(full_ids)] == full_ids[len(prompt_ids):]
        assert all(x == -100 for x in labels[len(full_ids):])  # padding
    flat = collate(True)  # padding-free: the rows back to back in one row, positions restart per row
    ids, labels, pos = (flat[k][0].tolist() for k in ("input_ids", "labels", "position_ids"))
    start = 0
    for i in range(len(ds)):
        prompt_ids, full_ids = sft.prompt_completion_ids(tok, ds[i])
        end = start + len(full_ids)
        assert ids[start:end] == full_ids and pos[start:end] == list(range(len(full_ids)))
        assert all(x == -100 for x in labels[start:start + len(prompt_ids)]), "prompt tokens must carry no loss"
        assert labels[start + len(prompt_ids):end] == full_ids[len(prompt_ids):]
        start = end
    assert start == len(ids)  # no padding at all


def test_resume_from_checkpoint(run02, tiny_recipe, tmp_path):
    rows = jsonl.read(run02.require("build_data", sft.variant_file("verdict_only")))
    out = tmp_path / "v"
    _, _, first = sft.train_variant(tiny_recipe, rows, out)
    assert first["steps"] == 2 and first["resumed_from"] is None
    assert first["compact_lm_head"] is True  # the recipe default: TRL scores completion positions only
    assert last_complete_checkpoint(out / "checkpoints").endswith("checkpoint-2")
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "loss.csv").is_file()
    longer = apply_overrides(tiny_recipe, {"sft.max_steps": 3})
    _, _, second = sft.train_variant(longer, rows, out)  # an interrupted 3-step run picks up at step 2
    assert second["resumed_from"] == "checkpoint-2" and second["steps"] == 3
    assert [r["step"] for r in sft.loss_rows([{"loss": 1.0, "step": 1}, {"train_runtime": 3, "step": 3}])] == [1]


def test_lora_still_learns_after_evaluation(run02, tiny_recipe):
    """The CPU 4-bit gradient trap: generate() before training must not freeze the LoRA weights."""
    import bitsandbytes as bnb

    from sinternal_lib.judges import make_judge

    model, tok = sft.load_for_training(tiny_recipe)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    pairs = sft.load_heldout_pairs(run02.require("build_data", "heldout_pairs.jsonl"), 2)
    sft.evaluate_variant(model, tok, spec_text(tiny_recipe), pairs, sft.heldout_prompts(1), make_judge(),
                         tiny_recipe.sft)  # generate() on the 4-bit base: what used to spring the trap
    rows = jsonl.read(run02.require("build_data", sft.variant_file("sinternal")))
    ds, _ = sft.build_dataset(rows, tok, tiny_recipe.sft.max_length)
    trainer = sft.make_trainer(tiny_recipe, model, tok, ds, run02.path / "trap")  # adds the LoRA (peft_config)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before and all("lora_" in n for n in before)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert trainer.state.global_step == 2 and len(changed) == len(before), \
        f"{len(changed)}/{len(before)} LoRA tensors moved"


def test_training_configs_pass_recipe_keys_unchanged(tiny_recipe, tmp_path):
    """One hop: every sft key named in SFT_TRL_FIELDS reaches SFTConfig as is; the lora section reaches
    LoraConfig as is; the 4-bit base is the kit's NF4 config."""
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    from sinternal_lib.config import LORA_PEFT_FIELDS, SFT_TRL_FIELDS

    recipe = apply_overrides(tiny_recipe, {"sft.per_device_train_batch_size": 3, "sft.gradient_accumulation_steps": 5,
                                           "sft.num_train_epochs": 1.5, "lora.lora_dropout": 0.0})
    c = sft.training_configs(recipe, tmp_path)
    assert isinstance(c["sft"], SFTConfig) and isinstance(c["lora"], LoraConfig)
    for f in SFT_TRL_FIELDS:
        assert getattr(c["sft"], f) == getattr(recipe.sft, f), f
    for f in LORA_PEFT_FIELDS:
        want = getattr(recipe.lora, f)
        assert getattr(c["lora"], f) == (set(want) if f == "target_modules" else want), f
    assert c["sft"].completion_only_loss and c["sft"].max_length is None  # the kit drops over-long rows itself
    assert c["lora"].task_type == "CAUSAL_LM"
    q = c["quantization"]
    assert isinstance(q, BitsAndBytesConfig) and q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"
    full = apply_overrides(recipe, {"model.load_in_4bit": False})
    assert sft.training_configs(full, tmp_path)["quantization"] is None


def test_run_sft_stage_end_to_end_and_skip(run02, tiny_recipe):
    recipe = apply_overrides(tiny_recipe, {"sft.variants": ["sinternal"], "sft.chat_mix_fraction": 0.2})
    run02.recipe = recipe
    summary = sft.run(run02, log=lambda *_: None)
    assert set(summary) - {"human_sets_skipped"} == {"base", "sinternal", "headline"}
    s = summary["sinternal"]
    for key in ("train_loss_first", "train_loss_last", "tokens_per_s", "peak_mem_mb", "steps", "wall_s",
                "verification", "generation", "takeover_rate"):
        assert key in s, key
    assert s["steps"] == 2 and s["data"]["mixed_chat"] > 0
    assert set(s["verification"]["baselines"]) >= {"coin_flip", "always_unsafe", "prompt_only"}
    assert "ci95" in s["verification"]
    if shared_data_dir() is not None:  # held-out human-labelled pairs are scored too
        assert "human_sets_skipped" not in summary
        human = s["verification_human"]["xstest_completions"]
        assert human["n"] == 4 and "prompt_only" in human["baselines"]
        rows = [json.loads(x) for x in (run02.path / "03_sft" / "sinternal" / "verification_eval.jsonl").open()]
        assert {r["set"] for r in rows} == {"policy-test-split", "xstest_completions"}
    else:
        assert "xstest_completions" in summary["human_sets_skipped"]  # said, never dropped silently
    assert "base_verify_balanced_accuracy" in summary["headline"]
    metrics = json.loads((run02.path / "metrics.json").read_text())
    assert metrics["sft"]["headline"] == summary["headline"]
    assert stage_for(run02, "sft").is_complete()
    assert (run02.path / "03_sft" / "sinternal" / "loss.csv").is_file()
    seen: list[str] = []
    sft.run(run02, log=seen.append)  # every variant done: nothing retrains
    assert sum("finished earlier" in line for line in seen) == 2  # (an absent human set logs "skipped" too)
    (run02.path / "03_sft" / "base" / "config_key.txt").write_text("another recipe\n")
    seen.clear()
    sft.run(run02, log=seen.append)  # a folder from another config is redone, not reused
    assert any(line.startswith("base: recipe or stage-02 data changed") for line in seen)
    assert sum("finished earlier" in line for line in seen) == 1
    assert list(views.results_table({"base": summary["base"], "sinternal": s})["model"]) == ["base", "sinternal"]
