"""The report card's claims section: the table of `claims.assess` rows, the "what this run can and
cannot say" paragraph, one forest plot per claim family, the judge's ceiling and the power plan.

Split from report.py (the rest of the card). The forest plots put every difference on one axis, signed
so that right of zero is the direction the paper claims, with its 95% CI; a dashed line marks a
non-inferiority margin. Colour and fill follow the verdict."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .claims import CANNOT_TEST, CLAIMS, CONTRADICTED, INCONCLUSIVE, METRICS, SUPPORTED, VERDICTS, assess
from .power_plan import PLAN_FILE, format_power_plan
from .recipe_sections import REPO_ROOT
from .runs import Run

JUDGE_AGREEMENT = REPO_ROOT / "benchmarks" / "results" / "judge_agreement.json"
VERDICT_COLOURS = {SUPPORTED: "#55A868", CONTRADICTED: "#C44E52", INCONCLUSIVE: "#8C8C8C", CANNOT_TEST: "#CCCCCC"}


def table_cell(text: str | None) -> str:
    """Text fit for one markdown table cell: one line, no pipes."""
    return " ".join((text or "").split()).replace("|", "/") or "(empty)"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def claim_forests(rows: list[dict[str, Any]], out_dir: str | Path | None = None) -> dict[str, Any]:
    """One forest plot per claim family (`section` of the rows): each tested claim's difference and 95% CI,
    signed so that positive is the paper's direction. Rates in percentage points, balanced accuracy,
    AUROC and reward x100 (points of 100). Untested claims are listed by name with their reason. Saved as
    <out_dir>/claims_<family>.png when `out_dir` is given."""
    from .plots import new_figure, save_figure  # here: matplotlib takes a second, and the report imports this module
    direction = {c.id: (1 if c.direction == "higher" else -1) for c in CLAIMS}
    margin = {c.id: c.margin for c in CLAIMS}
    families: dict[str, list[dict]] = {}
    for r in rows:
        families.setdefault(r["section"], []).append(r)
    out = {}
    for fam, rs in families.items():
        fig, ax = new_figure(7.5, 0.5 * len(rs) + 1.4)
        for y, r in enumerate(reversed(rs)):
            colour = VERDICT_COLOURS[r["verdict"]]
            if r.get("ci95") is None or r.get("diff") is None:
                ax.text(0, y, f"{r['verdict']}: {(r.get('untested') or r.get('reason') or '')[:60]}", ha="center",
                        va="center", fontsize=7, color="#555555")
                continue
            sgn = direction.get(r["id"], 1)
            d, (lo, hi) = sgn * r["diff"] * 100, sorted(sgn * x * 100 for x in r["ci95"])
            ax.errorbar(d, y, xerr=[[d - lo], [hi - d]], fmt="o", color=colour, capsize=3,
                        mfc=colour if r["verdict"] in (SUPPORTED, CONTRADICTED) else "white", ms=6)
            if margin.get(r["id"]):
                ax.plot([-margin[r["id"]] * 100] * 2, [y - 0.35, y + 0.35], ls="--", color="#555555", lw=1)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(rs)), [f"({r['id']}) {r['arms'][1]} vs {r['arms'][0]}, n={r['n']}" for r in reversed(rs)],
                      fontsize=7)
        ax.set_ylim(-0.6, len(rs) - 0.4)
        ax.set_xlabel("difference x100, in the paper's direction (pp for rates); dashed: non-inferiority margin")
        ax.set_title(f"{fam}: " + ", ".join(f"({r['id']}) {r['verdict']}" for r in rs), fontsize=8)
        save_figure(fig, out_dir, "claims", _slug(fam))
        out[fam] = fig
    return out


def claim_cells(row: dict) -> dict[str, str]:
    """Display cells of one `claims.assess` row: this run (both arms), difference [95% CI], power.
    Rates show in % with differences in points; balanced accuracy, AUROC and reward as raw values."""
    if row.get("rate_a") is None:
        return {"this_run": "-", "difference": "-", "power": "-"}
    rate = METRICS[row["metric"]][1] == "binary"
    k, digits, unit = (100, 1, " pp") if rate else (1, 3, "")

    def val(v: float | None) -> str:
        return "n/a" if v is None or math.isnan(v) else f"{v * k:.{digits}f}{'%' if rate else ''}"

    lo, hi = row["ci95"] or (None, None)
    ci = f" [{lo * k:+.{digits}f}, {hi * k:+.{digits}f}]" if lo is not None else ""
    power = "n/a" if row["power"] is None or math.isnan(row["power"]) else f"{row['power']:.2f}"
    a, b = row["arms"]
    return {"this_run": f"{a} {val(row['rate_a'])} -> {b} {val(row['rate_b'])}",
            "difference": f"{row['diff'] * k:+.{digits}f}{unit}{ci}", "power": f"{power} (effect {row['effect']})"}


def claims_table(rows: list[dict]) -> Any:
    """The claims table as a DataFrame (one row per claim): the cells of the report's table."""
    import pandas as pd  # here: only notebooks ask for a DataFrame

    return pd.DataFrame([{"claim": f"({r['id']}) {r['claim']}", "paper": r["paper"], **claim_cells(r), "n": r["n"],
                          "verdict": r["verdict"]} for r in rows]).set_index("claim")


def claims_summary(rows: list[dict]) -> str:
    """'What this run can and cannot say', generated from `claims.assess` rows."""
    by = {v: [r for r in rows if r["verdict"] == v] for v in VERDICTS}
    ids = lambda rs: ", ".join(r["id"] for r in rs)  # noqa: E731
    out = [f"Of {len(rows)} claims, this run supports {len(by[SUPPORTED])}"
           + (f" ({ids(by[SUPPORTED])})" if by[SUPPORTED] else "")
           + f", contradicts {len(by[CONTRADICTED])}"
           + (f" ({ids(by[CONTRADICTED])})" if by[CONTRADICTED] else "")
           + f", leaves {len(by[INCONCLUSIVE])} inconclusive and cannot test {len(by[CANNOT_TEST])}."]
    inc = by[INCONCLUSIVE]
    if inc:
        pw = [r["power"] for r in inc if r["power"] is not None and not math.isnan(r["power"])]
        low = [r for r in inc if r["power"] is not None and r["power"] < 0.8]
        out.append(f"The inconclusive ones ({ids(inc)}) had power "
                   + (f"{min(pw):.2f}" + (f"-{max(pw):.2f}" if max(pw) > min(pw) else "") if pw else "unknown")
                   + " to detect the stated effect"
                   + (f"; for {ids(low)} (below 0.8) a null result says little: it needs more items, not a "
                      "different reading" if low else "") + ".")
        mde = [f"{r['id']} {r['mde'] * 100:.0f} pp" if METRICS[r["metric"]][1] == "binary"
               else f"{r['id']} {r['mde']:.2f}" for r in inc if r.get("mde")]
        if mde:
            out.append("At this n, the smallest difference detectable with 80% power is: " + ", ".join(mde) + ".")
        below = _rules_out_stated_effect(inc)
        if below:
            out.append(f"For {ids(below)} the 95% interval lies wholly short of the stated effect in the paper's "
                       "direction: here the effect is smaller than the paper's, if it exists at all.")
    groups: dict[str, list[dict]] = {}
    for r in by[CANNOT_TEST]:
        groups.setdefault(r.get("untested") or "untested", []).append(r)
    if groups:
        out.append("Not testable here: " + "; ".join(f"{ids(rs)} ({why})" for why, rs in groups.items()) + ".")
    out.append("Verdicts come from paired tests on the same items with Holm's correction over every tested "
               "claim (alpha 0.05); the CI column is unadjusted, and 'keeps' claims are non-inferiority tests "
               "against the margin in their reason.")
    return " ".join(out)


def _rules_out_stated_effect(rows: list[dict]) -> list[dict]:
    """Superiority claims whose unadjusted 95% interval, signed in the paper's direction, ends below the
    stated effect (non-inferiority claims have a margin instead, and say so in their reason)."""
    sign = {c.id: (1 if c.direction == "higher" else -1) for c in CLAIMS if c.test != "noninferiority"}
    out = []
    for r in rows:
        if r["id"] in sign and r.get("ci95") and r.get("effect") is not None:
            if max(sign[r["id"]] * x for x in r["ci95"]) < r["effect"]:
                out.append(r)
    return out


def claims_section(run: Run, metrics: dict) -> list[str]:
    """The report's claims section: table, what the run can and cannot say, reasons, one forest plot per
    claim family (saved under the run's figures/ folder), the judge's ceiling and the power plan."""
    rows = assess(run.path, metrics)
    lines = ["## What this run supports", "",
             "Each claim compares two checkpoints on the same items (exact McNemar for rates, a paired "
             "bootstrap for balanced accuracy, AUROC and reward, non-inferiority with a stated margin for "
             "'keeps' claims). Power is that of detecting the stated effect with this n.", "",
             "| claim | paper | this run | difference [95% CI] | n | power | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        c = claim_cells(r)
        lines.append(f"| ({r['id']}) {r['claim']} | {r['paper']} | {c['this_run']} | {c['difference']} | "
                     f"{r['n']} | {c['power']} | **{r['verdict']}** |")
    lines += ["", "**What this run can and cannot say.** " + claims_summary(rows), "", "Reasons:", ""]
    lines += [f"- ({r['id']}) {r['verdict']}: {table_cell(r['reason'])}" for r in rows]
    figs = [run.path / "figures" / f"claims_{_slug(fam)}.png" for fam in claim_forests(rows, run.path / "figures")]
    if figs:
        lines += ["", "Differences with 95% CIs, one figure per claim family (right of zero = the paper's "
                  "direction; filled = significant after Holm):", ""]
        lines += [f"![{p.stem}]({p.relative_to(run.path).as_posix()})" for p in figs]
    lines += ["", *judge_ceiling(run.recipe.judge.backend)]
    plan = run.path / PLAN_FILE  # written by the runner before any stage ran (power_plan.py)
    if plan.is_file():  # an indented block: a code block in markdown and in the HTML copy alike
        table = format_power_plan(json.loads(plan.read_text(encoding="utf-8")).get("rows") or [])
        lines += ["", "**Power plan** (made when the run started: the n the recipe gives each claim and the "
                  "smallest effect it can detect):", ""] + ["    " + x for x in table.splitlines()]
    return lines + [""]


def judge_ceiling(backend: str, path: Path = JUDGE_AGREEMENT) -> list[str]:
    """What the judge behind every rate can know: its measured agreement with human labels, by task, and
    what that caps (a verifier trained on its labels learns its rule at best)."""
    ja = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    sets = ja.get("sets") or {}
    def fig(name: str) -> str:
        v = sets.get(name) or {}
        return f"accuracy {v['accuracy']:.2f}, kappa {v['kappa']:.2f}, n = {v['n']}" if v else "not measured"
    text = (f"**The judge's ceiling.** Every ASR, compliance rate and training label in this run comes from the "
            f"`{backend}` judge.")
    if backend == "matcher":
        text += (f" Against human labels it detects refusals (held-out XSTest answers: "
                 f"{fig('xstest_held_out')}) but not harm (PKU-SafeRLHF answers: {fig('pku_saferlhf')}), "
                 "so an ASR here is a non-refusal rate, and a verifier trained on its labels can at best learn "
                 "its rule (\"a refusal to a harmful prompt is safe\"). Compare the trained verifiers with "
                 "the prompt-only rule on the human-labelled pairs (stage 03) before reading (b) as understanding.")
    else:
        text += f" Its measured agreement is in `benchmarks/results/judge_agreement.json` ({ja.get('judge') or 'none'})."
    return [text]


