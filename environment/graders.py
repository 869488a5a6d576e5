"""Graders: turn (prediction, reference answer) into a score in [0, 1].

Every task names its grader (METHOD.md section 4). The agent's final answer is the string that its
code passed to `final_answer(x)`, i.e. `str(x)`, so graders must be tolerant of how Python prints
values ("378.0" for 378) without being so lenient that a wrong answer passes.

    numeric  the first number of each string (after light clean-up) is parsed exactly (Fraction) and
             compared within a relative tolerance of 1e-6: "12.0" == "12", "$1,234.50" == "1234.5",
             but "12.1" != "12". Score 0 or 1.
    math     math-verify (the field's library for LaTeX / symbolic answer equivalence), with a fast
             exact path when both sides are plain numbers: "\\frac{1}{2}" == "0.5". Score 0 or 1.
    exact    SQuAD normalisation (lowercase, no punctuation, no articles a/an/the, single spaces),
             then string equality: "The Beatles" == "beatles". Score 0 or 1.
    f1       SQuAD/HotpotQA token F1 after the same normalisation. Score in [0, 1]; it *counts as
             correct* (for MPS verdicts and RL rewards) at F1 >= 0.8 (METHOD.md section 4).
    choice   multiple choice: the one option letter the prediction names ("B", "(b)", "B. Paris",
             "Answer: B", "the answer is (B)") against the reference letter. Score 0 or 1.

Last, step signatures (step_signature, normalise_output): what one agent step did, read from its
stored observation (exception type, printed output with numbers written one way, final answer), by
which RL judges two steps run from the same state equivalent (rl.same_signature).

Graders are total and fast: a missing (None) or empty prediction scores 0 under every grader, and
`grade` never raises for a prediction, whatever the model wrote (a string of up to 1 MB is graded in
well under a second: digits and exponents are bounded before any exact arithmetic, and math-verify
only sees answers of up to MATH_VERIFY_MAX_CHARS, nested at most MATH_VERIFY_MAX_DEPTH deep). The one
exception is math-verify itself on short adversarial LaTeX ("x^x^x^...", "10^{10^{10}}"): its parse
and its comparison each stop at MATH_TIMEOUT_S, so a "math" grade can take about two seconds. An
unknown grader name is a programming error and does raise.

Deviations from common practice, each on purpose:
1. `numeric` ignores a trailing percent sign ("12.5%" == "12.5"): task answers that are percentages
   are stated in percent units, and a student that prints the unit should not lose the point.
2. `numeric` reads the number at the *start* of the answer (after an optional "x =" left-hand side),
   not the last number in a free-text answer as GSM8K scripts do: the answer here is the argument of
   `final_answer`, not a chain of thought, so "between 10 and 12" must not count as "12".
3. Numbers keep at most MAX_SIGNIFICANT_DIGITS significant digits (far below the 1e-6 tolerance),
   and a number beyond 10**+-MAX_DECIMAL_EXPONENT is not read as a number (it is then compared as
   text): exact arithmetic on "1e50000000" would take minutes, and int() refuses 4300+ digits.
4. `exact` and `f1` against a reference that normalises to nothing (the letter "A" is an article):
   the official scripts then score any prediction that also normalises to nothing ("the", ".") as
   correct. Here such a reference is compared as lowercased text instead.
"""

from __future__ import annotations

import math
import re
import string
import threading
import warnings
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

# The grader names a Task may carry.
GRADERS = ("numeric", "math", "f1", "exact", "choice")
# Token F1 at or above this counts as a correct answer (METHOD.md section 4).
F1_CORRECT = 0.8
# Seconds math-verify may spend parsing or comparing one answer (it uses SIGALRM, main thread only).
MATH_TIMEOUT_S = 1
# Longer answers are not handed to math-verify (sympy can take seconds on them): no benchmark's
# answer is this long, so a longer prediction is compared as text only.
MATH_VERIFY_MAX_CHARS = 300
# Nor are answers nested deeper than this ("((((..." makes its LaTeX parser take seconds).
MATH_VERIFY_MAX_DEPTH = 12
# Bounds on a number before exact arithmetic (see deviation 3).
MAX_SIGNIFICANT_DIGITS = 60
MAX_DECIMAL_EXPONENT = 1000
# ASCII punctuation, removed by the SQuAD normalisation (a frozenset: constant, not mutable state).
_PUNCTUATION = frozenset(string.punctuation)


# ---------------------------------------------------------------------------------------------------
# SQuAD / HotpotQA normalisation, exact match and token F1
# ---------------------------------------------------------------------------------------------------

def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (SQuAD v1.1)."""
    s = s.lower()
    # Punctuation is removed (not replaced by a space) as in the SQuAD script: "o'neil" -> "oneil".
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, reference: str) -> bool:
    """True when both strings are equal after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (HotpotQA's F1)."""
    pred_norm, ref_norm = normalize_answer(prediction), normalize_answer(reference)
    # HotpotQA rule: yes/no answers are all-or-nothing ("yes it is" must not half-match "yes").
    if (pred_norm in ("yes", "no", "noanswer") or ref_norm in ("yes", "no", "noanswer")) \
            and pred_norm != ref_norm:
        return 0.0
    pred_tokens, ref_tokens = pred_norm.split(), ref_norm.split()
    # An answer that normalises to nothing (e.g. "The") can only match another empty answer.
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    # Multiset intersection: a token counts as often as it appears on both sides.
    num_same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------------

# One number: optional sign, digits with optional thousands commas ("1,234") or plain digits,
# optional decimals, optional exponent ("1e+16" is how Python prints large floats), optional "/d"
# for a fraction ("3/4"). Thousands groups must have exactly three digits, so "1,2" is not 12.
_NUMBER = re.compile(
    r"(?P<sign>[-+]?)\s*\$?\s*"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?P<exp>[eE][-+]?\d+)?"
    r"(?:\s*/\s*(?P<den>\d+))?"
)
# What may follow the number in a tolerant read: units and words ("km/h", "apples", "%", "dollars"),
# but no further digits (so "12 + 3" or "3 and 4" are not read as 12 or 3) and no LaTeX ("3\\pi").
_TRAILER = re.compile(r"[\sA-Za-z%.,;:!?/()'\"-]*")


def _unlatex(s: str) -> str:
    """Undo the LaTeX that commonly wraps a plain number: \\boxed, \\text, \\frac{a}{b}, \\$, \\%."""
    # Keep only what is inside the last \boxed{...} (models box their final answer).
    boxed = list(re.finditer(r"\\boxed\s*\{", s))
    if boxed:
        start = boxed[-1].end()
        depth, end = 1, start
        while end < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[end], 0)
            end += 1
        s = s[start:end - 1] if depth == 0 else s[start:]
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}", r" \1", s)
    s = re.sub(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}", r"\1/\2", s)
    s = s.replace("\\$", "$").replace("\\%", "%").replace("{,}", ",").replace("\\!", "")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\u2212", "-")  # unicode minus
    return s.strip().strip("$").strip()


def _read_number(s: str, strict: bool) -> Fraction | None:
    """Read the number at the start of `s`; `strict` allows nothing after it (a final period aside):
    no unit and no percent sign, whose meaning only math-verify can weigh ("10\\%" vs "0.1")."""
    s = _unlatex(s)
    # "x = 12": the value is the right-hand side of the last "=".
    if "=" in s:
        s = s.rsplit("=", 1)[1].strip()
    match = _NUMBER.match(s)
    if match is None:
        return None
    rest = s[match.end():]
    allowed = re.fullmatch(r"\s*\.?", rest) if strict else _TRAILER.fullmatch(rest)
    if allowed is None:
        return None
    value = _bounded_fraction(match["num"].replace(",", ""), match["exp"])
    if value is None:
        return None
    if match["den"] is not None:
        denominator = _bounded_fraction(match["den"], None)
        if not denominator:  # zero, or too large to be a denominator anyone means
            return None
        value /= denominator
    return -value if match["sign"] == "-" else value


def _bounded_fraction(number: str, exponent: str | None) -> Fraction | None:
    """The exact value of "digits[.digits]" times 10**exponent, or None if it is out of bounds.

    Exact (Fraction("378.0") == 378, no float rounding) up to MAX_SIGNIFICANT_DIGITS significant
    digits; later digits are dropped (a relative change below 1e-59). Values beyond
    10**+-MAX_DECIMAL_EXPONENT are refused before any big-integer arithmetic is done."""
    whole, _, decimals = number.partition(".")
    digits = (whole + decimals).lstrip("0")
    if not digits:
        return Fraction(0)
    shift = -len(decimals)  # value = int(digits) * 10**shift
    if exponent:
        # An exponent with more digits than this cannot be brought back in bounds by the digits
        # of `number`; refusing it first keeps int() off a million-digit exponent.
        exponent_digits = exponent[1:].lstrip("+-").lstrip("0")
        if len(exponent_digits) > len(str(MAX_DECIMAL_EXPONENT + len(number))):
            return None
        shift += int(exponent[1:])
    if len(digits) > MAX_SIGNIFICANT_DIGITS:
        shift += len(digits) - MAX_SIGNIFICANT_DIGITS
        digits = digits[:MAX_SIGNIFICANT_DIGITS]
    if abs(shift + len(digits)) > MAX_DECIMAL_EXPONENT:  # the leading digit's decimal position
        return None
    return Fraction(int(digits)) * Fraction(10) ** shift


def parse_number(s: str | None) -> Fraction | float | None:
    """Tolerant number reader: "1,234", "$12.50", "12.5%", "3/4", "378.0", "-7", "\\boxed{12}",
    "x = 12", "12 apples" -> the exact value as a Fraction; None if the text does not start with one.

    (Returns Fraction for everything it parses; the float in the type is for callers that pass
    floats on to `numbers_equal`, which accepts both.)
    """
    if s is None:
        return None
    return _read_number(str(s), strict=False)


def numbers_equal(a: Fraction | float | None, b: Fraction | float | None,
                  rel_tol: float = 1e-6) -> bool:
    """|a - b| <= rel_tol * max(|a|, |b|), computed exactly; None equals nothing."""
    if a is None or b is None:
        return False
    # inf / nan cannot become Fractions; they are equal only to themselves (nan to nothing).
    if isinstance(a, float) and not math.isfinite(a) or isinstance(b, float) and not math.isfinite(b):
        return a == b
    a, b = Fraction(a), Fraction(b)
    # Exact arithmetic: no overflow for huge values, and 0 == 0 passes (the tolerance scales to 0).
    return abs(a - b) <= Fraction(rel_tol) * max(abs(a), abs(b))


# ---------------------------------------------------------------------------------------------------
# Math answers (math-verify)
# ---------------------------------------------------------------------------------------------------

def _math_verify_equal(prediction: str, reference: str) -> bool:
    """Symbolic equivalence by math-verify; False (never an exception) if it cannot decide."""
    # Imported here: math-verify pulls in sympy (~1 s), which only math tasks need.
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    # math-verify times out with SIGALRM, which Python allows only on the main thread; elsewhere
    # (e.g. a grading thread pool) it must run without a timeout rather than raise.
    timeout_s = MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None

    def parse_answer(text: str) -> list:
        # Benchmark answers are bare LaTeX ("\frac{14}{3}"); math-verify looks for LaTeX inside
        # $...$ or \boxed{}, so wrap bare answers. If that finds nothing, try the raw text.
        wrapped = text if ("$" in text or "\\boxed" in text) else f"${text}$"
        return (parse(wrapped, parsing_timeout=timeout_s)
                or parse(text, parsing_timeout=timeout_s))

    try:
        gold, pred = parse_answer(reference), parse_answer(prediction)
        if not gold or not pred:
            return False
        # verify is not symmetric: the reference goes first (as math-verify documents).
        return bool(verify(gold, pred, timeout_seconds=timeout_s))
    except (Exception, TimeoutException):  # TimeoutException derives from BaseException
        return False


def _nesting_depth(s: str) -> int:
    """The deepest nesting of (, [ and { in `s` (unbalanced closers ignored)."""
    depth = deepest = 0
    for ch in s:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}" and depth:
            depth -= 1
    return deepest


def _squash(s: str) -> str:
    """Last-resort string form for math answers: no spaces, no $, no \\left / \\right."""
    return re.sub(r"\s+|\$|\\left|\\right", "", s)


# ---------------------------------------------------------------------------------------------------
# The graders
# ---------------------------------------------------------------------------------------------------

def grade(grader: str, prediction: str | None, reference: str) -> float:
    """Score of `prediction` against `reference` in [0, 1] under the named grader. Never raises for
    a prediction (see the module docstring)."""
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}: expected one of {', '.join(GRADERS)}")
    if prediction is None or not str(prediction).strip():
        return 0.0
    prediction, reference = str(prediction).strip(), str(reference).strip()
    try:
        return _grade(grader, prediction, reference)
    except Exception as error:  # a bug here must cost one grade, not the rollout that asked for it
        warnings.warn(f"grader {grader!r} failed on a prediction of {len(prediction)} characters "
                      f"({type(error).__name__}: {error}); graded 0", RuntimeWarning, stacklevel=2)
        return 0.0


def _grade(grader: str, prediction: str, reference: str) -> float:
    if grader == "choice":
        letter = choice_letter(reference)
        if letter is None:  # a reference that names no option (a data error): compare as text
            return float(exact_match(prediction, reference))
        return float(choice_letter(prediction) == letter)
    if grader in ("f1", "exact") and not normalize_answer(reference):
        # Deviation 4: a reference that normalises to nothing ("A", "The") is compared as text.
        return float(prediction.lower().rstrip(".") == reference.lower().rstrip("."))
    if grader == "f1":
        return token_f1(prediction, reference)
    if grader == "exact":
        return float(exact_match(prediction, reference))
    if grader == "numeric":
        ref_value = parse_number(reference)
        # A reference that is not a number (a data error) still gets a sensible verdict.
        if ref_value is None:
            return float(exact_match(prediction, reference))
        return float(numbers_equal(parse_number(prediction), ref_value))

    # grader == "math". Plain numbers on both sides: compare exactly, no sympy needed. The strict
    # reader refuses "3\pi", "2\sqrt{3}", "10\%" or "5 cm", which must go to math-verify, not be
    # read as 3, 2, 10 or 5.
    pred_value, ref_value = _read_number(prediction, strict=True), _read_number(reference, strict=True)
    if pred_value is not None and ref_value is not None:
        return float(numbers_equal(pred_value, ref_value))
    if _squash(prediction) == _squash(reference):
        return 1.0
    if len(prediction) > MATH_VERIFY_MAX_CHARS or _nesting_depth(prediction) > MATH_VERIFY_MAX_DEPTH:
        return 0.0
    return float(_math_verify_equal(prediction, reference))


# An option letter: alone ("B", "b", "B."), in brackets ("(B)", "[b] Paris"), or first and followed
# by its text ("B) Paris", "B: Paris", "B. Paris"), possibly after "answer:" / "the answer is" / "option".
_CHOICE_PREFIX = re.compile(r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:=]?\s*", re.I)
_BRACKETED_LETTER = re.compile(r"[(\[]([A-Za-z])[)\]]")
_BARE_LETTER = re.compile(r"([A-Za-z])(?:[.:)]|$)")


def choice_letter(text: str) -> str | None:
    """The option letter a multiple-choice answer names, upper-cased, or None if it names none.

    A lone lowercase letter counts ("b"); a bare lowercase letter followed by words does not ("a.
    dog"), and neither does a word ("The", "Paris") or a list ("B and C")."""
    text = _CHOICE_PREFIX.sub("", _unlatex(text.strip())).strip()
    bracketed = _BRACKETED_LETTER.match(text)
    if bracketed:
        return bracketed[1].upper()
    bare = _BARE_LETTER.match(text)
    if bare is None or (text[bare.end():].strip() and bare[1].islower()):
        return None
    return bare[1].upper()


def is_correct(grader: str, prediction: str | None, reference: str) -> bool:
    """Correct / wrong, as MPS and RL need it: F1 >= 0.8 for "f1", a full score otherwise."""
    score = grade(grader, prediction, reference)
    return score >= F1_CORRECT if grader == "f1" else score == 1.0


# ---------------------------------------------------------------------------------------------------
# Step signatures: what a step did, read from its stored observation. RL's key-step equivalence
# (rl.same_signature, deviation 1) compares two steps run from the same state by these.
# ---------------------------------------------------------------------------------------------------

# A number as Python prints it, not glued to a word or another number ("x1", "1.2.3" are left alone).
NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
# The line the sandbox appends when a step raises: "Error: <Type>: <message> (at line ...)".
ERROR_LINE = re.compile(r"^Error: ([A-Za-z_][\w.]*)", re.MULTILINE)


@dataclass(frozen=True)
class Signature:
    """What a step did, from its stored record: enough to compare two steps run from the same state."""
    error_type: str | None  # exception type, e.g. "ZeroDivisionError"; None when the step ran cleanly
    output: str  # normalise_output of what it printed (the error line excluded)
    answer: str | None  # the argument of final_answer, when it called it

    def empty(self) -> bool:
        return self.error_type is None and not self.output and self.answer is None


def step_signature(step) -> Signature:
    """The signature of an agent.Step, from its observation, error flag and final answer."""
    text, error_type = step.observation, None
    errors = list(ERROR_LINE.finditer(text)) if step.error else []
    if errors:  # the sandbox's error line is the last "Error: ..." line; what precedes it was printed
        error_type, text = errors[-1].group(1), text[:errors[-1].start()]
    elif step.error:
        error_type = "Error"  # an error without the sandbox's line (a parse error is judged before this)
    return Signature(error_type, normalise_output(text), step.final_answer)


def normalise_output(text: str) -> str:
    """The one normalisation of printed output before two steps are compared.

    Numbers are rewritten one way: thousands commas dropped, integral values without decimals
    ("378.0" -> "378"), others to 10 significant digits (so 0.1 + 0.2 prints like 0.3). Then every
    run of whitespace becomes one space and the ends are stripped."""
    return " ".join(NUMBER.sub(_canonical_number, text).split())


def _canonical_number(match: re.Match) -> str:
    value = Fraction(match.group().replace(",", ""))  # exact: "378.0" is 378, "1e+16" an integer
    return str(value.numerator) if value.denominator == 1 else format(float(value), ".10g")
