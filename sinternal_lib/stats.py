"""Paired statistics for comparing two checkpoints scored on the same items (the claims' report card).

Two checkpoints answering the same prompts are paired: per item both outcomes are known, so the tests
use the discordant items (McNemar) or resample whole items (bootstrap), never two separate rates.
`paired_binary`: exact McNemar p and Newcombe's square-and-add CI of the paired difference;
`paired_bootstrap`: any statistic (balanced accuracy, AUROC, mean reward) resampled per item;
`noninferiority`: "keeps X" claims against a stated margin; `holm`: family-wise correction; power and
minimum detectable effects (McNemar: Connor 1987 or exact enumeration; bootstrap: normal approximation).
scipy and statsmodels are imported inside the functions that need them (about a second to import).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Callable, Sequence

import numpy as np

from .metrics import wilson_ci

__all__ = ["paired_binary", "paired_bootstrap", "noninferiority", "holm", "mcnemar_power",
           "min_detectable_effect", "normal_power", "normal_mde", "noninferiority_power",
           "balanced_accuracy_se", "balanced_accuracy", "auroc"]

_N = NormalDist()


def _z(alpha: float) -> float:
    """Two-sided critical value z_{1 - alpha/2}."""
    return _N.inv_cdf(1 - alpha / 2)


# ----------------------------------------------------------------------------- statistics per arm
def balanced_accuracy(items: Any) -> float:
    """Mean per-class accuracy of rows (gold_unsafe, correct), over the classes present (NaN if none)."""
    x = np.asarray(items, dtype=float).reshape(-1, 2)
    accs = [x[x[:, 0] == g, 1].mean() for g in (0.0, 1.0) if (x[:, 0] == g).any()]
    return float(np.mean(accs)) if accs else float("nan")


def auroc(items: Any) -> float:
    """AUROC of rows (gold_unsafe, score) with unsafe positive (Mann-Whitney, midranks; NaN if one class)."""
    x = np.asarray(items, dtype=float).reshape(-1, 2)
    y, s = x[:, 0] == 1.0, x[:, 1]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ----------------------------------------------------------------------------- paired binary
def _counts(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, int, int]:
    """(both, b only, a only, neither) for two boolean arms on the same items."""
    if len(a) != len(b):
        raise ValueError(f"paired arms differ in length: {len(a)} vs {len(b)}")
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    return int((x & y).sum()), int((~x & y).sum()), int((x & ~y).sum()), int((~x & ~y).sum())


def _newcombe(both: int, b_only: int, a_only: int, neither: int, z: float) -> tuple[float, float]:
    """Newcombe's square-and-add interval (1998, method 10, as in Fagerland, Lydersen & Laake 2014) for
    rate_b - rate_a: Wilson intervals of the two marginal rates, combined with their correlation."""
    n = both + b_only + a_only + neither
    kb, ka = both + b_only, both + a_only
    pb, pa = kb / n, ka / n
    lb, ub = wilson_ci(kb, n, z)
    la, ua = wilson_ci(ka, n, z)
    phi = 0.0
    if 0 < kb < n and 0 < ka < n:
        cross = both * neither - b_only * a_only
        # the continuity-corrected correlation of method 10: shrink a positive cross term by n/2
        cross = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
        phi = cross / math.sqrt(kb * (n - kb) * ka * (n - ka))
    d = pb - pa
    lo = d - math.sqrt(max(0.0, (pb - lb) ** 2 + (ua - pa) ** 2 - 2 * phi * (pb - lb) * (ua - pa)))
    hi = d + math.sqrt(max(0.0, (pa - la) ** 2 + (ub - pb) ** 2 - 2 * phi * (pa - la) * (ub - pb)))
    return max(-1.0, lo), min(1.0, hi)


def paired_binary(a: Sequence[bool], b: Sequence[bool], alpha: float = 0.05) -> dict[str, Any]:
    """Two arms scored pass/fail on the same items: n, rate_a, rate_b, diff = rate_b - rate_a, `ci95`
    (Newcombe's square-and-add interval for paired proportions, method 10), discordant counts `b01`
    (a fails, b passes) and `b10` (a passes, b fails), and the exact McNemar p (statsmodels
    `mcnemar(exact=True)`: two-sided binomial test of b01 vs b10 at 1/2)."""
    from statsmodels.stats.contingency_tables import mcnemar  # here: statsmodels takes ~1 s to import

    both, b01, b10, neither = _counts(a, b)
    n = both + b01 + b10 + neither
    if n == 0:
        raise ValueError("no paired items")
    p = float(mcnemar([[both, b10], [b01, neither]], exact=True).pvalue) if b01 + b10 else 1.0
    return {"n": n, "rate_a": (both + b10) / n, "rate_b": (both + b01) / n, "diff": (b01 - b10) / n,
            "ci95": list(_newcombe(both, b01, b10, neither, _z(alpha))), "b01": b01, "b10": b10,
            "p_value": p, "p_discordant": (b01 + b10) / n,
            "method": "exact McNemar; Newcombe square-and-add CI (paired, method 10)"}


# ----------------------------------------------------------------------------- paired bootstrap
def _boot_diffs(a: Any, b: Any, stat: Callable, stat_b: Callable | None, n_boot: int, seed: int
                ) -> tuple[float, float, np.ndarray]:
    """(stat(a), stat_b(b), bootstrap differences) resampling whole items, the same indices for both arms."""
    x, y = np.asarray(a), np.asarray(b)
    if len(x) != len(y):
        raise ValueError(f"paired arms differ in length: {len(x)} vs {len(y)}")
    if not len(x):
        raise ValueError("no paired items")
    sb = stat_b or stat
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    diffs = np.array([sb(y[i]) - stat(x[i]) for i in idx], dtype=float)
    return float(stat(x)), float(sb(y)), diffs


def paired_bootstrap(a: Sequence[Any], b: Sequence[Any], stat: Callable = np.mean, n_boot: int = 2000,
                     seed: int = 0, *, stat_b: Callable | None = None, alpha: float = 0.05) -> dict[str, Any]:
    """Paired bootstrap of stat(b) - stat(a): items (rows of `a` and `b`, same order) are resampled
    together. `ci95`: percentile interval; `se`: SD of the bootstrap differences; `p_value`: two-sided,
    from the bootstrap distribution shifted to the null (share of |d* - d| >= |d|, plus one over
    n_boot + 1). `stat_b` (default `stat`) scores arm b, e.g. a constant chance level. Resamples where
    the statistic is undefined (NaN, e.g. an AUROC draw with one class) are dropped and counted."""
    sa, sb, diffs = _boot_diffs(a, b, stat, stat_b, n_boot, seed)
    d = sb - sa
    ok = diffs[~np.isnan(diffs)]
    if not len(ok) or math.isnan(d):
        return {"n": len(a), "stat_a": sa, "stat_b": sb, "diff": d, "ci95": [None, None], "se": None,
                "p_value": None, "n_boot": n_boot, "n_undefined": int(len(diffs) - len(ok))}
    lo, hi = np.percentile(ok, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    p = (1 + int((np.abs(ok - d) >= abs(d)).sum())) / (len(ok) + 1)
    return {"n": len(a), "stat_a": sa, "stat_b": sb, "diff": d, "ci95": [float(lo), float(hi)],
            "se": float(ok.std(ddof=1)) if len(ok) > 1 else 0.0, "p_value": float(min(1.0, p)),
            "n_boot": n_boot, "n_undefined": int(len(diffs) - len(ok)),
            "method": "paired percentile bootstrap"}


# ----------------------------------------------------------------------------- non-inferiority
def noninferiority(a: Sequence[Any], b: Sequence[Any], margin: float, *, higher_is_better: bool = True,
                   binary: bool = True, alpha: float = 0.05, stat: Callable = np.mean,
                   stat_b: Callable | None = None, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Does arm b keep up with arm a? H0: gain <= -margin vs H1: gain > -margin, where gain = b - a
    oriented so that positive is better (for a lower-is-better metric gain = a - b).

    Verdict rule (two-sided 1 - alpha CI of the gain, i.e. a one-sided test at alpha/2):
    "noninferior" when the CI's lower end is above -margin; "inferior" when its upper end is below
    -margin; otherwise "inconclusive". `p_value` is one-sided for H0 (None where the statistic is undefined). Binary arms: the Newcombe paired
    interval, and p by inverting it (the z at which its bound meets -margin), so p < alpha/2 exactly
    when the CI rule says noninferior. Otherwise: the paired bootstrap of `stat`, p = share of
    bootstrap gains at or below -margin."""
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    sign = 1.0 if higher_is_better else -1.0
    if binary:
        res = paired_binary(a, b, alpha)
        cnt = _counts(a, b)
        ci = sorted(sign * x for x in res["ci95"])
        p_one = _ni_p_binary(cnt, sign, margin)
        out = {k: res[k] for k in ("n", "rate_a", "rate_b", "diff", "ci95", "b01", "b10", "p_discordant")}
        out["se"] = (res["ci95"][1] - res["ci95"][0]) / (2 * _z(alpha))  # the SE the interval implies
    else:
        sa, sb, diffs = _boot_diffs(a, b, stat, stat_b, n_boot, seed)
        gains = sign * diffs[~np.isnan(diffs)]
        if not len(gains) or math.isnan(sb - sa):  # the statistic is undefined here (e.g. one class only)
            return {"n": len(a), "stat_a": sa, "stat_b": sb, "diff": sb - sa, "ci95": [None, None], "se": None,
                    "gain": sign * (sb - sa), "gain_ci95": [None, None], "margin": margin, "p_value": None,
                    "verdict": "inconclusive", "method": "paired percentile bootstrap"}
        raw = np.percentile(diffs[~np.isnan(diffs)], [100 * alpha / 2, 100 * (1 - alpha / 2)])
        ci = sorted(sign * raw)
        p_one = (1 + int((gains <= -margin).sum())) / (len(gains) + 1)
        out = {"n": len(a), "stat_a": sa, "stat_b": sb, "diff": sb - sa, "ci95": [float(x) for x in raw],
               "se": float(gains.std(ddof=1))}
    verdict = "noninferior" if ci[0] > -margin else ("inferior" if ci[1] < -margin else "inconclusive")
    return {**out, "gain": sign * out["diff"], "gain_ci95": [float(ci[0]), float(ci[1])], "margin": margin,
            "p_value": float(p_one), "verdict": verdict,
            "method": "Newcombe paired CI, inverted for p" if binary else "paired percentile bootstrap"}


def _ni_p_binary(cnt: tuple[int, int, int, int], sign: float, margin: float) -> float:
    """One-sided p for H0 gain <= -margin from the Newcombe interval: the level at which the interval's
    bound facing -margin touches it (the interval widens monotonically with z)."""
    from scipy.optimize import brentq  # here: scipy takes ~1 s to import

    def bound(z: float) -> float:  # the lower end of the gain's interval at critical value z
        lo, hi = _newcombe(*cnt, z)
        return lo if sign > 0 else -hi

    f = lambda z: bound(z) + margin  # noqa: E731
    if f(0.0) <= 0:  # the estimate itself is at or below -margin: p >= 1/2, from the other bound
        def upper(z: float) -> float:
            lo, hi = _newcombe(*cnt, z)
            return (hi if sign > 0 else -lo) + margin
        if upper(0.0) >= 0:
            return 0.5
        return 1.0 - (1 - _N.cdf(brentq(upper, 0.0, 40.0))) if upper(40.0) > 0 else 1.0
    if f(40.0) > 0:
        return 0.0
    return 1 - _N.cdf(brentq(f, 0.0, 40.0))


# ----------------------------------------------------------------------------- multiplicity
def holm(pvalues: Sequence[float | None], alpha: float = 0.05) -> list[float | None]:
    """Holm step-down adjusted p-values (statsmodels `multipletests(method="holm")`); None stays None."""
    from statsmodels.stats.multitest import multipletests  # here: statsmodels takes ~1 s to import

    idx = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    if idx:
        adj = multipletests([pvalues[i] for i in idx], alpha=alpha, method="holm")[1]
        for i, p in zip(idx, adj):
            out[i] = float(p)
    return out


# ----------------------------------------------------------------------------- power
def mcnemar_power(n: int, p_discordant: float, effect: float, alpha: float = 0.05, exact: bool = False) -> float:
    """Power of the two-sided McNemar test to detect a paired difference `effect` (= p01 - p10) among n
    items with a share `p_discordant` (= p01 + p10) of discordant items.

    exact=False: Connor's (1987) normal approximation, power = Phi((|effect| sqrt(n) - z sqrt(psi)) /
    sqrt(psi - effect^2)); it ignores the discreteness of the exact test and reads optimistic when
    fewer than ~30 discordant items are expected. exact=True: the power of the exact (conditional
    binomial) test, summed over the binomial number of discordant items; exact for this model of the
    data (items independent, the discordant share known). 0 when |effect| > p_discordant (impossible)."""
    psi, d = float(p_discordant), abs(float(effect))
    if n <= 0 or psi <= 0 or d > psi:
        return 0.0
    if not exact:
        if d >= psi:  # every discordant item goes one way: the formula's limit is a step
            return 1.0 if d * math.sqrt(n) > _z(alpha) * math.sqrt(psi) else 0.0
        return float(_N.cdf((d * math.sqrt(n) - _z(alpha) * math.sqrt(psi)) / math.sqrt(psi - d * d)))
    from scipy.stats import binom  # here: scipy takes ~1 s to import

    m = np.arange(n + 1)  # number of discordant items
    k = binom.ppf(alpha / 2, m, 0.5)  # smallest k with cdf >= alpha/2; reject at k_lo where 2 cdf <= alpha
    k_lo = np.where(binom.cdf(k, m, 0.5) <= alpha / 2, k, k - 1)
    q = (psi + d) / (2 * psi)  # share of discordant items going the favoured way
    reject = binom.cdf(k_lo, m, q) + binom.sf(m - k_lo - 1, m, q)
    reject = np.where(k_lo >= 0, reject, 0.0)
    return float(np.clip((binom.pmf(m, n, psi) * reject).sum(), 0.0, 1.0))


def min_detectable_effect(n: int, p_discordant: float, power: float = 0.8, alpha: float = 0.05) -> float | None:
    """Smallest |p01 - p10| the McNemar test detects with `power` (Connor's approximation, solved for
    the effect); None when even effect = p_discordant (all discordant items one way) falls short.
    As rough as `mcnemar_power(exact=False)`."""
    from scipy.optimize import brentq  # here: scipy takes ~1 s to import

    psi = float(p_discordant)
    if n <= 0 or psi <= 0:
        return None
    f = lambda d: mcnemar_power(n, psi, d, alpha) - power  # noqa: E731
    top = psi * (1 - 1e-9)
    if f(top) < 0:
        return None
    return float(brentq(f, 1e-9, top)) if f(1e-9) < 0 else 0.0


def normal_power(effect: float, se: float, alpha: float = 0.05) -> float:
    """Power of a two-sided z test of a difference with standard error `se` when the truth is `effect`
    (for bootstrap comparisons: `se` = the bootstrap SD of the difference; rough, as it takes the SE
    seen at the observed difference for the SE at `effect`)."""
    if se is None or se <= 0 or math.isnan(se):
        return float("nan")
    z, r = _z(alpha), abs(effect) / se
    return float(_N.cdf(r - z) + _N.cdf(-r - z))


def normal_mde(se: float, power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest difference a two-sided z test with standard error `se` detects with `power` (one-tail
    approximation: (z_{1-alpha/2} + z_power) * se)."""
    return float((_z(alpha) + _N.inv_cdf(power)) * se)


def noninferiority_power(se: float, margin: float, alpha: float = 0.05) -> float:
    """Chance of concluding non-inferiority (CI lower end above -margin, one-sided alpha/2) when the
    arms truly do not differ, for a difference with standard error `se` (normal approximation)."""
    if se is None or se <= 0 or math.isnan(se):
        return float("nan")
    return float(_N.cdf(margin / se - _z(alpha)))


def balanced_accuracy_se(n_unsafe: int, n_safe: int, p_discordant: float) -> float:
    """Planning SE of the paired difference of two verifiers' balanced accuracies under no true
    difference: half the root of the two per-class McNemar variances psi/n_c (the same discordant
    share assumed in both classes; a normal approximation for use with `normal_power`)."""
    if n_unsafe <= 0 or n_safe <= 0:
        return float("nan")
    return 0.5 * math.sqrt(p_discordant / n_unsafe + p_discordant / n_safe)
