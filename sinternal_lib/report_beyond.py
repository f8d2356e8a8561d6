"""Stage 06's results as tables: the report card's "Beyond the paper" section and notebook 06's DataFrames.

Rendered from the `self_verification` section of metrics.json (never parsed back). Two results, each with
its 95% intervals: the self-guard (ASR and look-alike compliance per checkpoint and policy, with cost, and
the paired tests that say where the self-guard is no better than the judge as external guard), and spec
sensitivity (does each verifier's verdict follow an edited spec; SInternal against the base model and the
verdict-only ablation). Light: pandas only inside the DataFrame helpers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import jsonl
from .report_claims import table_cell

NOT_RUN = ("*Stage `06_self_verification` has not run in this run, so neither result was measured: run "
           "notebook 06 (`--only 06`).*")
LEFT_OUT = ("*This recipe leaves stage `06_self_verification` out (`run.stages`: its CPU budget), so neither result "
            "was measured here. The study measures both (`make study-beyond`, after `make study`; README, \"The "
            "study\"); on this run, `--only 06` adds them.*")


def _r(v: dict | None) -> str:
    """'0.25 [0.09, 0.53] n=12', or '-'."""
    if not v or v.get("rate") is None:
        return "-"
    return f"{v['rate']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}] n={v['n']}"


def _d(diff: float | None, ci: Any) -> str:
    if diff is None:
        return "n/a"
    return f"{diff:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci and ci[0] is not None else "")


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def follows(s: dict) -> str:
    """The reading of a sensitivity dict: its interval above 0, or not, or nothing to measure."""
    ci = s.get("ci95")
    if not ci:
        return "not measurable (no pair starts where the edit would flip it)"
    return "follows the edit" if ci[0] > 0 else "no sign it follows the edit (ignores the spec at this n)"


# ----------------------------------------------------------------------------- rows
def guard_rows(section: dict) -> list[dict[str, Any]]:
    """One row per checkpoint x policy: ASR, look-alike compliance, guard refusals and cost per prompt."""
    out = []
    for ck, pols in ((section.get("guard") or {}).get("checkpoints") or {}).items():
        for pol, m in pols.items():
            out.append({"checkpoint": ck, "policy": pol, "ASR (harmful + jailbreak)": _r(m["asr"]),
                        **{f"ASR {b}": _r(v) for b, v in (m.get("asr_by_benchmark") or {}).items()},
                        "compliance (look-alikes)": _r(m["compliance"]), "guard refusals": _r(m["guard_refusals"]),
                        "tokens / prompt": round(m["tokens_per_prompt"], 1),
                        "drafts / prompt": round(m["attempts_per_prompt"], 2),
                        "wall s / prompt": round(m["wall_s_per_prompt"], 2)})
    return out


def comparison_rows(section: dict, question: str | None = None) -> list[dict[str, Any]]:
    """The paired self-guard tests (b - a on the same prompts), optionally one question only."""
    return [{"question": c["question"], "a": c["a"], "b": c["b"], "metric": c["metric"], "n": c["n"],
             "a rate": round(c["rate_a"], 2), "b rate": round(c["rate_b"], 2), "b - a [95% CI]": _d(c["diff"], c["ci95"]),
             "p (McNemar)": _p(c["p_value"]), "p (Holm)": _p(c.get("p_holm")), "verdict": c["verdict"]}
            for c in (section.get("guard") or {}).get("comparisons") or []
            if question is None or c["question"] == question]


def spec_rows(section: dict) -> list[dict[str, Any]]:
    """One row per model x verdict source: pooled spec sensitivity and each edit's, with the reading."""
    out = []
    for model, srcs in ((section.get("spec_swap") or {}).get("models") or {}).items():
        for src, m in srcs.items():
            p = m["pooled"]
            row = {"model": model, "verdicts": src, "spec sensitivity [95% CI]": _d(p["diff"], p["ci95"]),
                   "flips where the edit applies": _r(p["edited"]), "same flip elsewhere": _r(p["other"])}
            for name, e in m["edits"].items():
                row[f"{name}: sensitivity"] = _d(e["diff"], e["ci95"])
            row["no verdict (shipped spec)"] = round(m["no_verdict_rate"], 2) if m["no_verdict_rate"] is not None else "-"
            row["reading"] = follows(p)
            out.append(row)
    return out


def spec_comparison_rows(section: dict) -> list[dict[str, Any]]:
    """SInternal's pooled sensitivity against each other model (paired bootstrap over pairs, Holm)."""
    return [{"a": c["a"], "b": c["b"], "verdicts": c["source"], "n pairs": c["n"],
             "b - a [95% CI]": _d(c["diff"], c["ci95"]), "p (bootstrap)": _p(c["p_value"]),
             "p (Holm)": _p(c.get("p_holm"))}
            for c in (section.get("spec_swap") or {}).get("comparisons") or []]


def category_rows(section: dict, model: str, source: str = "forced_choice") -> list[dict[str, Any]]:
    """Per edit and category: the flip rate where the edit applies, the unchanged rate elsewhere."""
    m = (((section.get("spec_swap") or {}).get("models") or {}).get(model) or {}).get(source) or {}
    return [{"edit": name, "category": c["category"], "edit applies": c["affected"], "pairs": c["n"],
             "measure": c["measure"], "rate [95% CI]": _r(c)}
            for name, e in (m.get("edits") or {}).items() for c in e["per_category"]]


def example_rows(stage_dir: Any, checkpoint: str = "sft/sinternal", benchmark: str = "embedded_harmful",
                 k: int = 10, show_unsafe: bool = False) -> list[dict[str, Any]]:
    """The first `k` guarded answers of one checkpoint on one benchmark, every policy, answers the judge
    called unsafe redacted unless `show_unsafe`."""
    from .report import redact  # here, not at the top: report imports this module (an import cycle)

    path = Path(stage_dir) / "guarded.jsonl"
    rows = [r for r in (jsonl.read_resumable(path, repair=False) if path.is_file() else [])
            if r.get("checkpoint") == checkpoint and r.get("benchmark") == benchmark]
    return [{"policy": r["policy"], "prompt": r["prompt"][:80], "drafts": r["attempts"],
             "guard refused": r["guard_refused"], "judge": r.get("judge_label"),
             "answer": redact(r["answer"], r.get("judge_label"), show_unsafe)[:160]} for r in rows[:k]]


def frame(rows: list[dict[str, Any]]) -> Any:
    """rows as a pandas DataFrame (a notebook's table)."""
    import pandas as pd  # here: only notebooks ask for a DataFrame

    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the report card section
def _md(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    cols = list(rows[0])
    return (["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            + ["| " + " | ".join(table_cell(str(r.get(c, ""))) for c in cols) + " |" for r in rows] + [""])


def beyond_paper_section(metrics: dict, stages: list[str] | None = None) -> list[str]:
    """Markdown lines: "## Beyond the paper" with both results and their intervals, or a plain note when
    stage 06 has not run (saying so when the recipe's `stages` leave it out)."""
    sv = metrics.get("self_verification")
    lines = ["## Beyond the paper (stage 06; not a claim of the paper)", ""]
    if not sv:
        left_out = stages is not None and "self_verification" not in stages
        return lines + [LEFT_OUT if left_out else NOT_RUN, ""]
    g = sv.get("guard") or {}
    lines += ["### The trained model as its own guard", "",
              "ASR on harmful + jailbreak prompts and compliance on benign look-alikes (judged), rate [95% Wilson CI] n, "
              "with the cost per prompt (answer tokens of every draft plus verifier tokens; wall time shared across a batch).", ""]
    lines += _md(guard_rows(sv)) or ["*No checkpoint was guarded (none found, or no policy configured).*", ""]
    if g.get("external_guard_prompt_label") and g.get("judge") == "matcher":
        lines += ["*The external guard is the offline matcher told each prompt's label: it knows which prompts are "
                  "harmful (an oracle), and the same judge scores what it guarded, so its ASR is low by construction.*", ""]
    versus = comparison_rows(sv, "self vs external guard")
    if versus:
        lines += ["Self-guard (b) against the external guard (a) in the same loop, paired on the same prompts "
                  "(exact McNemar, Holm over every stage-06 guard test):", ""] + _md(versus)
        no_better = [c for c in versus if c["verdict"] != "b better"]
        worse = [f"`{c['b']}` ({c['metric']})" for c in versus if c["verdict"] == "b worse"]
        lines += [f"The self-guard is no better than the external guard in {len(no_better)} of {len(versus)} tests"
                  + (f", and worse in: {', '.join(worse)}" if worse else "") + ".", ""]
    lead = comparison_rows(sv, "SInternal self-guard vs other checkpoint")
    if lead:
        lines += ["SInternal's self-guard (b) against the other checkpoints' (a):", ""] + _md(lead)
    ss = sv.get("spec_swap") or {}
    lines += ["### Does the verifier follow a swapped spec?", ""]
    if not ss:
        return lines + ["*Not measured: no spec variant or no spec checkpoint was found.*", ""]
    lines += ["Edits: " + "; ".join(f"`{e['name']}` ({e['kind']} {e['category']}: {e['flip']} on {e['n_affected']} "
                                     f"of {ss['n_pairs']} pairs)" for e in ss.get("edits") or []) + ".",
              "Spec sensitivity = share of pairs the edit applies to whose verdict flips as the edit asks, minus the "
              "same flip on pairs it does not apply to (0: the verdict ignores the spec); Newcombe 95% CI.", ""]
    lines += _md(spec_rows(sv))
    comp = spec_comparison_rows(sv)
    if comp:
        lines += ["SInternal (b) against the base model and the verdict-only ablation (a), paired bootstrap over pairs:", ""]
        lines += _md(comp)
    return lines
