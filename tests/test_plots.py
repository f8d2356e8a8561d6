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
    plots.diagnosis_f1(METRICS["diagnose"], tmp_path)
    plots.f1_vs_asr(ev, tmp_path)
    plots.proactive_verification(ev, tmp_path)
    plots.rl_comparison(ev, None, tmp_path)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["diagnose_f1_vs_random.png", "evaluate_ablation_asr.png", "evaluate_asr_by_checkpoint.png",
                     "evaluate_f1_vs_asr.png", "evaluate_proactive_verification.png", "grpo_init_comparison.png"]
    assert all(p.stat().st_size > 1000 for p in tmp_path.glob("*.png"))


def test_missing_data_gives_placeholder_not_error(tmp_path):
    fig = plots.diagnosis_f1({"models": {"m": {"pairs_policy": {"n": 3}}}}, tmp_path)
    assert fig is not None and (tmp_path / "diagnose_f1_vs_random.png").is_file()
    assert plots.eval_rates({}, None) is not None
    assert plots.save_figure(fig, None, "x", "y") is None
