"""Figures of the training stages: 02 build data (selection funnel, composition), 03 SFT (loss, before
and after) and 04 GRPO (reward per step with a 95% band). Same conventions as `plots`: plain dicts in,
the Figure out, saved as figures/<stage>_<finding>.png when `out_dir` is given."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import matplotlib.ticker

from .plots import PALETTE, grouped_bars, empty_figure, new_figure, save_figure

# --- grpo ---
GRPO_PARTS = (("mean_reward", "mean reward"), ("safe_rate_harmful", "safe rate, harmful prompts (%)"),
              ("refusal_rate_benign", "refusal rate, benign prompts (%)"), ("math_accuracy", "math accuracy (%)"))


def grpo_reward_curves(curves: dict[str, list[dict]], out_dir: str | Path | None = None,
                       skipped: dict[str, str] | None = None) -> Any:
    """GRPO reward per step and its parts, one line per initialisation (rows of 04_grpo/<init>/rewards.csv).

    Panels: mean reward (shaded: the step's 95% band over prompts, `band_lo` / `band_hi` from
    `grpo.reward_curves`), safe rate on harmful prompts, refusal rate on benign prompts, math accuracy.
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
            band = [(r["step"], r["band_lo"], r["band_hi"]) for r in rows if r.get("band_lo") is not None]
            if key == "mean_reward" and band:
                ax.fill_between(*zip(*band), color=PALETTE[i % len(PALETTE)], alpha=0.15, lw=0)
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

def _stacked(ax: Any, y: int, parts: Sequence[tuple[str, int | None, str]]) -> None:
    left = 0
    for label, n, colour in parts:
        if not n:
            continue
        ax.barh(y, n, left=left, color=colour, edgecolor="white", label=label)
        ax.text(left + n / 2, y, str(n), ha="center", va="center", fontsize=8, color="white")
        left += n


def data_funnel(summary: dict, out_dir: str | Path | None = None) -> Any:
    """Stage 02's selection, one unit per panel: prompts (which harmful prompts gave a contrastive pair,
    which benign prompts a kept answer), then answers (unsafe sides, safe sides written freely vs
    started by a forced refusal opener, benign answers, and what the teacher kept)."""
    f = (summary or {}).get("funnel") or {}
    if not f:
        return empty_figure("no selection funnel recorded", out_dir, "build_data", "funnel")
    sel = summary.get("selection") or {}
    forced = f.get("pair_safe_forced")
    pairs = f.get("pairs", 0)
    fig, axes = new_figure(11.0, 3.0, ncols=2)
    ax, bx = axes[0]
    _stacked(ax, 1, [("gave a pair (safe + unsafe answers)", f.get("harmful_mixed"), PALETTE[0]),
                     ("all answers safe", f.get("harmful_all_safe"), PALETTE[2]),
                     ("all answers unsafe", f.get("harmful_all_unsafe"), PALETTE[3])])
    _stacked(ax, 0, [("benign: answer kept", f.get("benign_kept"), PALETTE[4]),
                     ("benign: no judged answer", f.get("benign_prompts", 0) - f.get("benign_kept", 0), PALETTE[7])])
    ax.set_yticks([0, 1], [f"benign ({f.get('benign_prompts', 0)})", f"harmful ({f.get('harmful_prompts', 0)})"])
    ax.set_xlabel("prompts")
    ax.set_title("Prompts: which ones yield training answers")
    natural = None if forced is None else pairs - forced
    _stacked(bx, 1, [("unsafe side of a pair", pairs, PALETTE[3]),
                     ("safe side, written freely" if forced is not None else "safe side of a pair", natural if forced
                      is not None else pairs, PALETTE[2]),
                     ("safe side, forced refusal opener", forced, PALETTE[1]),
                     ("benign answer", f.get("benign_kept"), PALETTE[4])])
    _stacked(bx, 0, [("kept by the teacher", sel.get("kept", summary.get("examples")), PALETTE[0]),
                     ("teacher wrote no verdict", sel.get("teacher_no_verdict"), PALETTE[7]),
                     ("teacher disagreed with judge", sel.get("teacher_disagrees"), PALETTE[5])])
    bx.set_yticks([0, 1], ["after the teacher", f"selected ({f.get('examples', 0)})"])
    bx.set_xlabel("answers" + ("" if forced is not None else " (forced openers not recorded in this run)"))
    bx.set_title("Answers: what the verifier is trained on")
    for a_ in (ax, bx):
        a_.legend(loc="upper left", bbox_to_anchor=(0.0, -0.3), ncol=2, fontsize=7)
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


# --- sft ---

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
    grouped_bars(axes[0], {"balanced acc.": ver["balanced_accuracy"], "macro-F1": ver["macro_f1"]}, models,
                  ["balanced acc.", "macro-F1"])
    b = sft_section[models[0]]["verification"]["baselines"]
    best = max(max(v["balanced_accuracy"], v["macro_f1"]) for v in b.values())
    axes[0].axhline(best * 100, ls="--", lw=1, color="#555555", label="best trivial baseline")
    axes[0].set_title("Held-out verification (test split)")
    gen = {k: {m: {"rate": sft_section[m]["generation"][k], "ci95": sft_section[m]["generation"][f"{k}_ci95"]}
               for m in models if sft_section[m]["generation"].get(k) is not None} for k in ("asr", "compliance")}
    grouped_bars(axes[1], {"ASR (harmful)": gen["asr"], "compliance (benign)": gen["compliance"]}, models,
                  ["ASR (harmful)", "compliance (benign)"])
    axes[1].set_title("Chat on held-out prompts")
    take = {m: {"rate": sft_section[m]["generation"]["takeover_rate"],
                "ci95": sft_section[m]["generation"].get("takeover_ci95", [0, 1])} for m in models}
    grouped_bars(axes[2], {"takeover": take}, models, ["takeover"])
    axes[2].set_title("Verifier format taking over chat")
    for ax in axes:
        ax.set_ylabel("%")
        ax.legend(loc="upper left", fontsize=7)
    save_figure(fig, out_dir, "sft", "before_after")
    return fig
