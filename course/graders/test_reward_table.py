"""Grader for the assignment reward-table: `rl.continuation_reward`, `rl.judge_first_step` and
`rl.same_signature`, what a continuation earns (KEY_STEP_REWARDS is given).

The rules (METHOD.md section 3, Phase 3, Rewards; section 7, items 20-22), in this order:
    final answer correct                                  -> 1
    outcome only (k = 1, question starts, --reward outcome) -> 0
    no a_k (the context overflowed before step k)         -> 0
    else by the verdict v on a_k, the FIRST generated step (trajectory.steps[k - 1]):
        KEY_STEP_REWARDS[v].answered if it answered wrongly, KEY_STEP_REWARDS[v].unfinished if it never answered
The verdict, in this order: unparseable, a final answer (a blurt: no key-step credit, whatever it
matches), equivalent to the teacher's step k, equivalent to the student's wrong step k, neither.
    | verdict     | answered wrong | never answered |
    | teacher     | 0.5            | 0.5            |
    | neither     | 0.1            | 0              |
    | wrong       | 0              | 0              |
    | answer      | 0              | -              |
    | unparseable | 0              | 0              |
Equivalence by signature: (exception type, printed output after rl.normalise_output, final answer);
types and outputs equal, final answers equal under the task's grader (b's as the reference); an
empty signature (nothing printed, no error, no answer) matches nothing.

continuation_reward and judge_first_step are checked with a judge written here (steps with the same
code are equivalent), so their rules are graded apart from same_signature's; one test runs the
loop's own path (rl.group_rewards with the signature judge) over the whole table.
"""
import math

import rl
from agent import Step, Trajectory, format_step
from environment.tasks import RefStep, Task

SECTION = "METHOD.md 3, Phase 3, Rewards"
TASK = Task(id="toy-0", task_set="toy", question="What is 6 times 7?", answer="42", grader="numeric",
            solution=(RefStep("Multiply 6 by 7."),))


def step(index, code="", observation="", author="student", error=False, final_answer=None, parse_error=False):
    """A finished action step as the rollout records it."""
    content = "<thought>Go on, but no code" if parse_error else format_step("action", "t", code)
    return Step(index, "action", author, content, thought="t", code=code, observation=observation, error=error,
                parse_error=parse_error, final_answer=final_answer)


PLAN = Step(1, "plan", "student", "<first_thought>Multiply 6 by 7.</first_thought>", thought="Multiply 6 by 7.",
            observation="None")
TEACHER = step(2, "x = 6 * 7\nprint(x)", "42\n", author="teacher")  # the teacher's step k = 2
WRONG_STEP = step(2, "x = 6 * 8\nprint(x)", "48\n")  # the student's original step 2
START = rl.StartState(TASK, [PLAN], 2, TEACHER, WRONG_STEP, "keystep")

# First generated steps a_k, by what they do. With the judge below, LIKE_TEACHER is the teacher's step.
LIKE_TEACHER = step(2, "x = 6 * 7\nprint(x)", "42\n")
LIKE_WRONG = step(2, "x = 6 * 8\nprint(x)", "48\n")
DIFFERENT = step(2, "print(6 + 7)", "13\n")
BLURT = step(2, "final_answer(41)", "", final_answer="41")
UNPARSEABLE = step(2, parse_error=True, error=True, observation="Error: could not parse the step")


def same_code(a, b):
    """The test's judge: two steps are equivalent when they run the same code."""
    return bool(a.code) and a.code == b.code


def always(a, b):
    """A judge that finds every pair equivalent: shows which checks come before equivalence."""
    return True


def episode(*generated, answer=None, correct=False, start=START):
    """The start's prefix, then the generated steps; answer = the final answer called (None: unfinished)."""
    finished = answer is not None
    return Trajectory(TASK.id, TASK.task_set, TASK.question, TASK.answer, steps=[*start.prefix, *generated],
                      final_answer=answer, finished=finished, end_reason="final_answer" if finished else "max_steps",
                      score=float(correct), correct=correct)


def answer_step(index, value):
    return step(index, f"final_answer({value})", "", final_answer=value)


def reward(trajectory, start=START, judge_key_step=True, equivalent=same_code):
    """The submission's Reward as (reward, correct, finished, key_step)."""
    got = rl.continuation_reward(trajectory, start, judge_key_step, equivalent)
    assert isinstance(got, rl.Reward), f"continuation_reward returns an rl.Reward (reward, correct, finished, key_step): got {got!r}"
    return (float(got.reward), bool(got.correct), bool(got.finished), got.key_step)


def same(got, expected):
    return math.isclose(got[0], expected[0]) and got[1:] == expected[1:]


# ---------------------------------------------------------------------------------------------- continuation_reward


def test_a_correct_final_answer_earns_1_whatever_a_k_was():
    """Correct is 1, the outcome comes first: even after a_k repeated the wrong step, and with no
    verdict recorded (key_step ""): correct=True, finished=True."""
    for name, first in [("the wrong step", LIKE_WRONG), ("the teacher's step", LIKE_TEACHER), ("a different step", DIFFERENT)]:
        got = reward(episode(first, answer_step(3, "42"), answer="42", correct=True))
        expected = (1.0, True, True, "")
        assert same(got, expected), (
            f"a correct final answer earns 1 whatever a_k was, and no verdict is recorded ({SECTION}): a_k {name}, "
            f"answered 42: got {got}, expected {expected} as (reward, correct, finished, key_step)")


def test_outcome_only_starts_earn_0_unless_correct():
    """judge_key_step=False (k = 1, question starts, --reward outcome): 1 if correct, else 0, and the
    key step is not judged (key_step ""), even when a_k is the teacher's step."""
    for answer in ("41", None):
        got = reward(episode(LIKE_TEACHER, *([answer_step(3, answer)] if answer else []), answer=answer),
                     judge_key_step=False)
        expected = (0.0, False, answer is not None, "")
        assert same(got, expected), (
            f"an outcome-only start earns 1 if correct, else 0: its key step is not judged ({SECTION}): a_k like the "
            f"teacher's, {'answered 41' if answer else 'unfinished'}: got {got}, expected {expected}")


def test_no_a_k_earns_0():
    """A continuation that has no step k at all (the context overflowed before a_k) earns 0, unjudged."""
    trajectory = episode()
    trajectory.end_reason = "context"
    got = reward(trajectory)
    expected = (0.0, False, False, "")
    assert same(got, expected), (
        f"no a_k (the context overflowed before step k) earns 0, with no verdict ({SECTION}): k = 2, only the "
        f"prefix's 1 step: got {got}, expected {expected}")


def test_the_teachers_step_then_a_wrong_answer_earns_half():
    """a_k equivalent to the teacher's step k, then a wrong final answer: 0.5 (verdict "teacher")."""
    got = reward(episode(LIKE_TEACHER, answer_step(3, "41"), answer="41"))
    expected = (0.5, False, True, "teacher")
    assert same(got, expected), (
        f"a_k equivalent to the teacher's step earns 0.5, verdict 'teacher' ({SECTION}): then answered 41: "
        f"got {got}, expected {expected}")


def test_unfinished_work_after_the_teachers_step_still_earns_half():
    """a_k equivalent to the teacher's step, then the step budget ran out: still 0.5, not the plain
    table's 0 (METHOD.md 7, item 22): the key step was found, and the work after it is honest."""
    got = reward(episode(LIKE_TEACHER, step(3, "print(x + 1)", "43\n")))
    expected = (0.5, False, False, "teacher")
    assert same(got, expected), (
        f"unfinished after a_k equivalent to the teacher's step still earns 0.5, KEY_STEP_REWARDS['teacher'].unfinished "
        f"(METHOD.md 7, item 22): got {got}, expected {expected}")


def test_a_different_step_earns_0_1_only_if_the_continuation_answered():
    """a_k like neither step: 0.1 if the continuation called final_answer (wrongly), 0 if it never
    answered (no answer shows that the different step led anywhere)."""
    for generated, answer, expected in [((DIFFERENT, answer_step(3, "41")), "41", (0.1, False, True, "neither")),
                                        ((DIFFERENT, step(3, "print(1)", "1\n")), None, (0.0, False, False, "neither"))]:
        got = reward(episode(*generated, answer=answer))
        assert same(got, expected), (
            f"a different a_k ('neither') earns 0.1 only if the continuation answered, 0 unfinished ({SECTION}): "
            f"{'answered 41' if answer else 'unfinished'}: got {got}, expected {expected}")


def test_a_k_like_the_wrong_step_earns_0():
    """a_k equivalent to the student's original wrong step: 0, answered or not (verdict "wrong")."""
    for generated, answer in [((LIKE_WRONG, answer_step(3, "48")), "48"), ((LIKE_WRONG,), None)]:
        got = reward(episode(*generated, answer=answer))
        expected = (0.0, False, answer is not None, "wrong")
        assert same(got, expected), (
            f"a_k equivalent to the wrong step k earns 0, verdict 'wrong' ({SECTION}): "
            f"{'answered 48' if answer else 'unfinished'}: got {got}, expected {expected}")


def test_blurted_wrong_answer_gets_no_key_step_credit():
    """a_k = final_answer(wrong): verdict "answer", reward 0, not "neither"'s 0.1; a blurt must not
    outscore honest work (the teacher's step, then out of steps: 0.5)."""
    got = reward(episode(BLURT, answer="41"))
    expected = (0.0, False, True, "answer")
    assert same(got, expected), (
        f"a wrong final answer blurted at a_k earns no key-step credit: verdict 'answer', reward 0 (METHOD.md 7, "
        f"item 22): final_answer(41) as a_k got {got}, expected {expected}")


def test_an_unparseable_a_k_earns_0():
    """a_k that could not be parsed: 0 (verdict "unparseable"), answered later or not: a format failure
    is not a sensible step (METHOD.md 7, item 21)."""
    for generated, answer in [((UNPARSEABLE, answer_step(3, "41")), "41"), ((UNPARSEABLE,), None)]:
        got = reward(episode(*generated, answer=answer))
        expected = (0.0, False, answer is not None, "unparseable")
        assert same(got, expected), (
            f"an unparseable a_k earns 0, verdict 'unparseable' (METHOD.md 7, item 21): "
            f"{'answered 41' if answer else 'unfinished'}: got {got}, expected {expected}")


def test_the_verdict_is_on_a_k_the_first_generated_step():
    """a_k is trajectory.steps[k - 1]: with k = 3 below, a different step 3 then the teacher-like step 4
    is "neither" (0.1), and the teacher-like step 3 then a different step 4 is "teacher" (0.5)."""
    teacher_3 = step(3, "x = 6 * 7\nprint(x)", "42\n", author="teacher")
    start = rl.StartState(TASK, [PLAN, step(2, "y = 7", "")], 3, teacher_3, step(3, "x = 6 * 8\nprint(x)", "48\n"),
                          "keystep")
    like_teacher, different = step(3, teacher_3.code, "42\n"), step(3, "print(6 + 7)", "13\n")
    for name, generated, expected in [
            ("a different step 3, then the teacher's as step 4", (different, step(4, teacher_3.code, "42\n")),
             (0.1, False, True, "neither")),
            ("the teacher's step as step 3, then a different step 4", (like_teacher, step(4, "print(1)", "1\n")),
             (0.5, False, True, "teacher"))]:
        got = reward(episode(*generated, answer_step(5, "41"), answer="41", start=start), start=start)
        assert same(got, expected), (
            f"the verdict is on a_k, the first generated step, trajectory.steps[k - 1] ({SECTION}): k = 3, {name}, then "
            f"answered 41: got {got}, expected {expected}")


# ---------------------------------------------------------------------------------------------- judge_first_step


def test_the_verdict_names_the_step_that_a_k_is_equivalent_to():
    """judge_first_step gives "teacher", "wrong" or "neither" by the judge it is handed."""
    for name, first, expected in [("the teacher-like", LIKE_TEACHER, "teacher"), ("the wrong-like", LIKE_WRONG, "wrong"),
                                  ("a different", DIFFERENT, "neither")]:
        got = rl.judge_first_step(first, START, same_code)
        assert got == expected, (
            f"the verdict on a_k is 'teacher', 'wrong' or 'neither', by equivalence to the teacher's then the wrong "
            f"step k ({SECTION}): {name} a_k got {got!r}, expected {expected!r}")


def test_a_first_step_that_answers_is_a_blurt_whatever_it_matches():
    """a_k that calls final_answer is judged "answer" before any equivalence: even a judge that finds it
    equivalent to the teacher's step (here a judge that says yes to everything) changes nothing."""
    for judge in (same_code, always):
        got = rl.judge_first_step(BLURT, START, judge)
        assert got == "answer", (
            f"a_k that calls final_answer is a blurt, verdict 'answer', judged before any equivalence ({SECTION}): "
            f"final_answer(41) with the {judge.__name__} judge got {got!r}, expected 'answer'")


def test_unparseable_comes_before_every_other_verdict():
    """An unparseable a_k is "unparseable" whatever the judge says of it (checked first)."""
    for judge in (same_code, always):
        got = rl.judge_first_step(UNPARSEABLE, START, judge)
        assert got == "unparseable", (
            f"an unparseable a_k is judged 'unparseable' first, before final answers and equivalence ({SECTION}): with "
            f"the {judge.__name__} judge got {got!r}, expected 'unparseable'")


def test_the_teachers_step_is_tried_before_the_wrong_step():
    """When a_k is equivalent to both (a judge that says yes to everything), the verdict is "teacher":
    the order is unparseable, answer, teacher, wrong, neither."""
    got = rl.judge_first_step(DIFFERENT, START, always)
    assert got == "teacher", (
        f"equivalence to the teacher's step is tried before the wrong step: the order is unparseable, answer, "
        f"teacher, wrong, neither ({SECTION}): a_k equivalent to both got {got!r}, expected 'teacher'")


# ---------------------------------------------------------------------------------------------- same_signature


def test_printed_output_is_compared_after_normalisation():
    """Two steps that print the same numbers written differently are equivalent: "42.0" is "42",
    thousands commas drop, 0.1 + 0.2 prints like 0.3, whitespace runs are one space."""
    for a, b in [("42.0\n", "42\n"), ("total: 1,234\n", "total:   1234"), (f"{0.1 + 0.2}\n", "0.3\n")]:
        got = rl.same_signature(step(2, "print(...)", a), step(2, "print(...)", b), "numeric")
        assert got is True, (
            f"printed outputs are compared after normalise_output, so the same value printed two ways is the same step "
            f"(METHOD.md 3, Rewards, Equivalence): {a!r} vs {b!r} got {got}, expected True")


def test_different_printed_values_are_different_steps():
    """48 is not 42, and 12 is not 12.1: normalisation does not round values together."""
    for a, b in [("48\n", "42\n"), ("12\n", "12.1\n"), ("Paris\n", "London\n")]:
        got = rl.same_signature(step(2, "print(...)", a), step(2, "print(...)", b), "numeric")
        assert got is False, (
            f"steps that print different values are not equivalent (METHOD.md 3, Rewards, Equivalence): {a!r} vs {b!r} "
            f"got {got}, expected False")


def test_errors_match_on_the_exception_type_not_its_message():
    """Two steps that raise the same exception type are equivalent whatever the message says; two types
    are not; an error and a clean run are not."""
    zero = step(2, "x = 6 / 0", "Error: ZeroDivisionError: division by zero (at line 1: x = 6 / 0)", error=True)
    zero_float = step(2, "1.0 / 0", "Error: ZeroDivisionError: float division by zero (at line 1: 1.0 / 0)", error=True)
    name = step(2, "x[0]", "Error: NameError: name 'x' is not defined (at line 1: x[0])", error=True)
    clean = step(2, "print('Error')", "Error\n")
    for a, b, expected in [(zero, zero_float, True), (zero, name, False), (name, clean, False)]:
        got = rl.same_signature(a, b, "numeric")
        assert got is expected, (
            f"errors match on the exception type, not its message; an error never matches a clean run (METHOD.md 3, "
            f"Rewards, Equivalence): {a.observation!r} vs {b.observation!r} got {got}, expected {expected}")


def test_what_a_step_printed_before_its_error_counts():
    """The output printed before the error line is part of the signature: same type but different
    output is not equivalent; same output (after normalisation) and type is."""
    before = step(2, "print(5); x[0]", "5\nError: NameError: name 'x' is not defined (at line 1)", error=True)
    other = step(2, "print(5.0); y[0]", "5.0\nError: NameError: name 'y' is not defined (at line 1)", error=True)
    bare = step(2, "x[0]", "Error: NameError: name 'x' is not defined (at line 1)", error=True)
    for a, b, expected in [(before, other, True), (before, bare, False)]:
        got = rl.same_signature(a, b, "numeric")
        assert got is expected, (
            f"the signature is (exception type, normalised output printed before the error, final answer) (METHOD.md 3, "
            f"Rewards, Equivalence): {a.observation!r} vs {b.observation!r} got {got}, expected {expected}")


def test_an_empty_signature_matches_nothing():
    """A step that printed nothing, raised nothing and answered nothing has an empty signature: it
    matches no step, not even another silent one (two silent steps prove nothing alike)."""
    silent, other_silent = step(2, "x = 6 * 7", ""), step(2, "y = 1", "  \n")
    for a, b in [(silent, other_silent), (silent, silent), (silent, LIKE_TEACHER), (LIKE_TEACHER, silent)]:
        got = rl.same_signature(a, b, "numeric")
        assert got is False, (
            f"an empty signature (nothing printed, no error, no answer) matches nothing, not even another silent step "
            f"(METHOD.md 3, Rewards, Equivalence): {a.code!r} vs {b.code!r} got {got}, expected False")


def test_final_answers_match_under_the_tasks_grader():
    """Final answers are compared by the task's grader, b's answer as the reference: "48.0" is "48"
    (numeric), "the Eiffel Tower" is "Eiffel Tower" (exact, after answer normalisation); 41 is not 48;
    a step that answers never matches one that does not."""
    for a, b, grader, expected in [("48.0", "48", "numeric", True), ("41", "48", "numeric", False),
                                   ("the Eiffel Tower", "Eiffel Tower", "exact", True),
                                   ("Eiffel Tower", "Big Ben", "exact", False)]:
        got = rl.same_signature(answer_step(2, a), answer_step(2, b), grader)
        assert got is expected, (
            f"final answers match when the task's grader says so, b's as the reference (METHOD.md 3, Rewards, "
            f"Equivalence): {a!r} vs {b!r} under {grader!r} got {got}, expected {expected}")
    printed = step(2, "print(48)", "48\n")
    got = (rl.same_signature(answer_step(2, "48"), printed, "numeric"),
           rl.same_signature(printed, answer_step(2, "48"), "numeric"))
    assert got == (False, False), (
        f"a step that answers never matches one that does not, whatever they print (METHOD.md 3, Rewards, "
        f"Equivalence): final_answer(48) vs print(48) got {got}, expected (False, False)")


# ---------------------------------------------------------------------------------------------- the loop's path


def test_the_loop_pays_the_whole_table_with_the_signature_judge():
    """rl.group_rewards, as train_rl calls it (signature judge, keystep reward): one group covering the
    table. The teacher-like a_k prints 42.0 (the teacher printed 42): still the teacher's step."""
    group = [episode(LIKE_WRONG, answer_step(3, "42"), answer="42", correct=True),
             episode(step(2, "y = 42.0\nprint(y)", "42.0\n"), answer_step(3, "41"), answer="41"),
             episode(step(2, "y = 42.0\nprint(y)", "42.0\n"), step(3, "print(y + 1)", "43.0\n")),
             episode(DIFFERENT, answer_step(3, "41"), answer="41"),
             episode(DIFFERENT, step(3, "print(1)", "1\n")),
             episode(LIKE_WRONG, answer_step(3, "48"), answer="48"),
             episode(BLURT, answer="41"),
             episode(UNPARSEABLE, answer_step(3, "41"), answer="41"),
             episode(step(2, "z = 1", ""), answer_step(3, "41"), answer="41")]  # silent a_k: neither
    got = [(r.reward, r.key_step) for r in rl.group_rewards(group, START, rl.RLConfig())]
    expected = [(1.0, ""), (0.5, "teacher"), (0.5, "teacher"), (0.1, "neither"), (0.0, "neither"), (0.0, "wrong"),
                (0.0, "answer"), (0.0, "unparseable"), (0.1, "neither")]
    wrong = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected)) if not (math.isclose(g[0], e[0]) and g[1] == e[1])]
    assert not wrong, (
        f"the loop's rewards follow KEY_STEP_REWARDS with the signature judge ({SECTION}): continuation {wrong[0][0]} got "
        f"{wrong[0][1]}, expected {wrong[0][2]} (as (reward, key_step); {len(wrong)} of {len(group)} differ)")
    outcome = [r.reward for r in rl.group_rewards(group, START, rl.RLConfig(reward="outcome"))]
    assert outcome == [1.0] + [0.0] * 8, (
        f"--reward outcome pays 1 if correct, else 0, whatever a_k was ({SECTION}, Ablations): got {outcome}")


WRONG = [
    {"target": "rl.continuation_reward", "mistake": "the plain table: unfinished work after the teacher's step gets 0",
     "expect": "unfinished after a_k equivalent to the teacher's step still earns 0.5",
     "source": '''
def continuation_reward(trajectory, start, judge_key_step, equivalent):
    if trajectory.correct:
        return Reward(1.0, True, True, "")
    finished = trajectory.finished
    if not judge_key_step or len(trajectory.steps) < start.k:
        return Reward(0.0, False, finished, "")
    verdict = judge_first_step(trajectory.steps[start.k - 1], start, equivalent)
    return Reward(KEY_STEP_REWARDS[verdict].answered if finished else 0.0, False, finished, verdict)
'''},
    {"target": "rl.continuation_reward", "mistake": "a_k read as trajectory.steps[k] (k is 1-based): the step after it is judged",
     "expect": "the verdict is on a_k, the first generated step",
     "source": '''
def continuation_reward(trajectory, start, judge_key_step, equivalent):
    if trajectory.correct:
        return Reward(1.0, True, True, "")
    finished = trajectory.finished
    if not judge_key_step or len(trajectory.steps) <= start.k:
        return Reward(0.0, False, finished, "")
    verdict = judge_first_step(trajectory.steps[start.k], start, equivalent)
    table = KEY_STEP_REWARDS[verdict]
    return Reward(table.answered if finished else table.unfinished, False, finished, verdict)
'''},
    {"target": "rl.continuation_reward", "mistake": "judge_key_step ignored: outcome-only starts get key-step credit",
     "expect": "outcome-only start earns 1 if correct, else 0",
     "source": '''
def continuation_reward(trajectory, start, judge_key_step, equivalent):
    if trajectory.correct:
        return Reward(1.0, True, True, "")
    finished = trajectory.finished
    if len(trajectory.steps) < start.k:
        return Reward(0.0, False, finished, "")
    verdict = judge_first_step(trajectory.steps[start.k - 1], start, equivalent)
    table = KEY_STEP_REWARDS[verdict]
    return Reward(table.answered if finished else table.unfinished, False, finished, verdict)
'''},
    {"target": "rl.judge_first_step", "mistake": "no 'answer' verdict: a blurted wrong final answer is judged 'neither' and earns 0.1",
     "expect": "blurt",
     "source": '''
def judge_first_step(first, start, equivalent):
    if first.parse_error:
        return "unparseable"
    if equivalent(first, start.teacher_step):
        return "teacher"
    if equivalent(first, start.wrong_step):
        return "wrong"
    return "neither"
'''},
    {"target": "rl.judge_first_step", "mistake": "equivalence is tried before the parse check",
     "expect": "judged 'unparseable' first",
     "source": '''
def judge_first_step(first, start, equivalent):
    if first.final_answer is not None:
        return "answer"
    if equivalent(first, start.teacher_step):
        return "teacher"
    if equivalent(first, start.wrong_step):
        return "wrong"
    if first.parse_error:
        return "unparseable"
    return "neither"
'''},
    {"target": "rl.same_signature", "mistake": "raw observations compared, without normalise_output or the exception type",
     "expect": "after normalise_output",
     "source": '''
def same_signature(a, b, grader):
    if not (a.observation.strip() or a.final_answer) or not (b.observation.strip() or b.final_answer):
        return False
    return a.observation.strip() == b.observation.strip() and a.final_answer == b.final_answer
'''},
    {"target": "rl.same_signature", "mistake": "two silent steps (empty signatures) count as equivalent",
     "expect": "empty signature",
     "source": '''
def same_signature(a, b, grader):
    sa, sb = step_signature(a), step_signature(b)
    if (sa.answer is None) != (sb.answer is None):
        return False
    answers_match = sa.answer is None or is_correct(grader, sa.answer, sb.answer)
    return sa.error_type == sb.error_type and sa.output == sb.output and answers_match
'''},
    {"target": "rl.same_signature", "mistake": "final answers compared as strings, not by the task's grader",
     "expect": "when the task's grader says so",
     "source": '''
def same_signature(a, b, grader):
    sa, sb = step_signature(a), step_signature(b)
    if sa.empty() or sb.empty():
        return False
    return sa.error_type == sb.error_type and sa.output == sb.output and sa.answer == sb.answer
'''},
]
