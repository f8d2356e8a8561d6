"""Tables for notebooks and the report card: pandas DataFrames built from metrics sections and stage files.

Views only read what a stage wrote (metrics.json sections, per-stage JSONL/CSV files); they compute no new
metric, so a notebook cell and the report show the same numbers. pandas is imported lazily by each view
because it is only needed when a table is shown.
"""

from __future__ import annotations

from typing import Any


def diagnosis_table(summary: dict[str, Any] | None) -> Any:
    """One row per (model, pair set) of the `diagnose` section: balanced accuracy, macro-F1, unsafe-class
    F1 with its CI and trivial baselines, no-verdict rate. Sets with no pairs, or missing keys, are left out."""
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
            })
    return pd.DataFrame(rows).round(3)


def pick_example(rows: list[dict], label: str = "safe", prompt_label: str = "harmful") -> dict | None:
    """The first verification row with this target label and prompt label (else the first row, else None)."""
    return next((r for r in rows if r.get("label") == label and r.get("prompt_label") == prompt_label),
                rows[0] if rows else None)


def training_example(row: dict, tokenizer: Any, show_unsafe: bool = False) -> str:
    """One conversational prompt/completion row exactly as SFT feeds it to the model: the chat template
    applied to the prompt (system spec + user request with the answer to verify), then the target, the
    only tokens that carry the loss (TRL's completion-only loss). An answer labelled unsafe is redacted
    unless `show_unsafe`: it is the policy's own harmful output."""
    messages = [dict(m) for m in row["prompt"]]
    if row.get("label") == "unsafe" and not show_unsafe:
        for m in messages:
            if m["role"] == "user":
                m["content"] = (f"[redacted: this turn holds the request and an answer the judge labelled unsafe "
                                f"({len(m['content'])} chars); pass show_unsafe=True to see it]")
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + row["completion"], tokenize=False)
    # the target as the template renders it (TRL tokenizes prompt and prompt + completion the same way)
    target = full[len(prompt_text):] if full.startswith(prompt_text) else row["completion"][0]["content"]
    n_prompt, n_target = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"]), \
        len(tokenizer(target, add_special_tokens=False)["input_ids"])
    return (f"=== prompt: {n_prompt} tokens, no loss ===\n{prompt_text}\n"
            f"=== target: {n_target} tokens, the loss is computed on these only ===\n{target}")
