"""The report card: `runs/<run>/report.md` (and an HTML copy) rendered from env.json + metrics.json.

Rendered from JSON (and, for the claims, the per-item files the stages wrote), never parsed back. A
run with missing stages still renders: each absent section says plainly that the stage has not run or
is not built yet. Sections: provenance, headline, the
paper's claims with a verdict each (`claims.assess`: paired tests), per-stage metrics, the main and
ablation tables with the paper's numbers beside them (data/paper_numbers.yaml, secondary summaries),
figures, and a few example generations. Example text the judge labelled unsafe is redacted unless
`show_unsafe` (or recipe.evaluate.show_unsafe) is set.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import yaml

from . import jsonl
from .report_beyond import beyond_paper_section
from .report_claims import JUDGE_AGREEMENT, claims_section, table_cell
from .recipe_sections import REPO_ROOT
from .runs import Run, atomic_write_text
from .stages import STAGES
from .views import diagnosis_table

PAPER_NUMBERS = REPO_ROOT / "data" / "paper_numbers.yaml"
COLUMN_ORDER = ("embedded_harmful", "strongreject", "harmbench", "jbb", "advbench", "xstest_unsafe",
                "embedded_jailbreak", "jbb_artifacts", "embedded_benign", "xstest", "gsm8k", "math500",
                "aime2024", "embedded_math", "verification", "proactive")
ABLATIONS = ("sft/sinternal", "sft/verdict_only", "sft/critique_only", "sft/other_exp", "sft/sinternal_refusal_mix")
EXAMPLE_CHARS = 400


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)[:120]
    return str(v)


def fmt_rate(v: dict | None) -> str:
    """'12.5% [4.1, 30.2] n=24' from a result dict; '-' when absent."""
    if not v or v.get("rate") is None:
        return "-"
    lo, hi = v.get("ci95") or [None, None]
    ci = f" [{lo * 100:.1f}, {hi * 100:.1f}]" if lo is not None else ""
    return f"{v['rate'] * 100:.1f}%{ci} n={v.get('n', '?')}"


def redact(text: str | None, label: str | None, show_unsafe: bool = False) -> str:
    """`text` unchanged unless the judge called it unsafe and `show_unsafe` is False."""
    text = text or ""
    if label == "unsafe" and not show_unsafe:
        return f"[redacted: unsafe completion, {len(text)} chars]"
    return text


# ----------------------------------------------------------------------------- tables
def eval_columns(eval_section: dict) -> list[str]:
    """Result columns present in the eval section, in a fixed reading order (takeover columns dropped)."""
    ckpts = (eval_section or {}).get("checkpoints") or {}
    present = {k for r in ckpts.values() for k in r if ":" not in k}
    return [c for c in COLUMN_ORDER if c in present] + sorted(present - set(COLUMN_ORDER))


def eval_table(eval_section: dict, checkpoints: list[str] | None = None) -> Any:
    """pandas.DataFrame: rows = checkpoints, columns = '<benchmark> (<metric>)', cells 'rate% [CI] n'."""
    import pandas as pd  # here, not at the top: only when a table is built (the CLI imports this module)

    ckpts = (eval_section or {}).get("checkpoints") or {}
    names = [c for c in (checkpoints or list(ckpts)) if c in ckpts]
    cols = eval_columns(eval_section)
    metric = {c: next((r[c].get("metric") for r in ckpts.values() if isinstance(r.get(c), dict)), "") for c in cols}
    data = {f"{c} ({metric[c]})": [fmt_rate(ckpts[n].get(c)) for n in names] for c in cols}
    return pd.DataFrame(data, index=pd.Index(names, name="checkpoint"))


def _md_table(df: Any) -> list[str]:
    if df is None or df.empty:
        return []
    head = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(x) for x in row.tolist()]) + " |")
    return lines + [""]


def load_paper_numbers(path: str | Path = PAPER_NUMBERS) -> dict:
    """The paper's reference numbers (secondary summaries) from data/paper_numbers.yaml; {} if absent."""
    p = Path(path)
    return yaml.safe_load(p.read_text(encoding="utf-8")) if p.is_file() else {}


def paper_side_by_side(eval_section: dict, paper: dict, table: str = "main_table") -> Any:
    """DataFrame: each paper row with the paper's value and this run's value per mapped column."""
    import pandas as pd

    ckpts = (eval_section or {}).get("checkpoints") or {}
    cols = paper.get("columns", {})
    rows = []
    for prow in paper.get(table, []):
        ours = ckpts.get(prow.get("maps_to") or "", {})
        row = {"paper config": prow["config"], "this run": prow.get("maps_to") or "(no counterpart)"}
        for key, meta in cols.items():
            if key not in prow:
                continue
            mine = ours.get(meta.get("maps_to") or "")
            row[f"{meta['label']}: paper"] = f"{prow[key]:.1f}"
            row[f"{meta['label']}: ours"] = fmt_rate(mine) if meta.get("maps_to") else "(not run)"
        rows.append(row)
    return pd.DataFrame(rows).set_index("paper config") if rows else pd.DataFrame()


# ----------------------------------------------------------------------------- examples
def example_rows(gen_path: Path, checkpoints: list[str], benchmark: str = "embedded_harmful", k: int = 2,
                 show_unsafe: bool = False) -> list[dict]:
    """First `k` items of `benchmark` per checkpoint from generations.jsonl, answers redacted when unsafe."""
    if not gen_path.is_file():
        return []
    rows: dict[str, list[dict]] = {c: [] for c in checkpoints}
    for r in jsonl.read_resumable(gen_path, repair=False):  # stage 05 may have been killed mid-append
        c = r.get("checkpoint")
        if c in rows and r.get("benchmark") == benchmark and len(rows[c]) < k:
            rows[c].append({"checkpoint": c, "id": r.get("id"), "prompt": r.get("prompt", "")[:200],
                            "judge": r.get("judge_label"),
                            "answer": redact(r.get("response"), r.get("judge_label"), show_unsafe)[:EXAMPLE_CHARS]})
    return [x for c in checkpoints for x in rows[c]]


# ----------------------------------------------------------------------------- rendering
def _provenance(run: Run, env: dict, metrics: dict, show_unsafe: bool) -> list[str]:
    git, hw, rc = env.get("git", {}), env.get("hardware", {}), run.recipe
    judge = f"`{rc.judge.backend}`" + (f" ({rc.judge.model})" if rc.judge.model else "")
    lines = [
        "## Provenance", "",
        f"- model: `{rc.model.policy}` (dtype {rc.model.dtype}, 4-bit {rc.model.load_in_4bit}); "
        f"recipe: `{Path(env.get('recipe_source', '') or '').name}` (resolved copy: `recipe.yaml`)",
        f"- data: spec `{rc.spec.path}`; embedded prompt sets (data/prompts)",
        f"- judge: {judge}; teacher: `{rc.teacher.backend}`" + (f" ({rc.teacher.model})" if rc.teacher.model else ""),
    ]
    lines += _benchmark_origins(metrics.get("evaluate") or {})
    if JUDGE_AGREEMENT.is_file():
        ja = json.loads(JUDGE_AGREEMENT.read_text(encoding="utf-8"))
        held = {k: v for k, v in (ja.get("sets") or {}).items() if v.get("role") == "held-out"}
        parts = [f"{k} acc {v.get('accuracy', 0):.2f} / kappa {v.get('kappa', 0):.2f} (n={v.get('n')})"
                 for k, v in list(held.items())[:4]]
        lines.append(f"- judge agreement (`benchmarks/results/judge_agreement.json`, judge {ja.get('judge')}, "
                     f"held-out sets): {'; '.join(parts) or 'none recorded'}")
    else:
        lines.append("- judge agreement: not measured (benchmarks/results/judge_agreement.json absent)")
    lines += [
        f"- commit: `{git.get('commit')}`{' (dirty)' if git.get('dirty') else ''}; hardware: "
        f"{hw.get('platform', '?')}, {hw.get('cpus', '?')} CPUs{', GPU ' + hw['gpu'] if hw.get('gpu') else ''}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in env.get('versions', {}).items())}",
        f"- unsafe completions: {'shown' if show_unsafe else 'redacted'}",
        "",
    ]
    return lines


def _benchmark_origins(ev: dict) -> list[str]:
    """Provenance lines: where each evaluated benchmark came from, and each skipped one with its reason."""
    origins = ev.get("origins")
    if not ev:
        return ["- benchmarks: stage 05 has not run"]
    if origins is None:  # a run made before origins were recorded
        return ["- benchmarks: origins not recorded in this run (rerun stage 05 with --force to record them)"]
    lines = [f"- benchmarks evaluated ({len(origins)}): " + "; ".join(f"`{b}` from {o}" for b, o in origins.items())]
    missing = [s for s in ev.get("skipped") or [] if s.get("checkpoint") == "*"]
    if missing:
        lines.append(f"- benchmarks skipped ({len(missing)}): "
                     + "; ".join(f"`{s.get('benchmark')}` ({s.get('reason')})" for s in missing))
    return lines


def _section_md(name: str, values: dict[str, Any] | None) -> list[str]:
    lines = [f"### {STAGES[name].folder}: {STAGES[name].title}" if name in STAGES else f"### {name}", ""]
    if not values:
        return lines + ["*Not run or not built yet: this run has no figures for this stage.*", ""]
    head = values.get("headline")
    flat = {k: v for k, v in values.items() if not isinstance(v, (dict, list))}
    if isinstance(head, dict):
        flat.update({f"headline: {k}": v for k, v in head.items()})
    if flat:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in flat.items()] + [""]
    return lines


def _eval_md(ev: dict, paper: dict) -> list[str]:
    lines = ["### Main table (rate [95% CI] n; ASR lower is better, compliance / accuracy / F1 higher)", ""]
    lines += _md_table(eval_table(ev)) or ["*No checkpoint was evaluated.*", ""]
    abl = [c for c in ABLATIONS if c in (ev.get("checkpoints") or {})]
    lines += ["### Ablation table", ""]
    lines += (_md_table(eval_table(ev, abl)) if abl else []) or [
        "*Not built yet: no verification-SFT variants (sft/sinternal, verdict_only, critique_only, other_exp) were evaluated.*", ""]
    skipped = ev.get("skipped") or []
    if skipped:
        lines += ["### Skipped (not evaluated, with the reason)", ""]
        lines += [f"- `{s.get('checkpoint')}` x `{s.get('benchmark')}`: {s.get('reason')}" for s in skipped] + [""]
    if paper:
        lines += [f"### The paper's numbers side by side (secondary-summary figures; source: {paper.get('source')})", ""]
        lines += _md_table(paper_side_by_side(ev, paper, "main_table"))
        lines += ["Ablations (paper, ASR %):", ""] + _md_table(paper_side_by_side(ev, paper, "ablations"))
        pv = paper.get("proactive_verification") or []
        ck = ev.get("checkpoints") or {}
        lines += ["Proactive verification (paper % vs this run):", ""]
        lines += [f"- {p['config']}: paper {p['rate']:.1f}%; this run `{p['maps_to']}` "
                  f"{fmt_rate((ck.get(p['maps_to']) or {}).get('proactive'))}" for p in pv] + [""]
    return lines


def render_report(run: Run, show_unsafe: bool = False) -> Path:
    """Write report.md and report.html for `run`; return the markdown path."""
    show_unsafe = bool(show_unsafe or getattr(run.recipe.evaluate, "show_unsafe", False))
    env_path = run.path / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    metrics = run.read_metrics()
    lines = [f"# SInternal report card: run `{run.name}`", ""] + _provenance(run, env, metrics, show_unsafe)
    ev = metrics.get("evaluate") or {}
    head = ev.get("headline") if isinstance(ev.get("headline"), dict) else None
    lines += ["## Headline", ""]
    lines += [f"- {k}: {v}" for k, v in head.items()] if head else ["- *Evaluation stage not built or not run yet.*"]
    lines += [""] + claims_section(run, metrics) + beyond_paper_section(metrics, run.recipe.run.stages) + ["## Stages", ""]
    for stage, info in STAGES.items():
        done = run.is_done(stage)
        vals = metrics.get(stage)
        body = _section_md(stage, vals)
        if not done and vals is None:
            body[2] = (f"*Stage `{info.folder}` has not finished in this run (not built yet or not run).*"
                       if stage in run.recipe.run.stages else
                       f"*Stage `{info.folder}` is not in this recipe's `run.stages` (`--only {info.number}` runs it).*")
        lines += body
        if stage == "diagnose" and vals:
            table = diagnosis_table(vals)
            lines += _md_table(table.set_index("model") if not table.empty else table)
        if stage == "evaluate" and vals:
            lines += _eval_md(vals, load_paper_numbers())
    figs = sorted(run.path.glob("*/figures/*.png")) + sorted(  # the claims' forest plots sit in their section
        p for p in run.path.glob("figures/*.png") if not p.name.startswith("claims_"))
    lines += ["## Figures", ""]
    lines += [f"![{p.stem}]({p.relative_to(run.path).as_posix()})" for p in figs] or ["*No figures yet.*"]
    lines += ["", f"## Example generations (embedded_harmful; unsafe answers {'shown' if show_unsafe else 'redacted'})", ""]
    ex = example_rows(run.path / STAGES["evaluate"].folder / "generations.jsonl", list((ev.get("checkpoints") or {})),
                      show_unsafe=show_unsafe)
    if ex:
        lines += ["| checkpoint | prompt | judge | answer |", "|---|---|---|---|"]
        lines += [f"| {e['checkpoint']} | {table_cell(e['prompt'])} | {e['judge']} | {table_cell(e['answer'])} |" for e in ex]
    else:
        lines.append("*No generations recorded yet.*")
    lines.append("")
    timings, attempts = metrics.get("timings", {}), metrics.get("attempts", {})
    if timings:
        lines += ["## Time per stage (all attempts for this config; a killed attempt is timed to its last file)", "",
                  "| stage | seconds | attempts |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {_attempts_cell(attempts.get(k))} |" for k, v in timings.items()] + [""]
    md = "\n".join(lines)
    path = atomic_write_text(run.path / "report.md", md)
    _write_html(run.path / "report.html", md)
    return path


def _attempts_cell(attempts: list[dict] | None) -> str:
    if not attempts:
        return "1 (not recorded)"
    parts = [f"{a.get('wall_s')} s" + ("" if a.get("finished") else " (interrupted, estimated)") for a in attempts]
    return f"{len(attempts)}: " + " + ".join(parts)


def _write_html(path: Path, md: str) -> None:
    try:
        import markdown  # optional package

        body = markdown.markdown(md, extensions=["tables"])
    except ImportError:  # no markdown package: a readable preformatted copy
        body = f"<pre>{html.escape(md)}</pre>"
    atomic_write_text(path, f"<html><meta charset='utf-8'><body>{body}</body></html>")


def headline(run: Run) -> list[str]:
    """A few lines for the terminal: which stages finished and the lead figures."""
    m = run.read_metrics()
    out = []
    for stage, info in STAGES.items():
        vals = m.get(stage)
        state = "done" if run.is_done(stage) else "not finished" if stage in run.recipe.run.stages else "not in recipe"
        lead = ""
        if isinstance(vals, dict):
            head = vals.get("headline")
            if isinstance(head, dict):
                lead = "; ".join(f"{k} {_fmt(v)}" for k, v in head.items())
        out.append(f"{info.folder:<14} {state:<13} {lead}")
    return out
