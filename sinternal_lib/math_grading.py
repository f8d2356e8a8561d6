"""Exact-match grading of math answers (GSM8K-style numbers, MATH/AIME boxed answers).

One scorer for both the GRPO correctness reward (rl.py) and the evaluation's math accuracy, so that
what training optimises is what evaluation measures. The final answer is taken, in order, from the
last `\\boxed{...}`, a GSM8K `#### x` line, an "answer is x" / "Answer: x" phrase, else the last number
in the text; reasoning inside `<think>...</think>` is ignored. Numbers are compared exactly as
fractions after removing formatting (thousands commas, `$`, `%`, units, a trailing period, LaTeX
`\\frac`); a non-numeric reference (e.g. MATH's `\\sqrt{2}`) is compared as a normalised string.
"""
from __future__ import annotations

import re
from fractions import Fraction

from .sampling import split_reasoning

__all__ = ["extract_final_answer", "extract_final_number", "grade_math", "parse_number"]

_NUM = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"
_NUM_RE = re.compile(rf"(?<![\w.])(?:(?P<frac>(?:{_NUM})\s*/\s*\d+)|(?P<num>{_NUM}))(?![\d])")
_ANSWER_RE = re.compile(
    r"\banswer\s*(?:is\b|:|=)\s*[:=]?\s*(?P<rest>[^\n]*)", re.IGNORECASE)
_GSM_RE = re.compile(r"####\s*(?P<rest>[^\n]*)")


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` with balanced braces, or None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start == -1:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1] if depth == 0 else None


def _clean_latex(s: str) -> str:
    """Remove LaTeX formatting that does not change a value (text wrappers, spacing, $ and %)."""
    s = re.sub(r"\\text(?:bf|rm)?\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\[d t]?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", s)
    s = s.replace("{,}", ",").replace("\\!", "").replace("\\,", "").replace("\\ ", " ")
    s = s.replace("\\$", "$").replace("\\%", "%").replace("\\left", "").replace("\\right", "")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "")
    return s


def parse_number(s: str) -> Fraction | None:
    """Exact value of the first number in `s` ("1,234" -> 1234, "$12.50." -> 25/2, "3/4"), or None."""
    s = _clean_latex(s).replace("(", "").replace(")", "")
    m = _NUM_RE.search(s)
    if not m:
        return None
    try:
        if m.group("frac"):
            num, den = m.group("frac").replace(",", "").split("/")
            return Fraction(num.strip()) / Fraction(den.strip()) if int(den) != 0 else None
        return Fraction(m.group("num").replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def _format(value: Fraction) -> str:
    """Canonical string for an exact value: "42", "12.5", "-0.75", or "1/3" when not a finite decimal."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return _decimal(value) if den == 1 else f"{value.numerator}/{value.denominator}"


def _decimal(value: Fraction) -> str:
    """Exact decimal expansion of a fraction whose denominator has only factors 2 and 5."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    whole, rest = divmod(value.numerator, value.denominator)
    digits = []
    while rest:
        rest *= 10
        d, rest = divmod(rest, value.denominator)
        digits.append(str(d))
    return f"{sign}{whole}." + "".join(digits)


def extract_final_answer(text: str) -> str | None:
    """The raw final-answer span: last boxed content, `#### x`, "answer is x", else the last number."""
    _, answer = split_reasoning(text or "")
    if not answer:
        return None
    boxed = _last_boxed(answer)
    if boxed is not None:
        return boxed.strip()
    for rx in (_GSM_RE, _ANSWER_RE):
        hits = [m.group("rest") for m in rx.finditer(answer) if parse_number(m.group("rest")) is not None]
        if hits:
            return hits[-1].strip()
    nums = list(_NUM_RE.finditer(_clean_latex(answer)))
    return nums[-1].group(0) if nums else None


def extract_final_number(text: str) -> str | None:
    """Final numeric answer of a response as a canonical string ("1,234" -> "1234", "$12.50." -> "12.5").

    None when the response has no number in its answer part (e.g. a refusal or unfinished reasoning).
    """
    span = extract_final_answer(text)
    if span is None:
        return None
    value = parse_number(span)
    return None if value is None else _format(value)


def _norm_str(s: str) -> str:
    """Normalise a non-numeric answer for string comparison."""
    s = _clean_latex(s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return re.sub(r"\s+|\$|\.$", "", s).lower()


def grade_math(text: str, reference: str) -> bool:
    """True when the response's final answer equals the reference (exactly, as numbers when both are)."""
    ref_text = re.sub(r"[()$%\s]", "", _clean_latex(reference)).rstrip(".")
    ref_value = parse_number(ref_text) if _NUM_RE.fullmatch(ref_text) else None
    if ref_value is not None:
        got = extract_final_number(text)
        return got is not None and parse_number(got) == ref_value
    span = extract_final_answer(text)
    return span is not None and _norm_str(span) == _norm_str(reference)
