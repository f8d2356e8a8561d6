"""Paired statistics against hand-worked and published values, and the power functions against simulation
(seeded; about two seconds).

Run: HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_stats.py
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sinternal_lib.stats import (auroc, balanced_accuracy, balanced_accuracy_se, holm, mcnemar_power,
                                 min_detectable_effect, noninferiority, normal_mde, normal_power, paired_binary,
                                 paired_bootstrap)


def arms(both: int, b_only: int, a_only: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Two paired boolean arms with the given cells (both pass, only b passes, only a passes, neither)."""
    a = [True] * both + [False] * b_only + [True] * a_only + [False] * neither
    b = [True] * both + [True] * b_only + [False] * a_only + [False] * neither
    return a, b


# ----------------------------------------------------------------------------- paired binary
def test_mcnemar_exact_p_by_hand():
    # 2 vs 9 discordant: two-sided binomial(11, 1/2) tail = 2 * (C(11,0) + C(11,1) + C(11,2)) / 2^11
    hand = 2 * (1 + 11 + 55) / 2 ** 11
    assert hand == pytest.approx(0.0654296875)
    a, b = arms(5, 2, 9, 4)
    r = paired_binary(a, b)
    assert r["p_value"] == pytest.approx(hand, rel=1e-12)
    assert (r["b01"], r["b10"], r["n"]) == (2, 9, 20)
    assert r["diff"] == pytest.approx((2 - 9) / 20) and r["rate_b"] - r["rate_a"] == pytest.approx(r["diff"])
    assert paired_binary(*arms(3, 0, 0, 3))["p_value"] == 1.0  # no discordant items: no evidence
    # order of arms flips the sign only
    r2 = paired_binary(b, a)
    assert r2["diff"] == pytest.approx(-r["diff"]) and r2["p_value"] == pytest.approx(r["p_value"])


def test_newcombe_paired_ci_published_value():
    # Fagerland, Lydersen & Laake (2014), Cavo et al. table [[59, 6], [16, 80]] (rows: arm b, columns: arm a):
    # Newcombe square-and-add: estimate -0.0621, 95% CI -0.1186 to -0.0046 (also in R contingencytables' tests)
    r = paired_binary(*arms(59, 6, 16, 80))
    assert r["diff"] == pytest.approx(-0.0621, abs=5e-5)
    assert r["ci95"] == pytest.approx([-0.1186, -0.0046], abs=5e-5)


def test_paired_ci_covers_at_nominal_rate():
    rng = np.random.default_rng(3)
    n, cover = 80, 0
    cells = rng.multinomial(n, [0.4, 0.2, 0.1, 0.3], size=600)  # both, b only, a only, neither; diff = 0.1
    for c in cells:
        lo, hi = paired_binary(*arms(*c))["ci95"]
        cover += lo <= 0.1 <= hi
    assert 0.92 <= cover / len(cells) <= 0.98  # nominal 0.95; 600 draws give an SE of about 0.009


def test_holm_hand_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert holm([0.5]) == [0.5] and holm([None]) == [None]


# ----------------------------------------------------------------------------- bootstrap and helpers
def test_balanced_accuracy_and_auroc_by_hand():
    # unsafe pairs: 3 of 4 right; safe pairs: 1 of 2 right -> (0.75 + 0.5) / 2
    items = [(1, 1), (1, 1), (1, 1), (1, 0), (0, 1), (0, 0)]
    assert balanced_accuracy(items) == pytest.approx(0.625)
    # positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4, 0.9>0.1, tie 0.5, 0.4>0.1) -> 3.5 / 4
    assert auroc([(1, 0.9), (1, 0.4), (0, 0.4), (0, 0.1)]) == pytest.approx(0.875)
    assert math.isnan(auroc([(1, 0.9), (1, 0.4)]))


def test_paired_bootstrap_mean_matches_the_paired_t_scale():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 400)
    b = a + 0.1 + rng.normal(0, 0.5, 400)  # the pairing removes a's spread from the difference
    r = paired_bootstrap(a, b, np.mean, n_boot=2000, seed=1)
    d = b - a
    assert r["diff"] == pytest.approx(d.mean())
    assert r["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(len(d)), rel=0.1)
    assert r["ci95"][0] == pytest.approx(d.mean() - 1.96 * r["se"], abs=0.01)
    assert r["p_value"] < 0.01
    same = paired_bootstrap(a, a, np.mean, n_boot=500)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def test_paired_bootstrap_balanced_accuracy_against_chance():
    gold = np.array([1] * 50 + [0] * 50)
    correct = np.array([1] * 45 + [0] * 5 + [1] * 45 + [0] * 5)  # balanced accuracy 0.9
    items = np.stack([gold, correct], axis=1)
    r = paired_bootstrap(items, items, balanced_accuracy, n_boot=1000, stat_b=lambda x: 0.5)
    assert r["stat_a"] == pytest.approx(0.9) and r["stat_b"] == 0.5 and r["diff"] == pytest.approx(-0.4)
    assert r["ci95"][1] < -0.3 and r["p_value"] < 0.01


# ----------------------------------------------------------------------------- non-inferiority
def test_noninferiority_verdicts_and_orientation():
    tie = noninferiority(*arms(300, 20, 20, 60), margin=0.05)  # diff 0, CI about +-0.031
    assert tie["verdict"] == "noninferior" and tie["p_value"] < 0.025
    drop = noninferiority(*arms(200, 0, 80, 120), margin=0.05)  # b loses 20 points
    assert drop["verdict"] == "inferior" and drop["gain_ci95"][1] < -0.05 and drop["p_value"] > 0.975
    small = noninferiority(*arms(5, 1, 1, 3), margin=0.05)
    assert small["verdict"] == "inconclusive"
    # lower is better (ASR): b's rate going down is a gain
    asr = noninferiority(*arms(200, 0, 80, 120), margin=0.05, higher_is_better=False)
    assert asr["verdict"] == "noninferior" and asr["gain"] == pytest.approx(0.2)


@pytest.mark.parametrize("cells", [(59, 6, 16, 80), (40, 10, 12, 38), (90, 3, 9, 20), (20, 8, 2, 30)])
@pytest.mark.parametrize("margin", [0.02, 0.05, 0.1, 0.15])
def test_noninferiority_p_agrees_with_its_interval(cells, margin):
    r = noninferiority(*arms(*cells), margin=margin)
    assert (r["p_value"] < 0.025) == (r["gain_ci95"][0] > -margin)
    assert (r["verdict"] == "noninferior") == (r["gain_ci95"][0] > -margin)


def test_noninferiority_bootstrap():
    gold = np.array([1] * 100 + [0] * 100)
    rng = np.random.default_rng(5)
    ca = (rng.random(200) < 0.8).astype(float)
    a = np.stack([gold, ca], axis=1)
    r = noninferiority(a, a.copy(), margin=0.05, binary=False, stat=balanced_accuracy, n_boot=1000)
    assert r["diff"] == 0 and r["verdict"] == "noninferior"  # identical arms: every resample ties
    worse = np.stack([gold, ca * (rng.random(200) < 0.6)], axis=1)
    r = noninferiority(a, worse, margin=0.05, binary=False, stat=balanced_accuracy, n_boot=1000)
    assert r["verdict"] == "inferior"


def test_noninferiority_undefined_statistic_is_inconclusive():
    one_class = np.array([(1, 0.2), (1, 0.7), (1, 0.9)])  # AUROC needs both classes
    r = noninferiority(one_class, one_class, margin=0.05, binary=False, stat=auroc, stat_b=lambda x: 0.5,
                       n_boot=100)
    assert r["verdict"] == "inconclusive" and r["p_value"] is None


# ----------------------------------------------------------------------------- power
def _simulated_mcnemar_power(n: int, p01: float, p10: float, draws: int = 2000, seed: int = 1) -> float:
    """Share of `draws` simulated paired data sets (discordant shares p01, p10) the exact test rejects."""
    from statsmodels.stats.contingency_tables import mcnemar  # statsmodels, independent of the code under test

    cells = np.random.default_rng(seed).multinomial(n, [p01, p10, 1 - p01 - p10], size=draws)
    return float(np.mean([b01 + b10 > 0 and mcnemar([[0, b10], [b01, 0]], exact=True).pvalue <= 0.05
                          for b01, b10, _ in cells]))


@pytest.mark.parametrize("n,p01,p10", [(200, 0.2, 0.1), (60, 0.2, 0.05), (30, 0.25, 0.05)])
def test_mcnemar_power_matches_simulation(n, p01, p10):
    sim = _simulated_mcnemar_power(n, p01, p10)
    exact = mcnemar_power(n, p01 + p10, p01 - p10, exact=True)
    # tolerance: 3 binomial SEs of the simulated share (2000 draws: SE <= 0.011)
    assert exact == pytest.approx(sim, abs=3 * math.sqrt(sim * (1 - sim) / 2000) + 1e-3)
    connor = mcnemar_power(n, p01 + p10, p01 - p10)
    assert connor >= exact - 0.01  # the normal approximation ignores the exact test's discreteness
    if n >= 200:
        assert connor == pytest.approx(sim, abs=0.05)


def test_mcnemar_power_edges_and_mde():
    assert mcnemar_power(100, 0.3, 0.0) == pytest.approx(0.025)  # Connor counts the favoured tail only
    assert 0.03 < mcnemar_power(100, 0.3, 0.0, exact=True) <= 0.05  # the exact test: size at most alpha
    assert mcnemar_power(100, 0.1, 0.2) == 0.0  # a difference larger than the discordant share is impossible
    assert mcnemar_power(0, 0.3, 0.1) == 0.0
    assert mcnemar_power(400, 0.3, 0.1) > mcnemar_power(100, 0.3, 0.1)
    d = min_detectable_effect(200, 0.3)
    assert mcnemar_power(200, 0.3, d) == pytest.approx(0.8, abs=1e-6)
    # Connor's sample size for that effect gives back n = 200
    z_a, z_b = 1.959963984540054, 0.8416212335729143
    assert (z_a * math.sqrt(0.3) + z_b * math.sqrt(0.3 - d * d)) ** 2 / d ** 2 == pytest.approx(200, rel=1e-4)
    assert min_detectable_effect(10, 0.05) is None  # never reachable with so few discordant items


def test_balanced_accuracy_se_matches_simulation():
    n_c, psi = 100, 0.3
    rng = np.random.default_rng(2)
    # per class: each item discordant with probability psi, either way with equal chance (no true difference)
    moves = rng.choice([-1, 0, 1], p=[psi / 2, 1 - psi, psi / 2], size=(4000, 2, n_c))
    diffs = 0.5 * (moves[:, 0].mean(-1) + moves[:, 1].mean(-1))  # BA difference = mean of per-class differences
    assert balanced_accuracy_se(n_c, n_c, psi) == pytest.approx(diffs.std(), rel=0.05)


def test_normal_power_and_mde():
    assert normal_power(0.0, 0.05) == pytest.approx(0.05)
    se = 0.04
    assert normal_power(normal_mde(se), se) == pytest.approx(0.8, abs=0.002)
    assert math.isnan(normal_power(0.1, 0.0))
