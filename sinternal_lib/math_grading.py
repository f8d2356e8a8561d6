"""Grading of math answers (GSM8K numbers, MATH/AIME LaTeX) for the GRPO reward (grpo.py) and evaluation.

The final answer is the last `\\boxed{...}`, else a `#### x` line, an "answer is x" phrase, or the last
number; `<think>...</think>` reasoning is ignored. A plain-number reference is compared exactly as a
fraction (commas, `$`, `%`, units, `\\frac` removed). LaTeX/symbolic references, and answers written as
expressions (`2^{10}` for 1024), are checked with `math_verify` (TRL's accuracy reward), so
`\\dfrac{\\sqrt3}{2}` = `\\frac{\\sqrt{3}}{2}` and `2\\sqrt2` = `\\sqrt8`; where it cannot parse a side, a
normalised string match decides. An empty or unparseable reference ("", "???") always scores False.
See the math-verify section for its timeouts (signal-based only on the main thread) and size guard.
"""
from __future__ import annotations

import functools
import os
import re
import signal
import threading
from fractions import Fraction

from .reasoning import split_reasoning

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


def _has_content(s: str) -> bool:
    """True when a normalised answer holds a letter or digit besides LaTeX command names ("???" -> False)."""
    return any(c.isalnum() for c in re.sub(r"\\[a-zA-Z]+", "", _norm_str(s)))


def _plain_value(s: str) -> Fraction | None:
    """Exact value when `s` is nothing but a (formatted) number ("1,000", "$12.50.", "10\\%", "\\frac{3}{4}")."""
    t = re.sub(r"[()$%\s]", "", _clean_latex(s)).rstrip(".")
    return parse_number(t) if _NUM_RE.fullmatch(t) else None


# ----------------------------------------------------------------------------- math-verify
# math-verify bounds parse/verify with signal.alarm. signal.signal raises ValueError outside the main
# thread (math-verify re-raises it even with raise_on_error=False), and alarm(0) on exit would cancel an
# alarm the caller set (a test or job timeout). So timeouts are used only on the main thread with no
# ITIMER_REAL pending, and otherwise turned off (None). Without them a pathological answer (a power tower
# like 9^{9^9}, a 6-digit exponent, 999999!, (x+1)^{999} vs x^{999}+1) could run for seconds to forever
# inside sympy, and the alarm cannot interrupt some C-level arithmetic anyway, so `_too_costly` keeps such
# spans away from math-verify in every thread (they are graded by the exact / string path instead), which
# also keeps the verdict the same whichever thread grades.
_MV_TIMEOUT_S = 2          # per parse / per comparison, main thread only (signal.alarm takes whole seconds)
_MV_MAX_CHARS = 400        # MATH/AIME answers are short; longer spans are prose or junk
_EXPONENT_RE = re.compile(r"\^\s*\{?\s*\(?\s*(\d+)")
_BIG_INT_RE = re.compile(r"\d{6,}")
_COMMAND_RE = re.compile(r"\\[a-zA-Z]+")


def _has_variable(s: str) -> bool:
    return re.search(r"[a-zA-Z]", _COMMAND_RE.sub("", s)) is not None


def _too_costly(s: str) -> bool:
    """True for spans that can make sympy compute for a long time (huge powers / factorials, long text)."""
    if len(s) > _MV_MAX_CHARS or re.search(r"\^\s*\d+\s*\^", s):  # 9^9^9
        return True
    for m in re.finditer(r"\^\s*\{", s):  # a numeric exponent that has an exponent: 9^{9^{9}}, 2^{3\cdot 2^{99}}
        depth, j = 1, m.end()
        while j < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            j += 1
        group = s[m.end():j]
        if "^" in group and not _has_variable(group):
            return True
    has_var = _has_variable(s)
    for m in _EXPONENT_RE.finditer(s):  # 12345678^{1234567}; (x+1)^{999} vs x^{999}+1 expands for seconds
        if int(m.group(1)) >= 100_000 or (has_var and int(m.group(1)) > 200):
            return True
    return "!" in s.replace("\\!", "") and ("^" in s or _BIG_INT_RE.search(s) is not None)  # 999999!, (10^7)!


def _timeout_s() -> int | None:
    """math-verify's timeout for this call: signal-based on an idle main thread, else None (see above)."""
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        return None  # off POSIX math-verify would spawn a process per call instead
    return _MV_TIMEOUT_S if signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) else None


def _mv_parse(s: str, timeout: int | None) -> list:
    """math-verify's parse of one answer span as LaTeX; [] when it yields no sympy value."""
    from math_verify import parse  # here, not at the top: it imports sympy, needed for LaTeX answers only
    from math_verify.errors import TimeoutException

    text = "$\\boxed{" + re.sub(r"\\?\$", "", s).strip().rstrip(".") + "}$"  # one answer, not prose
    try:
        parsed = parse(text, parsing_timeout=timeout)
    except (Exception, TimeoutException):
        return []
    return parsed if any(not isinstance(p, str) for p in parsed) else []  # a bare string: not parsed


@functools.lru_cache(maxsize=4096)
def _mv_parse_gold(reference: str, timeout: int | None) -> list:
    """Cached: the GRPO reward grades a group of completions against the same reference."""
    return _mv_parse(reference, timeout)


def _verify(span: str, reference: str) -> bool | None:
    """math-verify's verdict on span vs reference, or None when either side cannot be parsed or is too costly."""
    if _too_costly(span) or _too_costly(reference):
        return None
    from math_verify import verify
    from math_verify.errors import TimeoutException

    timeout = _timeout_s()
    gold = _mv_parse_gold(reference, timeout)
    pred = _mv_parse(span, timeout) if gold else []
    if not pred:
        return None
    try:
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except (Exception, TimeoutException):
        return None


def grade_math(text: str, reference: str) -> bool:
    """True when the response's final answer equals the reference.

    Plain-number reference: exact fraction match, else (answer written as an expression) math-verify.
    Other references: math-verify, or a normalised string match where math-verify cannot parse.
    An empty / contentless reference is always False.
    """
    reference = (reference or "").strip()
    if not _has_content(reference):
        return False
    span = extract_final_answer(text)
    if span is None:
        return False
    ref_value = _plain_value(reference)
    if ref_value is not None:
        got = extract_final_number(text)
        if got is not None and parse_number(got) == ref_value:
            return True
        # An answer written as an expression (2^{10}, \\sqrt{4}) is checked against the exact value.
        return _plain_value(span) is None and _verify(span, _format(ref_value)) is True
    verdict = _verify(span, reference)
    return verdict is True or _norm_str(span) == _norm_str(reference)
