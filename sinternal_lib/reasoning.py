"""Splitting a generation into its `<think>` reasoning and its final answer (R1-style traces).

Pure text, no model: sampling stores both parts of every sample, evaluation judges the answer only, and
math grading reads the final answer.
"""

from __future__ import annotations

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str, style: str = "auto") -> tuple[str | None, str]:
    """Split a generation into (reasoning, answer).

    style "auto"/"think" (and "r1", the recipe's name for it): `<think>R</think>A` -> (R, A); text that starts
    mid-thought (R1 templates put `<think>` in the prompt) with only `</think>` -> (text before it, rest); an
    unterminated `<think>` -> (remainder, ""); no tags -> (None, text.strip()). style "none": always
    (None, text.strip()).
    """
    if style not in ("auto", "think", "r1", "none"):
        raise ValueError(f"unknown reasoning style {style!r}; use 'auto', 'think' (or 'r1') or 'none'")
    if style == "none":
        return None, text.strip()
    close = text.find(_THINK_CLOSE)
    open_ = text.find(_THINK_OPEN)
    if open_ != -1 and (close == -1 or open_ < close):
        start = open_ + len(_THINK_OPEN)
        if close == -1:  # thinking never finished: everything after the tag is reasoning
            return text[start:].strip(), ""
        return text[start:close].strip(), text[close + len(_THINK_CLOSE):].strip()
    if close != -1:  # opening tag was part of the prompt
        return text[:close].strip(), text[close + len(_THINK_CLOSE):].strip()
    return None, text.strip()
