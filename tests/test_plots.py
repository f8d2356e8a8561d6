"""Figures render from metric dicts (full, partial or empty) and save as <stage>_<finding>.png."""

from __future__ import annotations

import json
from pathlib import Path

from sinternal_lib import plots

METRICS = json.loads((Path(__file__).parent / "fixtures" / "metrics_small.json").read_text())


def test_figures_from_fixture(tmp_path):
    ev = METRICS["evaluate"]
    plots.eval_rates(ev, tmp_path)
    plots.ablation_rates(ev, tmp_path)
    plots.diagnosis_vs_baselines(METRICS["diagnose"], tmp_path)
    plots.f1_vs_asr(ev, tmp_path)
    plots.proactive_verification(ev, tmp_path)
    plots.rl_comparison(ev, None, tmp_path)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["diagnose_vs_baselines.png", "evaluate_ablation_asr.png", "evaluate_asr_by_checkpoint.png",
                     "evaluate_f1_vs_asr.png", "evaluate_proactive_verification.png", "grpo_init_comparison.png"]
    assert all(p.stat().st_size > 1000 for p in tmp_path.glob("*.png"))


def test_missing_data_gives_placeholder_not_error(tmp_path):
    fig = plots.diagnosis_vs_baselines({"models": {"m": {"pairs_policy": {"n": 3}}}}, tmp_path)
    assert fig is not None and (tmp_path / "diagnose_vs_baselines.png").is_file()
    assert plots.eval_rates({}, None) is not None
    assert plots.save_figure(fig, None, "x", "y") is None


def test_diagnosis_figure_names_missing_verdicts_and_every_baseline():
    """A model that wrote no verdict shows 'no verdict k of n' on its bars; F1 panel draws coin flip and
    always-unsafe; balanced accuracy and AUROC panels draw the 0.5 line."""
    v = {"n": 24, "f1": 0.0, "balanced_accuracy": 0.0, "no_verdict_rate": 1.0,
         "ci95": {"f1": [0.0, 0.0], "balanced_accuracy": [0.0, 0.0]},
         "baselines": {"coin_flip": {"f1": 0.5}, "always_unsafe": {"f1": 2 / 3}},
         "forced_choice": {"auroc": 0.51, "n": 24}}
    fig = plots.diagnosis_vs_baselines({"models": {"m": {"own_answers": v}}})
    ba, f1, fc = fig.axes[:3]
    assert any("no verdict\n24 of 24" == t.get_text() for t in ba.texts)
    labels = {t.get_text() for t in f1.get_legend().get_texts()}
    assert {"coin flip", "always unsafe"} <= labels
    assert [round(p.get_height(), 1) for p in fc.patches] == [51.0]
    assert any(abs(line.get_ydata()[0] - 50) < 1e-9 for line in ba.lines)


def test_figures_are_closed_once_saved(tmp_path):
    """pyplot keeps no figure after a figure function returns (notebooks show the returned object)."""
    import matplotlib.pyplot as plt

    plt.close("all")
    plots.eval_rates(METRICS["evaluate"], tmp_path)
    plots.diagnosis_vs_baselines(METRICS["diagnose"], None)
    assert plt.get_fignums() == []
