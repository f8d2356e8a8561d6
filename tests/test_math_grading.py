"""Math answer extraction and grading (exact numbers + math-verify; shared by the GRPO reward and the evaluation)."""
import pytest

from sinternal_lib.math_grading import extract_final_answer, extract_final_number, grade_math


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{42}", "42"),
    ("<think>Maybe 40, or 41?</think>So the total is \\boxed{42}.", "42"),
    ("The total is 1,234", "1234"),
    ("It costs $12.50.", "12.5"),
    ("42 apples", "42"),
    ("The answer is 7.", "7"),
    ("The answer is 7 apples, plus 3 spare ones.", "7"),
    ("First 3, then 5, so 8 in total.", "8"),
    ("#### 1,000", "1000"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("\\boxed{1{,}234}", "1234"),
    ("Answer: -3", "-3"),
    ("The discount is 20%.", "20"),
    ("One third: 1/3", "1/3"),
])
def test_extract_final_number_formats(text: str, expected: str) -> None:
    assert extract_final_number(text) == expected


@pytest.mark.parametrize("text", [
    "I cannot help with that request.",
    "<think>Let me compute 5 * 8 = 40 and then",  # reasoning never finished: no answer yet
    "",
])
def test_no_answer_gives_none(text: str) -> None:
    assert extract_final_number(text) is None
    assert grade_math(text, "40") is False


def test_reasoning_numbers_are_ignored() -> None:
    text = "<think>It could be 12 or 13; check: 3 * 4 = 12.</think>The answer is 13."
    assert grade_math(text, "13")
    assert not grade_math(text, "12")


@pytest.mark.parametrize("text, reference, ok", [
    ("$12.50.", "12.5", True),
    ("38.40", "38.4", True),
    ("1,234 people", "1234", True),
    ("The answer is 7.", "8", False),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", True),
    ("\\boxed{(3, -1)}", "(3,-1)", True),
    ("\\boxed{(3, 1)}", "(3,-1)", False),
    ("\\boxed{073}", "73", True),
])
def test_grade_math(text: str, reference: str, ok: bool) -> None:
    assert grade_math(text, reference) is ok


def test_final_answer_span_prefers_boxed() -> None:
    assert extract_final_answer("The answer is 5, i.e. \\boxed{6}") == "6"


# ----------------------------------------------------------------------------- math-verify equivalence
# Equal values written differently (MATH-500 / AIME style). The first ten are the table counted in the
# change that moved grading onto math-verify; the old exact/string grader accepted only some of them.
EQUAL_PAIRS = [
    ("\\boxed{\\dfrac{\\sqrt3}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{2\\sqrt2}", "\\sqrt8"),
    ("\\boxed{\\frac12}", "0.5"),
    ("The answer is $\\boxed{(1,2)}$.", "(1, 2)"),
    ("\\boxed{x=3}", "3"),
    ("\\boxed{10\\%}", "10"),
    ("\\boxed{\\pi/2}", "\\frac{\\pi}{2}"),
    ("\\boxed{1,000}", "1000"),
    ("\\boxed{\\text{(A)}}", "A"),
    ("\\boxed{3\\sqrt{3}}", "\\sqrt{27}"),
    # more of the same
    ("\\boxed{2^{10}}", "1024"),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt2}{2}"),
    ("\\boxed{\\left(3, \\frac{\\pi}{2}\\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}"),
    ("\\boxed{(x+1)^2}", "x^2+2x+1"),
    ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{\\tfrac{2}{4}}", "\\frac12"),
    ("\\boxed{(-\\infty, 3]}", "(-\\infty,3]"),
    ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("So the answer is $\\frac{\\sqrt{2}}{2}$.", "\\frac{1}{\\sqrt2}"),
]


@pytest.mark.parametrize("text, reference", EQUAL_PAIRS)
def test_equal_answers_written_differently(text: str, reference: str) -> None:
    assert grade_math(text, reference) is True


@pytest.mark.parametrize("text, reference", [
    ("\\boxed{\\frac{\\sqrt3}{3}}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{2\\sqrt3}", "\\sqrt8"),
    ("\\boxed{(2,1)}", "(1,2)"),
    ("\\boxed{[1,2]}", "[1,2)"),
    ("\\boxed{y=3}", "x=3"),
    ("\\boxed{\\text{B}}", "\\text{(A)}"),
    ("\\boxed{\\pi}", "3.14159"),
    ("\\boxed{2^{10}}", "1025"),
    ("\\boxed{1001}", "1,000"),
    ("\\boxed{0.3333333}", "1/3"),       # plain numbers stay exact: no float tolerance for GSM8K/AIME
    ("\\boxed{\\text{Eve}}", "\\text{Evelyn}"),
    ("\\boxed{x^2+2x}", "(x+1)^2"),
])
def test_unequal_answers_are_wrong(text: str, reference: str) -> None:
    assert grade_math(text, reference) is False


@pytest.mark.parametrize("reference", ["", "   ", "???", "!!", "$$", "\\boxed{", "\\text{}", "{}", None])
@pytest.mark.parametrize("text", ["", "???", "\\boxed{???}", "\\boxed{}", "\\boxed{42}", "!!", "$$"])
def test_unparseable_reference_scores_zero(text: str, reference) -> None:
    assert grade_math(text, reference) is False


def test_reasoning_is_ignored_for_latex_answers() -> None:
    ref = "\\frac{\\sqrt{3}}{2}"
    assert grade_math("<think>Maybe \\boxed{\\frac{\\sqrt3}{3}}?</think>So \\boxed{\\dfrac{\\sqrt3}{2}}", ref)
    assert not grade_math("<think>Maybe \\boxed{\\frac{\\sqrt3}{2}}?</think>So \\boxed{\\dfrac{\\sqrt3}{3}}", ref)
    assert not grade_math("<think>It is \\boxed{\\frac{\\sqrt3}{2}}", ref)  # reasoning never finished


def test_same_verdicts_off_the_main_thread() -> None:
    """math-verify's signal timeouts raise in worker threads; grading there must work and agree."""
    import threading

    cases = EQUAL_PAIRS[:10] + [("\\boxed{2\\sqrt3}", "\\sqrt8"), ("\\boxed{9^{9^{9}}}", "5")]
    out: list[bool] = []
    worker = threading.Thread(target=lambda: out.extend(grade_math(t, r) for t, r in cases))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert out == [grade_math(t, r) for t, r in cases] == [True] * 10 + [False, False]


def test_callers_alarm_is_left_alone() -> None:
    """With an ITIMER_REAL already pending (a job/test timeout), grading must not cancel or replace it."""
    import signal
    import sys

    if sys.platform == "win32":
        pytest.skip("no setitimer")
    handler = signal.getsignal(signal.SIGALRM)
    signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        assert grade_math("\\boxed{2\\sqrt2}", "\\sqrt8")
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 90.0
        assert signal.getsignal(signal.SIGALRM) is handler
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


@pytest.mark.parametrize("answer", ["9^{9^{9}}", "10^{10^{10}}", "12345678^{1234567}", "999999!",
                                    "(x+1)^{999}", "\\sqrt{" * 300 + "2" + "}" * 300])
def test_pathological_answers_are_fast(answer: str) -> None:
    import time

    t0 = time.monotonic()
    assert grade_math(f"\\boxed{{{answer}}}", "x^{999}+1") is False
    assert grade_math(f"\\boxed{{{answer}}}", "5") is False
    assert time.monotonic() - t0 < 5.0
