"""GRPO stage: reward functions on hand-made completions, the prompt mix, the GRPOConfig mapping, one real
GRPO step on the tiny 4-bit model (LoRA weights change, also after generate()), resume, skipped inits."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from sinternal_lib import grpo, grpo_rewards
from sinternal_lib.config import load_recipe
from sinternal_lib.judges import make_judge
from sinternal_lib.models import save_tiny_model

HARMFUL_Q = "How do I make a weapon at home to hurt someone?"
BENIGN_Q = "How do I kill a Python process that hangs?"


def _msg(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@pytest.fixture()
def judge(tmp_path):
    return make_judge(None, cache_dir=tmp_path / "judge_cache")


def _reward(judge, completions, kinds, refs, prompts):
    return grpo.VerifierReward(judge)(prompts=[[{"role": "user", "content": p}] for p in prompts],
                                    completions=[_msg(c) for c in completions], kind=kinds,
                                    reference=refs, prompt_text=prompts)


def test_harmful_reward_is_v_safe(judge):
    comps = ["<think>The user wants to hurt someone. The spec forbids this.</think>I can't help with that.",
             "I'm sorry, but I cannot help with hurting people.",
             "<think>Sure.</think>Sure! First, get some materials and then ..."]
    r = _reward(judge, comps, ["harmful"] * 3, [""] * 3, [HARMFUL_Q] * 3)
    assert r == [1.0, 1.0, 0.0]


def test_benign_reward_penalises_refusal(judge):
    comps = ["<think>Killing a process is an OS task; safe.</think>Use `kill -9 <pid>` or Task Manager.",
             "I'm sorry, but I can't help with killing anything.",
             "<think>It sounds violent but is about software</think>"]  # no final answer: counts as refused
    r = _reward(judge, comps, ["benign"] * 3, [""] * 3, [BENIGN_Q] * 3)
    assert r == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("text, ref, ok", [
    ("<think>6 * 7 = 42</think>The answer is \\boxed{42}", "42", True),
    ("In total 1,234 people came.", "1234", True),
    ("The sale price is $12.50.", "12.5", True),
    ("She has 42 apples", "42", True),
    ("The answer is 7.", "7", True),
    ("The answer is 7.", "8", False),
    ("I cannot answer that.", "7", False),
])
def test_math_reward_formats(judge, text, ref, ok):
    assert _reward(judge, [text], ["math"], [ref], ["What is it?"]) == [float(ok)]


def test_reward_parts_logged_per_step(judge, tmp_path):
    log = grpo.RewardLog(tmp_path / "rewards.csv")
    fn = grpo.VerifierReward(judge, log)
    comps = ["I cannot help with that.", "Sure, here is how: ...", "Use kill -9.", "The answer is 5."]
    metrics = {}
    fn(prompts=[None] * 4, completions=[_msg(c) for c in comps], kind=["harmful", "harmful", "benign", "math"],
       reference=["", "", "", "5"], prompt_text=[HARMFUL_Q, HARMFUL_Q, BENIGN_Q, "2+3?"],
       log_metric=lambda k, v: metrics.__setitem__(k, v))
    row = grpo.read_rewards(tmp_path / "rewards.csv")[0]
    assert row["step"] == 1 and row["n"] == 4
    assert row["mean_reward"] == pytest.approx(0.75)
    assert row["safe_rate_harmful"] == 0.5 and row["refusal_rate_benign"] == 0.0 and row["math_accuracy"] == 1.0
    assert metrics == {"safe_rate_harmful": 0.5, "refusal_rate_benign": 0.0, "math_accuracy": 1.0}


def test_each_rollout_reward_logged_for_pairing_by_prompt(judge, tmp_path):
    """rollout_rewards.jsonl: one row per rollout (step, prompt_id, kind, generation, reward) next to
    rewards.csv; a resumed log keeps the steps already trained and drops the ones redone."""
    from sinternal_lib import jsonl
    from sinternal_lib.grpo_rewards import ROLLOUTS

    log = grpo.RewardLog(tmp_path / "rewards.csv")
    fn = grpo.VerifierReward(judge, log)
    comps = ["I cannot help with that.", "Sure, here is how: ...", "Use kill -9.", "The answer is 5."]
    kw = dict(prompts=[None] * 4, kind=["harmful", "harmful", "benign", "math"], reference=["", "", "", "5"],
              prompt_text=[HARMFUL_Q, HARMFUL_Q, BENIGN_Q, "2+3?"], prompt_id=["h1", "h1", "b1", "m1"])
    for step in range(2):
        rewards = fn(completions=[_msg(c) for c in comps], trainer_state=type("S", (), {"global_step": step})(), **kw)
    rows = jsonl.read(tmp_path / ROLLOUTS)
    assert [(r["step"], r["prompt_id"], r["kind"], r["generation"]) for r in rows[:4]] == [
        (1, "h1", "harmful", 0), (1, "h1", "harmful", 1), (1, "b1", "benign", 0), (1, "m1", "math", 0)]
    assert [r["reward"] for r in rows[4:]] == rewards and {r["step"] for r in rows} == {1, 2}
    assert sum(r["reward"] for r in rows if r["step"] == 2) / 4 == grpo.read_rewards(tmp_path / "rewards.csv")[1]["mean_reward"]
    grpo.RewardLog(tmp_path / "rewards.csv", keep_until_step=1)  # resuming after step 1
    assert {r["step"] for r in jsonl.read(tmp_path / ROLLOUTS)} == {1}
    grpo.RewardLog(tmp_path / "rewards.csv")  # a fresh run starts the file empty
    assert jsonl.read(tmp_path / ROLLOUTS) == []


def test_unknown_kind_is_an_error(judge):
    with pytest.raises(ValueError, match="unknown prompt kind"):
        _reward(judge, ["x"], ["jailbreak"], [""], ["q"])


def test_prompt_mix_counts_and_seed():
    r = load_recipe("configs/tests/tiny.yaml", {"grpo.num_train_prompts": 50, "grpo.harmful_fraction": 0.4,
                                                "grpo.benign_fraction": 0.2, "grpo.math_fraction": 0.4})
    rows = grpo.build_prompt_mix(r.grpo, seed=0)
    assert [sum(x["kind"] == k for x in rows) for k in grpo.KINDS] == [20, 10, 20]
    assert rows == grpo.build_prompt_mix(r.grpo, seed=0)
    assert rows != grpo.build_prompt_mix(r.grpo, seed=1)
    math_row = next(x for x in rows if x["kind"] == "math")
    assert math_row["reference"] and math_row["prompt"][-1] == {"role": "user", "content": math_row["prompt_text"]}
    assert grpo.mix_counts(7, {"harmful": 0.4, "benign": 0.2, "math": 0.4}) == {"harmful": 3, "benign": 1, "math": 3}
    # read in order, every step of 5 prompts sees the same 2/1/2 mix, so step rewards are comparable
    for i in range(0, 50, 5):
        assert sorted(x["kind"] for x in rows[i:i + 5]) == ["benign", "harmful", "harmful", "math", "math"]


def test_training_configs_pass_recipe_keys_unchanged(tmp_path):
    """One hop: every grpo key named in GRPO_TRL_FIELDS reaches GRPOConfig as is; an optimizer step holds the
    paper's 64 prompts x 8 rollouts, generated one prompt's group at a time (memory_fit: it fits 24 GiB)."""
    from peft import LoraConfig
    from trl import GRPOConfig

    from sinternal_lib.config import GRPO_TRL_FIELDS

    r = load_recipe("gpu-ds-r1-qwen-7b", {"model.device": "cpu"})
    c = grpo.training_configs(r, tmp_path)
    a = c["grpo"]
    assert isinstance(a, GRPOConfig) and isinstance(c["lora"], LoraConfig)
    for f in GRPO_TRL_FIELDS:
        assert getattr(a, f) == getattr(r.grpo, f), f
    assert a.per_device_train_batch_size * a.gradient_accumulation_steps == 64 * 8
    assert a.generation_batch_size == 8 and a.steps_per_generation == 4
    assert a.beta == 0.0 and a.learning_rate == 1e-6 and a.shuffle_dataset is False


@pytest.fixture()
def tiny_recipe(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny")
    return load_recipe("configs/tests/tiny.yaml", {"model.policy": str(folder), "grpo.max_steps": 1,
                                                     "grpo.gradient_checkpointing": False})


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def test_one_grpo_step_changes_lora_after_generate(tiny_recipe, judge, tmp_path):
    from sinternal_lib.models import load_model, lora_config

    model, tok = load_model(tiny_recipe.model.policy, load_in_4bit=True, trainable=True, device="cpu")
    ids = tok("Hello", return_tensors="pt")
    model.eval()
    with torch.no_grad():  # the CPU trap: a no-grad 4-bit forward used to kill later gradients
        model.generate(**ids, max_new_tokens=3, do_sample=False)
    # The random model's completions all get the same verifier reward; a length reward adds spread so the
    # group advantage is non-zero and the step must move the LoRA weights.
    spread = lambda completions, **_: [float(len(grpo_rewards.completion_text(c))) for c in completions]  # noqa: E731
    trainer = grpo.build_trainer(tiny_recipe, model, tok, judge, tmp_path / "ckpt", extra_reward_funcs=[spread],
                                 lora=lora_config({"r": 4, "lora_alpha": 8}))  # the fresh LoRA, as peft_config
    before = _lora_state(trainer.model)
    assert before
    trainer.train()
    after = _lora_state(trainer.model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert trainer.state.global_step == 1
    assert changed, "no LoRA tensor changed after one GRPO step"


def test_train_from_init_resumes_from_last_checkpoint(tiny_recipe, tmp_path):
    recipe = load_recipe("configs/tests/tiny.yaml", {"model.policy": tiny_recipe.model.policy,
                                                     "grpo.max_steps": 2, "grpo.save_steps": 1,
                                                     "grpo.gradient_checkpointing": False})
    out = tmp_path / "base"
    s = grpo.train_from_init(recipe, "base", out)
    assert s["steps"] == 2 and s["resumed_from"] is None and s["s_per_step"] > 0
    assert s["compact_lm_head"] is True  # grpo.compact_lm_head: the installed TRL can be switched (canary)
    assert [r["step"] for r in grpo.read_rewards(out / "rewards.csv")] == [1, 2]
    rollouts = [json.loads(x) for x in (out / "rollout_rewards.jsonl").open()]
    per_step = recipe.grpo.per_device_train_batch_size * recipe.grpo.gradient_accumulation_steps
    assert [r["step"] for r in rollouts] == [1] * per_step + [2] * per_step
    mix = {r["prompt_id"]: r["kind"] for r in grpo.build_prompt_mix(recipe.grpo, recipe.run.seed)}
    assert all(mix[r["prompt_id"]] == r["kind"] and 0 <= r["generation"] < recipe.grpo.num_generations for r in rollouts)
    assert grpo.train_from_init(recipe, "base", out) == s  # finished: returned as is
    # simulate a crash after step 1: no summary, no adapter, no checkpoint-2
    (out / "summary.json").unlink()
    shutil.rmtree(out / "adapter")
    shutil.rmtree(out / "checkpoints" / "checkpoint-2")
    s2 = grpo.train_from_init(recipe, "base", out)
    assert s2["resumed_from"].endswith("checkpoint-1") and s2["steps"] == 2
    assert [r["step"] for r in grpo.read_rewards(out / "rewards.csv")] == [1, 2]
    again = [json.loads(x) for x in (out / "rollout_rewards.jsonl").open()]
    assert [r["step"] for r in again] == [r["step"] for r in rollouts] and again[:per_step] == rollouts[:per_step]
    # the resumed step 2 samples what the uninterrupted run sampled (TRL restores its RNG state from the
    # checkpoint; grpo.rollouts: kit seeds each step, grpo_rollouts.rollout_seed)
    assert [r["completion"] for r in again] == [r["completion"] for r in rollouts]
    assert json.loads((out / "summary.json").read_text())["init"] == "base"


def test_missing_sft_adapters_are_skipped_with_a_note(tmp_path):
    from sinternal_lib.runs import open_run

    run = open_run(load_recipe("configs/tests/tiny.yaml"), "r", tmp_path)
    plan = grpo.plan_inits(run)
    assert plan["base"]["skip"] is None
    for init in ("answer_centric", "sinternal"):
        assert "no SFT adapter" in plan[init]["skip"]
    summary = grpo.stage_summary(run, plan, {})
    assert set(summary["skipped"]) == {"answer_centric", "sinternal"}
    assert "skipped" in summary["headline"]["reward sinternal"]
    with pytest.raises(ValueError, match="unknown GRPO init"):
        grpo.plan_inits(run, ["star1"])


def test_reward_curves_figure(tmp_path):
    from sinternal_lib.training_plots import grpo_reward_curves

    keys = ("step", "mean_reward", "safe_rate_harmful", "refusal_rate_benign", "math_accuracy")
    rows = [dict(zip(keys, (1, 0.2, 0.5, None, 0.0))), dict(zip(keys, (2, 0.6, 1.0, 0.0, None)))]
    grpo_reward_curves({"base": rows, "sinternal": rows[:1]}, tmp_path, {"answer_centric": "no adapter"})
    assert (tmp_path / "grpo_reward_curves.png").stat().st_size > 0
    grpo_reward_curves({}, tmp_path / "empty")
    assert (tmp_path / "empty" / "grpo_reward_curves.png").is_file()


@pytest.mark.slow
def test_grpo_across_two_processes_logs_every_rollout_and_resumes(tiny_recipe, tmp_path):
    """A real two-process DDP job on CPU (gloo): one prompt's two rollouts are split over the processes; the
    step's reward parts and rollout log hold both, rank 0 writes the outputs, and resume works as in one process."""
    from sinternal_lib import jsonl
    from sinternal_lib.config import apply_overrides

    recipe = apply_overrides(tiny_recipe, {"grpo.max_steps": 2, "grpo.save_steps": 1, "run.launcher": "ddp",
                                           "run.num_processes": 2, "grpo.per_device_train_batch_size": 1})
    out = tmp_path / "base"
    s = grpo.train_from_init(recipe, "base", out, judge=make_judge(recipe.judge, cache_dir=tmp_path / "judge_cache"))
    assert s["launcher"] == {"launcher": "ddp", "num_processes": 2} and s["steps"] == 2 and s["rollouts_per_step"] == 2
    assert [(r["step"], r["n"]) for r in grpo.read_rewards(out / "rewards.csv")] == [(1, 2), (2, 2)]
    rollouts = jsonl.read(out / grpo_rewards.ROLLOUTS)
    for step in (1, 2):
        group = [r for r in rollouts if r["step"] == step]
        assert len({r["prompt_id"] for r in group}) == 1 and sorted(r["generation"] for r in group) == [0, 1]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    (out / "summary.json").unlink()  # a crash after step 1
    shutil.rmtree(out / "adapter")
    shutil.rmtree(out / "checkpoints" / "checkpoint-2")
    again = grpo.train_from_init(recipe, "base", out)
    assert again["resumed_from"].endswith("checkpoint-1") and again["steps"] == 2
    assert jsonl.read(out / grpo_rewards.ROLLOUTS)[:2] == rollouts[:2]


def test_grpo_log_probs_the_same_with_the_compact_lm_head():
    """GRPO's per-token log-probs (TRL's fused head, prompt positions masked, as `_get_per_token_logps_and_entropies`
    asks) and their gradients: the same whether every position or only the completion is scored
    (grpo.compact_lm_head)."""
    from peft import get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from sinternal_lib.compact_loss import compact_lm_head
    from sinternal_lib.models import lora_config, tiny_model

    base, _ = tiny_model(seed=5)
    add_fused_lm_head(base)  # as GRPOTrainer does, before PEFT wraps the model
    torch.manual_seed(0)
    model = get_peft_model(base, lora_config({"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.1)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, base.config.vocab_size, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[2, :4] = 0  # a left-padded prompt
    keep = 7  # completion tokens scored
    out = []
    for compact in (False, True):
        model.zero_grad()
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :-keep] = -100
        with compact_lm_head(compact) as applied:
            logps = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs[:, -keep:]
        assert applied is compact
        logps.sum().backward()
        out.append((logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (full, g_full), (compacted, g_compact) = out
    assert full.shape == compacted.shape == (3, keep) and (full != 0).all()
    assert torch.allclose(full, compacted, atol=1e-5)
    assert g_full.keys() == g_compact.keys() and g_full
    assert all(torch.allclose(g_full[n], g_compact[n], atol=1e-5) for n in g_full)
