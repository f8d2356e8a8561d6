"""Math answer extraction and exact-match grading (shared by the GRPO reward and the evaluation)."""
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
