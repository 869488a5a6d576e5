"""The offline world's scripted expert: the `reference` teacher (METHOD.md, "The reference teacher").

It knows only each task's reference solution and applies METHOD.md's rules: the first critical
error is the first step that breaks one (`first_error`), and the step it writes is the next
reference step the prefix has not reached (`next_reference_position`, `self_contained_step`). An
oracle: its own evaluation row is 100% by construction (`is_oracle`). It makes no model call, and
`teacher.make_teacher("reference", ...)` builds it.

`knowledge` P (--teacher-knowledge) gives it privileged knowledge: it knows a share P of the facts
the solutions find or compute (world edges, arith intermediates), chosen by a seeded hash of (fact,
seed) (`knows_fact`), and states them instead of searching or computing, in its own episodes and
(unless show_work, deviation 4) its corrections: the paper's premise of a teacher that knows more
than its student (EXPERIMENT.md), modelled, not the paper's setting. P = 0 is the plain oracle, step for step.

Deviations from the paper, with reasons:
  1. The rule "prints a number that is neither a quantity of the task nor a checkpoint" applies
     only to computation tasks (a reference solution that never searches): search results quote
     passages full of years that are facts, not computations. On lookup tasks a wrong search
     therefore shows up at the step that USES its wrong fact (METHOD.md: "a search that finds
     nothing useful is not an error by itself").
  2. With knowledge P > 0 the teacher states facts itself, so it also judges the facts a student
     states (a top-level `name = constant`): a lookup step stating a name of the world that no
     observation showed and that is off the reference path is a critical error, and a correct
     stated fact counts as reached for the next correction. At P = 0 these two rules are off, so the
     plain oracle judges exactly as before. A stated number is not judged on its own (a student's
     `rate = 0.15` is no claim); a wrong one shows where it is printed or answered.
  3. With `repeats_are_errors` (--repeats-are-errors, off by default) an action that repeats an
     earlier action's code verbatim is a critical error. Without it a looping episode's repeats
     pass as harmless searches, so SCoRe-SFT trains on them and the RL key step falls after them;
     the paper's LLM teacher would name the first repeat (bench/RESULTS.md, remedy 4).
  4. With `show_work` (--corrections-show-work, off by default) the knowing teacher writes its
     corrections as the plain oracle would: each searches or computes what it needs and states only
     what the prefix's observations showed, while its own episodes (BC) keep what it knows. A
     correction is a step for the student to take from its own state, and a student cannot state a
     fact it does not hold; with the knowing rule a third of the corrections stated values no
     observation had shown (bench/RESULTS.md, remedy 6), which teaches the student to blurt.
"""
from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import replace
from fractions import Fraction
from typing import Sequence

from agent import RolloutConfig, Step, Trajectory, format_step, grade_trajectory, run_step
from environment.graders import is_correct, numbers_equal
from environment.tasks import knowing_plan, knowing_solution, knowing_step
from teacher import Teacher, Verdict

# A number as Python prints it, not glued to a word ("year1" holds no number 1).
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
ELISION = re.compile(r"\.\.\.\[\d+ characters elided\]\.\.\.")  # tools.ELISION_MARKER: not the model's number
PLAIN_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def numbers_in(text: str) -> list[Fraction]:
    """Every number in a text, exactly (Fraction), thousands commas allowed in the question's style."""
    return [Fraction(m.group().replace(",", "")) for m in NUMBER.finditer(ELISION.sub(" ", text))]


def shows_checkpoint(observation: str, checkpoint: str) -> bool:
    """A checkpoint appears in an observation: a number within relative tolerance 1e-6, or the fact's text."""
    if PLAIN_NUMBER.fullmatch(checkpoint):
        return any(numbers_equal(x, Fraction(checkpoint)) for x in numbers_in(observation))
    return checkpoint.lower() in observation.lower()


def is_computation(task) -> bool:
    """Deviation 1: the number rule is for tasks whose reference solution never searches."""
    return not any("search(" in s.code for s in task.solution)


def step_problem(task, step: Step, allowed: list[Fraction] | None) -> str | None:
    """METHOD: why `step` is a critical error under the reference teacher's rules, or None."""
    if step.kind == "plan":  # the plan is an error only when it is empty or unreadable
        return "the plan is empty or could not be read" if step.parse_error or not step.thought.strip() else None
    if step.parse_error:
        return "the step could not be read (no <code> block)"
    if step.error or step.fatal:
        return f"its code failed: {step.observation.strip().splitlines()[-1] if step.observation.strip() else 'no output'}"
    if allowed is not None:  # a printed number must be a quantity of the task or a checkpoint value
        for x in numbers_in(step.observation):
            if not any(numbers_equal(x, a) for a in allowed):
                return f"it prints {float(x):g}, which is neither a quantity of the task nor a value on the reference path"
    if step.final_answer is not None and not is_correct(task.grader, step.final_answer, task.answer):
        return f"its final answer {step.final_answer!r} is wrong"
    return None  # a search that finds nothing useful, or a different correct route, is not an error


def stated_values(code: str) -> list[str]:
    """What a step states as known: the constants bound by its top-level `name = constant`
    (`founder = "Mela Dorn"`, `subtotal = 360`), as text. Code that does not parse states nothing."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    return [str(node.value.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, (str, int, float)) and not isinstance(node.value.value, bool)]


def wrong_statement(task, step: Step, seen: Sequence[str], entities: set[str]) -> str | None:
    """METHOD (a knowing teacher's rule, deviation 2): a lookup step that states a name of the world
    (a passage title: company, person, product, city) that neither the question nor an earlier
    observation showed and that is not on the reference path states a wrong fact. A search for any
    name is fine; so is stating a right fact (the teacher itself does that)."""
    path = {c.casefold() for ref in task.solution for c in ref.checkpoints} | {task.answer.casefold()}
    for value in stated_values(step.code):
        name = value.casefold()
        if name in entities and name not in path and not any(name in text for text in seen):
            return f"it states {value!r} as a fact, which no observation showed and which is not on the reference path"
    return None


def repeated_step(step: Step, earlier: Sequence[Step]) -> str | None:
    """METHOD (deviation 3, --repeats-are-errors): an action whose code is an earlier action's, verbatim,
    shows nothing the student has not seen and spends a step of the budget; it is how a looping
    episode starts (the same search four times, then the steps run out)."""
    code = step.code.strip()
    for before in earlier:
        if code and before.kind == "action" and before.code.strip() == code:
            return f"it repeats step {before.index}'s code, which can show nothing new"
    return None


def first_error(task, steps: Sequence[Step], judge_stated: bool = False,
                judge_repeats: bool = False) -> tuple[int, str]:
    """(k, why) of the first step that breaks a rule; (0, ...) when none does. judge_stated: also
    the rule for stated facts (wrong_statement), which a teacher with knowledge > 0 applies;
    judge_repeats: also the rule for repeated actions (repeated_step)."""
    allowed = None
    # The numbers a computation step may print: the task's own quantities (the question) and every
    # checkpoint of the reference path. Any other number is a value the reference never computes.
    if is_computation(task):
        allowed = numbers_in(task.question) + [Fraction(c) for s in task.solution for c in s.checkpoints
                                               if PLAIN_NUMBER.fullmatch(c)]
    # The world's names, for the stated-fact rule: every passage is "Title: text".
    entities = {passage.split(": ", 1)[0].casefold() for passage in task.corpus or ()} \
        if judge_stated and allowed is None else set()
    seen = [task.question.casefold()]  # what the student had been shown before each step
    for position, step in enumerate(steps):
        problem = step_problem(task, step, allowed)
        if not problem and entities and step.kind == "action" and not step.parse_error:
            problem = wrong_statement(task, step, seen, entities)
        if not problem and judge_repeats and step.kind == "action":
            problem = repeated_step(step, steps[:position])
        if problem:
            return step.index, problem
        seen.append(step.observation.casefold())
    return 0, "no step breaks a rule of the reference solution"


def next_reference_position(task, prefix: Sequence[Step], count_stated: bool = False) -> int:
    """METHOD: position (1..) in task.solution of the first action step whose checkpoints have not all
    appeared in an observation of the prefix; the last step when every one has. count_stated: a
    checkpoint that a prefix step states (stated_values) counts too, as for a teacher with knowledge
    > 0, whose own steps state facts they never print."""
    shown = [s.observation for s in prefix if s.kind == "action"]
    if count_stated:
        shown += [value for s in prefix if s.kind == "action" and not s.error for value in stated_values(s.code)]
    # A reference step without checkpoints (a lookup's answer step) is never "done" by printing.
    for position, ref in enumerate(task.solution[1:], start=1):
        if not ref.checkpoints or not all(any(shows_checkpoint(o, c) for o in shown) for c in ref.checkpoints):
            return position
    return len(task.solution) - 1


def _final_answer_calls(code: str) -> list[ast.Call]:
    """The top-level statements `final_answer(...)` of a code block."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    return [node.value for node in tree.body if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name) and node.value.func.id == "final_answer"]


def knows_nothing(fact: str) -> bool:
    """The plain reference teacher's knowledge: none (knowledge 0)."""
    return False


def self_contained_step(task, position: int, knows=knows_nothing):
    """METHOD: the step the teacher writes at reference position `position` (environment.tasks.knowing_step:
    the reference step, or the facts it knows stated and merged into the next step it does not know),
    made runnable in the student's namespace: first bind the names it reads to the values earlier steps
    showed (RefStep.defines), then its code. `final_answer(x)` becomes `print(x)` unless the step covers
    the reference's last step (a correction must not teach the student to blurt the answer)."""
    ref, covered = knowing_step(task.solution, position, knows)
    # Every earlier reference step is "done", so its checkpoints (= the values it defines) were shown.
    shown = {name: literal for earlier in task.solution[1:position] for name, literal in earlier.defines}
    lines = ref.code.split("\n")
    if covered != len(task.solution) - 1:
        for call in _final_answer_calls(ref.code):  # the name sits on one line: swap it in place
            row, col = call.func.lineno - 1, call.func.col_offset
            lines[row] = lines[row][:col] + "print" + lines[row][col + len("final_answer"):]
    bindings = [f"{name} = {shown[name]}" for name in ref.reads if name in shown]
    return replace(ref, code="\n".join(bindings + lines))


# METHOD: the teacher-student gap (EXPERIMENT.md, "A teacher with privileged knowledge").
def knows_fact(fact: str, knowledge: float, seed: int) -> bool:
    """Does a teacher with `knowledge` P know `fact` (a world edge "founder|Quintara Corp", an arith
    intermediate "arith-3f0c9a1b2d/subtotal")? u = sha256(seed, fact) read as a number in [0, 1);
    known iff u < P. So a share P of facts is known, P = 0 knows none and P = 1 all, a larger P knows
    a superset of what a smaller one knows (same seed), and every caller (BC, corrections) agrees."""
    if not fact or knowledge <= 0:
        return False
    u = int(hashlib.sha256(f"knows\x1f{seed}\x1f{fact}".encode()).hexdigest()[:16], 16) / 2 ** 64
    return u < knowledge


def check_knowledge(knowledge) -> float:
    """--teacher-knowledge must be a share in [0, 1]: anything else is one clear line."""
    if isinstance(knowledge, bool) or not isinstance(knowledge, (int, float)) or not 0 <= knowledge <= 1:
        raise ValueError(f"teacher knowledge must be a number from 0 to 1 (the share of facts the "
                         f"teacher knows), got {knowledge!r}")
    return float(knowledge)


class ReferenceTeacher(Teacher):
    """The scripted expert: it knows each task's reference solution, and with `knowledge` P > 0 also a
    share P of the facts that solution finds or computes (knows_fact), which it states instead of
    searching or computing: in its own episodes (solve) and in its corrections alike, unless show_work."""
    name = "reference"
    is_oracle = True

    def __init__(self, tasks: Sequence = (), seed: int = 0, knowledge: float = 0.0, repeats_are_errors: bool = False,
                 show_work: bool = False):
        super().__init__(tasks, seed)
        self.knowledge = check_knowledge(knowledge)
        self.repeats_are_errors = repeats_are_errors
        self.show_work = show_work

    def knows(self, fact: str) -> bool:
        """METHOD: one rule for every step this teacher writes: the seeded hash of (fact, seed)."""
        return knows_fact(fact, self.knowledge, self.seed)

    def states_in_corrections(self, fact: str) -> bool:
        """What a correction states without searching or computing: what it knows, or nothing with
        show_work (deviation 4: it then corrects as the plain oracle, from the prefix's observations)."""
        return not self.show_work and self.knows(fact)

    def _task(self, task_id: str):
        """The task with a usable reference solution (a plan and at least one action), or None."""
        task = self.tasks.get(task_id)
        return task if task is not None and len(task.solution) >= 2 else None

    def verdict(self, trajectory: Trajectory, reference_answer: str) -> Verdict | None:
        self.stats.calls += 1  # an answer from the rules, counted like a model call
        task = self._task(trajectory.task_id)
        if task is None:  # no reference solution: this teacher cannot judge
            self.stats.failures += 1
            return None
        # A teacher that states facts itself (knowledge > 0) also judges the facts a student states.
        k, why = first_error(task, trajectory.steps, judge_stated=self.knowledge > 0,
                             judge_repeats=self.repeats_are_errors)
        suggestion = ""  # the thought of the step it would write: for the records, the student never sees it
        if k:
            knows = self.states_in_corrections
            suggestion = knowing_plan(task.solution, knows).thought if k == 1 else knowing_step(
                task.solution, next_reference_position(task, trajectory.steps[:k - 1], self.knowledge > 0),
                knows)[0].thought
        return Verdict(first_error_step=k, analysis=f"Step {k}: {why}." if k else why + ".", suggestion=suggestion)

    def replacement_step(self, task, prefix: list[Step], wrong_step: Step, verdict: Verdict) -> Step | None:
        self.stats.calls += 1  # an answer from the rules, counted like a model call
        task = self._task(task.id) or (task if len(task.solution) >= 2 else None)
        if task is None:
            self.stats.failures += 1
            return None
        k = len(prefix) + 1  # the verdict only decides where the prefix ends: the step is the rules' choice
        if k == 1:  # a new plan: the reference plan (what the teacher knows, then what is left to do)
            plan = knowing_plan(task.solution, self.states_in_corrections).thought
            return Step(index=1, kind="plan", author="teacher", content=format_step("plan", plan), thought=plan)
        # METHOD: the same rule as solve: the next reference step not yet reached, with what it knows
        # stated (nothing, with show_work).
        position = next_reference_position(task, prefix, count_stated=self.knowledge > 0)
        ref = self_contained_step(task, position, self.states_in_corrections)
        return Step(index=k, kind="action", author="teacher", content=format_step("action", ref.thought, ref.code),
                    thought=ref.thought, code=ref.code)

    def solve(self, task, rollout_config: RolloutConfig, seed: int) -> Trajectory:
        """The reference solution (with what the teacher knows stated), run in a sandbox and graded:
        phase 0 data and the oracle row."""
        self.stats.calls += 1
        trajectory = self.new_trajectory(task, seed)
        if not task.solution:
            trajectory.end_reason = "no reference solution"
            grade_trajectory(trajectory, task)
            return trajectory
        solution = knowing_solution(task.solution, self.knows) if len(task.solution) >= 2 else task.solution
        with self.open_sandbox(task, rollout_config) as sandbox:
            # The same step budget as the student: a reference longer than max_steps ends unfinished.
            for index, ref in enumerate(solution[:rollout_config.max_steps], start=1):
                kind = "plan" if index == 1 else "action"
                step = Step(index=index, kind=kind, author="teacher", content=format_step(kind, ref.thought, ref.code),
                            thought=ref.thought, code=ref.code)
                trajectory.steps.append(run_step(sandbox, step))
                if step.final_answer is not None:
                    break
        self.end_trajectory(trajectory, rollout_config.max_steps)
        grade_trajectory(trajectory, task)
        return trajectory

    def equivalent(self, task, prefix: list[Step], step_a: Step, step_b: Step) -> bool:
        """Same reference checkpoints shown (non-empty) and the same graded final answer, no errors."""
        task = self._task(task.id) or task
        self.stats.calls += 1

        # A coarse signature of what a step achieved on the reference path; errors match nothing.
        def signature(step: Step):
            if step.error or step.parse_error or step.kind != "action":
                return None
            shown = frozenset(c for ref in task.solution for c in ref.checkpoints if shows_checkpoint(step.observation, c))
            answer = None if step.final_answer is None else is_correct(task.grader, step.final_answer, task.answer)
            return (shown, answer) if shown or answer is not None else None

        a, b = signature(step_a), signature(step_b)
        return a is not None and a == b
