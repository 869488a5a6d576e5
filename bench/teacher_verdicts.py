"""How well a teacher finds a planted first error, and whether its one-step repair gets the episode back.

Each case is a reference solution with ONE error planted at a known step, run in a sandbox as if a
student had written it; the teacher gives its verdict and one replacement step, which then runs after
the prefix is replayed in a fresh sandbox (exactly as MPS does). Plants:

    wrong_number    (arith)  step j computes with a literal off by 3; later steps carry on with it
    wrong_variable  (arith)  step j uses another variable in place of the right one
    premature       (both)   step j calls final_answer with what it has so far (wrong)
    wrong_search    (lookup) step j searches another entity, step j+1 answers from what it found.
                             Expected k = j+1: METHOD.md says a search that finds nothing useful is not
                             an error by itself; using its wrong fact is. A teacher naming j counts as
                             off by one.
    clean           (both)   the reference solution itself, unchanged: the verdict should be 0 (no
                             error). MPS never asks about a correct episode; this measures false alarms.

Metrics (over planted cases unless said): exact = k equals the expected step; off_by_one = |k - expected|
= 1; clean_no_error = share of clean trajectories with k = 0; schema_failures = verdicts that came
back None (all cases); repair = the replacement ran and its observation shows the next reference
checkpoint (or a correct final answer).

    python bench/teacher_verdicts.py --teacher reference
    python bench/teacher_verdicts.py --teacher smol-135m-q4 --n 4 --threads 2

Prints `RESULT name=value` lines last; figures go to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent import RolloutConfig, Step, Trajectory, format_step, grade_trajectory, replay_codes, run_step  # noqa: E402
from environment.graders import is_correct  # noqa: E402
from environment.reference_teacher import next_reference_position, numbers_in, shows_checkpoint  # noqa: E402
from environment.tasks import load_tasks  # noqa: E402
from teacher import make_teacher  # noqa: E402

LITERAL = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def run_case(teacher, task, codes: list[tuple[str, str]], config: RolloutConfig) -> Trajectory:
    """Run (thought, code) actions after the reference plan as a student's episode, graded."""
    trajectory = teacher.new_trajectory(task, 0)
    plan = task.solution[0].thought
    trajectory.steps.append(Step(index=1, kind="plan", author="student", content=format_step("plan", plan),
                                 thought=plan, observation="None"))
    with teacher.open_sandbox(task, config) as sandbox:
        for index, (thought, code) in enumerate(codes, start=2):
            step = Step(index=index, kind="action", author="student", content=format_step("action", thought, code),
                        thought=thought, code=code)
            trajectory.steps.append(run_step(sandbox, step))
            if step.final_answer is not None:
                trajectory.final_answer, trajectory.finished, trajectory.end_reason = step.final_answer, True, "final_answer"
                break
    grade_trajectory(trajectory, task)
    return trajectory


def _plus_three(match: re.Match) -> str:
    """A literal off by 3, written as it was (int or float): 12 -> 15, 12.5 -> 15.5."""
    text = match.group()
    return str(float(text) + 3) if "." in text else str(int(text) + 3)


def plants(task, rng: random.Random) -> list[tuple[str, list[tuple[str, str]], int]]:
    """(plant name, the student's actions, expected first-error step) for one task."""
    actions = [(s.thought, s.code) for s in task.solution[1:]]
    last = len(actions) - 1  # action positions 0..last; trajectory step = position + 2
    cases = []
    # Every plant keeps the reference's plan and steps before j, so the expected k is known exactly;
    # a plant that happens to leave the answer right is dropped by the caller (not a wrong episode).
    if task.task_set == "arith":
        # wrong_number: the first literal of an assignment in a random step, plus 3.
        eligible = [p for p, (_, code) in enumerate(actions) if LITERAL.search(code.split("\n")[0].split("=", 1)[1])]
        if eligible:
            p = rng.choice(eligible)
            first, rest = actions[p][1].split("\n", 1)
            name, expr = first.split("=", 1)
            expr = LITERAL.sub(_plus_three, expr, count=1)
            planted = list(actions)
            planted[p] = (actions[p][0], f"{name}={expr}\n{rest}")
            cases.append(("wrong_number", planted, p + 2))
        # wrong_variable: a name read by an assignment swapped for another bound name.
        bound: list[str] = []
        options = []
        for p, ref in enumerate(task.solution[1:]):
            for line_number, line in enumerate(ref.code.split("\n")):
                if "=" in line and not line.startswith(("print", "final_answer")):
                    target, expr = line.split("=", 1)
                    for used in re.findall(r"[A-Za-z_]\w*", expr):
                        others = [b for b in bound if b != used]
                        if used in bound and others:
                            options.append((p, line_number, used, others[0]))
                    bound.append(target.strip())
        if options:
            p, line_number, used, other = rng.choice(options)
            lines = actions[p][1].split("\n")
            target, expr = lines[line_number].split("=", 1)
            lines[line_number] = target + "=" + re.sub(rf"\b{used}\b", other, expr, count=1)
            planted = list(actions)
            planted[p] = (actions[p][0], "\n".join(lines))
            cases.append(("wrong_variable", planted, p + 2))
        # premature: answer with the last value bound so far.
        if last >= 1:
            p = rng.randrange(1, last + 1)
            name = task.solution[p].defines[-1][0] if p >= 1 and task.solution[p].defines else None
            if name:
                cases.append(("premature", actions[:p] + [("I have the answer.", f"final_answer({name})")], p + 2))
    else:
        searches = [p for p, (_, code) in enumerate(actions) if "search(" in code]
        # premature: answer with the fact the previous hop found (a founder's name for a year question).
        if len(searches) >= 2:
            p = rng.choice(searches[1:])
            fact = task.solution[p].checkpoints[0]  # actions[p - 1] is solution[p]
            cases.append(("premature", actions[:p] + [("I have the answer.", f'final_answer("{fact}")')], p + 2))
        # wrong_search: another entity's passage, then an answer taken from it.
        if searches:
            p = rng.choice(searches)
            titles = sorted({passage.split(":", 1)[0] for passage in task.corpus})
            needed = task.solution[p + 1].checkpoints[0] if task.solution[p + 1].checkpoints else task.answer
            title = rng.choice([t for t in titles if t not in actions[p][1] and needed not in t])
            passage = next(x for x in task.corpus if x.startswith(title + ":"))
            years = [str(int(x)) for x in numbers_in(passage) if x.denominator == 1 and 1000 < x < 3000]
            wrong = years[0] if task.grader == "numeric" and years else title
            cases.append(("wrong_search", actions[:p] + [(actions[p][0], f'print(search("{title}"))'),
                                                         ("I have the answer.", f'final_answer("{wrong}")')], p + 3))
    return cases


def repaired(teacher, task, prefix: list[Step], step: Step | None, config: RolloutConfig) -> bool:
    """METHOD (MPS step 5): replay the prefix in a FRESH sandbox, run the replacement; back on the
    reference path when its observation shows the next reference checkpoint or a correct answer."""
    if step is None:
        return False
    with teacher.open_sandbox(task, config) as sandbox:
        sandbox.replay(replay_codes(prefix))
        step = run_step(sandbox, step)
    if step.final_answer is not None:
        return is_correct(task.grader, step.final_answer, task.answer)
    if step.kind == "plan":
        return bool(step.thought.strip())
    ref = task.solution[next_reference_position(task, prefix)]
    return not step.error and bool(ref.checkpoints) and all(shows_checkpoint(step.observation, c) for c in ref.checkpoints)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="reference", help="reference, a preset, a .gguf path (or a model name with --url)")
    parser.add_argument("--url", default=None, help="an OpenAI-compatible server instead of a local model")
    parser.add_argument("--n", type=int, default=6, help="tasks per family (arith, lookup)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    parser.add_argument("--cache", default=None, help="teacher cache file (default: none, every call is made)")
    args = parser.parse_args()
    tasks = load_tasks("arith", "test", args.n, seed=args.seed) + load_tasks("lookup", "test", args.n, seed=args.seed)
    teacher = make_teacher(args.teacher, tasks, cache_path=args.cache, url=args.url, threads=args.threads, seed=args.seed)
    config = RolloutConfig()
    rows, began = [], time.perf_counter()
    for task in tasks:
        rng = random.Random(f"{args.seed}/{task.id}")
        cases = plants(task, rng) + [("clean", [(s.thought, s.code) for s in task.solution[1:]], 0)]
        for plant, codes, expected in cases:
            # The episode runs for real, so the teacher reads genuine observations and errors.
            trajectory = run_case(teacher, task, codes, config)
            if plant != "clean" and trajectory.correct:
                continue  # the plant did not make the answer wrong: not a case
            verdict = teacher.verdict(trajectory, task.answer)
            k = verdict.first_error_step if verdict else None
            repair = False
            # The replacement is asked at the teacher's OWN k, as MPS would: a wrong k usually means a
            # repair that cannot put the episode back on the reference path.
            if plant != "clean" and verdict is not None and 1 <= k <= len(trajectory.steps):
                prefix = trajectory.steps[:k - 1]
                step = teacher.replacement_step(task, prefix, trajectory.steps[k - 1], verdict)
                repair = repaired(teacher, task, prefix, step, config)
            rows.append(dict(task=task.id, family=task.task_set, plant=plant, expected=expected, k=k, repair=repair))
            print(f"{task.id:18s} {plant:15s} expected {expected}  verdict {k}  repair {repair}", flush=True)
    wall_s = time.perf_counter() - began
    # Rates over planted cases; a verdict that came back None counts as wrong everywhere.
    planted = [r for r in rows if r["plant"] != "clean"]
    clean = [r for r in rows if r["plant"] == "clean"]

    def share(rows_, test) -> float:
        return sum(1 for r in rows_ if test(r)) / max(1, len(rows_))

    print("\nper plant (exact / off-by-one / repair):")
    for plant, count in sorted(Counter(r["plant"] for r in planted).items()):
        group = [r for r in planted if r["plant"] == plant]
        print(f"  {plant:15s} n={count:3d}  exact {share(group, lambda r: r['k'] == r['expected']):.2f}  "
              f"off-by-one {share(group, lambda r: r['k'] is not None and abs(r['k'] - r['expected']) == 1):.2f}  "
              f"repair {share(group, lambda r: r['repair']):.2f}")
    stats = teacher.stats
    print(f"RESULT teacher={teacher.name}")
    print(f"RESULT planted_cases={len(planted)}")
    print(f"RESULT clean_cases={len(clean)}")
    print(f"RESULT first_error_exact={share(planted, lambda r: r['k'] == r['expected']):.3f}")
    print(f"RESULT first_error_off_by_one={share(planted, lambda r: r['k'] is not None and abs(r['k'] - r['expected']) == 1):.3f}")
    print(f"RESULT planted_said_no_error={share(planted, lambda r: r['k'] == 0):.3f}")
    print(f"RESULT clean_no_error={share(clean, lambda r: r['k'] == 0):.3f}")
    print(f"RESULT schema_failures={sum(1 for r in rows if r['k'] is None)}")
    print(f"RESULT repair_success={share(planted, lambda r: r['repair']):.3f}")
    print(f"RESULT model_calls={stats.calls}")
    print(f"RESULT retries={stats.retries}")
    print(f"RESULT wall_s={wall_s:.1f}")


if __name__ == "__main__":
    main()
