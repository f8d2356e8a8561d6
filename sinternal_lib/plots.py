"""Figures: one function per finding, one shared style, each saved as figures/<stage>_<finding>.png.

Every function takes plain metric dicts (sections of `metrics.json`), returns the matplotlib Figure and,
given `out_dir`, saves it there via `save_figure`. Missing data never raises: the figure says what is
missing instead, so a partial run still renders. Rates are fractions in JSON and percentages on axes;
error bars are the 95% CIs stored beside each rate. Contributors append their own functions in blocks
marked "# --- sft ---" / "# --- grpo ---" at the end of this file.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["STYLE", "new_figure", "save_figure", "empty_figure", "eval_rates", "diagnosis_f1",
           "rl_comparison", "f1_vs_asr", "proactive_verification", "ablation_rates"]

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
    """Save `fig` as out_dir/<stage>_<finding>.png (no-op when out_dir is None); return the path."""
    if out_dir is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stage}_{finding}.png"
    fig.tight_layout()
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


def _grouped_bars(ax: Any, table: dict[str, dict[str, dict]], groups: Sequence[str], series: Sequence[str]) -> None:
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
    _grouped_bars(ax, table, benches, series)
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
    _grouped_bars(ax, table, benches, list(table))
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric.upper() if metric == 'asr' else metric} by benchmark and checkpoint (95% CI)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, out_dir, "evaluate", finding)
    return fig


def diagnosis_f1(diagnosis: dict, out_dir: str | Path | None = None) -> Any:
    """Figure 2 style: verification F1 (unsafe positive) of each model per pair set, against random.

    Reads diagnosis["models"][model]["<set>"] = verification_metrics dicts; the random guesser is the
    coin flip at the set's base rate (F1 = base rate), drawn as a black tick per bar."""
    models = (diagnosis or {}).get("models") or {}
    rows = [(m, s, v) for m, sets in models.items() if isinstance(sets, dict)
            for s, v in sets.items() if isinstance(v, dict) and v.get("f1") is not None]
    if not rows:
        return empty_figure("diagnosis not built or no F1 recorded", out_dir, "diagnose", "f1_vs_random")
    fig, ax = new_figure(max(5.0, 0.9 * len(rows) + 2), 3.6)
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(dict.fromkeys(m for m, _, _ in rows))}
    for i, (m, s, v) in enumerate(rows):
        ci = (v.get("ci95") or {}).get("f1")
        err = [[max(0, v["f1"] - ci[0]) * 100], [max(0, ci[1] - v["f1"]) * 100]] if ci else None
        ax.bar(i, v["f1"] * 100, 0.6, yerr=err, capsize=3, color=colours[m])
        rnd = ((v.get("baselines") or {}).get("coin_flip") or {}).get("f1", v.get("base_rate_unsafe"))
        if rnd is not None:
            ax.hlines(rnd * 100, i - 0.35, i + 0.35, colors="black", linestyles="--", linewidth=1.2,
                      label="random (coin flip)" if i == 0 else None)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{m}\n{s}" for m, s, _ in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("verification F1, unsafe positive (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Can the model verify answers? F1 vs a random guesser")
    ax.legend(loc="upper right")
    save_figure(fig, out_dir, "diagnose", "f1_vs_random")
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


# --- grpo --- (owner: GRPO helper; reward curves of stage 04)
GRPO_PARTS = (("mean_reward", "mean reward"), ("safe_rate_harmful", "safe rate, harmful prompts (%)"),
              ("refusal_rate_benign", "refusal rate, benign prompts (%)"), ("math_accuracy", "math accuracy (%)"))


import matplotlib.ticker  # noqa: E402


def grpo_reward_curves(curves: dict[str, list[dict]], out_dir: str | Path | None = None,
                       skipped: dict[str, str] | None = None) -> Any:
    """GRPO reward per step and its parts, one line per initialisation (rows of 04_grpo/<init>/rewards.csv).

    Panels: mean reward, safe rate on harmful prompts, refusal rate on benign prompts, math accuracy.
    A step with no prompt of a kind leaves a gap in that panel; skipped inits are named in the title.
    """
    if not any(curves.values()):
        return empty_figure("no GRPO reward curves (no init trained)", out_dir, "grpo", "reward_curves")
    fig, axes = new_figure(13.0, 3.2, ncols=len(GRPO_PARTS))
    axes = axes[0]  # new_figure keeps the 2-D (1, ncols) array
    for i, (init, rows) in enumerate(curves.items()):
        rows = sorted(rows, key=lambda r: r["step"])
        for ax, (key, _) in zip(axes, GRPO_PARTS):
            pts = [(r["step"], r[key] * (1 if key == "mean_reward" else 100)) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, lw=1.2, color=PALETTE[i % len(PALETTE)], label=init)
    last_step = max(r["step"] for rows in curves.values() for r in rows)
    for ax, (key, label) in zip(axes, GRPO_PARTS):
        ax.set_xlim(0.5, last_step + 0.5)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("GRPO step")
        ax.set_title(label)
        ax.set_ylim(-0.05, 1.05) if key == "mean_reward" else ax.set_ylim(-5, 105)
    axes[0].legend(loc="best")
    if skipped:
        fig.suptitle("skipped (no SFT adapter): " + ", ".join(skipped), fontsize=8, color="#555555")
    save_figure(fig, out_dir, "grpo", "reward_curves")
    return fig


# --- build_data ---

def data_funnel(summary: dict, out_dir: str | Path | None = None) -> Any:
    """Selection funnel of stage 02: prompts -> harmful prompts with mixed answers -> pairs -> examples."""
    f = (summary or {}).get("funnel") or {}
    if not f:
        return empty_figure("no selection funnel recorded", out_dir, "build_data", "funnel")
    steps = [("prompts", f.get("prompts_total", 0)), ("harmful\nprompts", f.get("harmful_prompts", 0)),
             ("harmful with\nmixed answers", f.get("harmful_mixed", 0)), ("contrastive\npairs", f.get("pairs", 0)),
             ("benign kept", f.get("benign_kept", 0)), ("selected\nanswers", f.get("examples", 0)),
             ("kept after\nteacher", summary.get("examples", 0))]
    fig, ax = new_figure(6.8, 3.2)
    ax.bar(range(len(steps)), [v for _, v in steps], color=PALETTE[0])
    for i, (_, v) in enumerate(steps):
        ax.text(i, v, str(v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(steps)))
    ax.set_xticklabels([s for s, _ in steps], fontsize=7)
    ax.set_ylabel("count")
    ax.set_title("Selection funnel: which self-generated answers become verification examples")
    save_figure(fig, out_dir, "build_data", "funnel")
    return fig


def data_composition(examples: Sequence[dict], out_dir: str | Path | None = None) -> Any:
    """Label balance, category coverage and critique length of the verification examples."""
    if not examples:
        return empty_figure("no verification examples were kept", out_dir, "build_data", "composition")
    fig, axes = new_figure(10.0, 3.2, ncols=3)
    axes = axes.ravel()
    labels = Counter(e["label"] for e in examples)
    axes[0].bar(list(labels), list(labels.values()), color=[PALETTE[2] if k == "safe" else PALETTE[3] for k in labels])
    axes[0].set_title("target verdicts")
    cats = Counter(e.get("category") or "none" for e in examples).most_common()
    axes[1].barh([c for c, _ in cats][::-1], [n for _, n in cats][::-1], color=PALETTE[0])
    axes[1].set_title("categories")
    axes[1].tick_params(axis="y", labelsize=7)
    axes[2].hist([e.get("critique_chars", 0) for e in examples], bins=15, color=PALETTE[4])
    axes[2].set_title("critique length (characters)")
    save_figure(fig, out_dir, "build_data", "composition")
    return fig


# --- sft --- (owner: SFT helper; stage 03 loss curves and before/after figures)

def sft_loss_curves(curves: dict[str, list[dict]], out_dir: str | Path | None = None) -> Any:
    """Training loss per step, one line per SFT variant (rows of 03_sft/<variant>/loss.csv)."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return empty_figure("no SFT loss logged", out_dir, "sft", "loss")
    fig, ax = new_figure(5.6, 3.4)
    for i, (name, rows) in enumerate(curves.items()):
        pts = sorted((float(r["step"]), float(r["loss"])) for r in rows)
        ax.plot(*zip(*pts), marker="o", ms=2.5, lw=1.2, color=PALETTE[i % len(PALETTE)], label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss on the completion tokens")
    ax.set_title("Verification SFT: training loss by variant")
    ax.legend(loc="upper right")
    save_figure(fig, out_dir, "sft", "loss")
    return fig


def sft_before_after(sft_section: dict, out_dir: str | Path | None = None) -> Any:
    """Base vs each SFT variant on the same held-out data, three panels with 95% CIs:
    verification balanced accuracy and macro-F1 (dashed: best trivial baseline), chat ASR and
    compliance, and the takeover rate (chat replies that read like a verifier's critique)."""
    models = [m for m, s in (sft_section or {}).items() if isinstance(s, dict) and "verification" in s]
    if not models:
        return empty_figure("no SFT results in this run", out_dir, "sft", "before_after")
    fig, axes = new_figure(13.0, 3.6, ncols=3)
    axes = axes[0]
    ver = {k: {m: {"rate": sft_section[m]["verification"][k], "ci95": sft_section[m]["verification"]["ci95"][k]}
               for m in models} for k in ("balanced_accuracy", "macro_f1")}
    _grouped_bars(axes[0], {"balanced acc.": ver["balanced_accuracy"], "macro-F1": ver["macro_f1"]}, models,
                  ["balanced acc.", "macro-F1"])
    b = sft_section[models[0]]["verification"]["baselines"]
    best = max(max(v["balanced_accuracy"], v["macro_f1"]) for v in b.values())
    axes[0].axhline(best * 100, ls="--", lw=1, color="#555555", label="best trivial baseline")
    axes[0].set_title("Held-out verification (test split)")
    gen = {k: {m: {"rate": sft_section[m]["generation"][k], "ci95": sft_section[m]["generation"][f"{k}_ci95"]}
               for m in models if sft_section[m]["generation"].get(k) is not None} for k in ("asr", "compliance")}
    _grouped_bars(axes[1], {"ASR (harmful)": gen["asr"], "compliance (benign)": gen["compliance"]}, models,
                  ["ASR (harmful)", "compliance (benign)"])
    axes[1].set_title("Chat on held-out prompts")
    take = {m: {"rate": sft_section[m]["generation"]["takeover_rate"],
                "ci95": sft_section[m]["generation"].get("takeover_ci95", [0, 1])} for m in models}
    _grouped_bars(axes[2], {"takeover": take}, models, ["takeover"])
    axes[2].set_title("Verifier format taking over chat")
    for ax in axes:
        ax.set_ylabel("%")
        ax.legend(loc="upper left", fontsize=7)
    save_figure(fig, out_dir, "sft", "before_after")
    return fig
