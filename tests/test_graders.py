"""Graders (environment/graders.py): hand-checked cases, near misses included, and token F1 against a
naive reference. A wrong grader silently corrupts every number the project reports: MPS decides
which episodes get corrected and RL computes its rewards from these verdicts."""

import threading
import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from environment.graders import (exact_match, grade, is_correct, normalise_output, normalize_answer,
                                 numbers_equal, parse_number, token_f1)


@pytest.mark.parametrize("text, expected", [
    ("1,234", Fraction(1234)),
    ("$12.50", Fraction(25, 2)),
    ("12.5%", Fraction(25, 2)),
    ("3/4", Fraction(3, 4)),
    ("378.0", Fraction(378)),
    ("-7", Fraction(-7)),
    ("\\boxed{12}", Fraction(12)),
    ("x = 12", Fraction(12)),
    ("12 apples", Fraction(12)),
    ("7 km/h.", Fraction(7)),
    ("\\frac{3}{4}", Fraction(3, 4)),
    ("\\$1,234.50", Fraction(2469, 2)),
    ("1e+16", Fraction(10**16)),
    (".5", Fraction(1, 2)),
    # Near misses that must not be read as a number.
    ("12 + 3", None),
    ("3\\pi", None),
    ("1,2", None),
    ("five", None),
    ("between 10 and 12", None),
    ("3/0", None),
    ("", None),
    (None, None),
])
def test_parse_number_hand_checked(text, expected):
    """Breaks: numeric grading of final answers ("378.0", "$1,234.50", "x = 12") and the refusal
    to read a number out of an expression or a sentence."""
    assert parse_number(text) == expected


def test_numbers_equal_relative_tolerance():
    """Breaks: the 1e-6 relative tolerance that absorbs float noise but not real differences."""
    assert numbers_equal(Fraction(1_000_001), Fraction(1_000_000))      # diff = 1e-6 * max
    assert not numbers_equal(Fraction("1000001.01"), Fraction(1_000_000))
    assert numbers_equal(0.1 + 0.2, Fraction(3, 10))                    # float noise, floats in
    assert numbers_equal(Fraction(0), Fraction(0))
    assert not numbers_equal(Fraction(0), Fraction(1, 10**9))
    assert not numbers_equal(None, Fraction(1))
    assert numbers_equal(float("inf"), float("inf")) and not numbers_equal(float("nan"), 1.0)


@pytest.mark.parametrize("prediction, reference, expected", [
    ("12.0", "12", 1.0),
    ("12", "12.0", 1.0),
    ("12.1", "12", 0.0),
    ("$1,234.50", "1234.5", 1.0),
    ("378.0", "378", 1.0),
    ("12.5%", "12.5", 1.0),
    ("3/4", "0.75", 1.0),
    ("x = 12", "12", 1.0),
    ("12 dollars", "12", 1.0),
    ("between 10 and 12", "12", 0.0),
    ("12 + 3", "15", 0.0),
    ("-7", "7", 0.0),
    (None, "12", 0.0),
    ("", "12", 0.0),
    ("   ", "0", 0.0),
])
def test_numeric_grader(prediction, reference, expected):
    """Breaks: pass@1 and rewards on arith and GSM8K, whose answers come from str(x) of floats."""
    assert grade("numeric", prediction, reference) == expected


@pytest.mark.parametrize("prediction, reference, expected", [
    ("\\frac{1}{2}", "0.5", 1.0),
    ("0.5", "\\frac{1}{2}", 1.0),
    ("0.51", "\\frac{1}{2}", 0.0),
    ("3", "3\\pi", 0.0),
    ("2\\sqrt{3}", "\\sqrt{12}", 1.0),
    ("x^2+1", "1+x^2", 1.0),
    ("x^2+2", "1+x^2", 0.0),
    ("\\boxed{204}", "204", 1.0),
    ("204.0", "204", 1.0),
    ("\\text{(C)}", "C", 1.0),
    ("}{", "1", 0.0),        # unparseable: a grade of 0, never an exception
    (None, "1", 0.0),
])
def test_math_grader(prediction, reference, expected):
    """Breaks: MATH500 / AIME scoring through math-verify (symbolic equivalence), including its
    failure modes, which must give 0 rather than raise inside a rollout."""
    assert grade("math", prediction, reference) == expected


def test_math_grader_off_the_main_thread():
    """Breaks: grading math answers from a worker thread, where math-verify's SIGALRM timeout
    would raise 'signal only works in main thread'."""
    results = []
    thread = threading.Thread(target=lambda: results.append(grade("math", "\\frac{1}{2}", "0.5")))
    thread.start()
    thread.join(timeout=60)
    assert results == [1.0]


def test_normalize_and_exact_match():
    """Breaks: the SQuAD normalisation shared by the exact and f1 graders."""
    assert normalize_answer("  The Beatles!  ") == "beatles"
    assert normalize_answer("A cat's   toy, an apple") == "cats toy apple"
    assert exact_match("The Beatles", "beatles")
    assert not exact_match("Beatles", "Beetles")
    assert grade("exact", "The Beatles", "beatles") == 1.0
    assert grade("exact", "Paul McCartney", "McCartney") == 0.0


def test_f1_grader_and_its_threshold():
    """Breaks: multi-hop QA scoring (token F1) and the F1 >= 0.8 rule that MPS and RL use."""
    assert grade("f1", "The Beatles", "beatles") == 1.0
    assert grade("f1", "Mela", "Mela Dorn") == pytest.approx(2 / 3)   # P = 1, R = 1/2
    assert not is_correct("f1", "Mela", "Mela Dorn")
    assert grade("f1", "Mela Dorn Smith", "Mela Dorn") == pytest.approx(0.8)   # P = 2/3, R = 1
    assert is_correct("f1", "Mela Dorn Smith", "Mela Dorn")
    assert grade("f1", "yes it is", "yes") == 0.0      # HotpotQA: yes/no is all or nothing
    assert grade("f1", "no", "no") == 1.0
    assert grade("f1", None, "Paris") == 0.0
    assert grade("f1", "the", "the") == 1.0            # both normalise to nothing


def test_is_correct_and_unknown_grader():
    """Breaks: correct/wrong verdicts for non-F1 graders, and a typo in a task's grader name
    passing unnoticed."""
    assert is_correct("numeric", "306.0", "306")
    assert not is_correct("numeric", "305.99", "306")
    assert is_correct("exact", "1957.", "1957")
    with pytest.raises(ValueError):
        grade("fuzzy", "a", "a")


def _naive_f1(prediction: str, reference: str) -> float:
    """Token F1 written out with explicit loops, as a reference for token_f1."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    remaining, same = list(ref), 0
    for token in pred:
        if token in remaining:
            remaining.remove(token)
            same += 1
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["red", "blue", "The", "a", "cat", "Cat!", "dog"]), max_size=6),
       st.lists(st.sampled_from(["red", "blue", "the", "cat", "dog", "fish"]), max_size=6))
def test_token_f1_matches_naive_reference(prediction_tokens, reference_tokens):
    """Breaks: token F1's multiset counting (a repeated token counts as often as it is shared)."""
    prediction, reference = " ".join(prediction_tokens), " ".join(reference_tokens)
    assert token_f1(prediction, reference) == pytest.approx(_naive_f1(prediction, reference))
    # Symmetry is a property of F1 itself (precision and recall swap).
    assert token_f1(prediction, reference) == pytest.approx(token_f1(reference, prediction))


# ---------------------------------------------------------------------------------------------------
# Totality and speed: whatever the model passes to final_answer, a grade comes back, quickly
# ---------------------------------------------------------------------------------------------------

def _timed_grade(grader, prediction, reference):
    start = time.perf_counter()
    score = grade(grader, prediction, reference)
    return score, time.perf_counter() - start


@pytest.mark.parametrize("prediction, reference, expected", [
    ("1" * 5000, "1", 0.0),                       # int() refuses 4300+ digits: must not raise
    ("0." + "3" * 5000, "0.3333333333", 1.0),     # final_answer(Decimal(1) / 3) at high precision
    ("1e50000000", "5", 0.0),                     # exact arithmetic on it would take minutes
    ("1e50000000", "1e50000000", 1.0),            # out of bounds: compared as text
    ("1" * 1_000_000 + "e" + "9" * 100_000, "3", 0.0),
    ("2e-1000000", "0", 0.0),
    ("1" * 20 + "/" + "7" * 5000, "0", 0.0),      # a denominator of 5000 digits
])
def test_numeric_grader_bounds_digits_and_exponents(prediction, reference, expected):
    """Breaks: a rollout that crashes (ValueError: exceeds the limit for integer string conversion)
    or hangs for minutes on a huge number in a final answer."""
    for grader in ("numeric", "math"):
        score, seconds = _timed_grade(grader, prediction, reference)
        assert score == expected and seconds < 1.0, (grader, score, seconds)


@pytest.mark.parametrize("prediction, expected", [
    ("B", 1.0), ("b", 1.0), ("(B)", 1.0), ("B.", 1.0), ("B) Paris", 1.0), ("B. Paris", 1.0),
    ("Answer: B", 1.0), ("the answer is (B)", 1.0), ("\\boxed{B}", 1.0), ("(B) Paris", 1.0),
    ("[b] Paris", 1.0), ("Option B", 1.0),
    ("A", 0.0), ("the", 0.0), (".", 0.0), ("Paris", 0.0), ("b dog", 0.0), ("b. dog", 0.0),
    ("B and C", 0.0), ("B, C", 0.0), ("I think B", 0.0), ("", 0.0), (None, 0.0),
])
def test_choice_grader(prediction, expected):
    """Breaks: multiple-choice scoring: the letter a prediction names, in the ways models write it,
    and nothing for an answer that names no letter."""
    assert grade("choice", prediction, "B") == expected


def test_a_letter_reference_is_not_matched_by_an_empty_answer():
    """Breaks: gold "A" normalises to nothing under SQuAD rules (an article), so "the" or "." would
    score as correct under exact and f1."""
    for grader in ("exact", "f1"):
        assert grade(grader, "the", "A") == 0.0 and grade(grader, ".", "A") == 0.0
        assert grade(grader, "A", "A") == 1.0 and grade(grader, "a.", "A") == 1.0


def test_math_fast_path_leaves_percentages_and_units_to_math_verify(monkeypatch):
    """Breaks: "10\\%" read as the plain number 10 by the fast path, never asking math-verify
    (which knows that 10% is 0.1)."""
    asked = []
    import environment.graders as graders
    monkeypatch.setattr(graders, "_math_verify_equal", lambda p, r: asked.append((p, r)) or True)
    grade("math", "10\\%", "0.1")
    grade("math", "5 cm", "5")
    assert asked == [("10\\%", "0.1"), ("5 cm", "5")]
    assert grade("math", "12", "12.0") == 1.0 and len(asked) == 2  # plain numbers stay on the fast path


def test_math_percent_against_math_verify():
    """Breaks: the grade of a percentage answer against its decimal form (math-verify's verdict)."""
    assert grade("math", "10\\%", "0.1") == 1.0


_HOSTILE_TEXT = st.one_of(
    st.text(max_size=300),
    st.builds(lambda digits, exponent: f"{digits}e{exponent}", st.text("0123456789", min_size=1, max_size=5000),
              st.integers(-10**12, 10**12)),
    st.builds(lambda a, b: f"\\frac{{{a}}}{{{b}}}", st.text("0123456789-", max_size=3000), st.text("0123456789", max_size=3000)),
    st.builds(lambda s, n: s * n, st.sampled_from(["9", "\\boxed{", "1,000", "((", "\\frac{1}{", "\udcff", "%"]),
              st.integers(1, 20_000)),
)


@settings(max_examples=150, deadline=None)
@given(prediction=_HOSTILE_TEXT, reference=st.sampled_from(["12", "0.5", "\\frac{1}{2}", "B", "A", "Paris", "the"]),
       grader=st.sampled_from(["numeric", "math", "f1", "exact", "choice"]))
def test_grade_is_total_and_fast(prediction, reference, grader):
    """Breaks: a grade that raises (ending a rollout) or takes seconds on some model output."""
    grade("math", "\\frac{1}{2}", "0.5")  # math-verify's first call imports sympy: not timed
    score, seconds = _timed_grade(grader, prediction, reference)
    # math-verify's parse and comparison each stop at MATH_TIMEOUT_S (1 s): about 2 s at worst.
    assert 0.0 <= score <= 1.0 and seconds < (2.5 if grader == "math" else 1.0), (score, seconds)


def test_deeply_nested_math_is_not_handed_to_math_verify():
    """Breaks: '((' * 211 took 2.3 s in math-verify's LaTeX parser on its first call; towers such as
    "x^x^x..." and "10^{10^{10}}" hit its timeout, now 1 s a stage instead of 3."""
    for prediction in ("((" * 211, "\\frac{" * 40 + "1" + "}" * 40, "[" * 30):
        score, seconds = _timed_grade("math", prediction, "the")
        assert score == 0.0 and seconds < 1.0, (prediction[:20], seconds)
    for tower in ("x^" * 150 + "x", "10^{10^{10}}"):
        score, seconds = _timed_grade("math", tower, "the")
        assert score == 0.0 and seconds < 2.5, (tower[:20], seconds)
    assert grade("math", "\\frac{1}{\\sqrt{(2)}}", "\\frac{\\sqrt{2}}{2}") == 1.0  # shallow: still verified


@pytest.mark.parametrize("prediction", [
    "x" * 1_000_000, "9" * 1_000_000, "\\frac{1}{" * 110_000, "the " * 250_000, "\\boxed{" * 140_000,
    "1," * 500_000, "B" + " b" * 500_000,
])
def test_a_megabyte_answer_is_graded_within_a_second(prediction):
    """Breaks: a 1 MB final answer stalls a rollout (slow regexes, math-verify on huge input)."""
    grade("math", "\\frac{1}{2}", "0.5")  # warm math-verify up
    for grader in ("numeric", "math", "f1", "exact", "choice"):
        score, seconds = _timed_grade(grader, prediction, "12")
        assert 0.0 <= score <= 1.0 and seconds < 1.0, (grader, seconds)


def test_normalise_output():
    """The one normalisation behind key-step equivalence. If it broke, the same printed value would
    count as a different step ("42.0" vs "42") and earn 0.1 instead of 0.5 or 0."""
    assert normalise_output("  42.0 \n") == normalise_output("42") == "42"
    assert normalise_output("total:\t1,234.50  dollars") == "total: 1234.5 dollars"
    assert normalise_output(str(0.1 + 0.2)) == normalise_output("0.3") == "0.3"
    assert normalise_output("1e+16") == "10000000000000000"
    assert normalise_output("x1 = 12.5\n\n y = 3") == "x1 = 12.5 y = 3"
    assert normalise_output("version 1.2.3") == "version 1.2.3"  # not a number: left alone
    assert normalise_output("12") != normalise_output("12.1")
