"""The MPS protocol (METHOD.md phase 1) with a scripted student and a scripted teacher."""
import dataclasses

import pytest

from agent import RolloutConfig, Step, format_step
from environment.tasks import RefStep, Task
from mps import MPSConfig, assign_split, derive_outputs, diagnostics, run_mps
from student import ScriptedStudent


@dataclasses.dataclass
class Verdict:
    first_error_step: int
    analysis: str = "wrong factor"
    suggestion: str = "multiply 6 by 7"


class ScriptedTeacher:
    """Blames step `blame(trajectory)` and replaces it with `code`; records what it was shown."""

    def __init__(self, blame, code="x = 6 * 7\nprint(x)"):
        self.blame, self.code, self.calls = blame, code, []

    def verdict(self, trajectory, reference_answer):
        self.calls.append([s.index for s in trajectory.steps])
        k = self.blame(trajectory)
        return None if k is None else Verdict(k)

    def replacement_step(self, task, prefix, wrong_step, verdict):
        k = len(prefix) + 1
        if k == 1:
            return Step(1, "plan", "teacher", format_step("plan", "Multiply 6 by 7."), thought="Multiply 6 by 7.")
        return Step(k, "action", "teacher", format_step("action", "multiply", self.code), thought="multiply", code=self.code)


def _task(i=0):
    return Task(id=f"toy-{i}", task_set="toy", question=f"What is 6 times 7? (#{i})", answer="42", grader="numeric",
                solution=(RefStep("multiply"),))


def _student(tokenizer, turns):
    def respond(prompt, seed):
        return turns[min(prompt.count("<|im_start|>assistant") - 1, len(turns) - 1)]
    return ScriptedStudent(tokenizer, respond)


def _sandbox(corpus):
    from tools import Sandbox
    return Sandbox(corpus=corpus, timeout_s=5)


def _run(tokenizer, turns, teacher, tasks=None, max_corrections=3, max_steps=5):
    tasks = tasks or [_task()]
    done = []
    finished = run_mps(_student(tokenizer, turns), teacher, tasks, {t.id: "sft" for t in tasks},
                       RolloutConfig(max_steps=max_steps), MPSConfig(max_corrections=max_corrections),
                       _sandbox, done.append)
    assert [t.task_id for t in done] == [t.task_id for t in finished]
    return finished


WRONG_THEN_ANSWER = ["<first_thought>multiply</first_thought>",
                     "<code>leak = 1\nx = 6 * 8\nprint(x)</code>",
                     "<code>final_answer(x if 'leak' not in globals() else -1)</code>"]


def test_one_correction_splices_replays_and_is_valid(tokenizer):
    """The student errs at step 2; the teacher replaces step 2; the interpreter is rebuilt from the prefix
    (the discarded step's `leak` must not exist), the student finishes correctly, the correction is valid,
    and the key-step record holds prefix, teacher step and wrong step with their observations."""
    teacher = ScriptedTeacher(lambda t: 2)
    [t] = _run(tokenizer, WRONG_THEN_ANSWER, teacher)
    assert t.correct and t.final_answer == "42" and not t.hard
    assert [s.author for s in t.steps] == ["student", "teacher", "student"]
    assert t.steps[1].observation.strip() == "42"  # the teacher step ran after the replay
    assert len(t.corrections) == 1 and t.corrections[0]["valid"] and t.corrections[0]["k"] == 2
    assert t.corrections[0]["wrong_step"]["observation"].strip() == "48"
    sft, keysteps = derive_outputs([t], MPSConfig())
    assert [r["task_id"] for r in sft] == ["toy-0"]
    [key] = keysteps
    assert key["k"] == 2 and key["last"] and [s["index"] for s in key["prefix"]] == [1]
    assert key["teacher_step"]["code"] == "x = 6 * 7\nprint(x)" and key["wrong_step"]["code"].startswith("leak = 1")
    assert key["split"] == "sft" and key["reference_answer"] == "42"


def test_correct_alone_needs_no_teacher(tokenizer):
    """A correct episode is kept without any teacher call."""
    teacher = ScriptedTeacher(lambda t: 2)
    [t] = _run(tokenizer, ["<first_thought>p</first_thought>", "<code>final_answer(6 * 7)</code>"], teacher)
    assert t.correct and not t.corrections and teacher.calls == []
    assert diagnostics([t])["solved_alone"] == 1


def test_unfinished_is_hard_and_not_corrected(tokenizer):
    """Unfinished within the step budget: hard, and the teacher is never asked (as the paper)."""
    teacher = ScriptedTeacher(lambda t: 2)
    [t] = _run(tokenizer, ["<first_thought>p</first_thought>", "<code>print(1)</code>"], teacher, max_steps=3)
    assert t.hard and t.hard_reason.startswith("unfinished") and teacher.calls == []


@pytest.mark.parametrize("blame,reason", [(lambda t: None, "no usable verdict"),
                                          (lambda t: 0, "teacher found no error in a wrong episode"),
                                          (lambda t: 99, "first_error_step out of range")])
def test_unusable_verdicts_tag_hard(tokenizer, blame, reason):
    """No verdict, a 'no error' verdict on a wrong episode, or an out-of-range index: hard, phase goes on."""
    [t] = _run(tokenizer, WRONG_THEN_ANSWER, ScriptedTeacher(blame))
    assert t.hard and t.hard_reason == reason and not t.correct


def test_a_teacher_step_that_answers_wrong_is_hard(tokenizer):
    """Issue 11: a teacher step that calls final_answer with a wrong answer ends the episode, and no later
    verdict may blame it, so the episode is hard. If this failed, RL would sample it as a question-only
    start at the rate of easy episodes (0.1, not 0.5) and diagnostics would count it as wrong but not hard."""
    teacher = ScriptedTeacher(lambda t: 2, code="final_answer(41)")
    [t] = _run(tokenizer, WRONG_THEN_ANSWER, teacher)
    assert not t.correct and t.final_answer == "41" and [s.author for s in t.steps] == ["student", "teacher"]
    assert t.hard and t.hard_reason == "teacher step answered wrong"
    assert len(t.corrections) == 1 and not t.corrections[0]["valid"] and len(teacher.calls) == 1
    report = diagnostics([t])
    assert (report["hard"], report["wrong_not_hard"]) == (1, 0)
    assert report["hard_reasons"] == {"teacher step answered wrong": 1}
    assert derive_outputs([t], MPSConfig()) == ([], [])  # no SFT trajectory, no key step


def test_a_teacher_step_that_answers_right_ends_the_episode_valid(tokenizer):
    """The other side: a teacher step whose final answer is right ends the episode correct, with a valid
    correction and not hard. If this failed, the hard tag above would catch good corrections too."""
    [t] = _run(tokenizer, WRONG_THEN_ANSWER, ScriptedTeacher(lambda t: 2, code="final_answer(42)"))
    assert t.correct and not t.hard and t.corrections[0]["valid"] and len(t.steps) == 2


def test_second_correction_must_come_after_the_first(tokenizer):
    """A later verdict must point after the last teacher step; blaming the teacher's own step is hard.
    And corrections stop at max_corrections."""
    always_wrong = ["<first_thought>p</first_thought>", "<code>x = 5\nprint(x)</code>", "<code>final_answer(x + 1)</code>"]
    teacher = ScriptedTeacher(lambda t: 2)  # blames step 2 again after it became the teacher's
    [t] = _run(tokenizer, always_wrong, teacher)
    assert t.hard and t.hard_reason == "first_error_step not after the last teacher step"
    assert len(t.corrections) == 2 and not any(r["valid"] for r in t.corrections)
    # Blaming the step after the teacher's each time: corrections stop at the maximum.
    last_student_action = lambda t: [s.index for s in t.steps if s.author == "student" and s.kind == "action"][-1]
    moving = ScriptedTeacher(last_student_action, code="x = 5\nprint(x)")
    [t2] = _run(tokenizer, always_wrong, moving, max_corrections=2)
    assert t2.hard and t2.hard_reason == "still wrong after max corrections" and len(t2.corrections) == 2


def test_split_is_deterministic_and_proportional():
    """The split depends only on (task id, seed): BC share first, then 50/50 SFT/RL."""
    ids = [f"arith-{i}" for i in range(4000)]
    splits = [assign_split(i, 0, 0.2) for i in ids]
    assert splits == [assign_split(i, 0, 0.2) for i in ids]
    share = {s: splits.count(s) / len(ids) for s in ("bc", "sft", "rl")}
    assert abs(share["bc"] - 0.2) < 0.03 and abs(share["sft"] - 0.4) < 0.03 and abs(share["rl"] - 0.4) < 0.03
    assert splits != [assign_split(i, 1, 0.2) for i in ids]


def _planted_student(tokenizer, tasks, plant):
    """Follows each task's reference solution turn by turn, except that turn 2 is `plant(task)`."""
    from agent import format_step
    by_question = {t.question: t for t in tasks}

    def respond(prompt, seed):
        task = next(t for q, t in by_question.items() if q in prompt)
        turn = prompt.count("<|im_start|>assistant")  # 1-based: this turn's step index
        step = task.solution[min(turn, len(task.solution)) - 1]
        if turn == 1:
            return format_step("plan", step.thought)
        if turn == 2:
            return format_step("action", step.thought, plant(task))
        return format_step("action", step.thought, step.code)
    return ScriptedStudent(tokenizer, respond)


@pytest.mark.parametrize("task_set,plant", [
    ("arith", lambda task: task.solution[1].code.replace(" = ", " = 1 + ", 1)),  # a wrong number at step 2
    ("lookup", lambda task: 'final_answer("1900")'),  # a premature wrong answer at step 2
])
def test_mps_with_the_reference_teacher_on_real_tasks(tokenizer, task_set, plant):
    """Planted errors at step 2 of real tasks: the reference teacher names step 2, its self-contained
    replacement runs in the replayed interpreter and shows the reference checkpoint, the student finishes
    correctly, and every episode yields exactly one valid key step with k = 2."""
    from environment.tasks import load_tasks
    from teacher import make_teacher
    tasks = load_tasks(task_set, "train", 4, seed=0)
    teacher = make_teacher("reference", tasks=tasks)
    finished = run_mps(_planted_student(tokenizer, tasks, plant), teacher, tasks, {t.id: "rl" for t in tasks},
                       RolloutConfig(max_steps=6), MPSConfig(), _sandbox, lambda t: None)
    for t, task in zip(sorted(finished, key=lambda t: t.task_id), sorted(tasks, key=lambda t: t.id)):
        assert t.correct and not t.hard, (t.task_id, t.hard_reason)
        assert [r["k"] for r in t.corrections] == [2] and t.corrections[0]["valid"]
        assert t.steps[1].author == "teacher"
        assert all(c in t.steps[1].observation for c in task.solution[1].checkpoints)
    _, keysteps = derive_outputs(finished, MPSConfig())
    assert len(keysteps) == len(tasks) and all(k["k"] == 2 and k["split"] == "rl" for k in keysteps)


def test_show_prints_the_correction_side_by_side(tokenizer, tmp_path, capsys):
    """The audit view lists episodes and shows one with its verdict, the wrong step beside the teacher's."""
    from report import show
    from runs import append_jsonl
    [t] = _run(tokenizer, WRONG_THEN_ANSWER, ScriptedTeacher(lambda t: 2))
    append_jsonl(tmp_path / "mps.jsonl", t.to_dict())
    assert show(tmp_path, None) == 0 and "corrected" in capsys.readouterr().out
    assert show(tmp_path, "toy-0") == 0
    out = capsys.readouterr().out
    assert "first error at step 2" in out and "x = 6 * 8" in out and "x = 6 * 7" in out and "valid" in out
    assert show(tmp_path, "nope") == 2


def test_a_full_mps_round_through_llama_cpp(tokenizer, tmp_path):
    """The real LLM path end to end: planted wrong answers, the SmolLM2 GGUF teacher through llama.cpp
    (too small to be right, so only the protocol is checked, not the teacher's judgement): each episode
    gets one verdict call; it ends either corrected (a teacher step at the blamed index, run after a
    replay, with its validity recorded) or hard with one of METHOD.md's reasons; the records and the
    diagnostics are complete, and a second round on the same cache makes no model call."""
    from environment.tasks import load_tasks
    from teacher import TeacherConfig, make_teacher
    tasks = load_tasks("arith", "train", 2, seed=0)
    small = TeacherConfig(verdict_max_tokens=256, step_max_tokens=96)
    cache = tmp_path / "cache.jsonl"

    def one_round():
        teacher = make_teacher("smol-135m-q4", tasks, cache_path=cache, seed=0, config=small)
        student = _planted_student(tokenizer, tasks, lambda task: "final_answer(12345)")
        finished = run_mps(student, teacher, tasks, {t.id: "sft" for t in tasks}, RolloutConfig(max_steps=6),
                           MPSConfig(max_corrections=1), _sandbox, lambda t: None)
        teacher.close()
        return finished, teacher.stats

    finished, stats = one_round()
    assert len(finished) == len(tasks) and stats.calls >= len(tasks) and stats.failures <= stats.calls
    reasons = {"still wrong after max corrections", "no usable verdict", "teacher found no error in a wrong episode",
               "first_error_step out of range", "first_error_step not after the last teacher step",
               "no usable replacement step"}
    for t in finished:
        assert len(t.corrections) <= 1  # max_corrections=1
        for record in t.corrections:  # every verdict is recorded, usable or not
            assert record["verdict"]["first_error_step"] == record["k"] and isinstance(record["valid"], bool)
            if record["teacher_step"] is not None:  # a correction: the teacher's step sits at the blamed index
                assert 1 <= record["k"] <= 2 and t.steps[record["k"] - 1].author == "teacher"
            else:
                assert t.hard
        if t.hard:
            assert t.hard_reason in reasons or t.hard_reason.startswith("unfinished"), t.hard_reason
        else:
            assert t.corrections and t.correct  # not hard: corrected into a right answer
    assert diagnostics(finished)["episodes"] == len(tasks)
    again, stats = one_round()
    assert stats.calls == 0 and stats.cache_hits >= len(tasks)
    assert [t.to_dict()["corrections"] for t in again] == [t.to_dict()["corrections"] for t in finished]
