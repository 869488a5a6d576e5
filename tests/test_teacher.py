"""The teachers (METHOD.md section 3): the reference teacher's rules on planted errors, the real
llama.cpp and HTTP paths with the offline SmolLM2 GGUF, bad teacher behaviour, and the cache.

    python -m pytest tests/test_teacher.py -q
"""
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from agent import RolloutConfig, Step, format_step, replay_codes, run_step
from environment.tasks import load_tasks
from environment.reference_teacher import ReferenceTeacher, shows_checkpoint
from teacher import LLMTeacher, Reply, TeacherConfig, TeacherError, TeacherUnavailable, Verdict, make_teacher
from teacher_backends import TEACHER_PRESETS, GGUFTeacher, URLTeacher, cpu_has_amx
from teacher_prompts import as_fresh_attempt, parse_verdict, render_steps, verdict_schema
from tools import Sandbox

CONFIG = RolloutConfig()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def recipe():
    """An arith task with three action steps: scale (0.5), flour and butter (145.0, 30.0), total (175.0)."""
    task = next(t for t in load_tasks("arith", "train", 60) if t.id == "arith-4b223b94ed")
    assert [s.checkpoints for s in task.solution[1:]] == [("0.5",), ("145.0", "30.0"), ("175.0",)]
    return task


@pytest.fixture(scope="module")
def product():
    """A 3-hop lookup task: product -> Druzideim Industries -> Vokel Breitail -> born 1937."""
    task = next(t for t in load_tasks("lookup", "train", 60) if t.id == "lookup-9ae2caaef7")
    assert [s.checkpoints for s in task.solution[1:]] == [("Druzideim Industries",), ("Vokel Breitail",), ("1937",), ()]
    return task


def episode(task, codes, plan=None):
    """A student's trajectory: a plan, then each code run in one sandbox, as the agent loop would."""
    from teacher import Teacher
    trajectory = Teacher().new_trajectory(task, 0)
    plan = task.solution[0].thought if plan is None else plan
    trajectory.steps.append(Step(index=1, kind="plan", author="student", content=format_step("plan", plan),
                                 thought=plan, observation="None", parse_error=not plan, error=not plan))
    with Sandbox(corpus=task.corpus, timeout_s=10, max_output_chars=400) as sandbox:
        for index, code in enumerate(codes, start=2):
            step = run_step(sandbox, Step(index=index, kind="action", author="student",
                                          content=format_step("action", "", code), code=code))
            trajectory.steps.append(step)
            if step.final_answer is not None:
                trajectory.final_answer, trajectory.finished = step.final_answer, True
                break
    from agent import grade_trajectory
    grade_trajectory(trajectory, task)
    return trajectory


def run_after_prefix(task, prefix, step):
    """MPS step 5: replay the prefix in a FRESH sandbox, then run the teacher step."""
    with Sandbox(corpus=task.corpus, timeout_s=10, max_output_chars=400) as sandbox:
        sandbox.replay(replay_codes(prefix))
        return run_step(sandbox, step)


def ref(task, position):
    return task.solution[position].code


# ---------------------------------------------------------------------------------------------- reference teacher

def test_reference_arith_wrong_variable(recipe):
    """A wrong variable at step 3, after a correct step 2 written with OTHER names than the reference's.
    The verdict must be 3 and the replacement must bind `scale` itself (the student never defined it),
    print the next checkpoints and not call final_answer. If this broke, corrections would crash with
    NameError in the student's namespace, or teach the student to answer early."""
    trajectory = episode(recipe, ["s = 4 / 8\nprint(s)", "flour = 290 * s\nbutter = 60 * flour\nprint(flour, butter)",
                                  "total = flour + butter\nprint(total)\nfinal_answer(total)"])
    assert trajectory.correct is False
    teacher = ReferenceTeacher([recipe])
    verdict = teacher.verdict(trajectory, recipe.answer)
    assert verdict.first_error_step == 3 and "8700" in verdict.analysis
    prefix = trajectory.steps[:2]
    step = teacher.replacement_step(recipe, prefix, trajectory.steps[2], verdict)
    assert (step.index, step.kind, step.author) == (3, "action", "teacher")
    assert step.code.splitlines()[0] == "scale = 0.5" and "final_answer" not in step.code
    assert step.content == format_step("action", step.thought, step.code) and step.observation == ""
    ran = run_after_prefix(recipe, prefix, step)
    assert not ran.error and ran.final_answer is None
    assert shows_checkpoint(ran.observation, "145.0") and shows_checkpoint(ran.observation, "30.0")


def test_reference_arith_wrong_number_and_last_step(recipe):
    """A wrong literal at step 2 is blamed on step 2 and replaced by the reference step 2; a wrong final
    answer after every checkpoint was printed is blamed on that step, and its replacement is the LAST
    reference step, self-contained, which answers correctly. If this broke, k or the repair would be off."""
    teacher = ReferenceTeacher([recipe])
    wrong_number = episode(recipe, ["scale = 4 / 6\nprint(scale)", ref(recipe, 2), ref(recipe, 3)])
    verdict = teacher.verdict(wrong_number, recipe.answer)
    assert verdict.first_error_step == 2
    step = teacher.replacement_step(recipe, wrong_number.steps[:1], wrong_number.steps[1], verdict)
    assert step.code == ref(recipe, 1)  # nothing to bind, nothing to strip
    late = episode(recipe, [ref(recipe, 1), ref(recipe, 2), "total = flour + butter\nprint(total)\nfinal_answer(flour)"])
    verdict = teacher.verdict(late, recipe.answer)
    assert verdict.first_error_step == 4 and "wrong" in verdict.analysis
    step = teacher.replacement_step(recipe, late.steps[:3], late.steps[3], verdict)
    assert step.code.splitlines()[:2] == ["flour = 145.0", "butter = 30.0"] and "final_answer(total)" in step.code
    ran = run_after_prefix(recipe, late.steps[:3], step)
    assert ran.final_answer == "175.0"


def test_reference_arith_errors_and_correct_routes(recipe):
    """Code that raises is an error; a different but correct route (other names, fewer steps, a
    checkpoint printed) is not; an unusual but readable plan is not. If this broke, MPS would correct
    students who were right, or miss crashes."""
    teacher = ReferenceTeacher([recipe])
    raised = episode(recipe, ["scale = 4 / servings\nprint(scale)", "final_answer(1)"])
    assert teacher.verdict(raised, recipe.answer).first_error_step == 2
    shortcut = episode(recipe, ["amount = (290 + 60) * 4 / 8\nprint(amount)", "final_answer(amount + 1)"],
                       plan="I will just compute it.")
    verdict = teacher.verdict(shortcut, recipe.answer)
    assert verdict.first_error_step == 3  # the wrong answer, not the correct shortcut nor the plan


def test_reference_plan_and_clean(recipe, product):
    """An empty plan is the first error and is replaced by the reference plan; the reference solution
    run as a student's episode has no error (0) in both families. If this broke, correct episodes would
    be 'corrected' or a missing plan would go unnoticed."""
    teacher = ReferenceTeacher([recipe, product])
    no_plan = episode(recipe, [ref(recipe, 1), "final_answer(0)"], plan="")
    verdict = teacher.verdict(no_plan, recipe.answer)
    assert verdict.first_error_step == 1
    step = teacher.replacement_step(recipe, [], no_plan.steps[0], verdict)
    assert (step.index, step.kind, step.thought) == (1, "plan", recipe.solution[0].thought)
    for task in (recipe, product):
        clean = episode(task, [s.code for s in task.solution[1:]])
        assert clean.correct and teacher.verdict(clean, task.answer).first_error_step == 0


def test_reference_lookup_premature_and_empty_search(product):
    """Lookup: a premature answer at step 3 is blamed on step 3 and replaced by the search that finds the
    founder (no final_answer); a search that finds nothing is NOT an error by itself, so the wrong answer
    after it is blamed; an answer step after every hop is replaced by the reference's last step. If this
    broke, lookup corrections would point at the wrong step or skip hops."""
    teacher = ReferenceTeacher([product])
    premature = episode(product, [ref(product, 1), 'final_answer("Druzideim Industries")'])
    verdict = teacher.verdict(premature, product.answer)
    assert verdict.first_error_step == 3
    step = teacher.replacement_step(product, premature.steps[:2], premature.steps[2], verdict)
    assert step.code == ref(product, 2) and "final_answer" not in step.code
    ran = run_after_prefix(product, premature.steps[:2], step)
    assert shows_checkpoint(ran.observation, "Vokel Breitail") and ran.final_answer is None
    lost = episode(product, [ref(product, 1), 'print(search("zzyzx qwvx"))', 'final_answer("1950")'])
    assert "No passage matches" in lost.steps[2].observation
    verdict = teacher.verdict(lost, product.answer)
    assert verdict.first_error_step == 4
    step = teacher.replacement_step(product, lost.steps[:3], lost.steps[3], verdict)
    assert step.code == ref(product, 2)  # the founder hop has still not been made
    late = episode(product, [ref(product, 1), ref(product, 2), ref(product, 3), 'final_answer("1936")'])
    verdict = teacher.verdict(late, product.answer)
    assert verdict.first_error_step == 5
    step = teacher.replacement_step(product, late.steps[:4], late.steps[4], verdict)
    assert run_after_prefix(product, late.steps[:4], step).final_answer == "1937"


def test_reference_solve_is_an_oracle(recipe, product):
    """`solve` returns the reference solution run in a sandbox, graded correct, written by the teacher,
    and the teacher says it is an oracle. If this broke, phase 0 would train on wrong data or the
    evaluation table would present a scripted teacher as a model."""
    teacher = make_teacher("reference", [recipe, product])
    assert teacher.is_oracle and teacher.name == "reference"
    for task in (recipe, product):
        trajectory = teacher.solve(task, CONFIG, seed=0)
        assert trajectory.correct and trajectory.finished and len(trajectory.steps) == len(task.solution)
        assert {s.author for s in trajectory.steps} == {"teacher"} and trajectory.steps[0].observation == "None"
    unknown = episode(recipe, [ref(recipe, 1)])
    unknown.task_id = "not-a-task"
    assert teacher.verdict(unknown, "1") is None


def test_reference_equivalence(recipe):
    """RL's optional judge, reference version: two error-free steps that show the same reference
    checkpoints are equivalent; a step that raises, or one that shows nothing, matches nothing. If
    this broke, key-step rewards under --key-step-judge teacher would be wrong."""
    teacher = ReferenceTeacher([recipe])
    a = episode(recipe, ["scale = 4 / 8\nprint(scale)"]).steps[1]
    b = episode(recipe, ["factor = 0.5\nprint(factor)"]).steps[1]
    boom = episode(recipe, ["print(1 / 0)"]).steps[1]
    silent = episode(recipe, ["x = 1"]).steps[1]
    other = episode(recipe, ["print(145.0)"]).steps[1]
    assert teacher.equivalent(recipe, [], a, b)
    assert not teacher.equivalent(recipe, [], a, boom) and not teacher.equivalent(recipe, [], silent, silent)
    assert not teacher.equivalent(recipe, [], a, other)


# ---------------------------------------------------------------------------------------------- privileged knowledge

def knowledge_tasks():
    """Tasks of every generated family, the held-out ones included (the teacher evaluates on them)."""
    return (load_tasks("arith", "train", 12) + load_tasks("lookup", "train", 12) + load_tasks("arith", "test", 4)
            + load_tasks("lookup", "test", 4) + load_tasks("arith-heldout", "test", 8)
            + load_tasks("lookup-heldout", "test", 8))


def searched(code):
    """The queries of the search() calls in a block of code (by its syntax, not its text)."""
    import ast
    return [node for node in ast.walk(ast.parse(code))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "search"]


def test_knowledge_zero_is_todays_reference_teacher(recipe, product):
    """P = 0 writes today's reference solution step for step (same text, same observations), at the
    default and when asked for explicitly, and its corrections are today's (the reference step made
    self-contained). If this broke, `--teacher-knowledge 0` would not reproduce the results measured
    before the knowledge gap existed."""
    from environment.tasks import knowing_solution
    from environment.reference_teacher import knows_nothing
    tasks = knowledge_tasks()
    default, zero = ReferenceTeacher(tasks), make_teacher("reference", tasks, knowledge=0.0, seed=3)
    assert default.knowledge == zero.knowledge == 0.0
    for task in tasks[::3] + [recipe, product]:
        assert knowing_solution(task.solution, knows_nothing) is task.solution
        for teacher in (default, zero):
            trajectory = teacher.solve(task, CONFIG, seed=0)
            assert [(s.thought, s.code) for s in trajectory.steps] == [(r.thought, r.code) for r in task.solution]
            assert [s.content for s in trajectory.steps] == [
                format_step("plan" if i == 0 else "action", r.thought, r.code) for i, r in enumerate(task.solution)]
            assert trajectory.correct
    # A correction at step 3 of the recipe after a plan and step 2: today's reference step 2.
    trajectory = episode(recipe, [ref(recipe, 1), "final_answer(1)"])
    verdict = zero.verdict(trajectory, recipe.answer)
    step = zero.replacement_step(recipe, trajectory.steps[:2], trajectory.steps[2], verdict)
    assert step.code == "scale = 0.5\n" + ref(recipe, 2) and step.thought == recipe.solution[2].thought


def test_knowledge_one_never_searches_a_known_fact(monkeypatch):
    """P = 1 knows every edge of the world: its lookup episodes make no search() call at all (counted
    where the host answers them) and state each fact on the chain in the code; its arith episodes
    compute nothing (every intermediate is a literal). At P = 0.5 every search is for an edge it does
    not know, and every edge it knows is stated, not searched. If this broke, the teacher-student gap
    would not be there, or would be there only in the text."""
    import tools
    from environment.reference_teacher import knows_fact
    queries = []
    original = tools.SearchIndex.search
    monkeypatch.setattr(tools.SearchIndex, "search", lambda self, query, k=3: queries.append(query) or original(self, query, k))
    tasks = knowledge_tasks()
    lookups = [t for t in tasks if t.corpus]
    everything = ReferenceTeacher(tasks, knowledge=1.0)
    for task in tasks:
        trajectory = everything.solve(task, CONFIG, seed=0)
        assert trajectory.correct and len(trajectory.steps) == 2  # the plan, then one step that answers
        code = trajectory.steps[1].code
        assert not searched(code)
        for fact_step in task.solution[1:]:
            for name, literal in fact_step.stated:
                assert f"{name} = {literal}" in code
    assert queries == []  # not one search() reached the host
    half = ReferenceTeacher(tasks, knowledge=0.5)
    known_edges = unknown_edges = 0
    for task in lookups:
        queries.clear()
        trajectory = half.solve(task, CONFIG, seed=0)
        assert trajectory.correct
        codes = "\n".join(s.code for s in trajectory.steps)
        for hop in task.solution[1:-1]:
            entity = hop.fact.split("|", 1)[1]
            if knows_fact(hop.fact, 0.5, 0):
                known_edges += 1
                assert entity not in queries and f"{hop.stated[0][0]} = {hop.stated[0][1]}" in codes
            else:
                unknown_edges += 1
                assert entity in queries
        assert len(queries) == sum(len(searched(s.code)) for s in trajectory.steps)
    assert known_edges > 5 and unknown_edges > 5


def test_knowledge_is_one_seeded_rule_for_bc_and_corrections():
    """The same P and seed make the same choices in BC (solve) and in corrections: starting from the
    teacher's own plan, a chain of replacement steps (each run after the previous ones) rewrites the
    BC episode step for step (a correction only binds, first, the names it reads). Tasks where a
    later hop's fact already shows in an earlier observation (a company based in its founder's city
    of birth) are left out: there the rule skips that hop at any P, today's behaviour. The rule is
    the seeded hash of (fact, seed): P is the share of facts known, a larger P knows a superset,
    another seed knows other facts. If this broke, MPS corrections and BC data would come from two
    different teachers, and the experiment would not test one teacher's knowledge."""
    from environment.reference_teacher import knows_fact
    facts = [f"founder|Company {i}" for i in range(4000)]
    for p in (0.1, 0.5, 0.9):
        assert abs(sum(knows_fact(f, p, 0) for f in facts) / len(facts) - p) < 0.03
    assert all(knows_fact(f, 0.7, 0) for f in facts if knows_fact(f, 0.4, 0))
    assert {f for f in facts if knows_fact(f, 0.5, 0)} != {f for f in facts if knows_fact(f, 0.5, 1)}
    assert not any(knows_fact(f, 0.0, 0) for f in facts) and all(knows_fact(f, 1.0, 5) for f in facts)
    def early_fact(task):  # a checkpoint shown before its own reference step ran
        steps = ReferenceTeacher([task]).solve(task, CONFIG, seed=0).steps
        return any(shows_checkpoint(s.observation, c) for p, r in enumerate(task.solution[1:], start=1)
                   for s in steps[1:p] for c in r.checkpoints)

    tasks = [t for t in load_tasks("arith", "train", 6) + load_tasks("lookup", "train", 10) if not early_fact(t)]
    assert len(tasks) >= 13
    stated_somewhere = 0
    for seed in (0, 1):
        teacher = ReferenceTeacher(tasks, seed=seed, knowledge=0.5)
        for task in tasks:
            bc = teacher.solve(task, CONFIG, seed=0)
            chain, verdict = [], Verdict(1, "", "")
            while not chain or chain[-1].final_answer is None:
                step = teacher.replacement_step(task, chain, None, verdict)
                chain.append(run_after_prefix(task, chain, step))
                assert len(chain) <= len(bc.steps)
            assert len(chain) == len(bc.steps)
            for mine, theirs in zip(chain, bc.steps):
                assert mine.thought == theirs.thought
                bindings = mine.code.split("\n")[:len(mine.code.split("\n")) - len(theirs.code.split("\n"))]
                assert mine.code == "\n".join(bindings + [theirs.code])
                assert all(line.split(" = ")[0] in theirs.code for line in bindings)
            stated_somewhere += any(" = " in s.thought for s in bc.steps) or any(
                '= "' in s.code for s in bc.steps)
    assert stated_somewhere > 4


def test_knowledge_corrections_state_what_the_teacher_knows(product):
    """After a student who searched for the maker and then answered wrongly, the correction is the
    founder hop: stated (`founder = "Vokel Breitail"`, no search) by a seed that knows that edge,
    searched by a seed that does not, exactly as knows_fact says, and either one runs and shows the
    way on. If this broke, corrections would ignore the teacher's knowledge."""
    from environment.reference_teacher import knows_fact
    trajectory = episode(product, [ref(product, 1), 'final_answer("1950")'])
    edge = product.solution[2].fact
    assert edge == "founder|Druzideim Industries"
    seeds = {knows_fact(edge, 0.5, seed): seed for seed in range(20)}
    assert set(seeds) == {True, False}
    for knows, seed in seeds.items():
        teacher = ReferenceTeacher([product], seed=seed, knowledge=0.5)
        verdict = teacher.verdict(trajectory, product.answer)
        assert verdict.first_error_step == 3
        step = teacher.replacement_step(product, trajectory.steps[:2], trajectory.steps[2], verdict)
        if knows:
            assert step.code.startswith('founder = "Vokel Breitail"') and "Vokel Breitail" in step.thought
            assert 'search("Druzideim Industries")' not in step.code
        else:
            assert step.code == ref(product, 2)
        ran = run_after_prefix(product, trajectory.steps[:2], step)
        assert not ran.error
        assert "1937" in ran.observation or "Vokel Breitail" in ran.observation or ran.final_answer == "1937"


def test_corrections_show_work_search_what_the_teacher_knows(product):
    """--corrections-show-work: a seed that knows the founder edge states it in its own episode (BC)
    and, by default, in its correction; with show_work the correction is the plain oracle's search
    (the same code as at P = 0), the plan states nothing, while solve and the verdict are unchanged.
    A student's correct stated fact still counts as reached. If this broke, the remedy would hide
    the teacher's knowledge from BC too, or not from the corrections."""
    from environment.reference_teacher import knows_fact
    edge = product.solution[2].fact
    seed = next(seed for seed in range(50) if knows_fact(edge, 0.5, seed))
    knowing = ReferenceTeacher([product], seed=seed, knowledge=0.5)
    showing = ReferenceTeacher([product], seed=seed, knowledge=0.5, show_work=True)
    plain = ReferenceTeacher([product], seed=seed)
    trajectory = episode(product, [ref(product, 1), 'final_answer("1950")'])
    verdict = showing.verdict(trajectory, product.answer)
    assert verdict.first_error_step == knowing.verdict(trajectory, product.answer).first_error_step == 3
    stated = knowing.replacement_step(product, trajectory.steps[:2], trajectory.steps[2], verdict)
    shown = showing.replacement_step(product, trajectory.steps[:2], trajectory.steps[2], verdict)
    assert stated.code.startswith('founder = "Vokel Breitail"')
    assert shown.code == ref(product, 2) == plain.replacement_step(product, trajectory.steps[:2],
                                                                   trajectory.steps[2], verdict).code
    assert "Vokel Breitail" not in shown.thought and "Vokel Breitail" not in verdict.suggestion
    blank = episode(product, [""], plan="")  # an empty plan: the correction is a new plan
    plan_verdict = showing.verdict(blank, product.answer)
    assert plan_verdict.first_error_step == 1
    plan = showing.replacement_step(product, [], blank.steps[0], plan_verdict)
    assert plan.thought == plain.replacement_step(product, [], blank.steps[0], plan_verdict).thought
    assert plan.thought != knowing.replacement_step(product, [], blank.steps[0], plan_verdict).thought
    solved = showing.solve(product, CONFIG, seed=0)  # BC keeps what it knows
    assert [s.code for s in solved.steps] == [s.code for s in knowing.solve(product, CONFIG, seed=0).steps]
    assert 'search("Druzideim Industries")' not in "\n".join(s.code or "" for s in solved.steps)
    right = episode(product, ['company = "Druzideim Industries"', 'final_answer("1950")'])
    step = showing.replacement_step(product, right.steps[:2], right.steps[2], showing.verdict(right, product.answer))
    assert 'search("Goulaisais")' not in step.code and "Druzideim Industries" in step.code
    with pytest.raises(TeacherError, match="corrections-show-work"):
        make_teacher("smol-135m-q4", [product], show_work=True)


@pytest.mark.parametrize("knowledge", [0.3, 0.7])
def test_knowledge_solutions_reach_the_answer(knowledge):
    """With any P, the teacher's own episodes (every generated family, held-out ones too) run in the
    sandbox without an error, end with the correct answer within the reference's number of steps, and
    its own rules find no error in them. If this broke, BC at P > 0 would train on wrong or broken
    trajectories, or the oracle row would not be 100%."""
    from environment.reference_teacher import first_error
    tasks = knowledge_tasks()
    teacher = ReferenceTeacher(tasks, seed=1, knowledge=knowledge)
    shorter = 0
    for task in tasks:
        trajectory = teacher.solve(task, CONFIG, seed=0)
        assert trajectory.correct and trajectory.finished, (task.id, [s.code for s in trajectory.steps])
        assert not any(s.error for s in trajectory.steps)
        assert first_error(task, trajectory.steps, judge_stated=True, judge_repeats=True)[0] == 0
        assert teacher.verdict(trajectory, task.answer).first_error_step == 0
        assert len(trajectory.steps) <= len(task.solution)
        shorter += len(trajectory.steps) < len(task.solution)
    assert shorter > len(tasks) // 10


def test_knowledge_judges_the_students_stated_facts(product):
    """A knowing teacher judges a STUDENT's stated fact: stating a world name the student never saw
    and that is off the reference path (a company that does not make the product) is the first
    error; stating the right company is not, and counts as reached (the correction moves on to the
    founder hop); searching instead is fine. If this broke, the teacher would wave through
    hallucinated facts, or blame students for knowing."""
    from environment.reference_teacher import self_contained_step
    teacher = ReferenceTeacher([product], seed=0, knowledge=0.5)
    titles = [p.split(": ", 1)[0] for p in product.corpus]
    other = next(t for t in titles if t.endswith(" Corp") and t != "Druzideim Industries")
    wrong = episode(product, [f'company = "{other}"\nprint(search(company))', 'final_answer("1950")'])
    verdict = teacher.verdict(wrong, product.answer)
    assert verdict.first_error_step == 2 and other in verdict.analysis
    right = episode(product, ['company = "Druzideim Industries"', 'final_answer("1950")'])
    verdict = teacher.verdict(right, product.answer)
    assert verdict.first_error_step == 3
    step = teacher.replacement_step(product, right.steps[:2], right.steps[2], verdict)
    assert 'search("Goulaisais")' not in step.code and "Druzideim Industries was founded by" in step.thought
    assert step.code == self_contained_step(product, 2, teacher.knows).code
    clean = episode(product, [ref(product, 1), ref(product, 2), ref(product, 3), ref(product, 4)])
    assert clean.correct and teacher.verdict(clean, product.answer).first_error_step == 0
    # The plain reference teacher (P = 0) keeps today's rules: the wrong statement is not judged.
    assert ReferenceTeacher([product]).verdict(wrong, product.answer).first_error_step == 3


def test_repeats_are_errors_names_the_first_repeat(product):
    """--repeats-are-errors: a looping episode (the founder searched three times, then the steps run
    out) has its first error at the first repeat, and the correction is the next hop, not the repeat.
    Without the rule the repeats pass as harmless searches and the episode has no first error at all
    (MPS would tag it hard, and SCoRe-SFT never sees the loop fixed); a first search is no repeat, nor
    is the same search with other code. If this broke, corrections would land after the loop or on
    honest work."""
    looping = episode(product, [ref(product, 1), ref(product, 2), ref(product, 2), ref(product, 2)])
    assert not looping.finished
    assert ReferenceTeacher([product]).verdict(looping, product.answer).first_error_step == 0
    teacher = ReferenceTeacher([product], repeats_are_errors=True)
    verdict = teacher.verdict(looping, product.answer)
    assert verdict.first_error_step == 4 and "repeats step 3" in verdict.analysis
    step = teacher.replacement_step(product, looping.steps[:3], looping.steps[3], verdict)
    assert step.code == ReferenceTeacher([product]).replacement_step(product, looping.steps[:3], looping.steps[3],
                                                                    verdict).code
    assert step.code.strip() != looping.steps[2].code.strip() and "Vokel Breitail" in step.code
    reworded = episode(product, [ref(product, 1), ref(product, 2), ref(product, 2).replace("print(", "print( ")])
    assert teacher.verdict(reworded, product.answer).first_error_step == 0
    clean = episode(product, [ref(product, 1), ref(product, 2), ref(product, 3), ref(product, 4)])
    assert teacher.verdict(clean, product.answer).first_error_step == 0
    with pytest.raises(TeacherError, match="repeats-are-errors"):
        make_teacher("smol-135m-q4", [product], repeats_are_errors=True)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_knowledge_outside_zero_one_is_refused(bad, recipe):
    """P must be a share in [0, 1]: anything else is a ValueError of one line that names the value,
    from the class and from make_teacher. If this broke, a typo (`--teacher-knowledge 50`) would run
    a teacher that knows everything, or crash later with a traceback."""
    for build in (lambda: ReferenceTeacher([recipe], knowledge=bad), lambda: make_teacher("reference", [recipe], knowledge=bad)):
        with pytest.raises(ValueError, match="teacher knowledge must be a number from 0 to 1") as caught:
            build()
        assert "\n" not in str(caught.value) and repr(bad) in str(caught.value)


def test_knowledge_is_for_the_reference_teacher_only(recipe):
    """An LLM teacher knows what it knows: asking one for privileged knowledge is refused in one line,
    before any model is loaded. If this broke, --teacher-knowledge would silently do nothing."""
    for spec, url in (("smol-135m-q4", None), ("reference", "http://127.0.0.1:9")):
        with pytest.raises(TeacherError, match="teacher-knowledge") as caught:
            make_teacher(spec, [recipe], url=url, knowledge=0.5)
        assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------- prompts and parsers

def test_parse_verdict_validates():
    """Replies are validated whatever the backend: out-of-range, boolean or missing fields are refused;
    prose around the JSON is tolerated. If this broke, a bad index would reach MPS."""
    good = '{"analysis": "a", "first_error_step": 2, "suggestion": "s"}'
    assert parse_verdict(good, 3) == Verdict(2, "a", "s")
    assert parse_verdict("Here: " + good + " done", 3).first_error_step == 2
    assert parse_verdict(good, 1) is None
    assert parse_verdict('{"analysis": "a", "first_error_step": true, "suggestion": "s"}', 3) is None
    assert parse_verdict('{"analysis": "a", "first_error_step": 1}', 3) is None
    assert parse_verdict("no json", 3) is None
    assert verdict_schema(3)["properties"]["first_error_step"]["enum"] == [0, 1, 2, 3]


def test_shared_prefix_and_fresh_attempt(recipe):
    """The verdict and replacement prompts of one trajectory share their text up to step k-1 (so
    llama.cpp reuses that KV cache), and correction talk is dropped from a teacher's thought. If this
    broke, every replacement would recompute its prompt, or SFT would teach apologies."""
    trajectory = episode(recipe, [ref(recipe, 1), ref(recipe, 2), "final_answer(1)"])
    teacher = _Scripted([recipe], [])
    verdict_messages = teacher.messages("Task: t", trajectory.steps, "question A")
    step_messages = teacher.messages("Task: t", trajectory.steps[:2], "question B")
    shared = render_steps(trajectory.steps[:2])
    assert render_steps(trajectory.steps).startswith(shared)
    assert verdict_messages[1]["content"].startswith(step_messages[1]["content"].split("question B")[0].rstrip())
    assert as_fresh_attempt("The previous step was wrong. Multiply the price by the count.") == \
        "Multiply the price by the count."


# ---------------------------------------------------------------------------------------------- LLM protocol, scripted

class _Scripted(LLMTeacher):
    """An LLM teacher whose 'model' replies from a script and counts its calls."""
    model_id = "scripted"

    def __init__(self, tasks, replies, **kwargs):
        super().__init__(tasks=tasks, **kwargs)
        self.replies, self.requests = list(replies), []

    def complete(self, messages, params, schema):
        self.requests.append((messages, params, schema))
        return Reply(self.replies.pop(0) if self.replies else "", "stop", 10, 5)


def test_cache_makes_no_second_call(recipe, tmp_path):
    """A second teacher on the same cache file answers the same questions with zero model calls. If
    this broke, a resumed run would pay for every teacher call again."""
    trajectory = episode(recipe, [ref(recipe, 1), "final_answer(1)"])
    cache = tmp_path / "teacher.jsonl"
    first = _Scripted([recipe], ['{"analysis": "a", "first_error_step": 3, "suggestion": "s"}'], cache_path=cache)
    assert first.verdict(trajectory, recipe.answer).first_error_step == 3 and first.stats.calls == 1
    second = _Scripted([recipe], [], cache_path=cache)
    assert second.verdict(trajectory, recipe.answer).first_error_step == 3
    assert second.stats.calls == 0 and second.stats.cache_hits == 1 and second.requests == []
    other_seed = _Scripted([recipe], ['{"analysis": "a", "first_error_step": 1, "suggestion": "s"}'],
                           cache_path=cache, seed=1)
    assert other_seed.verdict(trajectory, recipe.answer).first_error_step == 1  # the seed is part of the key


def test_scripted_replacement_retry_and_solve(recipe):
    """An unusable step (no code) is asked once more with another seed; a usable one becomes a teacher
    Step in the canonical format; `solve` runs the teacher as the agent and grades it. If this broke,
    the retry rule or phase 0 data from LLM teachers would be wrong."""
    teacher = _Scripted([recipe], ["<thought>only words</thought>", "<thought>Scale it.</thought>\n<code>\nscale = 4 / 8\nprint(scale)"])
    trajectory = episode(recipe, ["scale = 1\nprint(scale)"])
    step = teacher.replacement_step(recipe, trajectory.steps[:1], trajectory.steps[1], Verdict(2, "a", "s"))
    assert (step.index, step.author, step.code) == (2, "teacher", "scale = 4 / 8\nprint(scale)")
    assert teacher.stats.retries == 1 and len(teacher.requests) == 2
    assert teacher.requests[0][1]["seed"] != teacher.requests[1][1]["seed"]
    solver = _Scripted([recipe], ["<first_thought>Scale, then add", "<thought>all</thought><code>print((290 + 60) * 4 / 8)\nfinal_answer(175)"])
    solved = solver.solve(recipe, CONFIG, seed=0)
    assert solved.correct and [s.author for s in solved.steps] == ["teacher", "teacher"]
    assert solved.steps[0].thought == "Scale, then add" and solved.steps[1].observation.strip() == "175.0"


def test_teacher_sees_solution_and_judges(recipe):
    """`sees="solution"` adds the reference solution to every prompt (the default shows only the
    answer), and an equivalence judgement is parsed from its JSON boolean. If this broke,
    --teacher-sees would be silently ignored, or the RL judge would always say no."""
    trajectory = episode(recipe, ["final_answer(1)"])
    plain = _Scripted([recipe], [])
    shown = _Scripted([recipe], ['{"reason": "same", "equivalent": true}'], sees="solution")
    assert "Reference solution" not in plain.verdict_messages(trajectory, recipe.answer)[1]["content"]
    content = shown.verdict_messages(trajectory, recipe.answer)[1]["content"]
    assert "Reference solution" in content and "scale = 4 / 8" in content and recipe.answer in content
    assert shown.equivalent(recipe, trajectory.steps[:1], trajectory.steps[1], trajectory.steps[1]) is True
    with pytest.raises(TeacherError):
        _Scripted([recipe], [], sees="everything")


def test_make_teacher_errors(monkeypatch):
    """User errors end in one-line TeacherErrors: unknown spec, missing file, hub unreachable (without
    touching the network: from_pretrained is replaced). Multi-part presets pin the first part and fetch
    the others. If this broke, users would see tracebacks or half-downloaded models."""
    with pytest.raises(TeacherError, match="unknown teacher"):
        make_teacher("gpt-9")
    with pytest.raises(TeacherError, match="does not exist"):
        make_teacher("/nowhere/model.gguf")
    import llama_cpp
    seen = {}

    def offline(repo, filename, additional_files=None, **kwargs):
        seen.update(repo=repo, filename=filename, others=additional_files)
        raise OSError("Name or service not known")

    monkeypatch.setattr(llama_cpp.Llama, "from_pretrained", staticmethod(offline))
    with pytest.raises(TeacherError) as error:
        make_teacher("qwen-7b-q4")
    assert "\n" not in str(error.value) and "--teacher /path/to/file.gguf" in str(error.value)
    assert (seen["repo"], seen["filename"]) == TEACHER_PRESETS["qwen-7b-q4"]
    assert seen["others"] == ["qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf"]


# ---------------------------------------------------------------------------------------------- bad HTTP teachers

class _FakeServer:
    """A tiny OpenAI-style server on 127.0.0.1: each request pops one scripted action."""

    def __init__(self, actions):
        self.actions, self.requests = list(actions), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                status, text, delay = server.actions.pop(0) if server.actions else (200, "", 0)
                time.sleep(delay)
                payload = text if status != 200 or text.startswith("RAW:") else json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
                try:
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(payload.removeprefix("RAW:").encode())
                except OSError:  # the client gave up (timeout test)
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda *args: None
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _reply(text, status=200, delay=0.0):
    return (status, text, delay)


@pytest.mark.parametrize("case", ["out_of_range", "invalid_json_body", "not_json_reply", "context_overflow",
                                  "empty_step", "step_without_code"])
def test_bad_http_teacher(recipe, case):
    """Each bad reply gives None (never an exception) after exactly one retry. If this broke, one
    misbehaving server would crash MPS, or retry forever. (A server that does not answer, or times out,
    is a fault instead: tests/test_teacher_faults.py.)"""
    actions = {"out_of_range": [_reply('{"analysis": "a", "first_error_step": 9, "suggestion": "s"}')] * 2,
               "invalid_json_body": [_reply("RAW:<html>oops")] * 2,
               "not_json_reply": [_reply("the first error is step 2")] * 2,
               "context_overflow": [_reply("RAW:{'error': 'the prompt does not fit the context'}", status=400)] * 2,
               "empty_step": [_reply("")] * 2,
               "step_without_code": [_reply("<thought>I would scale it.</thought>")] * 2}[case]
    server = _FakeServer(actions)
    try:
        teacher = URLTeacher(server.url, model="fake", tasks=[recipe], config=TeacherConfig(timeout_s=0.5))
        trajectory = episode(recipe, ["scale = 1\nprint(scale)", "final_answer(1)"])
        if case in ("empty_step", "step_without_code"):
            assert teacher.replacement_step(recipe, trajectory.steps[:1], trajectory.steps[1], Verdict(2, "a", "s")) is None
        else:
            assert teacher.verdict(trajectory, recipe.answer) is None
        assert len(server.requests) == 2 and teacher.stats.failures == 1 and teacher.stats.retries == 1
        assert teacher.stats.backend_errors == (2 if case in ("invalid_json_body", "context_overflow") else 0)
    finally:
        server.close()


def test_http_server_down_then_negotiation(recipe):
    """A server that is down raises TeacherUnavailable (a fault, not a None verdict); a server that rejects
    OpenAI's json_schema (llama_cpp.server answers 500) is asked again with json_object + schema at once
    (negotiation, not a resend), and the retry after an invalid reply succeeds. If this broke,
    --teacher-url would not work with llama_cpp.server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = URLTeacher(f"http://127.0.0.1:{port}/v1", model="m", tasks=[recipe],
                      config=TeacherConfig(timeout_s=2, retry_delays_s=(0.0,)))
    trajectory = episode(recipe, ["scale = 1\nprint(scale)", "final_answer(1)"])
    with pytest.raises(TeacherUnavailable, match="connection refused"):
        down.verdict(trajectory, recipe.answer)
    assert down.stats.backend_errors == 1 and down.stats.resent == 1 and down.stats.failures == 0
    server = _FakeServer([_reply("RAW:{'detail': 'response_format.type: Input should be json_object'}", status=500),
                          _reply("not json"),
                          _reply('{"analysis": "a", "first_error_step": 2, "suggestion": "s"}')])
    try:
        teacher = URLTeacher(server.url, model="fake", tasks=[recipe])
        assert teacher.verdict(trajectory, recipe.answer).first_error_step == 2
        formats = [r.get("response_format", {}).get("type") for r in server.requests]
        assert formats == ["json_schema", "json_object", "json_object"]
        assert server.requests[1]["response_format"]["schema"]["properties"]["first_error_step"]["enum"] == [0, 1, 2, 3]
        assert server.requests[1]["seed"] != server.requests[2]["seed"]  # the retry uses another seed
        assert teacher.stats.resent == 0  # the 500 about response_format was negotiated, never resent
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------- real llama.cpp (offline SmolLM2)

SMALL = TeacherConfig(verdict_max_tokens=256, step_max_tokens=96)


@pytest.fixture(scope="module")
def smol_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("teacher") / "cache.jsonl"


def test_gguf_smol_verdicts_respect_schema(recipe, product, smol_cache):
    """The real llama.cpp path: every complete verdict reply is JSON whose first_error_step is in the
    enum 0..n (the grammar held), the verdict is None or in range, a replacement comes back as a teacher
    Step or None, and a schema llama.cpp cannot convert raises. A second teacher on the same cache makes
    zero model calls. If this broke, LLM verdicts could index outside the trajectory."""
    teacher = make_teacher("smol-135m-q4", [recipe, product], cache_path=smol_cache, seed=0, config=SMALL)
    assert isinstance(teacher, GGUFTeacher)
    cases = [(recipe, episode(recipe, ["scale = 4 / 6\nprint(scale)", "final_answer(scale)"])),
             (product, episode(product, [ref(product, 1), 'final_answer("1900")']))]
    verdicts = [teacher.verdict(trajectory, task.answer) for task, trajectory in cases]
    for (task, trajectory), verdict in zip(cases, verdicts):
        assert verdict is None or 0 <= verdict.first_error_step <= len(trajectory.steps)
    records = [json.loads(line) for line in smol_cache.read_text().splitlines()]
    assert records and teacher.stats.calls == len(records)
    for record in records:
        if record["finish_reason"] == "stop":
            value = json.loads(record["text"])
            assert value["first_error_step"] in range(4) and set(value) == {"analysis", "first_error_step", "suggestion"}
    task, trajectory = cases[0]
    step = teacher.replacement_step(task, trajectory.steps[:1], trajectory.steps[1], Verdict(2, "a", "s"))
    assert step is None or (step.index, step.kind, step.author) == (2, "action", "teacher") and step.code
    with pytest.raises(Exception):
        teacher.complete([{"role": "user", "content": "x"}], {"temperature": 0, "top_p": 1, "max_tokens": 1,
                                                              "stop": [], "seed": 0}, {"type": "frobnicate"})
    calls = teacher.stats.calls
    teacher.close()
    again = make_teacher("smol-135m-q4", [recipe, product], cache_path=smol_cache, seed=0, config=SMALL)
    assert [again.verdict(t, task.answer) for task, t in cases] == verdicts
    assert again.stats.calls == 0 and again.stats.cache_hits >= len(cases) and calls >= len(cases)
    again.close()


def test_http_real_llama_cpp_server(recipe):
    """The HTTP path against a real llama_cpp.server on 127.0.0.1 serving the offline GGUF: it starts,
    the teacher negotiates json_object + schema (the server refuses OpenAI's json_schema), and the verdict
    is None or in range. If this broke, --teacher-url would fail against the project's own server."""
    from student import offline_gguf_path
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # On CPUs with AMX the plain module crashes on multi-token prompts (teacher_backends.py, deviation 1).
    launcher = [str(ROOT / "teacher.py"), "serve"] if cpu_has_amx() else ["-m", "llama_cpp.server"]
    process = subprocess.Popen([sys.executable, *launcher, "--model", str(offline_gguf_path()), "--host", "127.0.0.1",
                                "--port", str(port), "--n_ctx", "4096", "--n_threads", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(120):  # bounded wait for readiness (~60 s)
            try:
                urllib.request.urlopen(url + "/models", timeout=1).read()
                break
            except OSError:
                assert process.poll() is None, "llama_cpp.server exited"
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not become ready")
        teacher = make_teacher("", [recipe], url=url, config=SMALL)
        trajectory = episode(recipe, ["final_answer(3)"])
        verdict = teacher.verdict(trajectory, recipe.answer)
        assert teacher.format_index == 1 and teacher.stats.calls >= 1 and teacher.stats.backend_errors == 0
        assert verdict is None or 0 <= verdict.first_error_step <= 2
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
