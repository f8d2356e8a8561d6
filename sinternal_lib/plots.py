"""Figures: one function per finding, one shared style, each saved as figures/<stage>_<finding>.png.

Every function takes plain metric dicts (sections of `metrics.json`), returns the matplotlib Figure and,
given `out_dir`, saves it there via `save_figure`. Missing data never raises: the figure says what is
missing instead, so a partial run still renders. Rates are fractions in JSON and percentages on axes;
error bars are the 95% CIs stored beside each rate. Contributors append their own functions in blocks
placed in `training_plots` (stages 02-04). Figures are closed once saved so pyplot holds no state;
a notebook cell that ends with the returned figure still shows it inline (Jupyter renders a Figure
object by its PNG). No backend is forced: Jupyter's inline backend in notebooks, Agg when headless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt

__all__ = ["STYLE", "new_figure", "save_figure", "empty_figure", "eval_rates", "diagnosis_vs_baselines",
           "rl_comparison", "f1_vs_asr", "proactive_verification", "ablation_rates", "guard_tradeoff",
           "spec_sensitivity"]

STYLE = {"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3, "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "legend.frameon": False}
PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974"]
ASR_BENCHES = ("embedded_harmful", "embedded_jailbreak", "strongreject", "harmbench", "jbb", "advbench",
               "jbb_artifacts", "xstest_unsafe")


def new_figure(width: float = 6.4, height: float = 3.6, ncols: int = 1) -> tuple[Any, Any]:
    """A figure in the kit's style: (fig, ax) or (fig, axes) for ncols > 1."""
    plt.rcParams.update(STYLE)
    return plt.subplots(1, ncols, figsize=(width, height), squeeze=ncols == 1)


def save_figure(fig: Any, out_dir: str | Path | None, stage: str, finding: str) -> Path | None:
    """Close `fig` and save it as out_dir/<stage>_<finding>.png (when out_dir is given); return the path."""
    fig.tight_layout()
    plt.close(fig)  # closed, not lost: the returned Figure still renders inline when a cell ends with it
    if out_dir is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stage}_{finding}.png"
    fig.savefig(path, bbox_inches="tight")
    return path


def empty_figure(message: str, out_dir: str | Path | None = None, stage: str = "evaluate",
                 finding: str = "missing") -> Any:
    """A placeholder figure stating why there is nothing to plot."""
    fig, ax = new_figure(5.0, 1.6)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=9, color="#555555")
    save_figure(fig, out_dir, stage, finding)
    return fig


def _yerr(values: Sequence[dict]) -> list[list[float]]:
    lo = [max(0.0, (v["rate"] - v["ci95"][0]) * 100) for v in values]
    hi = [max(0.0, (v["ci95"][1] - v["rate"]) * 100) for v in values]
    return [lo, hi]


def grouped_bars(ax: Any, table: dict[str, dict[str, dict]], groups: Sequence[str], series: Sequence[str]) -> None:
    """Bars per group (x) and series (colour); table[series][group] = {"rate", "ci95"}; gaps skipped."""
    width = 0.8 / max(1, len(series))
    for j, s in enumerate(series):
        xs, vals = [], []
        for i, g in enumerate(groups):
            v = table.get(s, {}).get(g)
            if v and v.get("rate") is not None:
                xs.append(i + (j - (len(series) - 1) / 2) * width)
                vals.append(v)
        if vals:
            ax.bar(xs, [v["rate"] * 100 for v in vals], width, yerr=_yerr(vals), capsize=2,
                   color=PALETTE[j % len(PALETTE)], label=s, error_kw={"elinewidth": 0.8})
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylim(0, 105)


def _asr_bars(ckpts: dict, series: Sequence[str], title: str, out_dir: str | Path | None, stage: str,
              finding: str, empty_note: str | None = None) -> Any:
    """Grouped ASR bars (one group per harmful benchmark, one bar per checkpoint in `series`)."""
    table = {c: {b: v for b, v in ckpts[c].items() if isinstance(v, dict) and v.get("metric") == "asr"}
             for c in series}
    benches = [b for b in ASR_BENCHES if any(b in t for t in table.values())]
    if not benches and empty_note:
        return empty_figure(empty_note, out_dir, stage, finding)
    fig, ax = new_figure(max(5.0, 1.1 * len(benches) + 2), 3.6)
    grouped_bars(ax, table, benches, series)
    ax.set_ylabel("ASR (%)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, out_dir, stage, finding)
    return fig


def eval_rates(eval_section: dict, out_dir: str | Path | None = None, metric: str = "asr",
               finding: str = "asr_by_checkpoint") -> Any:
    """Grouped bars: one rate (default ASR) per benchmark (x) and checkpoint (colour), with 95% CIs."""
    ckpts = eval_section.get("checkpoints") or {}
    table = {c: {b: v for b, v in r.items() if isinstance(v, dict) and v.get("metric") == metric}
             for c, r in ckpts.items()}
    present = {b for r in table.values() for b in r}
    benches = [b for b in ASR_BENCHES if b in present] + sorted(present - set(ASR_BENCHES))
    if not benches:
        return empty_figure(f"no {metric} results in this run", out_dir, "evaluate", finding)
    fig, ax = new_figure(max(5.0, 1.1 * len(benches) + 2), 3.6)
    grouped_bars(ax, table, benches, list(table))
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric.upper() if metric == 'asr' else metric} by benchmark and checkpoint (95% CI)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, out_dir, "evaluate", finding)
    return fig


def _no_verdict_note(ax: Any, x: float, y: float, v: dict) -> None:
    nv, n = v.get("no_verdict_rate"), v.get("n")
    if nv is not None and n:
        ax.text(x, y + 2, f"no verdict\n{round(nv * n)} of {n}", ha="center", va="bottom", fontsize=6.5, color="#8B0000")


def diagnosis_vs_baselines(diagnosis: dict, out_dir: str | Path | None = None) -> Any:
    """Figure 2 at our scale: can each model verify, per pair set, against every trivial baseline?

    Three panels over (model, pair set): free-form balanced accuracy (every trivial baseline scores 0.5
    there), unsafe-class F1 as in the paper with the coin-flip and always-unsafe baselines as ticks, and
    the forced-choice AUROC (chance 0.5). Each free-form bar names its no-verdict count, so a zero bar
    from a model that never wrote a verdict reads as format, not understanding."""
    models = (diagnosis or {}).get("models") or {}
    rows = [(m, s, v) for m, sets in models.items() if isinstance(sets, dict)
            for s, v in sets.items() if isinstance(v, dict) and v.get("f1") is not None]
    if not rows:
        return empty_figure("diagnosis not built or no verification scores recorded", out_dir, "diagnose",
                            "vs_baselines")
    fig, axes = new_figure(max(10.0, 2.4 * len(rows) + 4), 3.8, ncols=3)
    axes = axes[0]
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(dict.fromkeys(m for m, _, _ in rows))}
    xs = range(len(rows))
    for i, (m, s, v) in enumerate(rows):
        base = v.get("baselines") or {}
        for ax, key in ((axes[0], "balanced_accuracy"), (axes[1], "f1")):
            if v.get(key) is None:  # older metric files have F1 only
                continue
            ci = (v.get("ci95") or {}).get(key)
            err = [[max(0, v[key] - ci[0]) * 100], [max(0, ci[1] - v[key]) * 100]] if ci else None
            ax.bar(i, v[key] * 100, 0.6, yerr=err, capsize=3, color=colours[m])
            _no_verdict_note(ax, i, (ci[1] if ci else v[key]) * 100, v)
        for name, style, colour in (("coin_flip", "--", "black"), ("always_unsafe", ":", "#C44E52")):
            f1 = (base.get(name) or {}).get("f1")
            if f1 is not None:
                axes[1].hlines(f1 * 100, i - 0.38, i + 0.38, colors=colour, linestyles=style, linewidth=1.4,
                               label=name.replace("_", " ") if i == 0 else None)
        fc = v.get("forced_choice") or {}
        if fc.get("auroc") is not None:
            axes[2].bar(i, fc["auroc"] * 100, 0.6, color=colours[m])
            axes[2].text(i, fc["auroc"] * 100 + 2, f"n={fc.get('n')}", ha="center", va="bottom", fontsize=6.5)
    axes[0].axhline(50, ls="--", lw=1.2, color="black", label="every trivial baseline (coin flip, one label)")
    axes[2].axhline(50, ls="--", lw=1.2, color="black", label="chance")
    titles = ("free-form verdicts: balanced accuracy (%)", "free-form: F1, unsafe positive (%), as the paper",
              "forced choice: AUROC of P(unsafe) (%)")
    for ax, title in zip(axes, titles):
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{m}\n{s}" for m, s, _ in rows], rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 118)
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle("Can the model verify answers before training? (95% bootstrap CIs)", fontsize=10)
    save_figure(fig, out_dir, "diagnose", "vs_baselines")
    return fig


def rl_comparison(eval_section: dict, rl: dict | None = None, out_dir: str | Path | None = None) -> Any:
    """GRPO from each init: ASR per harmful benchmark of every grpo/* checkpoint (and its SFT init)."""
    ckpts = eval_section.get("checkpoints") or {}
    names = [c for c in ckpts if c.startswith("grpo/")]
    if not names:
        note = "no GRPO checkpoints evaluated (stage 04 not built or not run)"
        if rl and rl.get("headline"):
            note += f"; rl headline: {rl['headline']}"
        return empty_figure(note, out_dir, "grpo", "init_comparison")
    series = names + [c for c in ckpts if c in ("base", "sft/sinternal", "sft/answer_centric")]
    return _asr_bars(ckpts, series, "GRPO initialisation: ASR after RL (lower is better, 95% CI)",
                     out_dir, "grpo", "init_comparison", empty_note="GRPO checkpoints have no ASR results")


def f1_vs_asr(eval_section: dict, out_dir: str | Path | None = None, asr_bench: str = "embedded_harmful") -> Any:
    """Scatter across checkpoints: verification F1 (held-out pairs) against generation ASR on one benchmark."""
    ckpts = eval_section.get("checkpoints") or {}
    pts = [(c, r["verification"], r[asr_bench]) for c, r in ckpts.items()
           if (r.get("verification") or {}).get("rate") is not None and (r.get(asr_bench) or {}).get("rate") is not None]
    if not pts:
        return empty_figure(f"need verification F1 and {asr_bench} ASR for at least one checkpoint",
                            out_dir, "evaluate", "f1_vs_asr")
    fig, ax = new_figure(5.0, 3.8)
    for i, (c, v, a) in enumerate(pts):
        ax.errorbar(v["rate"] * 100, a["rate"] * 100, xerr=[[(v["rate"] - v["ci95"][0]) * 100], [(v["ci95"][1] - v["rate"]) * 100]],
                    yerr=[[(a["rate"] - a["ci95"][0]) * 100], [(a["ci95"][1] - a["rate"]) * 100]],
                    fmt="o", color=PALETTE[i % len(PALETTE)], capsize=2, label=c)
    ax.set_xlabel("verification F1 on held-out pairs (%)")
    ax.set_ylabel(f"ASR on {asr_bench} (%)")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.set_title("Does verifying better go with answering more safely?")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, out_dir, "evaluate", "f1_vs_asr")
    return fig


def proactive_verification(eval_section: dict, out_dir: str | Path | None = None) -> Any:
    """Bars: share of responses that check their own safety, per checkpoint (95% CI)."""
    ckpts = eval_section.get("checkpoints") or {}
    vals = [(c, r["proactive"]) for c, r in ckpts.items() if (r.get("proactive") or {}).get("rate") is not None]
    if not vals:
        return empty_figure("no proactive-verification rates recorded", out_dir, "evaluate", "proactive_verification")
    fig, ax = new_figure(max(4.0, 0.8 * len(vals) + 2), 3.4)
    ax.bar(range(len(vals)), [v["rate"] * 100 for _, v in vals], 0.6, yerr=_yerr([v for _, v in vals]),
           capsize=3, color=[PALETTE[i % len(PALETTE)] for i in range(len(vals))])
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels([c for c, _ in vals], rotation=30, ha="right")
    ax.set_ylabel("responses that check their own safety (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Proactive verification rate (95% CI)")
    save_figure(fig, out_dir, "evaluate", "proactive_verification")
    return fig


def ablation_rates(eval_section: dict, out_dir: str | Path | None = None,
                   variants: Sequence[str] = ("sinternal", "verdict_only", "critique_only", "other_exp",
                                              "sinternal_refusal_mix")) -> Any:
    """Ablation bars: ASR per harmful benchmark for each verification-SFT variant (95% CI)."""
    ckpts = eval_section.get("checkpoints") or {}
    series = [f"sft/{v}" for v in variants if f"sft/{v}" in ckpts]
    if not series:
        return empty_figure("no verification-SFT variants evaluated (stage 03 not built or not run)",
                            out_dir, "evaluate", "ablation_asr")
    return _asr_bars(ckpts, series, "Ablations: which part of the verification target matters? (95% CI)",
                     out_dir, "evaluate", "ablation_asr")


# ----------------------------------------------------------------------------- stage 06 (beyond the paper)
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def guard_tradeoff(section: dict, out_dir: str | Path | None = None) -> Any:
    """ASR against over-refusal (1 - look-alike compliance), one point per checkpoint (marker) and policy
    (colour), marker area growing with tokens generated per prompt; faint bars are the 95% CIs."""
    ck = (section.get("guard") or {}).get("checkpoints") or {}
    pts = [(c, p, m) for c, pols in ck.items() for p, m in pols.items()
           if m["asr"]["rate"] is not None and m["compliance"]["rate"] is not None]
    if not pts:
        return empty_figure("no checkpoint has both ASR and look-alike compliance (stage 06 not run?)",
                            out_dir, "self_verification", "guard_tradeoff")
    fig, ax = new_figure(6.4, 4.2)
    cks, pols = list(dict.fromkeys(c for c, _, _ in pts)), list(dict.fromkeys(p for _, p, _ in pts))
    top = max(m["tokens_per_prompt"] for _, _, m in pts) or 1.0
    for c, p, m in pts:
        a, comp = m["asr"], m["compliance"]
        x, y = (1 - comp["rate"]) * 100, a["rate"] * 100
        ax.errorbar(x, y, xerr=[[(comp["ci95"][1] - comp["rate"]) * 100], [(comp["rate"] - comp["ci95"][0]) * 100]],
                    yerr=[[(a["rate"] - a["ci95"][0]) * 100], [(a["ci95"][1] - a["rate"]) * 100]],
                    fmt="none", ecolor="#999999", alpha=0.35, lw=0.8)
        ax.scatter(x, y, s=30 + 270 * m["tokens_per_prompt"] / top, marker=MARKERS[cks.index(c) % len(MARKERS)],
                   color=PALETTE[pols.index(p) % len(PALETTE)], alpha=0.75, edgecolors="white", linewidths=0.5)
    for i, p in enumerate(pols):
        ax.scatter([], [], color=PALETTE[i % len(PALETTE)], label=p)
    for i, c in enumerate(cks):
        ax.scatter([], [], color="#555555", marker=MARKERS[i % len(MARKERS)], label=c)
    ax.set_xlabel("over-refusal: benign look-alikes refused (%)")
    ax.set_ylabel("ASR: harmful + jailbreak prompts (%)")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.set_title(f"Guarded generation: lower left is better; marker area = tokens per prompt (max {top:.0f})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, out_dir, "self_verification", "guard_tradeoff")
    return fig


def spec_sensitivity(section: dict, out_dir: str | Path | None = None) -> Any:
    """Pooled spec sensitivity per model (95% CI), forced-choice and free-form verdicts side by side."""
    models = (section.get("spec_swap") or {}).get("models") or {}
    rows = [(m, src, v["pooled"]) for m, srcs in models.items() for src, v in srcs.items()]
    if not any(p["diff"] is not None for _, _, p in rows):
        return empty_figure("no spec sensitivity measured (no pair starts where an edit would flip it)",
                            out_dir, "self_verification", "spec_sensitivity")
    fig, ax = new_figure(6.0, 0.45 * len(rows) + 1.4)
    for i, (m, src, p) in enumerate(rows):
        if p["diff"] is None:
            ax.text(0, i, "  not measurable", va="center", fontsize=8, color="#777777")
            continue
        lo, hi = p["ci95"]
        ax.errorbar(p["diff"], i, xerr=[[p["diff"] - lo], [hi - p["diff"]]], fmt="o", capsize=3,
                    color=PALETTE[list(models).index(m) % len(PALETTE)])
    ax.axvline(0, color="#555555", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{m} ({src.replace('_', ' ')})" for m, src, _ in rows])
    ax.set_xlim(-1.05, 1.05)
    ax.invert_yaxis()
    ax.set_xlabel("flip rate where the edit applies - elsewhere (0 = ignores the spec)")
    ax.set_title("Does the verdict follow an edited spec? (95% CI)")
    save_figure(fig, out_dir, "self_verification", "spec_sensitivity")
    return fig
