"""Figures of stages 02-04: the selection funnel keeps one unit per panel and shows forced refusal
openers apart; the GRPO reward curve carries a 95% band over prompts."""

from __future__ import annotations

import pytest

from sinternal_lib import jsonl
from sinternal_lib.grpo_rewards import reward_band
from sinternal_lib.training_plots import data_funnel, grpo_reward_curves

SUMMARY = {"examples": 10, "funnel": {
    "prompts_total": 12, "harmful_prompts": 8, "harmful_mixed": 4, "harmful_all_safe": 3, "harmful_all_unsafe": 1,
    "pairs": 4, "benign_prompts": 4, "benign_kept": 2, "examples": 10, "pair_safe_forced": 3},
    "selection": {"kept": 9, "teacher_no_verdict": 1}}


def _segments(ax):
    return {c.get_label(): c.patches[0].get_width() for c in ax.containers}


def test_funnel_separates_units_and_forced_openers(tmp_path):
    fig = data_funnel(SUMMARY, tmp_path)
    prompts, answers = fig.axes[:2]
    assert prompts.get_xlabel() == "prompts" and answers.get_xlabel() == "answers"
    p = _segments(prompts)
    assert p["gave a pair (safe + unsafe answers)"] == 4 and p["all answers safe"] == 3
    assert p["benign: no judged answer"] == 2
    a = _segments(answers)
    assert a["safe side, written freely"] == 1 and a["safe side, forced refusal opener"] == 3
    assert a["unsafe side of a pair"] == 4 and a["kept by the teacher"] == 9 and a["teacher wrote no verdict"] == 1
    assert (tmp_path / "build_data_funnel.png").is_file()


def test_funnel_of_an_older_run_says_openers_were_not_recorded():
    old = {**SUMMARY, "funnel": {k: v for k, v in SUMMARY["funnel"].items() if k != "pair_safe_forced"}}
    answers = data_funnel(old).axes[1]
    assert "not recorded" in answers.get_xlabel()
    assert _segments(answers)["safe side of a pair"] == 4


def test_reward_band_uses_prompt_means(tmp_path):
    path = tmp_path / "rollout_rewards.jsonl"
    rows = [{"step": 1, "prompt_id": "a", "reward": r} for r in (1.0, 1.0)]
    rows += [{"step": 1, "prompt_id": "b", "reward": r} for r in (0.0, 0.0)]
    rows += [{"step": 2, "prompt_id": "a", "reward": 0.5}]
    jsonl.write(rows, path)
    band = reward_band(path)
    # step 1: prompt means 1.0 and 0.0 -> mean 0.5, SE = sd(0.707) / sqrt(2) = 0.5
    assert band[1]["mean"] == pytest.approx(0.5) and band[1]["prompts"] == 2
    assert band[1]["hi"] - band[1]["lo"] == pytest.approx(2 * 1.96 * 0.5)
    assert band[2] == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "prompts": 1}


def test_reward_curve_draws_the_band():
    keys = ("step", "mean_reward", "band_lo", "band_hi")
    rows = [dict(zip(keys, (1, 0.4, 0.2, 0.6))), dict(zip(keys, (2, 0.5, 0.3, 0.7)))]
    fig = grpo_reward_curves({"base": rows})
    assert len(fig.axes[0].collections) == 1  # the shaded band
    assert len(grpo_reward_curves({"base": [{k: v for k, v in r.items() if "band" not in k} for r in rows]})
               .axes[0].collections) == 0
