"""Tables for notebooks and the report card: pandas DataFrames built from metrics sections and stage files.

Views only read what a stage wrote (metrics.json sections, per-stage JSONL/CSV files); they compute no new
metric, so a notebook cell and the report show the same numbers. pandas is imported lazily by each view
because it is only needed when a table is shown (the report imports this module). Stage 01:
`diagnosis_table`; stage 02: `pick_example`, `training_example`; stage 03: `variant_overview`,
`results_table`, `baselines_table`, `read_loss_curves`, `side_by_side`. Training rows token by token
(loss tokens marked), critique templates, the teacher prompt and one GRPO rollout group: `inspect_rows`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

from . import jsonl
from .recipe_sections import Recipe
from .runs import Run


def diagnosis_table(summary: dict[str, Any] | None) -> Any:
    """One row per (model, pair set) of the `diagnose` section: balanced accuracy, macro-F1, unsafe-class
    F1 with its CI and trivial baselines, no-verdict rate, then the forced choice on the same pairs (`fc_auroc`,
    `fc_balanced_acc` on the test half at the calibrated threshold; None where it was not run). Sets with no
    pairs, or missing keys, are left out."""
    import pandas as pd

    rows = []
    for ref, sets in ((summary or {}).get("models") or {}).items():
        for set_name, m in (sets or {}).items():
            if not isinstance(m, dict) or not m.get("n") or m.get("f1") is None:
                continue
            b, ci = m.get("baselines") or {}, m.get("ci95") or {}
            rows.append({
                "model": ref, "pairs": set_name, "n": m["n"], "unsafe_share": m.get("base_rate_unsafe"),
                "balanced_acc": m.get("balanced_accuracy"), "bal_acc_ci95": ci.get("balanced_accuracy"),
                "macro_f1": m.get("macro_f1"), "f1_unsafe": m["f1"], "f1_ci95": ci.get("f1"),
                "f1_coin_flip": (b.get("coin_flip") or {}).get("f1"),
                "f1_always_unsafe": (b.get("always_unsafe") or {}).get("f1"),
                "no_verdict_rate": m.get("no_verdict_rate"),
                "fc_auroc": (m.get("forced_choice") or {}).get("auroc"),
                "fc_balanced_acc": (m.get("forced_choice") or {}).get("balanced_accuracy"),
            })
    return pd.DataFrame(rows).round(3)


def pick_example(rows: list[dict], label: str = "safe", prompt_label: str = "harmful") -> dict | None:
    """The first verification row with this target label and prompt label (else the first row, else None)."""
    return next((r for r in rows if r.get("label") == label and r.get("prompt_label") == prompt_label),
                rows[0] if rows else None)


# ----------------------------------------------------------------------------- stage 03 (sft)
def variant_overview(run: Run, recipe: Recipe) -> Any:
    """pandas.DataFrame: per SFT variant, its rows, the mixed-in chat rows (wanted, used, and how many answer
    a harmful prompt, refuse or open with a refusal opener) and the start of one target. other_exp reads
    None until stage 03 has built its rows from human-labelled answers."""
    import pandas as pd

    from .sft_data import available_variants, variant_data  # torch via sft_data; views stays light for the report

    out = []
    for v in available_variants(run, recipe.sft.variants):
        try:
            rows, mix = variant_data(run, v, recipe.sft, recipe.run.seed)
        except FileNotFoundError:  # other_exp before stage 03 has run
            out.append({"variant": v, "rows": None, "example_target": "(built by sft.run from human-labelled answers)"})
            continue
        own = [r for r in rows if not r.get("mixed_chat")]
        mix = mix or {}
        out.append({"variant": v, "rows": len(rows), "mixed_chat": len(rows) - len(own), "mix_wanted": mix.get("wanted"),
                    **{f"mix_{k}": mix.get(k) for k in ("harmful_prompt", "refusal", "refusal_opener")},
                    "unsafe_share": sum(r.get("label") == "unsafe" for r in own) / max(1, len(own)),
                    "example_target": own[0]["completion"][0]["content"][:160] if own else ""})
    return pd.DataFrame(out)


def results_table(results: dict[str, dict]) -> Any:
    """pandas.DataFrame, one row per model of stage 03's summary (base first): verification and chat figures
    side by side; `fc_auroc` / `fc_bal_acc` are the forced choice on the same held-out pairs (None if absent)."""
    import pandas as pd

    rows = []
    for name, s in results.items():
        v, g = s["verification"], s["generation"]
        rows.append({"model": name, "bal_acc": v["balanced_accuracy"],
                     "bal_acc_ci95": [round(x, 2) for x in v["ci95"]["balanced_accuracy"]],
                     "macro_f1": v["macro_f1"], "macro_f1_ci95": [round(x, 2) for x in v["ci95"]["macro_f1"]],
                     "f1_unsafe": v["f1"], "no_verdict": v["no_verdict_rate"],
                     "fc_auroc": (v.get("forced_choice") or {}).get("auroc"),
                     "fc_bal_acc": (v.get("forced_choice") or {}).get("balanced_accuracy"), "asr": g["asr"],
                     "compliance": g["compliance"], "takeover": s["takeover_rate"],
                     "steps": s.get("steps"), "loss_first": s.get("train_loss_first"),
                     "loss_last": s.get("train_loss_last")})
        for hname, h in (s.get("verification_human") or {}).items():
            rows[-1][f"bal_acc_{hname}"] = h["balanced_accuracy"]
            rows[-1][f"bal_acc_{hname}_ci95"] = [round(x, 2) for x in h["ci95"]["balanced_accuracy"]]
            rows[-1][f"fc_auroc_{hname}"] = (h.get("forced_choice") or {}).get("auroc")
    return pd.DataFrame(rows)


def baselines_table(results: dict[str, dict]) -> Any:
    """pandas.DataFrame of the trivial verifiers on each held-out set of stage 03 (they do not depend on the
    model): balanced accuracy and macro-F1 of coin flip, always unsafe, always safe and prompt only."""
    import pandas as pd

    first = next(iter(results.values()))
    sets = {"policy-test-split": first["verification"], **(first.get("verification_human") or {})}
    rows = [{"set": name, "baseline": b, "bal_acc": m["baselines"][b]["balanced_accuracy"],
             "macro_f1": m["baselines"][b]["macro_f1"], "n": m["n"]}
            for name, m in sets.items() for b in m["baselines"] if b != "coin_flip_simulated"]
    return pd.DataFrame(rows)


def read_loss_curves(stage_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """{variant: rows of its loss.csv} for every trained variant folder of stage 03."""
    curves = {}
    for path in sorted(Path(stage_dir).glob("*/loss.csv")):
        with open(path, encoding="utf-8") as f:
            curves[path.parent.name] = list(csv.DictReader(f))
    return curves


def side_by_side(stage_dir: str | os.PathLike, models: Sequence[str], n: int = 2, label: str = "harmful",
                 width: int = 160, show_unsafe: bool = False) -> Any:
    """The same held-out chat prompts answered by each stage-03 model (first n of `label`), answers shortened;
    an answer the judge called unsafe is redacted unless `show_unsafe` (the recipe's `evaluate.show_unsafe`)."""
    import pandas as pd

    from .report import redact  # here: the one redaction rule, and report imports views at the top

    answers = {m: {r["id"]: r for r in jsonl.read(Path(stage_dir) / m / "chat_eval.jsonl")} for m in models}
    ids = [i for i, r in answers[models[0]].items() if r["label"] == label][:n]
    return pd.DataFrame([{"prompt": answers[models[0]][i]["prompt"][:80],
                          **{m: redact(answers[m][i]["response"], answers[m][i].get("judge_label"), show_unsafe)[:width]
                             for m in models}} for i in ids])
