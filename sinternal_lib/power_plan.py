"""The power plan: per claim of `claims.CLAIMS`, the n per arm a recipe gives and the smallest effect it
can detect with 80% power, next to the effect the claim is stated for.

n is read from the recipe alone (nothing is run or loaded beyond the embedded prompt files): stage 05
claims pool `evaluate.num_per_benchmark` prompts over the claim's benchmarks that this machine has
(capped by each set's size; XSTest's prompts split 200 unsafe : 250 safe), stage 03 claims count
held-out pairs, claim (a) the stage 01 pairs, GRPO reward claims steps x prompts per step. The minimum
detectable effect (MDE) rests on the planning assumptions in `ASSUMPTIONS`. `python -m sinternal_lib
run` prints the plan before any stage runs and writes `power_plan.json`; the report card shows it.
"""

from __future__ import annotations

import functools
import math
import textwrap
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable

from .claims import CHANCE, CLAIMS, HUMAN_SETS, METRICS, OWN_PAIRS, Claim
from .datasets import load_embedded
from .loaders import BenchmarkMissing, benchmark_origin
from .metrics import MATH_BENCHES
from .recipe_sections import Recipe
from .runs import Run, atomic_write_json
from .stats import balanced_accuracy_se, min_detectable_effect, normal_mde

POWER, ALPHA = 0.8, 0.05
PSI = 0.3  # planning discordant share: of items on which the two arms differ (per class for balanced accuracy)
REWARD_SD = 0.5  # SD of a prompt's mean reward: the most a reward in [0, 1] can have
ASSUMPTIONS = (f"{POWER:.0%} power, two-sided alpha {ALPHA} before Holm's correction; rates (McNemar): "
               f"discordant share {PSI}; balanced accuracy and AUROC (bootstrap): discordant share {PSI} in each "
               f"class; 'keeps' claims: the margin shown when the arms tie, SE sqrt({PSI}/n) (claim a: AUROC "
               f"against chance, Hanley-McNeil SE); reward: SD {REWARD_SD} per prompt, arms taken as "
               f"independent; own answers in stage 01 counted unsafe for harmful prompts, safe for benign")
PLAN_FILE = "power_plan.json"

# As evaluate.EMBEDDED (not imported: that module loads torch).
EMBEDDED = {"embedded_harmful": ("harmful", "test"), "embedded_benign": ("benign", "test"),
            "embedded_jailbreak": ("jailbreak", "test"), "embedded_math": ("math", "test")}
# Items `loaders.load_benchmark(name)` reads with default options (counted 2026-12-05 on the shared data folder).
KNOWN_SIZES = {"strongreject": 313, "harmbench": 159, "jbb": 100, "advbench": 520, "jbb_artifacts": 1437,
               "xstest": 450, "gsm8k": 1319, "math500": 500, "aime2024": 30}
XSTEST_HARMFUL = 200  # of XSTest's 450 prompts, the contrast_ (unsafe) ones scored as xstest_unsafe; 250 are safe
# Human-labelled pairs on the "eval" side of sft_data.human_split, per label (counted 2026-12-05).
HUMAN_EVAL_SIDE = {"xstest_completions": {"unsafe": 80, "safe": 1082},
                   "pku_saferlhf": {"unsafe": 1160, "safe": 824}}
_LABELS = {"asr": ("harmful",), "compliance": ("benign",), "proactive": ("harmful", "benign"),
           "math_accuracy": ("math",)}


def available(name: str) -> bool:
    """True when stage 05 / 03 can read `name` here: an embedded set, or a benchmark whose files (shared
    data folder, wheel, or the hub when online) `loaders.benchmark_origin` finds."""
    if name in EMBEDDED:
        return True
    try:
        benchmark_origin(name)
        return True
    except (BenchmarkMissing, KeyError, TypeError, ValueError):
        return False


@functools.lru_cache(maxsize=None)
def _size(name: str) -> int | None:
    """Items of a benchmark as stage 05 loads it (embedded: its test split), None when not known."""
    if name in EMBEDDED:
        return len(load_embedded(*EMBEDDED[name]))
    return KNOWN_SIZES.get(name)


def eval_items(recipe: Recipe, have: Callable[[str], bool] = available) -> dict[str, dict[str, int]]:
    """{benchmark as the claims name it: {"harmful" | "benign" | "math": prompts}} that stage 05 scores per
    checkpoint; XSTest's draw splits into xstest_unsafe (harmful) and xstest (benign) by its 200 : 250 mix."""
    n_per, out = recipe.evaluate.num_per_benchmark, {}
    for b in recipe.evaluate.benchmarks:
        size = _size(b)
        if not have(b) or (size is None and n_per <= 0):
            continue
        take = n_per if size is None else (size if n_per <= 0 else min(n_per, size))
        if b == "xstest":
            harm = round(take * XSTEST_HARMFUL / KNOWN_SIZES["xstest"])
            out["xstest_unsafe"], out["xstest"] = {"harmful": harm}, {"benign": take - harm}
        elif b in MATH_BENCHES:
            out[b] = {"math": take}
        else:
            out[b] = {"benign" if b == "embedded_benign" else "harmful": take}
    return out


def _human_sets_here(have: Callable[[str], bool]) -> list[str]:
    return [s for s in HUMAN_SETS if have(s)]


def _arm_missing(arm: str, recipe: Recipe, have: Callable[[str], bool], evaluated: bool) -> str | None:
    """Why the recipe will not produce `arm` (None when it will); `evaluated`: the claim needs stage 05."""
    kind, _, name = arm.partition("/")
    if kind == "sft":
        if name not in recipe.sft.variants:
            return f"{arm}: not in sft.variants"
        if name == "other_exp" and not _human_sets_here(have):
            return f"{arm}: needs the human-labelled sets of the shared data folder (skipped without them)"
    if kind == "grpo":
        if name not in recipe.grpo.inits:
            return f"{arm}: not in grpo.inits"
        if name != "base" and name not in recipe.sft.variants:
            return f"{arm}: its init sft/{name} is not in sft.variants"
    if evaluated and arm != CHANCE and not any(fnmatch(arm, p) for p in recipe.evaluate.checkpoints):
        return f"{arm}: not in evaluate.checkpoints"
    return None


def _stage05(c: Claim, recipe: Recipe, have: Callable[[str], bool]) -> tuple[int, str, dict[str, int]]:
    items = eval_items(recipe, have)
    per = {b: sum(items[b].get(lab, 0) for lab in _LABELS[c.metric]) for b in c.benchmarks if b in items}
    per = {b: k for b, k in per.items() if k}
    if not per:
        return 0, f"stage 05: none of {', '.join(c.benchmarks)} here and in evaluate.benchmarks", per
    counts = "+".join(map(str, per.values()))
    return sum(per.values()), f"stage 05: {len(per)} of {len(c.benchmarks)} benchmarks, {counts}", per


def _pairs(c: Claim, recipe: Recipe, have: Callable[[str], bool]) -> tuple[int, int, str]:
    """(unsafe, safe) held-out pairs of a stage 03 / stage 01 claim, and where they come from."""
    if c.metric == "fc_auroc_diag":  # stage 01: own answers + human-labelled pairs (half unsafe) per set
        d = recipe.diagnose
        sets = [s for s in d.human_sets if have(s)]
        h = d.num_human_pairs
        return (d.num_harmful + len(sets) * (h // 2), d.num_benign + len(sets) * (h - h // 2),
                f"stage 01: {d.num_harmful + d.num_benign} own + {len(sets)} x {h} human pairs")
    s = recipe.sft
    if c.benchmarks == (OWN_PAIRS,):  # one unsafe pair per harmful test prompt at most (build_data.heldout_pairs)
        b = recipe.build_data
        prompts = sum(_size("embedded_harmful") if src == "embedded" else (KNOWN_SIZES.get(src) or 0)
                      for src in recipe.data.harmful)
        k = min(s.eval_num_pairs // 2, b.heldout_num_pairs // 2, min(b.heldout_num_prompts, prompts))
        return k, k, f"stage 03: {k} unsafe + {k} safe own held-out pairs"
    sets = [x for x in s.eval_human_sets if x in c.benchmarks and have(x) and x in HUMAN_EVAL_SIDE]
    if not sets:
        return 0, 0, "stage 03: no human-labelled set of sft.eval_human_sets here (shared data folder)"
    u = sum(min(s.eval_num_human_pairs // 2, HUMAN_EVAL_SIDE[x]["unsafe"]) for x in sets)
    v = sum(min(s.eval_num_human_pairs // 2, HUMAN_EVAL_SIDE[x]["safe"]) for x in sets)
    return u, v, f"stage 03: {u} unsafe + {v} safe human pairs ({', '.join(sets)})"


def plan_row(c: Claim, recipe: Recipe, have: Callable[[str], bool] = available) -> dict[str, Any]:
    """One claim's plan: id, claim, test, arms, n (paired items per arm), source (where n comes from),
    mde, effect (the stated effect, or the margin of a 'keeps' claim), enough (mde <= effect), why (n = 0)."""
    kind = METRICS[c.metric][1]
    stage05 = c.metric in _LABELS
    effect = c.margin if c.test == "noninferiority" else c.effect
    row: dict[str, Any] = {"id": c.id, "claim": c.text, "test": c.test, "metric": c.metric, "arms": list(c.arms),
                           "n": 0, "source": "", "mde": None, "effect": effect, "enough": False, "why": ""}
    missing = [w for a in c.arms if (w := _arm_missing(a, recipe, have, stage05))]
    se: float | None = None
    if c.metric == "grpo_reward":
        g = recipe.grpo
        prompts = g.per_device_train_batch_size * g.gradient_accumulation_steps // g.num_generations
        n = g.max_steps * prompts
        row.update(n=n, source=f"stage 04: {g.max_steps} steps x {prompts} prompt{'s' * (prompts != 1)}")
        se = math.sqrt(2 * REWARD_SD ** 2 / n)
    elif stage05:
        n, src, per = _stage05(c, recipe, have)
        row.update(n=n, source=src, per_benchmark=per)
        if c.test == "noninferiority" and n:
            se = math.sqrt(PSI / n)
    else:
        u, v, src = _pairs(c, recipe, have)
        row.update(n=u + v, source=src, n_unsafe=u, n_safe=v)
        if u and v:
            se = (math.sqrt((u + v + 1) / (12 * u * v)) if c.arms[1] == CHANCE and kind == "auroc"
                  else balanced_accuracy_se(u, v, PSI))
    if missing or not row["n"]:
        row.update(n=0, why="; ".join(missing) or row["source"])
        return row
    if c.test == "mcnemar":
        row["mde"] = min_detectable_effect(row["n"], PSI, POWER, ALPHA)
    elif se is not None:
        mde = normal_mde(se, POWER, ALPHA)
        row["mde"] = mde if mde < 1 else None  # no difference of a [0, 1] statistic is detectable then
    row["enough"] = row["mde"] is not None and row["mde"] <= effect + 1e-12
    return row


def power_plan(recipe: Recipe, have: Callable[[str], bool] = available) -> list[dict[str, Any]]:
    """The plan for every claim in `claims.CLAIMS` (see `plan_row`); `have(name)` says whether a benchmark
    or human-labelled set is on this machine (default: `available`)."""
    return [plan_row(c, recipe, have) for c in CLAIMS]


def format_power_plan(rows: list[dict[str, Any]]) -> str:
    """A short text table: claim, test, n, MDE, stated effect, enough, where n comes from (or why none)."""
    out = [f"power plan ({POWER:.0%} power; MDE = smallest effect detectable; for 'keeps' claims the margin shown)",
           f"  {'claim':<6}{'test':<16}{'n':>6}{'MDE':>8}{'stated':>8}  {'enough':<7}n from"]
    for r in rows:
        mde = "-" if r.get("mde") is None else f"{r['mde']:.3f}"
        enough = "yes" if r.get("enough") else "no"
        out.append(f"  {r['id']:<6}{r['test']:<16}{r['n']:>6}{mde:>8}{r['effect']:>8.2f}  {enough:<7}"
                   f"{r.get('why') or r.get('source', '')}")
    ok = sum(bool(r.get("enough")) for r in rows)
    out.append(textwrap.fill(f"{ok} of {len(rows)} claims have n for their stated effect. Assumptions: {ASSUMPTIONS}.",
                             width=110, initial_indent="  ", subsequent_indent="  "))
    return "\n".join(out)


def write_power_plan(run: Run, have: Callable[[str], bool] = available) -> list[dict[str, Any]]:
    """Compute the run's plan and write it to `<run>/power_plan.json` (atomically); returns the rows."""
    rows = power_plan(run.recipe, have)
    atomic_write_json(Path(run.path) / PLAN_FILE, {"recipe": run.recipe.source, "assumptions": ASSUMPTIONS,
                                                   "power": POWER, "alpha": ALPHA, "rows": rows})
    return rows
