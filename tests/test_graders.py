"""Graders (bench/graders.py): hand-checked cases, near misses included, and token F1 against a
naive reference. A wrong grader silently corrupts every number the project reports: MPS decides
which episodes get corrected and RL computes its rewards from these verdicts."""

import threading
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.graders import (exact_match, grade, is_correct, normalize_answer, numbers_equal,
                           parse_number, token_f1)


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
