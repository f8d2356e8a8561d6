"""Results prose is computed from the summaries: numbers and judgements follow the dicts given."""

from __future__ import annotations

import pytest

from sinternal_lib import narrative


def _ver(ba, ci, po=0.75, n=96, nv=0.0):
    return {"n": n, "balanced_accuracy": ba, "no_verdict_rate": nv, "ci95": {"balanced_accuracy": ci},
            "baselines": {"prompt_only": {"balanced_accuracy": po}}}


def _model(ba, ci, asr, asr_ci, takeover=0.0, **kw):
    return {"verification": _ver(ba, ci, **kw), "generation": {"asr": asr, "asr_ci95": asr_ci},
            "takeover_rate": takeover}


def test_sft_sentence_judges_by_intervals():
    s = {"base": _model(0.50, [0.45, 0.55], 0.90, [0.80, 0.95]),
         "sinternal": _model(0.70, [0.62, 0.78], 0.88, [0.78, 0.94], takeover=0.1),
         "verdict_only": _model(0.72, [0.64, 0.80], 0.9, [0.8, 0.95]), "headline": {}}
    text = narrative.sft_results(s)
    assert "balanced accuracy 0.70 [0.62, 0.78]" in text
    assert "above the coin flip" in text and "below the prompt-only rule (0.75)" not in text
    assert "not distinguishable from the prompt-only rule (0.75)" in text
    assert "above `base` (0.50)" in text and "not distinguishable from `verdict_only` (0.72)" in text
    assert "the intervals overlap, so no change is measured" in text and "Takeover (replies that read like " \
           "a critique): 0.10 vs 0.00" in text
    assert narrative.sft_results({"base": s["base"]}) == "The `sinternal` variant was not trained in this run."


def test_diagnosis_sentence_says_format_and_chance_band():
    v = {"n": 24, "balanced_accuracy": 0.0, "no_verdict_rate": 1.0, "ci95": {"balanced_accuracy": [0.0, 0.0]},
         "confusion": {"tp": 0, "fp": 12, "fn": 12, "tn": 0},
         "forced_choice": {"auroc": 0.51, "n": 24, "balanced_accuracy": 0.58, "n_test": 12}}
    text = narrative.diagnosis({"models": {"m": {"own_answers": v}}}, "m")
    assert "no verdict line in 24 of 24 outputs" in text and "measures format-following" in text
    hw = narrative.auroc_chance_halfwidth(12, 12)
    assert hw == pytest.approx(1.96 * ((25 / (12 * 144)) ** 0.5))
    assert f"within +-{hw:.2f} of 0.50" in text and "inside it" in text
    v["forced_choice"]["auroc"] = 0.95
    assert "outside that band" in narrative.diagnosis({"models": {"m": {"own_answers": v}}}, "m")


def test_grpo_sentence():
    text = narrative.grpo_results({"inits": {"base": {"first_mean_reward": 0.25, "last_mean_reward": 0.5, "steps": 20}},
                                   "skipped": {"sinternal": "no adapter"}})
    assert "`base` 0.25 -> 0.50 over 20 steps" in text and "Skipped: sinternal." in text


def test_labelled_tables():
    t = narrative.labelled({"examples": 144, "safe": 96}, "count")
    assert list(t.index) == ["examples", "safe"] and t.loc["safe", "count"] == 96
    nested = narrative.labelled({"base": {"steps": 20, "reward": 0.5}, "sinternal": {"steps": 20, "reward": 0.6}}, "init")
    assert nested.loc["sinternal", "reward"] == 0.6 and nested.index.name == "init"
