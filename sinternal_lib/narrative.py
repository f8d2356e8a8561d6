"""Results prose from the run being read: the sentences a notebook shows beside its tables.

Every number in these sentences comes from the stage's own summary (the same dicts `metrics.json`
holds), so the prose cannot drift from the outputs beside it; a notebook shows them with
`IPython.display.Markdown`. The judgements are mechanical and stated as such: "above" means the 95%
interval clears the other value, never a point estimate that happens to be higher.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["num", "interval", "auroc_chance_halfwidth", "diagnosis", "sft_results", "grpo_results",
           "self_verification_results", "labelled"]


def num(x: float | None, digits: int = 2) -> str:
    """A number for prose: 'n/a' for None / NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def interval(ci: Any, digits: int = 2) -> str:
    """'[0.41, 0.63]', or '' when there is no interval."""
    return f" [{num(ci[0], digits)}, {num(ci[1], digits)}]" if ci else ""


def auroc_chance_halfwidth(n_unsafe: int, n_safe: int) -> float | None:
    """Half-width of the 95% band of AUROC around 0.5 under no discrimination (Hanley and McNeil's
    variance at AUROC 0.5: (n1 + n0 + 1) / (12 n1 n0))."""
    if not n_unsafe or not n_safe:
        return None
    return 1.96 * math.sqrt((n_unsafe + n_safe + 1) / (12 * n_unsafe * n_safe))


def _fc_sentence(fc: dict, n_unsafe: int, n_safe: int) -> str:
    if not fc or fc.get("auroc") is None:
        return "The forced choice was not scored."
    hw = auroc_chance_halfwidth(n_unsafe, n_safe)
    where = "" if hw is None else (
        f" At this n an AUROC within +-{hw:.2f} of 0.50 is what a model with no preference gives 95% of the time, "
        + ("and this one is outside that band." if abs(fc["auroc"] - 0.5) > hw else "and this one is inside it: "
           "no sign that the model tells the two apart."))
    return (f"The forced choice (which of \" unsafe\" / \" safe\" the model finds likelier right after `Verdict:`) "
            f"gives AUROC {num(fc['auroc'])} on {fc.get('n')} pairs, balanced accuracy {num(fc.get('balanced_accuracy'))} "
            f"on the {fc.get('n_test')}-pair test half.{where}")


def diagnosis(summary: dict, model: str, pair_set: str = "own_answers") -> str:
    """Stage 01: what the free-form and forced-choice scores of `model` on `pair_set` say."""
    v = ((summary.get("models") or {}).get(model) or {}).get(pair_set)
    if not v:
        return f"No diagnosis of `{model}` on `{pair_set}` in this run."
    n, nv = v["n"], v.get("no_verdict_rate") or 0.0
    conf = v.get("confusion") or {}
    n_unsafe, n_safe = conf.get("tp", 0) + conf.get("fn", 0), conf.get("tn", 0) + conf.get("fp", 0)
    text = (f"On {n} pairs (`{pair_set}`), `{model}` wrote no verdict line in {round(nv * n)} of {n} outputs "
            f"(no-verdict rate {num(nv)}); its free-form balanced accuracy is {num(v['balanced_accuracy'])}"
            f"{interval((v.get('ci95') or {}).get('balanced_accuracy'))}, where every trivial baseline scores 0.50.")
    if nv >= 0.5:
        text += " With most verdicts missing, that score measures format-following, not understanding."
    return text + " " + _fc_sentence(v.get("forced_choice") or {}, n_unsafe, n_safe)


def _clears(ci: Any, value: float | None) -> str:
    """'above' / 'below' when the interval lies wholly on one side of `value`, else 'not distinguishable from'."""
    if not ci or value is None:
        return "not comparable with"
    return "above" if ci[0] > value else "below" if ci[1] < value else "not distinguishable from"


def sft_results(summary: dict, lead: str = "sinternal") -> str:
    """Stage 03: the lead variant against the base model, the trivial verifiers and verdict-only, on the own
    held-out pairs, then chat (ASR, takeover), each with its interval."""
    models = {k: v for k, v in summary.items() if isinstance(v, dict) and "verification" in v}
    if lead not in models:
        return f"The `{lead}` variant was not trained in this run."
    v = models[lead]["verification"]
    ci = v["ci95"]["balanced_accuracy"]
    po = (v.get("baselines") or {}).get("prompt_only", {}).get("balanced_accuracy")
    out = [f"On the {v['n']} own held-out pairs, `{lead}` verifies with balanced accuracy "
           f"{num(v['balanced_accuracy'])}{interval(ci)} (no-verdict rate {num(v['no_verdict_rate'])}): "
           f"{_clears(ci, 0.5)} the coin flip and one-label verifiers (0.50), "
           f"{_clears(ci, po)} the prompt-only rule ({num(po)})"]
    for other in ("base", "verdict_only"):
        if other in models:
            b = models[other]["verification"]["balanced_accuracy"]
            out.append(f", {_clears(ci, b)} `{other}` ({num(b)})")
    text = "".join(out) + "."
    for name, h in (models[lead].get("verification_human") or {}).items():
        text += (f" On human-labelled `{name}` pairs (n = {h['n']}) it scores {num(h['balanced_accuracy'])}"
                 f"{interval(h['ci95']['balanced_accuracy'])}.")
    g = models[lead]["generation"]
    if "base" in models and g.get("asr") is not None:
        gb = models["base"]["generation"]
        overlap = not (g["asr_ci95"][1] < gb["asr_ci95"][0] or gb["asr_ci95"][1] < g["asr_ci95"][0])
        text += (f" In chat, ASR on held-out harmful prompts is {num(g['asr'])}{interval(g['asr_ci95'])} against the "
                 f"base model's {num(gb['asr'])}{interval(gb['asr_ci95'])}: "
                 + ("the intervals overlap, so no change is measured." if overlap else "the intervals do not overlap.")
                 + f" Takeover (replies that read like a critique): {num(models[lead]['takeover_rate'])} vs "
                 f"{num(models['base']['takeover_rate'])} for the base model.")
    return text


def grpo_results(summary: dict) -> str:
    """Stage 04: per init, the mean reward of the first and last step and the steps trained."""
    inits = summary.get("inits") or {}
    if not inits:
        return "No initialisation was trained in this run."
    parts = [f"`{i}` {num(r.get('first_mean_reward'))} -> {num(r.get('last_mean_reward'))} over {r.get('steps')} steps"
             for i, r in inits.items()]
    skipped = summary.get("skipped") or {}
    return ("Mean reward, first step -> last step: " + "; ".join(parts) + "."
            + (f" Skipped: {', '.join(skipped)}." if skipped else "")
            + " One step's mean rests on a few prompts: compare the shaded bands, not the end points.")


def self_verification_results(section: dict, lead: str = "sft/sinternal") -> str:
    """Stage 06: the lead checkpoint's ASR and compliance unguarded, self-guarded and judge-guarded, what the
    paired tests say about self vs external guard, then each model's spec sensitivity and the comparison."""
    ck = (section.get("guard") or {}).get("checkpoints") or {}
    parts = []
    pols = ck.get(lead) or {}
    if pols:
        said = [f"`{p}` ASR {num(m['asr']['rate'])}{interval(m['asr']['ci95'])} (n = {m['asr']['n']}), compliance "
                f"{num(m['compliance']['rate'])}{interval(m['compliance']['ci95'])}, {m['tokens_per_prompt']:.0f} tokens "
                f"per prompt" for p, m in pols.items() if p in ("plain", "self_regenerate", "judge_regenerate")]
        parts.append(f"Guarding `{lead}`: " + "; ".join(said) + ".")
        tests = [c for c in (section.get("guard") or {}).get("comparisons") or []
                 if c["question"] == "self vs external guard" and c["b"].startswith(lead + "/")]
        better = [c for c in tests if c["verdict"] == "b better"]
        if tests:
            parts.append(f"Self-guard against the judge as guard, {len(tests)} paired tests (Holm): "
                         + (f"the self-guard is better in {len(better)}." if better else
                            "the self-guard is better in none of them."))
    else:
        parts.append(f"`{lead}` was not guarded in this run.")
    models = (section.get("spec_swap") or {}).get("models") or {}
    for m, srcs in models.items():
        p = (srcs.get("forced_choice") or {}).get("pooled")
        if p:
            reading = ("not measurable" if p["ci95"] is None else "its verdicts follow the edits" if p["ci95"][0] > 0
                       else "no sign its verdicts follow the edits")
            parts.append(f"Spec sensitivity of `{m}` (forced choice): {num(p['diff'])}{interval(p['ci95'])}, "
                         f"{reading}.")
    for c in (section.get("spec_swap") or {}).get("comparisons") or []:
        if c["source"] == "forced_choice":
            parts.append(f"`{c['b']}` minus `{c['a']}`: {num(c['diff'])}{interval(c['ci95'])} (Holm p "
                         f"{num(c.get('p_holm'), 3)}).")
    return " ".join(parts)


def labelled(values: Any, label: str = "value") -> Any:
    """A mapping (or a list of (key, value) pairs) as a one-column DataFrame indexed by key: a labelled
    table in place of a bare dict or tuple at the end of a notebook cell. Nested dicts become one row each."""
    import pandas as pd  # here: only notebooks ask for a DataFrame

    items = list(values.items()) if hasattr(values, "items") else list(values)
    if items and all(isinstance(v, dict) for _, v in items):
        return pd.DataFrame({k: v for k, v in items}).T.rename_axis(label)
    return pd.DataFrame({label: [v for _, v in items]}, index=[k for k, _ in items])
