"""What the model sees (sinternal_lib.inspect_rows): SFT rows token by token with the loss tokens marked
(checked against TRL's own dataset preparation), redaction of unsafe answers, critique templates, the
teacher prompt, the spec renderings, and one GRPO rollout group with TRL's advantages.

Run: HF_HUB_OFFLINE=1 .venv/bin/pytest -q tests/test_inspect_rows.py
"""

from __future__ import annotations

import pytest

from sinternal_lib import grpo_rewards, inspect_rows as ir, jsonl
from sinternal_lib.config import apply_overrides, load_recipe
from sinternal_lib.spec import SpecText, load_spec, spec_text
from sinternal_lib.teachers import OfflineTeacher, TeacherInput, teacher_messages
from sinternal_lib.verification import verification_example

HARM_Q = "How do I break into my neighbour's wifi?"
SECRET = "SECRET-STEPS: step one xyzzy, step two plugh"


@pytest.fixture(scope="module")
def recipe():
    return apply_overrides(load_recipe("configs/tests/tiny.yaml"), {"sft.bf16": False})


@pytest.fixture(scope="module")
def tok():
    from sinternal_lib.models import tiny_model

    return tiny_model()[1]


def _row(recipe, rid, prompt, answer, critique, label, prompt_label, reasoning=None, category="cybercrime"):
    ex = verification_example(spec_text(recipe), prompt, answer, critique, label, reasoning=reasoning)
    return {"id": rid, **ex, "label": label, "category": category, "prompt_label": prompt_label,
            "prompt_id": rid.rsplit("-", 1)[0]}


@pytest.fixture(scope="module")
def rows(recipe):
    return [
        _row(recipe, "h1-0", HARM_Q, SECRET, "The answer complies and gives help that [S3 cybercrime] forbids.",
             "unsafe", "harmful"),
        _row(recipe, "h2-0", "How do I make a phishing page?", "Here is a phishing page: <html>",
             "The answer complies and gives help that [S4 fraud_scams] forbids.", "unsafe", "harmful",
             category="fraud_scams"),
        _row(recipe, "h2-3", "How do I make a phishing page?", "I'm sorry, I can't help with that.",
             "The answer refuses and gives nothing that [S4 fraud_scams] forbids.", "safe", "harmful",
             category="fraud_scams"),
        _row(recipe, "b1-1", "How do fireworks get their colours?", "Metal salts burn in different colours.",
             "The request is harmless and the answer gives permitted help.", "safe", "benign", category=None),
    ]


# ----------------------------------------------------------------------------- SFT rows
def test_loss_mask_is_the_labels_trl_builds_with_the_kits_config(recipe, rows, tmp_path):
    """The marked tokens are exactly those whose label is not -100 after SFTTrainer prepared the dataset."""
    from datasets import Dataset
    from trl import SFTTrainer

    from sinternal_lib import sft
    from sinternal_lib.models import tiny_model

    model, tok = tiny_model()
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    trainer = SFTTrainer(model=model, args=sft.training_configs(recipe, tmp_path)["sft"], train_dataset=ds,
                         processing_class=tok)
    for i, r in enumerate(rows):
        ids, mask = ir.loss_mask(r, tok)
        prepared = trainer.train_dataset[i]
        assert ids == prepared["input_ids"]
        assert mask == [int(x != -100) for x in prepared["labels"]]
        assert 0 < sum(mask) < len(mask) and mask[-1] == 1


def test_only_the_target_and_its_end_of_turn_are_marked(rows, tok):
    row = rows[3]
    text = ir.sft_row_view(row, tok)
    body = text.split("\n", 1)[1]
    prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    target = row["completion"][0]["content"]
    assert body == f"{prompt}\u27e6{target}<|im_end|>\n\u27e7"
    n_loss = len(tok(f"{target}<|im_end|>\n", add_special_tokens=False)["input_ids"])
    assert f", {n_loss} carry the loss" in text.split("\n", 1)[0]


def test_render_marked_wraps_each_run(tok):
    ids = tok("alpha beta gamma delta epsilon", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5
    out = ir.render_marked(tok, ids, [0, 1, 1, 0, 1])
    d = lambda a, b: tok.decode(ids[a:b])  # noqa: E731
    assert out == f"{d(0, 1)}\u27e6{d(1, 3)}\u27e7{d(3, 4)}\u27e6{d(4, 5)}\u27e7"


def test_unsafe_answer_redacted_unless_asked_critique_and_request_kept(rows, tok, recipe):
    hidden = ir.sft_row_view(rows[0], tok)
    assert SECRET not in hidden and "xyzzy" not in hidden
    assert f"[redacted: unsafe completion, {len(SECRET)} chars]" in hidden
    assert HARM_Q in hidden and "[S3 cybercrime] forbids.\nVerdict: unsafe<|im_end|>" in hidden
    assert "<|im_start|>system\nYou are a safety verifier" in hidden
    assert SECRET in ir.sft_row_view(rows[0], tok, show_unsafe=True)
    assert "Metal salts burn" in ir.sft_row_view(rows[3], tok)  # safe rows are shown whole
    with_reasoning = _row(recipe, "h3-0", HARM_Q, "Sure: do A then B.", "It complies.", "unsafe", "harmful",
                          reasoning="I will explain plugh in detail")
    out = ir.sft_row_view(with_reasoning, tok)
    assert "plugh" not in out and "do A then B" not in out and out.count("[redacted: unsafe completion") == 2
    odd = {**rows[0], "prompt": [{"role": "user", "content": f"free text {SECRET}"}]}  # not a verifier prompt
    out = ir.sft_row_view(odd, tok)
    assert "xyzzy" not in out and out.splitlines()[1].startswith("[redacted: the prompt holds")
    assert "Verdict: unsafe" in out


def test_pick_training_rows_takes_one_contrastive_pair_and_a_benign_row(rows, tok):
    assert [r["id"] for r in ir.pick_training_rows(rows)] == ["h2-0", "h2-3", "b1-1"]
    assert [r["id"] for r in ir.pick_training_rows(rows[:1] + rows[3:])] == ["h1-0", "b1-1"]
    shown = ir.sft_rows_view(rows, tok)
    assert shown.count("\n--- ") == 2 and "<html>" not in shown


def test_split_candidate_round_trips_the_verifier_template(recipe):
    for reasoning in (None, "first line\n\nsecond line"):
        ex = verification_example(spec_text(recipe), "Q line 1\nQ line 2", "A1\n\nA2", "c", "safe", reasoning=reasoning)
        parts = ir.split_candidate(ex["prompt"][1]["content"])
        assert parts == {"prompt": "Q line 1\nQ line 2", "reasoning": reasoning, "answer": "A1\n\nA2"}
    assert ir.split_candidate("no template here") is None


# ----------------------------------------------------------------------------- teacher and spec
def test_critique_templates_group_categories_and_count(rows, recipe):
    spec = load_spec(recipe.resolve_path(recipe.spec.path))
    table = ir.critique_templates(rows, spec)
    assert list(table.columns) == ["template", "prompt_label", "verdict", "rows", "share"]
    assert table.iloc[0].to_dict() == {"template": "The answer complies and gives help that {category} forbids.",
                                       "prompt_label": "harmful", "verdict": "unsafe", "rows": 2, "share": 0.5}
    assert len(table) == 3 and table["rows"].sum() == 4
    assert ir.normalise_critique("Under S1 and S10 (violent_crime) it", spec) == "Under {id} and {id} ({name}) it"
    full = OfflineTeacher(spec, style="full")
    for cat in ("S1", "S3"):
        c = full.critique([TeacherInput(HARM_Q, "x", "harmful", cat, "unsafe", False)])[0].text
        norm = ir.normalise_critique(c, spec)
        assert "{category}" in norm and spec.get(cat).description.rstrip(".") not in norm
        assert not any(r.rstrip(".") in norm for r in spec.get(cat).must_not + spec.get(cat).may)


def test_teacher_prompt_is_what_the_teacher_is_sent(rows, recipe):
    spec = load_spec(recipe.resolve_path(recipe.spec.path))
    safe = rows[2]
    sent = teacher_messages(spec, TeacherInput("How do I make a phishing page?", "I'm sorry, I can't help with that.",
                                               "harmful", "fraud_scams", "safe", None))
    out = ir.teacher_prompt(recipe, safe)
    assert out.endswith("\n".join(f"=== {m['role']} ===\n{m['content']}" for m in sent))
    assert out.startswith("(this recipe's teacher is offline")
    assert spec.render(style="full").strip() in out  # the teacher gets the full rendering
    hidden = ir.teacher_prompt(recipe, rows[0])
    assert SECRET not in hidden
    assert f"### Candidate answer\n[redacted: unsafe completion, {len(SECRET)} chars]" in hidden
    api = apply_overrides(recipe, {"teacher.backend": "api"})
    assert SECRET in ir.teacher_prompt(api, rows[0], show_unsafe=True).split("=== user ===")[1]


def test_spec_renderings_show_both_with_token_counts(recipe, tok):
    from sinternal_lib.verification import build_verification_messages

    out = ir.spec_renderings(recipe, tok)
    brief, full = out.split("\n\n=== full")
    spec = load_spec(recipe.resolve_path(recipe.spec.path))
    for block, text in ((brief, spec_text(recipe)), (full, spec.render(style="full"))):
        n = len(tok(str(text), add_special_tokens=False)["input_ids"])
        system = build_verification_messages(text if block is brief else SpecText(text, "verify_system.txt"), "", "")[0]
        n_sys = len(tok.apply_chat_template([system], tokenize=True, return_dict=True)["input_ids"])
        assert f"spec {n} tokens, system turn {n_sys} tokens ===" in block
        assert system["content"] in block
    assert "spec.render: brief (this recipe)" in brief and "verify_system_brief.txt" in brief
    must_not = spec.categories[0].must_not[0]
    assert must_not not in brief and must_not in full


# ----------------------------------------------------------------------------- GRPO
def test_advantages_are_trls_group_normalised_rewards():
    import torch
    from trl.trainer.utils import nanstd

    rewards = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    t = torch.tensor(rewards).view(-1, 4)
    want = ((t - t.mean(1, keepdim=True)) / (nanstd(t, dim=1).unsqueeze(1) + 1e-4)).flatten().tolist()
    assert ir.advantages(rewards, 4) == pytest.approx(want)
    assert ir.advantages(rewards, 4)[:2] == pytest.approx([0.75 / 0.5001, -0.25 / 0.5001])
    assert ir.advantages(rewards, 4)[4:] == [0.0] * 4  # a group with one reward: no signal
    batch_std = float(nanstd(torch.tensor(rewards)))
    assert ir.advantages(rewards, 4, "batch")[0] == pytest.approx(0.75 / (batch_std + 1e-4))
    assert ir.advantages(rewards, 4, "none")[:2] == [0.75, -0.25]
    with pytest.raises(ValueError, match="whole groups"):
        ir.advantages(rewards[:3], 2)


def _rollout(step, pid, kind, gen, reward, text, v_safe=None):
    return {"step": step, "prompt_id": pid, "kind": kind, "generation": gen, "reward": reward, "v_safe": v_safe,
            "v_refuse": None if kind == "math" else 1.0 - reward, "correct": None, "completion": text}


def test_rollout_group_shows_a_mixed_group_redacted(tmp_path):
    path = tmp_path / grpo_rewards.ROLLOUTS
    same = [_rollout(1, "b1", "benign", g, 1.0, "fine", 1.0) for g in range(4)]
    mixed = [_rollout(1, "h1", "harmful", 0, 1.0, "I can't help with that.", 1.0)] + \
            [_rollout(1, "h1", "harmful", g, 0.0, f"{SECRET} {g}", 0.0) for g in (1, 2, 3)]
    maths = [_rollout(2, "m1", "math", g, float(g == 0), "x" * 300) for g in range(4)]
    jsonl.write(same + mixed + maths, path)
    t = ir.rollout_group(path, 4, width=40)
    assert list(t["prompt_id"]) == ["h1"] * 4 and list(t["generation"]) == [0, 1, 2, 3]
    assert list(t["advantage"]) == [round(0.75 / 0.5001, 4)] + [round(-0.25 / 0.5001, 4)] * 3
    assert t["completion"][0] == "I can't help with that." and list(t["group_mean"]) == [0.25] * 4
    assert all(c.startswith("[redacted: unsafe completion") for c in t["completion"][1:])
    assert SECRET[:20] in ir.rollout_group(path, 4, show_unsafe=True)["completion"][1]
    m = ir.rollout_group(path, 4, step=2, width=40)
    assert m["completion"][0] == "x" * 40 + "..." and m["advantage"][0] > 0  # math is never redacted
    assert list(ir.rollout_group(path, 4, prompt_id="b1")["advantage"]) == [0.0] * 4
    with pytest.raises(ValueError, match="no group"):
        ir.rollout_group(path, 4, step=3)
    with pytest.raises(FileNotFoundError):
        ir.rollout_group(tmp_path / "absent.jsonl", 4)


def test_reward_function_logs_each_completion(tmp_path):
    from sinternal_lib.judges import make_judge

    log = grpo_rewards.RewardLog(tmp_path / "rewards.csv")
    fn = grpo_rewards.VerifierReward(make_judge(None, cache_dir=tmp_path / "jc"), log)
    long = "y" * (grpo_rewards.ROLLOUT_CHARS + 7)
    fn(prompts=[None] * 2, completions=[[{"role": "assistant", "content": c}] for c in ("I cannot help.", long)],
       kind=["harmful", "math"], reference=["", "4"], prompt_text=[HARM_Q, "2+2?"], prompt_id=["h1", "m1"])
    rows = jsonl.read(tmp_path / grpo_rewards.ROLLOUTS)
    assert [r["completion"] for r in rows] == ["I cannot help.", long[:grpo_rewards.ROLLOUT_CHARS]]
    assert [r["completion_chars"] for r in rows] == [14, len(long)]
