"""The report card: `runs/<run>/report.md` (and an HTML copy) rendered from env.json + metrics.json.

Rendered from JSON, never parsed back. A run with missing stages still renders: each absent section
says plainly that the stage has not run or is not built yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .runs import METRIC_SECTIONS, STAGES, Run, atomic_write_text

SECTION_TITLES = {
    "diagnosis": "Diagnosis: can the policy verify answers?",
    "data": "Verification data",
    "sft": "Verification SFT",
    "rl": "GRPO",
    "eval": "Evaluation",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)[:120]
    return str(v)


def _section_md(name: str, values: dict[str, Any] | None) -> list[str]:
    lines = [f"## {SECTION_TITLES.get(name, name)}", ""]
    if not values:
        lines += ["*Not run or not built yet: this run has no figures for this stage.*", ""]
        return lines
    flat = {k: v for k, v in values.items() if not isinstance(v, (dict, list))}
    if flat:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in flat.items()] + [""]
    return lines


def render_report(run: Run, show_unsafe: bool = False) -> Path:
    """Write report.md and report.html for `run`; return the markdown path."""
    env_path = run.path / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    metrics = run.read_metrics()
    git = env.get("git", {})
    lines = [
        f"# SInternal report card: run `{run.name}`",
        "",
        f"- recipe: `{Path(env.get('recipe_source', '')).name}`; model: `{run.recipe.model.policy}`; "
        f"judge: `{run.recipe.judge.backend}`; teacher: `{run.recipe.teacher.backend}`",
        f"- commit: `{git.get('commit')}`{' (dirty)' if git.get('dirty') else ''}; "
        f"hardware: {env.get('hardware', {}).get('platform', '?')}, {env.get('hardware', {}).get('cpus', '?')} CPUs",
        f"- versions: {', '.join(f'{k} {v}' for k, v in env.get('versions', {}).items())}",
        f"- unsafe completions: {'shown' if show_unsafe else 'redacted'}",
        "",
    ]
    for stage, section in METRIC_SECTIONS.items():
        done = run.is_done(stage)
        body = _section_md(section, metrics.get(section) if done or metrics.get(section) else None)
        if not done and metrics.get(section) is None:
            body[2] = f"*Stage `{STAGES[stage]}` has not finished in this run (not built yet or not run).*"
        lines += body
    timings = metrics.get("timings", {})
    if timings:
        lines += ["## Time per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in timings.items()] + [""]
    md = "\n".join(lines)
    path = atomic_write_text(run.path / "report.md", md)
    try:
        import markdown

        html = markdown.markdown(md, extensions=["tables"])
        atomic_write_text(run.path / "report.html", f"<html><meta charset='utf-8'><body>{html}</body></html>")
    except ImportError:
        pass
    return path


def headline(run: Run) -> list[str]:
    """A few lines for the terminal: which stages finished and the lead figures."""
    m = run.read_metrics()
    out = []
    for stage, section in METRIC_SECTIONS.items():
        vals = m.get(section)
        state = "done" if run.is_done(stage) else "not finished"
        lead = ""
        if isinstance(vals, dict):
            head = vals.get("headline")
            if isinstance(head, dict):
                lead = "; ".join(f"{k} {_fmt(v)}" for k, v in head.items())
        out.append(f"{STAGES[stage]:<14} {state:<13} {lead}")
    return out
