"""Task sets: what the agent is asked, the reference answer, and a reference solution to imitate.

A `Task` is one question plus everything needed to run and grade an episode on it: the grader's
name (environment/graders.py), the search corpus for `search(query, k)`, and, for the generated sets, a
verified reference solution in the agent format of METHOD.md section 2 (plan first, then thought +
code steps, the last one calling `final_answer`). The `reference` teacher (METHOD.md section 3) is
built from those solutions: each `RefStep` carries *checkpoints* (the numbers an arith step prints,
the fact a lookup search must surface) and the names it reads / binds, so the teacher can emit any
step self-contained inside a student's interpreter. Each step also names its *fact* (a world edge,
an arith intermediate): a teacher with privileged knowledge states the facts it knows instead of
searching or computing them (knowing_solution, knowing_step; EXPERIMENT.md).

Sets (`TASK_SETS`):
    arith, lookup          generated offline here, deterministic by seed, with reference solutions.
    arith-heldout, arith-reworded, lookup-heldout
                           test-only families for held-out generalisation: other arith templates
                           (other wordings, names and problem structures), the arith test problems
                           asked in other words, and a lookup world of other names with the same
                           relations. Their train split is refused.
    gsm8k, math500, aime24, aime25, hotpotqa, 2wiki, musique, bamboogle
                           the paper's benchmarks, loaded with `datasets` where a hub is reachable.
    path/to/file.jsonl     local tasks, one {"id", "question", "answer"} object per line, with a
                           "split" field; a file without one is a test set (training on it needs
                           split_jsonl / --split-jsonl, which splits it by a hash of the ids).

Splits: "train" and "test". Generated sets put a task in the test split by a hash of its content
(arith: the problem's template and numbers, not its names; lookup: the company at the centre of the
question), so the two splits share no task for any seed, and a test set of n tasks is a prefix of
the test set of n + 1.

Deviations from the paper, each with its reason:
1. Two generated sets stand in for the paper's training data: they run offline on a laptop and carry
   checkable reference solutions, which the offline `reference` teacher needs (DESIGN.md, Models).
2. Multi-hop benchmarks search their own per-question context paragraphs (the distractor setting),
   not the web (METHOD.md section 4); Bamboogle ships no context, so its corpus is None.

Usage:  python -c "from environment.tasks import load_tasks; print(load_tasks('arith', 'test', 1)[0])"
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import types
from dataclasses import dataclass, replace
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from environment.graders import GRADERS


class TaskError(ValueError):
    """A task set cannot be loaded; the message is one line that says what to do."""


# ---------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RefStep:
    """One step of a task's reference solution (step 1 is the plan: a thought and no code)."""
    thought: str                                # the plan text for step 1, the "why" otherwise
    code: str = ""                              # Python source; "" for the plan
    checkpoints: tuple[str, ...] = ()           # arith: numbers printed, as Python prints them;
                                                # lookup: the fact this step's search must surface
    reads: tuple[str, ...] = ()                 # names this code reads that earlier steps bound
    defines: tuple[tuple[str, str], ...] = ()   # (name, Python literal of its value) bound here
    # What a teacher with privileged knowledge needs (see "Privileged knowledge" below):
    fact: str = ""                              # key of what this step finds or computes: a world
                                                # edge ("founder|Quintara Corp") or an arith
                                                # intermediate ("arith-3f0c9a1b2d/subtotal");
                                                # "" for the plan and a lookup answer step
    statement: str = ""                         # that fact as a sentence ("Quintara Corp was
                                                # founded by Mela Dorn.")
    stated: tuple[tuple[str, str], ...] = ()    # (name, Python literal) a teacher that knows the
                                                # fact binds instead of running this step


@dataclass(frozen=True)
class Task:
    """One question with its reference answer, grader, search corpus and reference solution."""
    id: str                                 # unique and stable: same id <=> same task, any split
    task_set: str                           # "arith", "lookup", "gsm8k", ... or the JSONL stem
    question: str
    answer: str                             # reference answer, computed independently of solution
    grader: str                             # "numeric" | "math" | "f1" | "exact"
    solution: tuple[RefStep, ...] = ()      # plan first; the last action calls final_answer(...)
    corpus: tuple[str, ...] | None = None   # passages for search(); one shared tuple per set
    corpus_id: str | None = None            # key to build one search index per corpus
    solution_text: str | None = None        # worked solution in prose (GSM8K, MATH)


GENERATED_SETS = ("arith", "lookup")
# Test-only families for held-out generalisation: other templates, the test problems in other
# words, another world. No train split.
HELDOUT_SETS = ("arith-heldout", "arith-reworded", "lookup-heldout")
TASK_SETS = GENERATED_SETS + HELDOUT_SETS + (
    "gsm8k", "math500", "aime24", "aime25", "hotpotqa", "2wiki", "musique", "bamboogle")
SPLITS = ("train", "test")
# Share of generated tasks that go to the test split.
TEST_FRACTION = Fraction(1, 5)
# load_tasks("arith", split) without n: this many tasks (lookup returns its whole split).
ARITH_DEFAULT_N = {"train": 1000, "test": 200}


# ---------------------------------------------------------------------------------------------------
# Determinism helpers: every random choice flows from a readable key, never from global state
# ---------------------------------------------------------------------------------------------------

def _digest(*parts: object) -> str:
    """Hex SHA-256 of the parts; stable across runs and machines (unlike Python's hash())."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


def _rng(*parts: object) -> random.Random:
    """A private random generator seeded from a key such as ("arith", seed)."""
    return random.Random(int(_digest(*parts)[:16], 16))


def _is_test(*parts: object) -> bool:
    """Hash-based split: the same content lands in the same split whatever the seed."""
    bucket = int(_digest("split", *parts)[:8], 16) % TEST_FRACTION.denominator
    return bucket < TEST_FRACTION.numerator


# ---------------------------------------------------------------------------------------------------
# arith: multi-step word problems where exact computation pays
# ---------------------------------------------------------------------------------------------------
# Every value a solution computes is chosen (by rejecting other draws) to be a multiple of 1/4:
# whole cents for money, and exactly representable as a Python float. Float arithmetic in the
# solution code is then exact too, and what Python prints ("306.0", "12.75") is known in advance:
# the checkpoints are derived from exact Fractions, never by running the code.

@dataclass(frozen=True)
class _Calc:
    """One assignment `name = expr` in an arith reference step, with its exact value."""
    name: str
    expr: str
    value: Fraction


def _dyadic(*values: Fraction) -> bool:
    """True when every value is a multiple of 1/4 below 1e9: exact as a float, short when printed."""
    return all(4 % v.denominator == 0 and abs(v) < 10**9 for v in values)


def _decimal(x: Fraction) -> str:
    """A Fraction with a finite decimal expansion as a plain decimal: 306, 12.75."""
    if x.denominator == 1:
        return str(x.numerator)
    return str(Decimal(x.numerator) / Decimal(x.denominator))


def _money(x: Fraction) -> str:
    """Dollar amounts as people write them: $18, $12.50."""
    return f"${x.numerator}" if x.denominator == 1 else f"${float(x):.2f}"


def _py_value(value: Fraction, is_float: bool) -> str:
    """What `print` shows for `value` held as a Python float or int (also a valid literal)."""
    return repr(float(value)) if is_float else str(value.numerator)


def _arith_solution(plan: str, actions: list[tuple[str, list[_Calc]]],
                    answer_name: str) -> tuple[RefStep, ...]:
    """Plan, then one step per (thought, assignments): assign, print them all, answer at the end."""
    steps = [RefStep(thought=plan)]
    float_names: set[str] = set()   # names whose Python value is a float
    bound: set[str] = set()         # names bound by earlier steps
    for index, (thought, calcs) in enumerate(actions):
        lines, defines, reads = [], [], []
        for calc in calcs:
            used = re.findall(r"[A-Za-z_]\w*", calc.expr)
            reads += [name for name in used if name in bound and name not in reads]
            # Python's types: true division and float literals make floats; + - * keep ints.
            is_float = ("/" in calc.expr or re.search(r"\d\.\d", calc.expr) is not None
                        or any(name in float_names for name in used))
            if is_float:
                float_names.add(calc.name)
            lines.append(f"{calc.name} = {calc.expr}")
            defines.append((calc.name, _py_value(calc.value, is_float)))
        bound.update(calc.name for calc in calcs)
        # Print every name the step binds: the observation then shows exactly the checkpoints.
        lines.append(f"print({', '.join(calc.name for calc in calcs)})")
        if index == len(actions) - 1:
            lines.append(f"final_answer({answer_name})")
        # A teacher that knows these intermediate results writes them down instead (make_arith
        # keys the fact by the task's id): "subtotal = 24 * 15 = 360." and `subtotal = 360`.
        statement = " ".join(f"{calc.name} = {calc.expr} = {literal}."
                             for calc, (_, literal) in zip(calcs, defines))
        steps.append(RefStep(thought=thought, code="\n".join(lines),
                             checkpoints=tuple(text for _, text in defines),
                             reads=tuple(reads), defines=tuple(defines),
                             statement=statement, stated=tuple(defines)))
    return tuple(steps)


@dataclass(frozen=True)
class _ArithDraw:
    """One drawn problem: the key that identifies it, its text, exact answer and solution."""
    key: tuple
    question: str
    answer: Fraction
    solution: tuple[RefStep, ...]


_NAMES = ("Mia", "Omar", "Lena", "Ravi", "Sofia", "Tomas", "Aiko", "Nadia", "Felix", "Priya")
_ITEMS = ("notebooks", "pens", "mugs", "T-shirts", "lamps", "backpacks", "plant pots", "towels")


def _shop(rng: random.Random) -> _ArithDraw | None:
    """Buy many items at one price, then a percentage off the whole order."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    # Prices in quarters of a dollar ($2.00 to $40.00): products like 35 * 11.25 are tedious by
    # hand and exact in code, which is the point of this set.
    count, price, pct = rng.randint(12, 60), Fraction(rng.randint(8, 160), 4), rng.choice(
        (5, 10, 15, 20, 25, 30, 40))
    subtotal = count * price
    discount = subtotal * pct / 100
    # A discount of fractions of a cent would make the float code inexact: draw again.
    if not _dyadic(discount):
        return None
    question = (f"A shop sells {item} for {_money(price)} each. {name} buys {count} {item} and gets "
                f"{pct}% off the whole order. How much does {name} pay, in dollars?")
    # The reference answer comes from a closed form, not from the steps below: if the two ever
    # disagree, the test that runs the solutions catches it.
    answer = count * price * (100 - pct) / 100
    solution = _arith_solution(
        f"Multiply to get the cost of the {item} before the discount, then take {pct}% off.",
        [("First find the cost before the discount.",
          [_Calc("subtotal", f"{count} * {_decimal(price)}", subtotal)]),
         (f"Now take {pct}% off the subtotal; that is what {name} pays.",
          [_Calc("discount", f"subtotal * {pct} / 100", discount),
           _Calc("total", "subtotal - discount", subtotal - discount)])],
        "total")
    return _ArithDraw(("shop", name, item, count, price, pct), question, answer, solution)


def _recipe(rng: random.Random) -> _ArithDraw | None:
    """Scale a recipe from one number of servings to another, then add the ingredients."""
    servings, target = rng.choice((4, 6, 8, 12)), rng.randint(3, 40)
    flour, butter = 10 * rng.randint(15, 60), 5 * rng.randint(10, 50)
    scale = Fraction(target, servings)
    # Scale factors like 10/6 are not exact floats; 18/12 = 1.5 is. Equal servings is no problem.
    if target == servings or not _dyadic(scale, flour * scale, butter * scale):
        return None
    question = (f"A recipe for {servings} servings uses {flour} grams of flour and {butter} grams "
                f"of butter. How many grams of flour and butter together are needed for {target} "
                f"servings?")
    answer = Fraction(flour + butter) * target / servings
    # Three actions (scale, scale both, add): the longest arith solution, 4 steps with the plan.
    solution = _arith_solution(
        f"Find how many times bigger {target} servings is than {servings}, scale both "
        f"ingredients, then add them.",
        [("Work out the scale factor from the servings.",
          [_Calc("scale", f"{target} / {servings}", scale)]),
         ("Scale the flour and the butter.",
          [_Calc("flour", f"{flour} * scale", flour * scale),
           _Calc("butter", f"{butter} * scale", butter * scale)]),
         ("Add the two amounts for the answer.",
          [_Calc("total", "flour + butter", (flour + butter) * scale)])],
        "total")
    return _ArithDraw(("recipe", servings, target, flour, butter), question, answer, solution)


def _travel(rng: random.Random) -> _ArithDraw | None:
    """Two legs of a journey, one given in hours and one in minutes."""
    speed1, hours = rng.randint(40, 120), rng.randint(2, 6)
    # The second leg is in minutes so that a unit conversion (/ 60) is part of the problem.
    speed2, minutes = rng.randint(30, 110), rng.choice((15, 20, 30, 40, 45, 50, 75, 90))
    leg1, leg2 = Fraction(speed1 * hours), Fraction(speed2 * minutes, 60)
    if not _dyadic(leg2):
        return None
    question = (f"A train travels at {speed1} km/h for {hours} hours, then at {speed2} km/h for "
                f"{minutes} minutes. How many kilometres does it travel in total?")
    answer = speed1 * hours + Fraction(speed2 * minutes, 60)   # km = km/h * h, twice
    solution = _arith_solution(
        "Distance is speed times time for each part (minutes divided by 60 give hours); add them.",
        [("Find the distance of each part of the trip.",
          [_Calc("first", f"{speed1} * {hours}", leg1),
           _Calc("second", f"{speed2} * {minutes} / 60", leg2)]),
         ("Add the two distances.", [_Calc("total", "first + second", leg1 + leg2)])],
        "total")
    return _ArithDraw(("travel", speed1, hours, speed2, minutes), question, answer, solution)


def _savings(rng: random.Random) -> _ArithDraw | None:
    """Two years of yearly interest, each year's interest added to the balance."""
    name, deposit, rate = rng.choice(_NAMES), 100 * rng.randint(5, 120), rng.choice(
        (2, 4, 5, 6, 8, 10, 12, 15, 20, 25))
    # Compound interest over two years; the code keeps "* (100 + rate) / 100" rather than
    # "* 1.04", because 1.04 is not an exact float and the printed balance would carry noise.
    year1 = Fraction(deposit * (100 + rate), 100)
    year2 = year1 * (100 + rate) / 100
    if not _dyadic(year1, year2):
        return None
    question = (f"{name} puts ${deposit} in a savings account that pays {rate}% interest per "
                f"year, added to the balance at the end of each year. How much money is in the "
                f"account after 2 years, in dollars?")
    answer = Fraction(deposit * (100 + rate) ** 2, 100 ** 2)   # P * (1 + r/100)^2
    solution = _arith_solution(
        f"Grow the balance by {rate}% for the first year, then by {rate}% again for the second.",
        [("Add the first year's interest.",
          [_Calc("year1", f"{deposit} * (100 + {rate}) / 100", year1)]),
         ("Add the second year's interest to the new balance.",
          [_Calc("year2", f"year1 * (100 + {rate}) / 100", year2)])],
        "year2")
    return _ArithDraw(("savings", name, deposit, rate), question, answer, solution)


def _wages(rng: random.Random) -> _ArithDraw | None:
    """Weekday hours at the usual rate plus Saturday hours at time and a half."""
    name, rate = rng.choice(_NAMES), Fraction(rng.randint(24, 70), 2)
    days, hours, saturday = rng.randint(3, 5), rng.randint(4, 9), rng.randint(2, 7)
    weekday_pay, saturday_pay = days * hours * rate, saturday * rate * Fraction(3, 2)
    # Time and a half of a half-dollar rate can fall on a fraction of a cent: draw again.
    if not _dyadic(saturday_pay):
        return None
    question = (f"{name} earns {_money(rate)} per hour. {name} works {hours} hours on each of "
                f"{days} weekdays and {saturday} hours on Saturday, which is paid at 1.5 times "
                f"the usual rate. How much does {name} earn that week, in dollars?")
    answer = rate * (days * hours + Fraction(3, 2) * saturday)   # paid hours * rate
    solution = _arith_solution(
        "Pay the weekday hours at the usual rate and the Saturday hours at 1.5 times it, then add.",
        [("Find the weekday pay and the Saturday pay.",
          [_Calc("weekday_pay", f"{days} * {hours} * {_decimal(rate)}", weekday_pay),
           _Calc("saturday_pay", f"{saturday} * {_decimal(rate)} * 1.5", saturday_pay)]),
         ("Add them for the week's pay.",
          [_Calc("total", "weekday_pay + saturday_pay", weekday_pay + saturday_pay)])],
        "total")
    return _ArithDraw(("wages", name, rate, days, hours, saturday), question, answer, solution)


def _tiles(rng: random.Random) -> _ArithDraw | None:
    """Floor area, a percentage extra for breakage, then a price per square metre."""
    # Sides in half metres, so the area itself can be fractional (3.5 * 4.5 = 15.75).
    length, width = Fraction(rng.randint(6, 24), 2), Fraction(rng.randint(4, 16), 2)
    extra, price = rng.choice((5, 10, 15, 20, 25)), rng.randint(12, 45)
    area = length * width
    tiles = area * (100 + extra) / 100
    if not _dyadic(area, tiles, tiles * price):
        return None
    question = (f"A rectangular floor is {_decimal(length)} m long and {_decimal(width)} m wide. "
                f"Tiles cost ${price} per square metre, and {extra}% extra is bought to allow for "
                f"breakage. How much do the tiles cost, in dollars?")
    answer = length * width * (100 + extra) / 100 * price   # m^2 bought * $/m^2
    solution = _arith_solution(
        f"Find the floor area, add {extra}% for breakage, then multiply by the price per square "
        f"metre.",
        [(f"Find the area and the area of tiles with {extra}% extra.",
          [_Calc("area", f"{_decimal(length)} * {_decimal(width)}", area),
           _Calc("tiles", f"area * (100 + {extra}) / 100", tiles)]),
         ("Multiply by the price.", [_Calc("cost", f"tiles * {price}", tiles * price)])],
        "cost")
    return _ArithDraw(("tiles", length, width, extra, price), question, answer, solution)


def _fuel(rng: random.Random) -> _ArithDraw | None:
    """Fuel used on a trip from a consumption per 100 km, then its cost."""
    # Consumption 5 to 10 litres per 100 km in half litres, price $1.25 to $2.25 per litre.
    per_100, distance = Fraction(rng.randint(10, 20), 2), 20 * rng.randint(3, 40)
    price = Fraction(rng.randint(5, 9), 4)
    litres = per_100 * distance / 100
    if not _dyadic(litres, litres * price):
        return None
    question = (f"A car uses {_decimal(per_100)} litres of fuel per 100 km. A trip is {distance} "
                f"km long and fuel costs {_money(price)} per litre. How much does the fuel for "
                f"the trip cost, in dollars?")
    answer = Fraction(distance, 100) * per_100 * price   # (km / 100) * l per 100 km * $/l
    solution = _arith_solution(
        "Work out the litres the trip needs from the use per 100 km, then multiply by the price.",
        [("Find how many litres the trip uses.",
          [_Calc("litres", f"{distance} * {_decimal(per_100)} / 100", litres)]),
         ("Multiply the litres by the price per litre.",
          [_Calc("cost", f"litres * {_decimal(price)}", litres * price)])],
        "cost")
    return _ArithDraw(("fuel", per_100, distance, price), question, answer, solution)


def _order_tax(rng: random.Random) -> _ArithDraw | None:
    """Two kinds of goods, a subtotal, then sales tax on top."""
    bags, bag_price = rng.randint(4, 30), Fraction(rng.randint(16, 80), 2)
    boxes, box_price = rng.randint(3, 25), Fraction(rng.randint(8, 60), 4)
    tax = rng.choice((4, 5, 6, 8, 10, 12, 15))
    coffee, tea = bags * bag_price, boxes * box_price
    # Tax is on the sum, so a student who rounds each line or taxes one item only goes wrong.
    tax_amount = (coffee + tea) * tax / 100
    if not _dyadic(tax_amount):
        return None
    question = (f"A cafe buys {bags} bags of coffee at {_money(bag_price)} each and {boxes} boxes "
                f"of tea at {_money(box_price)} each. Sales tax of {tax}% is added to the whole "
                f"bill. What is the total bill, in dollars?")
    answer = (bags * bag_price + boxes * box_price) * (100 + tax) / 100   # subtotal * (1 + t)
    solution = _arith_solution(
        f"Add the cost of the coffee and the tea, then add {tax}% tax on the sum.",
        [("Find the cost of the coffee and of the tea.",
          [_Calc("coffee", f"{bags} * {_decimal(bag_price)}", coffee),
           _Calc("tea", f"{boxes} * {_decimal(box_price)}", tea)]),
         (f"Add {tax}% tax to the sum.",
          [_Calc("tax", f"(coffee + tea) * {tax} / 100", tax_amount),
           _Calc("total", "coffee + tea + tax", coffee + tea + tax_amount)])],
        "total")
    return _ArithDraw(("order_tax", bags, bag_price, boxes, box_price, tax), question, answer,
                      solution)


ARITH_TEMPLATES = (_shop, _recipe, _travel, _savings, _wages, _tiles, _fuel, _order_tax)


def _problem_key(key: tuple) -> tuple:
    """The part of a draw's key that makes it another problem: its template and its numbers.

    Names of people and things (the str fields after the template's name) are left out: "Mia buys
    24 pens at $15" and "Omar buys 24 mugs at $15" are one problem to a student, so they must fall
    in one split (hashing the names too put 9 such pairs across the splits of 1000 + 200 tasks)."""
    return (key[0],) + tuple(part for part in key[1:] if not isinstance(part, str))


def _draw_arith(task_set: str, templates: tuple, split: str | None, n: int,
                seed: int, reworded: bool = False) -> list[Task]:
    """n distinct problems from `templates`, in a fixed order per (task_set, seed); split None
    keeps every draw (a test-only family), else the draws whose problem hashes into `split`.
    reworded: the same draws, each asked in its REWORDINGS wording, as the set <task_set>-reworded."""
    # One stream of draws per seed; both splits read the same stream and keep their own share,
    # so the split of a problem depends only on its numbers (_problem_key), never on the seed.
    rng = _rng(task_set, seed)
    name = f"{task_set}-reworded" if reworded else task_set  # the set the tasks belong to
    tasks: list[Task] = []
    seen: set[tuple] = set()   # problems already drawn: a name-only variant is no new task
    # Rejection sampling: most templates reject draws whose values would not be exact floats.
    for _ in range(200 * n + 1000):
        if len(tasks) == n:
            break
        draw = rng.choice(templates)(rng)
        if draw is None:
            continue
        problem = _problem_key(draw.key)
        if split is not None and _is_test(task_set, problem) != (split == "test"):
            continue
        if problem in seen:
            continue
        seen.add(problem)
        # Content-addressed id (names included: another wording is another question): the same
        # problem has the same id in every seed and split.
        task_id = f"{name}-" + _digest(name, draw.key)[:10]
        # Each action's intermediate results are one fact of this task, for the knowing teacher.
        solution = tuple(replace(step, fact=f"{task_id}/{step.defines[0][0]}") if step.defines
                         else step for step in draw.solution)
        question = REWORDINGS[draw.key[0]](*draw.key[1:]) if reworded else draw.question
        tasks.append(Task(id=task_id, task_set=name, question=question,
                          answer=_decimal(draw.answer), grader="numeric", solution=solution))
    if len(tasks) < n:
        raise TaskError(f"{name}: could only draw {len(tasks)} distinct "
                        f"{split or 'test'} tasks of {n}")
    return tasks


def make_arith(split: str, n: int, seed: int = 0) -> list[Task]:
    """n arith tasks of the split, drawn in a fixed order from a generator seeded by `seed`."""
    _check_split(split)
    return _draw_arith("arith", ARITH_TEMPLATES, split, n, seed)


# ---------------------------------------------------------------------------------------------------
# arith-reworded: the arith test problems in other words, for testing only
# ---------------------------------------------------------------------------------------------------
# The same eight problem structures and the same numbers as the arith test split, asked in other
# words: other verbs and nouns, other sentence order, other units words ("percent", "apiece", "L").
# Task i is arith test task i reworded (same seed), so the two sets pair task by task: a student
# that learned to read and compute a problem solves both; one that learned the training sentences
# solves only the first. arith-heldout asks more (other structures); this asks only for other words.
# Each wording takes the draw's key fields after the template's name, in the template's order.
REWORDINGS = {
    "shop": lambda name, item, count, price, pct: (
        f"{name} orders {count} {item} priced at {_money(price)} apiece, and the store takes {pct} "
        f"percent off the total. What does {name} pay in dollars?"),
    "recipe": lambda servings, target, flour, butter: (
        f"To cook for {target} people, a cook scales a recipe written for {servings} people, which "
        f"calls for {flour} g of flour and {butter} g of butter. What is the combined weight of "
        f"flour and butter, in grams?"),
    "travel": lambda speed1, hours, speed2, minutes: (
        f"A bus drives {hours} hours at {speed1} km per hour and afterwards {minutes} minutes at "
        f"{speed2} km per hour. What total distance does it cover, in km?"),
    "savings": lambda name, deposit, rate: (
        f"{name} deposits ${deposit} into an account earning {rate} percent a year, compounded "
        f"once a year. What is the balance two years later, in dollars?"),
    "wages": lambda name, rate, days, hours, saturday: (
        f"{name}'s pay is {_money(rate)} an hour. In one week {name} puts in {hours} hours a day on "
        f"{days} weekdays, plus {saturday} hours on Saturday at time and a half (1.5 times the "
        f"hourly pay). What is {name}'s pay for the week, in dollars?"),
    "tiles": lambda length, width, extra, price: (
        f"Someone is tiling a floor of {_decimal(length)} m by {_decimal(width)} m. Tiles are "
        f"${price} a square metre, and {extra} percent more area than the floor is ordered in case "
        f"some break. What do the tiles cost, in dollars?"),
    "fuel": lambda per_100, distance, price: (
        f"A car that burns {_decimal(per_100)} L every 100 km makes a drive of {distance} km, with "
        f"fuel at {_money(price)} a litre. What does the fuel for the drive cost, in dollars?"),
    "order_tax": lambda bags, bag_price, boxes, box_price, tax: (
        f"A coffee shop orders {boxes} boxes of tea costing {_money(box_price)} per box and {bags} "
        f"bags of coffee costing {_money(bag_price)} per bag, and pays {tax}% sales tax on the "
        f"entire order. How much is the bill with tax, in dollars?"),
}


def make_arith_reworded(split: str, n: int, seed: int = 0) -> list[Task]:
    """The first n arith test problems of `seed`, in order, each in its REWORDINGS wording."""
    _check_test_only("arith-reworded", split)
    return _draw_arith("arith", ARITH_TEMPLATES, "test", n, seed, reworded=True)


# ---------------------------------------------------------------------------------------------------
# arith-heldout: a second template family, for testing only (held-out generalisation)
# ---------------------------------------------------------------------------------------------------
# Other wordings, other names and other problem structures (sharing a bill, a perimeter less a gate,
# a net rate, an inverse average, a fee plus a rate, a warm-up plus a rate): a student that learned
# to set up and compute a problem solves them; one that learned the eight training templates does
# not. Nothing here is ever a training task: load_tasks refuses its train split.

_HELDOUT_NAMES = ("Hana", "Jonas", "Keiko", "Marta", "Noor", "Oskar", "Rosa", "Samir", "Tariq",
                  "Yara")
_MEALS = ("pizzas", "curries", "burritos", "noodle boxes", "salads")
_RENTALS = ("kayak", "canoe", "paddle board", "tandem bike", "rowing boat")


def _split_bill(rng: random.Random) -> _ArithDraw | None:
    """A food order plus a delivery charge, shared equally."""
    name, meal = rng.choice(_HELDOUT_NAMES), rng.choice(_MEALS)
    friends, count = rng.randint(1, 7), rng.randint(3, 12)
    price, fee = Fraction(rng.randint(24, 80), 4), Fraction(rng.randint(8, 40), 4)
    people = friends + 1
    food = count * price
    share = (food + fee) / people
    if not _dyadic(share):
        return None
    question = (f"{name} and {friends} {'friend' if friends == 1 else 'friends'} order {count} "
                f"{meal} costing {_money(price)} apiece, plus a {_money(fee)} delivery charge. "
                f"They split the bill evenly between the {people} of them. What is each "
                f"person's share, in dollars?")
    answer = (count * price + fee) / people   # (food + delivery) / people
    solution = _arith_solution(
        f"Price the {meal}, add the delivery charge, then divide the bill by {people}.",
        [(f"Work out what the {meal} cost.", [_Calc("food", f"{count} * {_decimal(price)}", food)]),
         (f"Add the delivery charge and share the bill between {people} people.",
          [_Calc("bill", f"food + {_decimal(fee)}", food + fee),
           _Calc("share", f"bill / {people}", share)])],
        "share")
    return _ArithDraw(("split_bill", name, meal, friends, count, price, fee), question, answer,
                      solution)


def _fence(rng: random.Random) -> _ArithDraw | None:
    """Fencing round a rectangle, less the width of a gate, at a price per metre."""
    length, width = rng.randint(5, 40), rng.randint(4, 30)
    gate, price = Fraction(rng.randint(2, 8), 2), Fraction(rng.randint(20, 120), 4)
    perimeter = 2 * (length + width)
    fence = perimeter - gate
    if not _dyadic(fence * price):
        return None
    question = (f"A garden plot measures {length} metres by {width} metres. Fencing will run all "
                f"the way around it, except across a gate {_decimal(gate)} metres wide. If "
                f"fencing is {_money(price)} a metre, what will the fencing cost, in dollars?")
    answer = (2 * (length + width) - gate) * price   # metres of fence * $/m
    solution = _arith_solution(
        "Find the perimeter, take away the gate, then price the metres of fencing.",
        [("Find the perimeter and the length of fence without the gate.",
          [_Calc("perimeter", f"2 * ({length} + {width})", Fraction(perimeter)),
           _Calc("fence", f"perimeter - {_decimal(gate)}", fence)]),
         ("Multiply the length of fence by the price per metre.",
          [_Calc("cost", f"fence * {_decimal(price)}", fence * price)])],
        "cost")
    return _ArithDraw(("fence", length, width, gate, price), question, answer, solution)


def _tank(rng: random.Random) -> _ArithDraw | None:
    """Filling against a leak: a net rate, a time in minutes, then in hours."""
    inflow = rng.randint(12, 60)
    leak = rng.randint(2, inflow - 4)
    # Draw the answer (0.5 to 6 hours in quarters), then the volume it implies: the question is
    # the inverse problem, and every value stays exact.
    hours = Fraction(rng.randint(2, 24), 4)
    net = inflow - leak
    volume = net * 60 * hours
    if volume.denominator != 1:
        return None
    minutes = volume / net
    question = (f"Water flows into an empty tank at {inflow} litres per minute while a leak "
                f"drains {leak} litres per minute. The tank holds {volume} litres. How many hours "
                f"does it take to fill?")
    answer = volume / (inflow - leak) / 60   # litres / (litres per minute) / (minutes per hour)
    solution = _arith_solution(
        "The tank gains the inflow less the leak each minute; divide the volume by that, then "
        "turn minutes into hours.",
        [("Find the net rate and the minutes to fill the tank.",
          [_Calc("net", f"{inflow} - {leak}", Fraction(net)),
           _Calc("minutes", f"{volume} / net", minutes)]),
         ("Convert the minutes to hours.", [_Calc("hours", "minutes / 60", minutes / 60)])],
        "hours")
    return _ArithDraw(("tank", inflow, leak, volume), question, answer, solution)


def _salary(rng: random.Random) -> _ArithDraw | None:
    """A raise on a monthly salary, then tax taken from the new salary."""
    name, salary = rng.choice(_HELDOUT_NAMES), 100 * rng.randint(15, 80)
    raise_pct, tax_pct = rng.choice((2, 4, 5, 6, 8, 10, 12, 20)), rng.choice((10, 15, 20, 25, 30))
    new = Fraction(salary * (100 + raise_pct), 100)
    tax = new * tax_pct / 100
    if not _dyadic(new, tax):
        return None
    question = (f"{name} is paid ${salary} a month and then gets a {raise_pct}% pay rise. Of the "
                f"new monthly pay, {tax_pct}% is withheld as tax. How many dollars a month does "
                f"{name} take home now?")
    answer = Fraction(salary * (100 + raise_pct) * (100 - tax_pct), 100 * 100)   # s(1+r)(1-t)
    solution = _arith_solution(
        f"Raise the pay by {raise_pct}%, then take {tax_pct}% of the new pay away as tax.",
        [("Work out the new monthly pay.",
          [_Calc("new_pay", f"{salary} * (100 + {raise_pct}) / 100", new)]),
         ("Take the tax off the new pay.",
          [_Calc("tax", f"new_pay * {tax_pct} / 100", tax),
           _Calc("take_home", "new_pay - tax", new - tax)])],
        "take_home")
    return _ArithDraw(("salary", name, salary, raise_pct, tax_pct), question, answer, solution)


def _rental(rng: random.Random) -> _ArithDraw | None:
    """A booking fee plus an hourly rate, for each of several rentals."""
    thing = rng.choice(_RENTALS)
    fee, hourly = Fraction(rng.randint(8, 40), 2), Fraction(rng.randint(16, 60), 4)
    count, hours = rng.randint(2, 9), rng.randint(2, 8)
    each = fee + hourly * hours
    question = (f"To hire a {thing} you pay a {_money(fee)} booking fee plus {_money(hourly)} for "
                f"every hour. A group hires {count} of them for {hours} hours each. What is the "
                f"group's total, in dollars?")
    answer = count * (fee + hourly * hours)   # rentals * (fee + rate * hours)
    solution = _arith_solution(
        f"Work out what one {thing} costs for {hours} hours, fee included, then multiply by "
        f"{count}.",
        [(f"Find the cost of one {thing}.",
          [_Calc("each", f"{_decimal(fee)} + {_decimal(hourly)} * {hours}", each)]),
         (f"Multiply by the number of {thing}s hired.",
          [_Calc("total", f"each * {count}", each * count)])],
        "total")
    return _ArithDraw(("rental", thing, fee, hourly, count, hours), question, answer, solution)


def _average(rng: random.Random) -> _ArithDraw | None:
    """The inverse of an average: the score still needed for a target mean."""
    name = rng.choice(_HELDOUT_NAMES)
    scores = [rng.randint(55, 98) for _ in range(3)]
    needed = rng.randint(50, 100)
    # The target mean is drawn through the score that reaches it, so it is a whole number.
    if (sum(scores) + needed) % 4:
        return None
    target = (sum(scores) + needed) // 4
    question = (f"On three quizzes {name} scored {scores[0]}, {scores[1]} and {scores[2]}. What "
                f"must {name} score on the fourth quiz for the four quizzes to average exactly "
                f"{target}?")
    answer = Fraction(4 * target - sum(scores))   # the total four scores need, less three
    solution = _arith_solution(
        f"Four quizzes averaging {target} need a total of 4 times {target}; subtract the three "
        f"scores so far.",
        [("Find the total the four quizzes need and the total so far.",
          [_Calc("needed_total", f"4 * {target}", Fraction(4 * target)),
           _Calc("so_far", f"{scores[0]} + {scores[1]} + {scores[2]}", Fraction(sum(scores)))]),
         ("The fourth score makes up the difference.",
          [_Calc("fourth", "needed_total - so_far", answer)])],
        "fourth")
    return _ArithDraw(("average", name, *scores, target), question, answer, solution)


def _printing(rng: random.Random) -> _ArithDraw | None:
    """Pages to print, a printing rate, and a fixed warm-up time."""
    copies, pages, rate = rng.randint(5, 60), rng.randint(4, 40), rng.choice((8, 12, 16, 20, 24, 32))
    warm_up = rng.randint(1, 6)
    total_pages = copies * pages
    printing = Fraction(total_pages, rate)
    if not _dyadic(printing):
        return None
    question = (f"An office printer needs {warm_up} minutes to warm up and then turns out {rate} "
                f"pages a minute. Someone sends {copies} copies of a {pages}-page report. How "
                f"many minutes pass before the last page is out?")
    answer = warm_up + Fraction(copies * pages, rate)   # warm-up + pages / (pages per minute)
    solution = _arith_solution(
        "Count the pages, divide by the pages per minute, then add the warm-up.",
        [("Count every page to print.", [_Calc("pages", f"{copies} * {pages}",
                                               Fraction(total_pages))]),
         ("Time the printing and add the warm-up.",
          [_Calc("printing", f"pages / {rate}", printing),
           _Calc("minutes", f"printing + {warm_up}", printing + warm_up)])],
        "minutes")
    return _ArithDraw(("printing", copies, pages, rate, warm_up), question, answer, solution)


HELDOUT_ARITH_TEMPLATES = (_split_bill, _fence, _tank, _salary, _rental, _average, _printing)


def make_arith_heldout(split: str, n: int, seed: int = 0) -> list[Task]:
    """n test tasks of the held-out arith family (no train split: it is never trained on)."""
    _check_test_only("arith-heldout", split)
    return _draw_arith("arith-heldout", HELDOUT_ARITH_TEMPLATES, None, n, seed)


# ---------------------------------------------------------------------------------------------------
# lookup: multi-hop questions over a generated world of fictional entities
# ---------------------------------------------------------------------------------------------------
# One world per seed: companies (some share a name stem, e.g. "Quintara Corp" and "Quintara Labs"),
# their founders, a relative of each founder with the same surname, cities, and products. A passage
# per entity. Questions chain 2 or 3 facts (product -> company -> founder -> birth year), and no
# passage holds two links of a chain, so each hop needs its own search. Distractors (shared stems,
# shared surnames, launch and founding years) make a lazy query or a lazy answer fail.

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kr", "pl", "st", "tr", "th", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "x", "m")
_SUFFIXES = ("Corp", "Labs", "Works", "Systems", "Group", "Industries", "Motors", "Foods")
_KINDS = ("desk lamp", "bicycle", "kettle", "drone", "guitar", "backpack", "telescope", "blender",
          "camera", "scooter", "sewing machine", "typewriter")
_JOBS = ("painter", "teacher", "sailor", "architect", "baker", "pilot", "doctor", "poet")
_PLACES = ("on a wide river", "in the hills", "on the coast", "in a green valley", "on a lake")
# Companies in a world and products per company (50 x 3 gives 700 questions, ~140 in test).
NUM_COMPANIES, PRODUCTS_PER_COMPANY = 50, 3


def _word(rng: random.Random, syllables: int) -> str:
    """A pronounceable invented word of 2 or 3 syllables, capitalised: "Zorblax"-like."""
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


@dataclass(frozen=True)
class _Person:
    """A person of a generated world: a founder, or a founder's relative (a distractor)."""
    name: str       # "Mela Dorn": an invented first name and surname
    born: int       # year of birth
    city: str       # city of birth


@dataclass(frozen=True)
class _Company:
    """A company of a generated world, the centre of every question chain."""
    name: str                                    # "Quintara Corp": a stem and a suffix
    founded: int                                 # year founded (a distractor year)
    founder: _Person
    city: str                                    # where it is based
    products: tuple[tuple[str, str, int], ...]   # (product name, kind, year first sold)


def _lookup_world(seed: int, heldout: bool = False) -> tuple[tuple[_Company, ...], tuple[str, ...]]:
    """The companies of the world for `seed` and its corpus (one short passage per entity).

    heldout: another world from another seed stream (lookup-heldout), with the same relations and
    none of the names of the training world of `seed`: no fact learnt there holds here."""
    rng = _rng("lookup-world-heldout" if heldout else "lookup-world", seed)
    # Every word of a passage title (company stems, first names, surnames, products, cities).
    used: set[str] = ({word for passage in _lookup_world(seed)[1]
                       for word in passage.split(": ", 1)[0].split()} if heldout else set())

    def fresh(syllables: int) -> str:
        # Unique across the world and at least 5 letters, so that no name is a stop word.
        while True:
            word = _word(rng, syllables)
            if len(word) >= 5 and word not in used:
                used.add(word)
                return word

    # Few cities for many people and companies: city answers repeat, so they cannot be guessed
    # from which names appear rarely in the corpus.
    cities = [fresh(2) for _ in range(24)]
    stems = [fresh(3) for _ in range(NUM_COMPANIES // 2)]
    # Every stem names two companies with different suffixes: "Quintara Corp", "Quintara Labs".
    company_names = [f"{stem} {suffix}" for stem in stems
                     for suffix in rng.sample(_SUFFIXES, 2)]
    companies, passages = [], []
    for company_name in company_names:
        surname = fresh(2)
        founder = _Person(f"{fresh(2)} {surname}", rng.randint(1920, 1975), rng.choice(cities))
        # A relative shares the founder's surname: searching the surname alone is not enough.
        relative = _Person(f"{fresh(2)} {surname}", rng.randint(1920, 1985), rng.choice(cities))
        # Plausible chronology (founded in the founder's adult life, products after the founding);
        # the founding and launch years are distractors for "In what year ..." questions.
        founded = founder.born + rng.randint(25, 45)
        products = tuple((fresh(rng.choice((2, 3))), rng.choice(_KINDS),
                          rng.randint(founded + 1, min(founded + 30, 2024)))
                         for _ in range(PRODUCTS_PER_COMPANY))
        company = _Company(company_name, founded, founder, rng.choice(cities), products)
        companies.append(company)
        # Passages are short (under ~120 characters) so that search(query, k=3) fits the CPU
        # preset's 400-character observation budget without eliding the fact in the middle.
        passages.append(f"{company.name}: {company.name} was founded in {founded} by "
                        f"{founder.name} and is based in {company.city}.")
        passages.append(f"{founder.name}: {founder.name} was born in {founder.born} in "
                        f"{founder.city}. {founder.name} is an engineer.")
        passages.append(f"{relative.name}: {relative.name} was born in {relative.born} in "
                        f"{relative.city}. {relative.name} is a {rng.choice(_JOBS)}.")
        passages += [f"{product}: The {product} is a {kind} made by {company.name}, first sold "
                     f"in {year}." for product, kind, year in products]
    passages += [f"{city}: {city} is a city {rng.choice(_PLACES)}." for city in cities]
    # Shuffle so that a passage's position says nothing about the entity chains.
    rng.shuffle(passages)
    return tuple(companies), tuple(passages)


def _search_step(entity: str, thought: str, finds: str, relation: str, variable: str,
                 statement: str) -> RefStep:
    """A hop: search for an entity by its exact name; `finds` is the fact the next hop needs.

    The hop follows one edge of the world, (relation, entity) -> finds. A teacher that knows the
    edge says `statement` and binds `variable = finds` instead of searching."""
    literal = finds if finds.isdigit() else json.dumps(finds)   # a year is a number
    return RefStep(thought=thought, code=f'print(search("{entity}"))', checkpoints=(finds,),
                   fact=f"{relation}|{entity}", statement=statement, stated=((variable, literal),))


def _lookup_questions(company: _Company) -> list[tuple[str, str, str, tuple[RefStep, ...]]]:
    """(question, answer, grader, solution) for every question centred on one company."""
    founder, name = company.founder, company.name
    # The hops are shared between questions (RefSteps are immutable, so sharing is safe). Each
    # search names its entity exactly as the previous observation showed it.
    company_hop = _search_step(name, f"Find out who founded {name}.", founder.name, "founder",
                               "founder", f"{name} was founded by {founder.name}.")
    year_hop = _search_step(founder.name, f"Find out when {founder.name} was born.",
                            str(founder.born), "born", "born",
                            f"{founder.name} was born in {founder.born}.")
    city_hop = _search_step(founder.name, f"Find out where {founder.name} was born.", founder.city,
                            "birthplace", "birthplace",
                            f"{founder.name} was born in {founder.city}.")

    def answer_step(fact: str, value: str) -> RefStep:
        # The last step only answers. Its fact was shown by the previous search (that step's
        # checkpoint), so it has no checkpoint of its own.
        return RefStep(thought=fact, code=f'final_answer("{value}")')

    year_answer = answer_step(f"{founder.name} was born in {founder.born}.", str(founder.born))
    city_answer = answer_step(f"{founder.name} was born in {founder.city}.", founder.city)
    # Two-hop questions that start from the company, then two- and three-hop questions that start
    # from each of its products. Years are graded "numeric", names and cities by token F1.
    questions = [
        (f"In what year was the founder of {name} born?", str(founder.born), "numeric",
         (RefStep(f"Search for {name} to find its founder, then search for the founder to find "
                  f"the birth year."), company_hop, year_hop, year_answer)),
        (f"In which city was the founder of {name} born?", founder.city, "f1",
         (RefStep(f"Search for {name} to find its founder, then search for the founder to find "
                  f"the city of birth."), company_hop, city_hop, city_answer)),
    ]
    for product, _, _ in company.products:
        product_hop = _search_step(product, f"Find out which company makes the {product}.", name,
                                   "maker", "company", f"The {product} is made by {name}.")
        plan = f"Search for the {product} to find the company that makes it, then search for "
        questions += [
            (f"In what year was the founder of the company that makes the {product} born?",
             str(founder.born), "numeric",
             (RefStep(plan + "that company to find its founder, then search for the founder to "
                             "find the birth year."), product_hop, company_hop, year_hop,
              year_answer)),
            (f"In which city was the founder of the company that makes the {product} born?",
             founder.city, "f1",
             (RefStep(plan + "that company to find its founder, then search for the founder to "
                             "find the city of birth."), product_hop, company_hop, city_hop,
              city_answer)),
            (f"Who founded the company that makes the {product}?", founder.name, "f1",
             (RefStep(plan + "that company to find its founder."), product_hop, company_hop,
              answer_step(f"{name} was founded by {founder.name}.", founder.name))),
            (f"In which city is the company that makes the {product} based?", company.city, "f1",
             (RefStep(plan + "that company to find the city it is based in."), product_hop,
              _search_step(name, f"Find out where {name} is based.", company.city, "base",
                           "based_in", f"{name} is based in {company.city}."),
              answer_step(f"{name} is based in {company.city}.", company.city))),
        ]
    return questions


def make_lookup(split: str, n: int | None, seed: int = 0) -> list[Task]:
    """The first n lookup tasks of the split in the world of `seed` (all of them if n is None)."""
    _check_split(split)
    companies, corpus = _lookup_world(seed)
    # Split by company: every question about a test company is a test question, so no company or
    # person on a test question's chain is on a training chain (cities and years are shared pools,
    # as any world's are). Ranking by hash gives exactly TEST_FRACTION of the companies.
    ranked = sorted(companies, key=lambda company: _digest("lookup-split", seed, company.name))
    num_test = int(len(ranked) * TEST_FRACTION)
    chosen = ranked[:num_test] if split == "test" else ranked[num_test:]
    # The id hashes the seed too: the same words in another seed's world are another task.
    tasks = _lookup_tasks("lookup", seed, chosen, corpus)
    # A fixed order per (seed, split), so that the first n of a split are a prefix of any larger n.
    _rng("lookup-order", seed, split).shuffle(tasks)
    return _first_n("lookup", seed, split, tasks, n)


def make_lookup_heldout(split: str, n: int | None, seed: int = 0) -> list[Task]:
    """The first n questions over the held-out world of `seed` (test only). n None gives as many
    as the lookup test split has (questions on TEST_FRACTION of the companies); at most all."""
    _check_test_only("lookup-heldout", split)
    companies, corpus = _lookup_world(seed, heldout=True)
    tasks = _lookup_tasks("lookup-heldout", seed, companies, corpus)
    _rng("lookup-heldout-order", seed).shuffle(tasks)
    if n is None:
        n = len(tasks) * int(len(companies) * TEST_FRACTION) // len(companies)
    return _first_n("lookup-heldout", seed, split, tasks, n)


def _lookup_tasks(task_set: str, seed: int, companies, corpus: tuple[str, ...]) -> list[Task]:
    """Every question on `companies` as a Task of `task_set`, all searching one shared corpus."""
    return [Task(id=f"{task_set}-" + _digest(task_set, seed, question)[:10], task_set=task_set,
                 question=question, answer=answer, grader=grader, solution=solution,
                 corpus=corpus, corpus_id=f"{task_set}-seed{seed}")
            for company in companies for question, answer, grader, solution
            in _lookup_questions(company)]


def _first_n(task_set: str, seed: int, split: str, tasks: list[Task], n: int | None) -> list[Task]:
    """The first n tasks (all if n is None); more than the world holds is one clear line."""
    if n is not None and n > len(tasks):
        raise TaskError(f"{task_set}: the world of seed {seed} has {len(tasks)} {split} tasks, "
                        f"{n} asked; use a smaller n or another seed")
    return tasks if n is None else tasks[:n]


# ---------------------------------------------------------------------------------------------------
# Privileged knowledge: the reference solution of a teacher that knows some of its facts
# ---------------------------------------------------------------------------------------------------
# The paper's premise (EXPERIMENT.md): a large teacher knows facts and results that a small student
# must search for or compute, so its trajectories hold steps the student cannot reproduce. Every
# action step of a generated solution carries its `fact` (a world edge, an arith intermediate). A
# teacher that knows a step's fact states it, in the thought (`statement`) and in the code (the
# `stated` bindings), instead of running the step, and goes on in the same turn with the next step
# whose fact it does not know. Who knows what is the caller's rule (`knows(fact) -> bool`; the
# reference teacher's is reference_teacher.knows_fact); with nothing known the solution comes back unchanged.

def knowing_step(solution: tuple[RefStep, ...], position: int,
                 knows) -> tuple[RefStep, int]:
    """METHOD: the step a teacher that knows the facts `knows` accepts writes at reference position
    `position` (1 = the first action), and the last reference position that step covers.

    Known steps from `position` on are stated and merged into the first step whose fact is not
    known (or into the last step, which answers). The merged step reads what its one computed step
    reads and the stated facts do not bind, and defines what every covered step defines. An
    unknown step at `position` is returned as it is: the reference step itself."""
    last = len(solution) - 1
    statements, lines, reads, defines, checkpoints = [], [], [], [], []
    bound: set[str] = set()          # names bound by the covered steps so far
    names_for: dict[str, str] = {}   # a stated fact's text -> the name it is bound to
    for covered in range(position, last + 1):
        ref = solution[covered]
        known = bool(ref.fact) and knows(ref.fact)
        if covered == position and not known:
            return ref, covered
        defines += ref.defines
        checkpoints += ref.checkpoints
        if known:
            statements.append(ref.statement)
            lines += [f"{name} = {literal}" for name, literal in ref.stated]
            bound.update(name for name, _ in ref.stated)
            names_for.update((text, name) for text, (name, _) in zip(ref.checkpoints, ref.stated))
            if covered < last:
                continue
            # The answer step itself is known (arith): its results stated, then what it does with
            # them (an arith step's code is one line per define, then print and final_answer).
            thought, tail = " ".join(statements), ref.code.split("\n")[len(ref.defines):]
        else:
            # The first step it does not know: the stated facts, then that step, which reads what
            # they did not bind. A search for a stated name searches the name's variable
            # (`print(search(founder))`).
            reads = [name for name in ref.reads if name not in bound]
            code = ref.code
            for text, name in names_for.items():
                code = code.replace(json.dumps(text), name)
            # A lookup answer step repeats the last fact ("Mela Dorn was born in 1950."): once.
            thought = " ".join(statements + ([ref.thought] if ref.thought not in statements else []))
            tail = code.split("\n")
        return RefStep(thought=thought, code="\n".join(lines + tail),
                       checkpoints=tuple(checkpoints), reads=tuple(reads),
                       defines=tuple(defines)), covered
    raise ValueError("a reference solution needs a plan and at least one action")


def knowing_plan(solution: tuple[RefStep, ...], knows) -> RefStep:
    """The plan of a teacher that knows the facts `knows` accepts: the reference plan if it knows
    none of them; else, in order, what it knows and the steps it still has to take. A sentence that
    names a result the teacher does not have yet (the founder of a company it has not found) is
    left to one closing sentence: a plan cannot know what only a later search will show."""
    if not any(ref.fact and knows(ref.fact) for ref in solution[1:]):
        return solution[0]
    sentences, missing, left_out = [], [], False
    for ref in solution[1:]:
        if not ref.fact:
            continue
        known = knows(ref.fact)
        sentence = ref.statement if known else ref.thought
        if any(re.search(rf"(?<!\w){re.escape(text)}(?!\w)", sentence) for text in missing):
            left_out = True
        else:
            sentences.append(sentence)
        if not known:
            missing += ref.checkpoints
    if left_out:
        sentences.append("Then go on one fact at a time.")
    return RefStep(thought=" ".join(sentences))


def knowing_solution(solution: tuple[RefStep, ...], knows) -> tuple[RefStep, ...]:
    """METHOD: the whole solution of a teacher that knows the facts `knows` accepts: its plan,
    then knowing_step from position 1, each step starting after the last one covered. The very
    `solution` when no fact is known (knowledge 0 is the plain reference teacher)."""
    plan = knowing_plan(solution, knows)
    if plan is solution[0]:
        return solution
    steps, position = [plan], 1
    while position < len(solution):
        step, covered = knowing_step(solution, position, knows)
        steps.append(step)
        position = covered + 1
    return tuple(steps)


# ---------------------------------------------------------------------------------------------------
# The paper's benchmarks, through `datasets` (needs a reachable Hugging Face hub or a warm cache)
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PaperSet:
    """Where a benchmark lives on the hub and how its rows are laid out."""
    hf_id: str                          # dataset repository on the Hugging Face hub
    config: str | None                  # its configuration (subset), if it has several
    splits: tuple[tuple[str, str], ...]  # (our split, the dataset's split)
    question: str                       # field holding the question
    answer: str                         # field holding the reference answer
    id_field: str | None                # field holding a stable id (None: hash the question)
    grader: str                         # how answers are graded
    solution: str | None = None         # field holding a worked solution, if any


# Pinned sources and schemas. Multi-hop contexts: HotpotQA `context` = {title: [str],
# sentences: [[str]]}; 2Wiki `context` = {title: [str], content: [[str]]}; MuSiQue `paragraphs` =
# [{idx, title, paragraph_text, is_supporting}]. Sets that ship one split serve only "test", and
# those whose test answers are hidden use their validation split as our test split.
PAPER_SETS = types.MappingProxyType({
    "gsm8k": PaperSet("openai/gsm8k", "main", (("train", "train"), ("test", "test")),
                      "question", "answer", None, "numeric"),
    "math500": PaperSet("HuggingFaceH4/MATH-500", None, (("test", "test"),),
                        "problem", "answer", "unique_id", "math", solution="solution"),
    "aime24": PaperSet("HuggingFaceH4/aime_2024", None, (("test", "train"),),
                       "problem", "answer", "id", "math", solution="solution"),
    "aime25": PaperSet("MathArena/aime_2025", None, (("test", "train"),),
                       "problem", "answer", "problem_idx", "math"),
    "hotpotqa": PaperSet("hotpotqa/hotpot_qa", "distractor",
                         (("train", "train"), ("test", "validation")),
                         "question", "answer", "id", "f1"),
    "2wiki": PaperSet("ohjoonhee/2WikiMultihopQA", None, (("train", "train"), ("test", "validation")),
                      "question", "answer", "_id", "f1"),
    "musique": PaperSet("dgslibisey/MuSiQue", None, (("train", "train"), ("test", "validation")),
                        "question", "answer", "id", "f1"),
    "bamboogle": PaperSet("chiayewken/bamboogle", None, (("test", "test"),),
                          "Question", "Answer", None, "f1"),
})


def _fetch(name: str, split: str) -> list[dict]:
    """The rows of a paper benchmark's split, from the hub (or the `datasets` cache)."""
    source = PAPER_SETS[name]
    # Our split names map onto the dataset's: e.g. HotpotQA's test answers are hidden, so our
    # "test" is its validation split; AIME ships one "train" split of 30 problems, our "test".
    hf_split = dict(source.splits).get(split)
    if hf_split is None:
        raise TaskError(f"{name} has no {split} split (it ships only "
                        f"{', '.join(ours for ours, _ in source.splits)}); train on a generated "
                        f"set (arith, lookup) or a local JSONL file")
    # Imported here: `datasets` is slow to import and only the paper's benchmarks need it.
    try:
        import datasets
    except ImportError:
        raise TaskError(f"{name} needs the `datasets` package: pip install datasets, or use a "
                        f"local JSONL file or a generated set (arith, lookup)") from None
    try:
        rows = datasets.load_dataset(source.hf_id, source.config, split=hf_split)
    # No network, HF_HUB_OFFLINE=1 without a cache, a renamed repository: all end in one line that
    # says what to do instead, never in a traceback (DESIGN.md, What users see).
    except Exception as error:
        raise TaskError(f"cannot load {name} ({source.hf_id}, {type(error).__name__}): the Hugging "
                        f"Face hub is unreachable from here; use a local JSONL file of "
                        f'{{"id", "question", "answer"}} lines or a generated set (arith, lookup)'
                        ) from error
    # Plain dicts: _convert stays a pure function of rows, testable with in-memory stand-ins.
    return [dict(row) for row in rows]


def _context_passages(row: dict) -> tuple[str, ...]:
    """A multi-hop row's own paragraphs as "Title: text" passages (the distractor setting)."""
    if "paragraphs" in row:                     # MuSiQue
        return tuple(f"{p['title']}: {p['paragraph_text'].strip()}" for p in row["paragraphs"])
    context = row["context"]
    if isinstance(context, dict):               # HotpotQA and 2Wiki as `datasets` stores them
        bodies = context["sentences"] if "sentences" in context else context["content"]
        pairs = zip(context["title"], bodies)
    else:                                       # the original JSON: [[title, [sentence, ...]], ...]
        pairs = ((title, sentences) for title, sentences in context)
    # HotpotQA sentences carry their own leading space (" It formed ..."): strip, then join.
    return tuple(f"{title}: {' '.join(s.strip() for s in sentences)}" for title, sentences in pairs)


def _convert(name: str, rows: list[dict]) -> list[Task]:
    """Rows of a paper benchmark (its real field names and nesting) -> Tasks. Pure: no I/O."""
    source = PAPER_SETS[name]
    tasks, id_counts = [], {}
    for row in rows:
        question, answer = str(row[source.question]).strip(), str(row[source.answer]).strip()
        solution_text = str(row[source.solution]) if source.solution else None
        if name == "gsm8k":
            # GSM8K answers are a worked solution, then "#### 72". The <<48/2=24>> marks are its
            # calculator annotations, noise for a reader, so the prose drops them.
            worked, _, answer = answer.rpartition("####")
            answer = answer.strip().replace(",", "")
            solution_text = re.sub(r"<<[^>]*>>", "", worked).strip()
        # GSM8K and Bamboogle rows have no id: hash the question, which is stable across
        # dataset revisions that reorder rows (an index would not be).
        key = row[source.id_field] if source.id_field else _digest(question)[:10]
        task_id = f"{name}-{key}"
        # A question that a dataset repeats gets a numbered id, so ids stay unique.
        id_counts[task_id] = id_counts.get(task_id, 0) + 1
        if id_counts[task_id] > 1:
            task_id = f"{task_id}-{id_counts[task_id]}"
        # Multi-hop questions search their own context paragraphs (deviation 2 above), so each
        # one is its own corpus, keyed by the task id. Math sets and Bamboogle have no corpus.
        corpus = None
        if name in ("hotpotqa", "2wiki", "musique"):
            corpus = _context_passages(row)
        tasks.append(Task(id=task_id, task_set=name, question=question, answer=answer,
                          grader=source.grader, corpus=corpus,
                          corpus_id=task_id if corpus is not None else None,
                          solution_text=solution_text))
    return tasks


# ---------------------------------------------------------------------------------------------------
# Local JSONL files
# ---------------------------------------------------------------------------------------------------

# A reference answer that is just a number ("72", "-3.5", "1,234", "12%") is graded "numeric" when
# the file does not say otherwise; anything else defaults to "f1" (free-form short answers).
_PLAIN_NUMBER = re.compile(r"[-+]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?")


def _load_jsonl(path: Path, split: str, split_jsonl: bool = False) -> list[Task]:
    """Tasks from a JSONL file: one object per line with "id", "question", "answer", and optional
    "grader" (default: "numeric" for a plain number, "choice" for a lone option letter A-J, else
    "f1", under which a gold "A" would normalise to nothing), "corpus" (a list of passages for
    this question), "solution_text" and "split" ("train" or "test").

    Rows without a "split" field would otherwise be both train and test tasks, silently. So:
      - split="test": they are served, the file is an evaluation set (nothing trains on it);
      - split="train": refused, unless split_jsonl (--split-jsonl) puts each such row in one split
        by a hash of its id (the generated sets' _is_test rule: TEST_FRACTION of them in test), and
        says so in one printed line.
    """
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist")
    rows, seen = [], set()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise TaskError(f"{path}:{line}: not UTF-8 text (byte {error.object[error.start]:#x} at offset "
                        f"{error.start}); save the file as UTF-8") from None
    except OSError as error:
        raise TaskError(f"cannot read task file {path}: {error.strerror}") from None
    if not text.strip():
        raise TaskError(f"task file {path} is empty: one JSON object a line, with id, question and answer")
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskError(f"{where}: not valid JSON ({error.msg}); each line must be one "
                            f'object like {{"id": ..., "question": ..., "answer": ...}}') from None
        if not isinstance(row, dict):
            raise TaskError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [field for field in ("id", "question", "answer") if field not in row]
        if missing:
            raise TaskError(f"{where}: missing field {', '.join(map(repr, missing))}; each line "
                            f"needs id, question and answer")
        # JSON numbers are fine as answers ({"answer": 42}): everything becomes a string.
        answer = str(row["answer"]).strip()
        grader = row.get("grader") or ("numeric" if _PLAIN_NUMBER.fullmatch(answer) else
                                       "choice" if re.fullmatch(r"\(?[A-J]\)?", answer) else "f1")
        if grader not in GRADERS:
            raise TaskError(f"{where}: unknown grader {grader!r}; use one of {', '.join(GRADERS)}")
        if "split" in row and row["split"] not in SPLITS:
            raise TaskError(f"{where}: split must be train or test, got {row['split']!r}")
        # Ids key resumed runs and records, so a duplicate would silently merge two tasks.
        if str(row["id"]) in seen:
            raise TaskError(f"{where}: duplicate id {row['id']!r}; ids must be unique")
        seen.add(str(row["id"]))
        if "corpus" in row and not isinstance(row["corpus"], list):
            raise TaskError(f"{where}: corpus must be a list of passage strings")
        corpus = tuple(str(passage) for passage in row["corpus"]) if row.get("corpus") else None
        rows.append((row.get("split"), Task(
            id=str(row["id"]), task_set=path.stem, question=str(row["question"]), answer=answer,
            grader=grader, corpus=corpus, corpus_id=str(row["id"]) if corpus else None,
            solution_text=row.get("solution_text"))))
    unsplit = [task for row_split, task in rows if row_split is None]
    if unsplit and split_jsonl:
        # The same rule as the generated sets: a task's split hangs on its id alone (no seed), so
        # the train and test calls of one run agree, and so do any two runs.
        num_test = sum(_is_test("jsonl", task.id) for task in unsplit)
        print(f"{path}: {len(unsplit)} rows have no split field; --split-jsonl put {num_test} of "
              f"them in test and {len(unsplit) - num_test} in train by a hash of their id")
        rows = [(row_split or ("test" if _is_test("jsonl", task.id) else "train"), task)
                for row_split, task in rows]
    elif unsplit and split == "train":
        raise TaskError(f"{path}: {len(unsplit)} of {len(rows)} rows have no split field, so they "
                        f'would be both training and test tasks; add "split": "train" or "test" '
                        f"to each row, or pass --split-jsonl to split them by a hash of their id")
    # Without --split-jsonl, rows without a split are test rows: the file is an evaluation set.
    return [task for row_split, task in rows if (row_split or "test") == split]


# ---------------------------------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------------------------------

def _check_split(split: str) -> None:
    """Refuse a split name other than train / test with one line."""
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}: use train or test")


def _check_test_only(name: str, split: str) -> None:
    """A held-out family serves only its test split: training on it would void what it measures."""
    _check_split(split)
    if split != "test":
        raise TaskError(f"{name} is a test-only set (held-out generalisation) and has no {split} "
                        f"split; train on {name.split('-')[0]} and evaluate on {name}")


def load_tasks(name: str, split: str, n: int | None = None, seed: int = 0,
               split_jsonl: bool = False) -> list[Task]:
    """Tasks of a set (a name in TASK_SETS or a path to a .jsonl file) for one split.

    Deterministic: the same (name, split, n, seed) always gives the same list. Generated sets are
    drawn in an order fixed by the seed; loaded sets are shuffled by the seed; then the first n.
    split_jsonl: split the rows of a JSONL file that have no "split" field by a hash of their id
    (without it such a file serves only as a test set; see _load_jsonl).
    """
    _check_split(split)
    if n is not None and n < 0:
        raise TaskError(f"n must be a non-negative number of tasks, got {n}")
    if name == "arith":
        return make_arith(split, ARITH_DEFAULT_N[split] if n is None else n, seed)
    if name == "lookup":
        return make_lookup(split, n, seed)
    if name == "arith-heldout":  # the test-only sets refuse another split themselves
        return make_arith_heldout(split, ARITH_DEFAULT_N["test"] if n is None else n, seed)
    if name == "arith-reworded":
        return make_arith_reworded(split, ARITH_DEFAULT_N["test"] if n is None else n, seed)
    if name == "lookup-heldout":
        return make_lookup_heldout(split, n, seed)
    # Loaded sets come in the dataset's order; shuffle by the seed so that "the first n" is a
    # random sample (benchmarks are often sorted by difficulty or topic).
    if name in PAPER_SETS:
        tasks = _convert(name, _fetch(name, split))
    elif name.endswith(".jsonl") or Path(name).is_file():
        tasks = _load_jsonl(Path(name), split, split_jsonl)
    else:
        raise TaskError(f"unknown task set {name!r}: use one of {', '.join(TASK_SETS)}, or a path "
                        f"to a .jsonl file")
    _rng("load", name, split, seed).shuffle(tasks)
    return tasks if n is None else tasks[:n]
