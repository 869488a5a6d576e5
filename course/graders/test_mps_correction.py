"""Grader for the assignment mps-correction: `mps.correct_once`, `mps.run_teacher_step`, `mps.mark_validity`.

The rules (METHOD.md section 3, Phase 1, items 3-8, and Verdicts; section 2, Replay):
- a finished-wrong episode gets a verdict k (1-based, 1 = the plan, 0 = no error found); no verdict,
  k = 0, k out of 1..n, k at or before the last teacher step, or a correction beyond max_corrections:
  the episode is tagged hard and nothing is corrected;
- otherwise the teacher writes one replacement for step k, given steps 1..k-1 and the wrong step k;
- the interpreter is rebuilt by replaying steps 1..k-1 in a FRESH interpreter (fatal steps skipped),
  then the teacher step runs and its observation is recorded: the discarded steps never leak in;
- the student resumes from prefix + teacher step with a fresh budget: it may run to step k + H;
- a correction is valid only if the episode ends correct with its teacher step still in it.

correct_once is driven directly with a scripted teacher and an in-process stand-in interpreter (one
test uses the real tools.Sandbox), never through run_mps.
"""
import contextlib
import dataclasses
import io

import pytest

from agent import Start, Step, Trajectory, format_step
from environment.tasks import Task
from mps import MPSConfig, _Episode, correct_once, mark_validity, run_teacher_step
from tools import ToolResult

MAX_STEPS = 6  # H, the episode's step budget
TASK = Task(id="toy-0", task_set="toy", question="What is 6 times 7?", answer="42", grader="numeric")
# The teacher's replacement prints whether the discarded step's `leak` exists, then uses the prefix's x.
TEACHER_CODE = "print('leak' in globals())\ny = x * 7\nprint(y)"
FRESH_OBSERVATION = "False\n42"


# ----------------------------------------------------------------------------------------------
# Stand-ins: an interpreter, a teacher, episodes


class Interpreter:
    """A tiny in-process stand-in for tools.Sandbox: a namespace that keeps variables between steps,
    print() captured, final_answer(x) recorded. `ran` lists every code it ran, replays included."""

    def __init__(self):
        self.namespace, self.ran, self.closed = {}, [], False

    def run(self, code: str) -> ToolResult:
        assert not self.closed, "a sandbox was used after it was closed"
        self.ran.append(code)
        answers = []
        self.namespace["final_answer"] = lambda x: answers.append(str(x))
        out, error = io.StringIO(), False
        try:
            with contextlib.redirect_stdout(out):
                exec(code, self.namespace)
        except Exception as e:  # like the sandbox: the error becomes the observation's last line
            out.write(f"Error: {type(e).__name__}: {e}\n")
            error = True
        return ToolResult(text=out.getvalue().rstrip("\n"), error=error, answer=answers[0] if answers else None)

    def replay(self, codes) -> None:
        self.namespace = {}
        for code in codes:
            self.run(code)

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class Sandboxes:
    """A sandbox factory that remembers every interpreter it opened."""

    def __init__(self):
        self.opened = []

    def __call__(self, *args, **kwargs) -> Interpreter:
        self.opened.append(Interpreter())
        return self.opened[-1]


@dataclasses.dataclass
class Verdict:
    first_error_step: int
    analysis: str = "7 times, not 8"
    suggestion: str = "multiply x by 7"


class Teacher:
    """Answers every verdict with `k` (None: no usable verdict) and replaces step k with `code`
    (a plan for k = 1; replacement=None: no usable replacement). Records what it was shown."""

    def __init__(self, k, code=TEACHER_CODE, replacement=True):
        self.k, self.code, self.replacement = k, code, replacement
        self.verdicts, self.replacements = [], []

    def verdict(self, trajectory, reference_answer):
        self.verdicts.append(([s.index for s in trajectory.steps], reference_answer))
        return None if self.k is None else Verdict(self.k)

    def replacement_step(self, task, prefix, wrong_step, verdict):
        self.replacements.append((list(prefix), wrong_step))
        if not self.replacement:
            return None
        k = len(prefix) + 1
        if k == 1:
            return Step(1, "plan", "teacher", format_step("plan", "Multiply 6 by 7."), thought="Multiply 6 by 7.")
        return Step(k, "action", "teacher", format_step("action", "multiply", self.code), thought="multiply",
                    code=self.code)


def student(index, code, observation, **fields):
    kind = "plan" if index == 1 else "action"
    content = format_step(kind, "plan" if index == 1 else "step", code)
    return Step(index, kind, "student", content, code=code, observation=observation, **fields)


def wrong_episode(corrections=()):
    """Finished and wrong: x = 6, then the wrong step 3 (sets `leak`, multiplies by 8), then an answer."""
    steps = [student(1, "", "None"), student(2, "x = 6\nprint(x)", "6"),
             student(3, "leak = 1\ny = x * 8\nprint(y)", "48"), student(4, "final_answer(y)", "", final_answer="48")]
    trajectory = Trajectory(task_id=TASK.id, task_set="toy", question=TASK.question, reference_answer="42",
                            steps=steps, final_answer="48", finished=True, end_reason="final_answer", score=0.0,
                            correct=False, corrections=[dict(c) for c in corrections], split="sft")
    return _Episode(task=TASK, trajectory=trajectory, split="sft", seed=7)


def corrected_episode():
    """After one earlier correction at step 2 (the teacher's step 2), the student went wrong again at 3."""
    earlier = Step(2, "action", "teacher", format_step("action", "six", "x = 6\nprint(x)"), thought="six",
                   code="x = 6\nprint(x)", observation="6")
    episode = wrong_episode(corrections=[{"k": 2, "verdict": {}, "teacher_step": dataclasses.asdict(earlier),
                                          "wrong_step": None, "discarded": [], "valid": False}])
    episode.trajectory.steps[1] = earlier
    return episode


def correct(episode, teacher, case, max_corrections=3, sandboxes=None):
    """correct_once on a stand-in interpreter; an exception becomes a failure that names the case."""
    sandboxes = sandboxes or Sandboxes()
    try:
        return correct_once(episode, teacher, MPSConfig(max_corrections=max_corrections), MAX_STEPS, sandboxes)
    except NotImplementedError:
        raise
    except Exception as e:
        pytest.fail(f"correct_once must handle {case} without raising (METHOD.md 3, Phase 1): it raised "
                    f"{type(e).__name__}: {e}", pytrace=False)


def assert_hard(episode, teacher, result, case):
    trajectory = episode.trajectory
    assert result is None, (
        f"{case}: correct_once tags the episode hard and returns None (METHOD.md 3, Phase 1): got {result!r}, expected None")
    assert trajectory.hard and isinstance(trajectory.hard_reason, str) and trajectory.hard_reason, (
        f"{case}: the episode is tagged hard with its reason (trajectory.hard, trajectory.hard_reason; METHOD.md 3, "
        f"Phase 1): got hard={trajectory.hard!r}, hard_reason={trajectory.hard_reason!r}")
    assert not teacher.replacements, (
        f"{case}: no replacement step may be asked for (METHOD.md 3, Phase 1): the teacher was asked "
        f"{len(teacher.replacements)} time(s)")


# ----------------------------------------------------------------------------------------------
# correct_once: the resume start


def test_a_usable_verdict_resumes_from_the_prefix_and_the_teacher_step_with_a_fresh_budget():
    """k = 3 on a 4-step episode: the student resumes after steps 1, 2 and the teacher's step 3, and may
    run to step k + H."""
    episode = wrong_episode()
    original = [dataclasses.replace(s) for s in episode.trajectory.steps]
    start = correct(episode, Teacher(3), "a usable verdict k = 3")
    assert isinstance(start, Start), (
        f"a usable verdict gives the Start the student resumes from (METHOD.md 3, Phase 1, item 6): got {start!r}")
    assert start.task is TASK, f"the resume Start is for the episode's task: got {start.task!r}"
    got = [(s.index, s.author) for s in start.prefix]
    assert got == [(1, "student"), (2, "student"), (3, "teacher")], (
        "the student resumes from steps 1..k-1 and then the teacher's step k (METHOD.md 3, Phase 1, item 6): "
        f"k = 3 got prefix (index, author) {got}, expected [(1, 'student'), (2, 'student'), (3, 'teacher')]")
    assert start.prefix[:2] == original[:2], "the prefix keeps steps 1..k-1 exactly as they were (authors, ids, observations)"
    assert start.prefix[2].code == TEACHER_CODE, (
        f"step k of the resume prefix is the teacher's replacement: got code {start.prefix[2].code!r}, expected {TEACHER_CODE!r}")
    assert start.step_limit == 3 + MAX_STEPS, (
        "after a teacher step the student gets a fresh budget: it may run to step k + H (METHOD.md 3, Phase 1, item 6): "
        f"k = 3, H = {MAX_STEPS} got step_limit {start.step_limit}, expected {3 + MAX_STEPS}")


def test_the_teacher_step_runs_after_replaying_the_prefix_in_a_fresh_interpreter():
    """The teacher step's observation comes from an interpreter rebuilt from steps 1..k-1 only: it sees the
    prefix's x, and not the discarded wrong step's `leak`."""
    sandboxes = Sandboxes()
    start = correct(wrong_episode(), Teacher(3), "a usable verdict k = 3", sandboxes=sandboxes)
    got = start.prefix[-1].observation.strip()
    hint = ""
    if "NameError" in got:
        hint = "; here the prefix was not replayed (x is undefined)"
    elif got.startswith("True"):
        hint = "; here the discarded steps' state leaked into the corrected episode"
    assert got == FRESH_OBSERVATION, (
        f"the teacher step runs after replaying steps 1..k-1 in a FRESH interpreter (METHOD.md 3, Phase 1, item 5){hint}: "
        f"its observation got {got!r}, expected {FRESH_OBSERVATION!r}")
    assert sandboxes.opened and all(s.closed for s in sandboxes.opened), (
        "the interpreter opened for the teacher step is closed once the step ran (use it as a context manager)")


def test_the_teacher_sees_the_prefix_and_the_wrong_step():
    """replacement_step gets steps 1..k-1 as the prefix and step k as the wrong step."""
    episode = wrong_episode()
    teacher = Teacher(3)
    correct(episode, teacher, "a usable verdict k = 3")
    assert len(teacher.verdicts) == 1, f"one verdict per correction: the teacher was asked {len(teacher.verdicts)} times"
    assert len(teacher.replacements) == 1, f"one replacement per correction: asked {len(teacher.replacements)} times"
    prefix, wrong = teacher.replacements[0]
    assert [s.index for s in prefix] == [1, 2], (
        "the teacher writes step k given steps 1..k-1 (METHOD.md 3, Phase 1, item 4): k = 3 got a prefix of steps "
        f"{[s.index for s in prefix]}, expected [1, 2]")
    assert wrong is not None and wrong.index == 3 and wrong.code == episode.trajectory.steps[2].code, (
        f"the teacher is shown the wrong step k itself (METHOD.md 3, Phase 1, item 4): got {wrong!r}")


def test_the_correction_is_recorded_with_both_steps():
    """The episode's corrections get a record with k, the teacher step (with the observation it printed)
    and the wrong step; `valid` stays False until mark_validity sees the final episode."""
    episode = wrong_episode()
    wrong = dataclasses.asdict(episode.trajectory.steps[2])
    correct(episode, Teacher(3), "a usable verdict k = 3")
    assert len(episode.trajectory.corrections) == 1, (
        f"each correction appends one record to trajectory.corrections: got {len(episode.trajectory.corrections)}")
    record = episode.trajectory.corrections[0]
    assert record.get("k") == 3, f"the record names the first error step: got k = {record.get('k')!r}, expected 3"
    teacher_step = record.get("teacher_step") or {}
    assert (teacher_step.get("index"), teacher_step.get("author"), teacher_step.get("code")) == (3, "teacher", TEACHER_CODE), (
        "the record holds the teacher step as a dict (dataclasses.asdict), index k, author teacher: got "
        f"{teacher_step!r}")
    assert (teacher_step.get("observation") or "").strip() == FRESH_OBSERVATION, (
        "the recorded teacher step carries the observation of running it after the replay (RL's reward compares "
        f"against it): got {teacher_step.get('observation')!r}, expected {FRESH_OBSERVATION!r}")
    assert record.get("wrong_step") == wrong, (
        f"the record holds the student's wrong step k as a dict, with its observation: got {record.get('wrong_step')!r}")
    assert record.get("valid") is False, (
        "a correction is not valid yet when it is made: mark_validity decides on the final episode "
        f"(METHOD.md 3, Phase 1, item 8): got valid = {record.get('valid')!r}")


def test_a_plan_replacement_for_k_1_restarts_from_the_teacher_plan():
    """k = 1 blames the plan: the prefix is empty, the teacher's plan is step 1 (observation "None")."""
    start = correct(wrong_episode(), Teacher(1), "a verdict k = 1 (the plan)")
    got = [(s.index, s.kind, s.author) for s in start.prefix] if start else None
    assert got == [(1, "plan", "teacher")], (
        f"k = 1 resumes from the teacher's plan alone (METHOD.md 3, Phase 1, item 4): got prefix {got}, "
        "expected [(1, 'plan', 'teacher')]")
    assert start.prefix[0].observation == "None" and start.step_limit == 1 + MAX_STEPS, (
        f"a plan's observation is 'None', and the budget runs to k + H = {1 + MAX_STEPS}: got observation "
        f"{start.prefix[0].observation!r}, step_limit {start.step_limit}")


# ----------------------------------------------------------------------------------------------
# correct_once: verdicts that give no correction


def test_a_verdict_at_or_before_the_last_teacher_step_is_hard():
    """After a correction at step 2, a verdict may only blame steps 3 and later: blaming the teacher's own
    step (k = 2) or a step before it (k = 1) tags the episode hard; k = 3 is corrected, the earlier teacher
    step staying in the prefix with its author."""
    for k in (2, 1):
        episode, teacher = corrected_episode(), Teacher(k)
        result = correct(episode, teacher, f"a verdict k = {k} after a teacher step at 2")
        assert result is None and episode.trajectory.hard, (
            "a later verdict must point after the last teacher step (METHOD.md 3, Phase 1, item 7): with the teacher's "
            f"step at 2, k = {k} got {'a correction' if result else 'no hard tag'}, expected the episode tagged hard")
        assert_hard(episode, teacher, result, f"k = {k} at or before the last teacher step (2)")
    episode = corrected_episode()
    start = correct(episode, Teacher(3), "a verdict k = 3 after a teacher step at 2")
    got = [(s.index, s.author) for s in start.prefix] if start else None
    assert got == [(1, "student"), (2, "teacher"), (3, "teacher")], (
        "a verdict after the last teacher step is corrected, the earlier teacher step kept in the prefix with its "
        f"author (METHOD.md 3, Phase 1, item 8): k = 3 got {got}, expected [(1, 'student'), (2, 'teacher'), (3, 'teacher')]")


def test_no_usable_verdict_is_hard():
    """The teacher gave no usable verdict (None): hard, nothing corrected."""
    episode, teacher = wrong_episode(), Teacher(None)
    assert_hard(episode, teacher, correct(episode, teacher, "no usable verdict (None)"), "no usable verdict")


def test_a_no_error_verdict_on_a_wrong_episode_is_hard():
    """k = 0 ("no error found") on an episode whose answer is wrong: hard, nothing corrected."""
    episode, teacher = wrong_episode(), Teacher(0)
    result = correct(episode, teacher, "a verdict k = 0")
    assert_hard(episode, teacher, result, "k = 0 (the teacher found no error in a wrong episode)")


def test_a_verdict_out_of_range_is_hard():
    """k outside 1..n (n = 4 steps here): hard, nothing corrected, whatever the number."""
    for k in (5, 99, -1):
        episode, teacher = wrong_episode(), Teacher(k)
        result = correct(episode, teacher, f"a verdict k = {k} on 4 steps")
        assert_hard(episode, teacher, result, f"k = {k} out of range 1..4")


def test_corrections_stop_at_max_corrections():
    """An episode that already had max_corrections corrections is tagged hard and not corrected again;
    one correction fewer is still corrected."""
    earlier = {"k": 1, "verdict": {}, "teacher_step": None, "wrong_step": None, "discarded": [], "valid": False}
    for limit in (3, 2):
        episode, teacher = wrong_episode(corrections=[earlier] * limit), Teacher(3)
        result = correct(episode, teacher, f"{limit} corrections made, max_corrections = {limit}", max_corrections=limit)
        assert_hard(episode, teacher, result, f"max_corrections = {limit} already made (METHOD.md 3, Phase 1, item 7)")
    episode = wrong_episode(corrections=[earlier] * 2)
    start = correct(episode, Teacher(3), "2 corrections made, max_corrections = 3")
    assert isinstance(start, Start) and not episode.trajectory.hard, (
        "up to max_corrections corrections are made (METHOD.md 3, Phase 1, item 7): with 2 made and a maximum of 3, "
        f"got {start!r} (hard={episode.trajectory.hard}, {episode.trajectory.hard_reason!r}), expected a correction")


def test_no_usable_replacement_is_hard():
    """The teacher named k but gave no usable replacement step (None): hard, no resume start."""
    episode, teacher = wrong_episode(), Teacher(3, replacement=False)
    result = correct(episode, teacher, "no usable replacement step (None)")
    assert result is None and episode.trajectory.hard and episode.trajectory.hard_reason, (
        "no usable replacement step tags the episode hard (METHOD.md 3, Phase 1): got "
        f"{result!r}, hard={episode.trajectory.hard}, hard_reason={episode.trajectory.hard_reason!r}")


# ----------------------------------------------------------------------------------------------
# run_teacher_step


def test_run_teacher_step_replays_the_prefix_in_a_fresh_interpreter_then_runs_the_step():
    """One new interpreter per call; it runs the prefix's action code in order (a plan has none; a step that
    raised is replayed, a fatal one is skipped), then the teacher step; it is closed afterwards."""
    prefix = [student(1, "", "None"), student(2, "x = 6\nprint(x)", "6"),
              student(3, "z = 1 / 0", "Error: ZeroDivisionError: division by zero", error=True),
              student(4, "crash_the_interpreter()", "Error: the step was killed", error=True, fatal=True),
              student(5, "w = x + 1\nprint(w)", "7")]
    step = Step(6, "action", "teacher", format_step("action", "use x", "print(x * w)"), code="print(x * w)")
    sandboxes = Sandboxes()
    result = run_teacher_step(TASK, prefix, step, sandboxes)
    assert len(sandboxes.opened) == 1, (
        f"run_teacher_step opens one FRESH interpreter for the replay and the step (METHOD.md 3, Phase 1, item 5): "
        f"got {len(sandboxes.opened)} opened")
    ran = sandboxes.opened[0].ran
    expected = ["x = 6\nprint(x)", "z = 1 / 0", "w = x + 1\nprint(w)", "print(x * w)"]
    assert ran == expected, (
        "replay runs every earlier action step's code in order, errors ignored, fatal steps skipped, then the teacher "
        f"step (METHOD.md 2, Replay): got {ran}, expected {expected}")
    assert sandboxes.opened[0].closed, "the interpreter is closed once the teacher step ran (use it as a context manager)"
    assert isinstance(result, Step) and result.observation.strip() == "42", (
        f"run_teacher_step returns the step with what it printed as its observation: got {getattr(result, 'observation', result)!r}, expected '42'")


def test_run_teacher_step_records_answers_and_errors():
    """The returned step carries the run's outcome: final_answer's argument, or error with the error text."""
    prefix = [student(1, "", "None"), student(2, "x = 6", "")]
    answered = run_teacher_step(TASK, prefix, Step(3, "action", "teacher", "", code="final_answer(x * 7)"), Sandboxes())
    assert answered.final_answer == "42", (
        f"a teacher step that calls final_answer records its answer (METHOD.md 3, Phase 1, item 6): got {answered.final_answer!r}, expected '42'")
    failed = run_teacher_step(TASK, prefix, Step(3, "action", "teacher", "", code="print(q)"), Sandboxes())
    assert failed.error and "NameError" in failed.observation, (
        f"a teacher step that raises is recorded with error=True and the error as its observation: got error={failed.error}, "
        f"observation {failed.observation!r}")


def test_run_teacher_step_never_reuses_an_interpreter():
    """Two corrections of the same task: the second replay starts from nothing, whatever the first ran."""
    sandboxes = Sandboxes()
    run_teacher_step(TASK, [student(1, "", "None"), student(2, "leak = 1", "")],
                     Step(3, "action", "teacher", "", code="print(1)"), sandboxes)
    second = run_teacher_step(TASK, [student(1, "", "None")],
                              Step(2, "action", "teacher", "", code="print('leak' in globals())"), sandboxes)
    assert second.observation.strip() == "False", (
        "every teacher step runs in a FRESH interpreter, rebuilt from its own prefix only (METHOD.md 3, Phase 1, "
        f"item 5; 7, item 6): a variable of an earlier replay leaked, got {second.observation!r}, expected 'False'")


def test_run_teacher_step_with_the_real_sandbox():
    """The same replay rule on tools.Sandbox, the project's interpreter (its own process)."""
    from tools import Sandbox
    prefix = [student(1, "", "None"), student(2, "x = 6\nprint(x)", "6")]
    step = Step(3, "action", "teacher", format_step("action", "multiply", "print(x * 7)"), code="print(x * 7)")
    result = run_teacher_step(TASK, prefix, step, lambda *args: Sandbox(timeout_s=10))
    assert result.observation.strip() == "42" and not result.error, (
        "with the real sandbox, the teacher step runs after the prefix is replayed (METHOD.md 3, Phase 1, item 5): "
        f"got {result.observation!r}, expected '42'")


# ----------------------------------------------------------------------------------------------
# mark_validity


def final_episode(correct_answer=True):
    """A final episode: student plan, teacher step 2, student 3, teacher step 4, student answer 5."""
    two = Step(2, "action", "teacher", format_step("action", "a", "x = 6"), code="x = 6")
    four = Step(4, "action", "teacher", format_step("action", "b", "y = x * 7"), code="y = x * 7")
    steps = [student(1, "", "None"), two, student(3, "print(x)", "6"), four,
             student(5, "final_answer(y)", "", final_answer="42" if correct_answer else "48")]
    records = [{"k": 2, "teacher_step": dataclasses.asdict(two), "valid": False},
               {"k": 4, "teacher_step": dataclasses.asdict(four), "valid": False}]
    return Trajectory(task_id=TASK.id, task_set="toy", question=TASK.question, reference_answer="42", steps=steps,
                      final_answer=steps[-1].final_answer, finished=True, correct=correct_answer, corrections=records)


def test_corrections_of_a_correct_episode_that_still_holds_their_teacher_steps_are_valid():
    """Correct at the end, both teacher steps still at their index: both corrections are valid."""
    trajectory = final_episode()
    mark_validity(trajectory)
    got = [r.get("valid") for r in trajectory.corrections]
    assert got == [True, True], (
        "a correction is valid if the episode ends correct with its teacher step still in it (METHOD.md 3, Phase 1, "
        f"item 8): got valid {got}, expected [True, True]")


def test_no_correction_of_a_wrong_episode_is_valid():
    """An episode that ends wrong has no valid correction, even one marked valid before."""
    trajectory = final_episode(correct_answer=False)
    trajectory.corrections[0]["valid"] = True
    mark_validity(trajectory)
    got = [r.get("valid") for r in trajectory.corrections]
    assert got == [False, False], (
        "a correction is valid only if the episode finally ends correct (METHOD.md 3, Phase 1, item 8): a wrong "
        f"episode got valid {got}, expected [False, False]")


def test_a_correction_whose_teacher_step_is_gone_is_not_valid():
    """The final episode no longer holds the teacher step at its index (another step is there, the episode is
    shorter, or there never was a teacher step): not valid, although the episode ends correct."""
    trajectory = final_episode()
    gone = [
        ("step 2 is now the student's, the same text", dict(trajectory.corrections[0]["teacher_step"], author="teacher",
                                                            content=trajectory.steps[1].content), 2),
        ("step 4 now holds another teacher step", dict(trajectory.corrections[1]["teacher_step"], content="<thought>c"), 4),
        ("the teacher step was at 7, the episode has 5 steps", dict(trajectory.corrections[1]["teacher_step"], index=7), 7),
        ("the verdict gave no teacher step", None, 3),
    ]
    trajectory.steps[1] = dataclasses.replace(trajectory.steps[1], author="student")
    trajectory.corrections = [{"k": k, "teacher_step": step, "valid": True} for _, step, k in gone]
    mark_validity(trajectory)
    for (case, _, _), record in zip(gone, trajectory.corrections):
        assert record.get("valid") is False, (
            "a correction is valid only if its teacher step is still in the final trajectory, at its index, same author "
            f"and text (METHOD.md 3, Phase 1, item 8): {case}: got valid={record.get('valid')!r}, expected False")


WRONG = [
    {"target": "mps.correct_once", "mistake": "a verdict that blames the teacher's own step (or one before it) is accepted",
     "expect": "must point after the last teacher step",
     "source": '''
def correct_once(episode, teacher, config, max_steps, sandbox_factory):
    trajectory, task = episode.trajectory, episode.task
    if len(trajectory.corrections) >= config.max_corrections:
        hard(trajectory, "still wrong after max corrections")
        return None
    verdict = teacher.verdict(trajectory, task.answer)
    if verdict is None:
        hard(trajectory, "no usable verdict")
        return None
    k = verdict.first_error_step
    record = {"k": k, "verdict": dataclasses.asdict(verdict), "teacher_step": None, "wrong_step": None,
              "discarded": [], "valid": False}
    trajectory.corrections.append(record)
    if k == 0:
        hard(trajectory, "teacher found no error in a wrong episode")
        return None
    if not 1 <= k <= len(trajectory.steps):
        hard(trajectory, "first_error_step out of range")
        return None
    prefix, wrong = trajectory.steps[:k - 1], trajectory.steps[k - 1]
    replacement = teacher.replacement_step(task, list(prefix), wrong, verdict)
    if replacement is None:
        hard(trajectory, "no usable replacement step")
        return None
    replacement = run_teacher_step(task, prefix, replacement, sandbox_factory)
    record.update(teacher_step=dataclasses.asdict(replacement), wrong_step=dataclasses.asdict(wrong))
    return Start(task=task, seed=derive_seed(episode.seed, "continue", len(trajectory.corrections)),
                 prefix=list(prefix) + [replacement], step_limit=k + max_steps)
'''},
    {"target": "mps.correct_once", "mistake": "the interpreter is rebuilt from the whole episode, the discarded steps included",
     "expect": "leaked into the corrected episode",
     "source": '''
def correct_once(episode, teacher, config, max_steps, sandbox_factory):
    trajectory, task = episode.trajectory, episode.task
    if len(trajectory.corrections) >= config.max_corrections:
        hard(trajectory, "still wrong after max corrections")
        return None
    verdict = teacher.verdict(trajectory, task.answer)
    if verdict is None:
        hard(trajectory, "no usable verdict")
        return None
    k = verdict.first_error_step
    last_teacher = max([s.index for s in trajectory.steps if s.author == "teacher"], default=0)
    record = {"k": k, "verdict": dataclasses.asdict(verdict), "teacher_step": None, "wrong_step": None,
              "discarded": [], "valid": False}
    trajectory.corrections.append(record)
    if k == 0 or not 1 <= k <= len(trajectory.steps) or k <= last_teacher:
        hard(trajectory, "unusable verdict")
        return None
    prefix, wrong = trajectory.steps[:k - 1], trajectory.steps[k - 1]
    replacement = teacher.replacement_step(task, list(prefix), wrong, verdict)
    if replacement is None:
        hard(trajectory, "no usable replacement step")
        return None
    replacement = run_teacher_step(task, trajectory.steps, replacement, sandbox_factory)
    record.update(teacher_step=dataclasses.asdict(replacement), wrong_step=dataclasses.asdict(wrong))
    return Start(task=task, seed=derive_seed(episode.seed, "continue", len(trajectory.corrections)),
                 prefix=list(prefix) + [replacement], step_limit=k + max_steps)
'''},
    {"target": "mps.correct_once", "mistake": "no fresh budget: the continuation keeps the episode's step limit H",
     "expect": "fresh budget",
     "source": '''
def correct_once(episode, teacher, config, max_steps, sandbox_factory):
    trajectory, task = episode.trajectory, episode.task
    if len(trajectory.corrections) >= config.max_corrections:
        hard(trajectory, "still wrong after max corrections")
        return None
    verdict = teacher.verdict(trajectory, task.answer)
    if verdict is None:
        hard(trajectory, "no usable verdict")
        return None
    k = verdict.first_error_step
    last_teacher = max([s.index for s in trajectory.steps if s.author == "teacher"], default=0)
    record = {"k": k, "verdict": dataclasses.asdict(verdict), "teacher_step": None, "wrong_step": None,
              "discarded": [], "valid": False}
    trajectory.corrections.append(record)
    if k == 0 or not 1 <= k <= len(trajectory.steps) or k <= last_teacher:
        hard(trajectory, "unusable verdict")
        return None
    prefix, wrong = trajectory.steps[:k - 1], trajectory.steps[k - 1]
    replacement = teacher.replacement_step(task, list(prefix), wrong, verdict)
    if replacement is None:
        hard(trajectory, "no usable replacement step")
        return None
    replacement = run_teacher_step(task, prefix, replacement, sandbox_factory)
    record.update(teacher_step=dataclasses.asdict(replacement), wrong_step=dataclasses.asdict(wrong))
    return Start(task=task, seed=derive_seed(episode.seed, "continue", len(trajectory.corrections)),
                 prefix=list(prefix) + [replacement], step_limit=max_steps)
'''},
    {"target": "mps.run_teacher_step", "mistake": "the teacher step runs in a fresh interpreter, but the prefix is never replayed",
     "expect": "the prefix was not replayed",
     "source": '''
def run_teacher_step(task, prefix, step, sandbox_factory):
    from agent import run_step
    with sandbox_factory(task) as sandbox:
        return run_step(sandbox, step)
'''},
    {"target": "mps.mark_validity", "mistake": "a correction of a correct episode is valid whether or not its teacher step is still there",
     "expect": "still in the final trajectory",
     "source": '''
def mark_validity(trajectory):
    for record in trajectory.corrections:
        record["valid"] = bool(trajectory.correct and record.get("teacher_step") is not None)
'''},
]
