"""Task sets (environment/tasks.py): generators, splits, reference solutions, benchmark and JSONL loaders.

Everything here runs offline. The paper's benchmarks are exercised through small in-memory rows
that reproduce each dataset's real field names and nesting; the hub itself is never contacted.
"""

import re
from dataclasses import replace
from fractions import Fraction

import bm25s
import pytest

import environment.tasks as tasks_module
from environment.graders import is_correct
from environment.tasks import (PAPER_SETS, TASK_SETS, Task, TaskError, _convert, _shop, knowing_solution,
                         knowing_step, load_tasks, make_arith, make_lookup)


# ---------------------------------------------------------------------------------------------------
# Determinism and splits
# ---------------------------------------------------------------------------------------------------

def test_generators_are_deterministic_by_seed():
    """Breaks: resuming a run (DESIGN.md: same task ids after an interruption) and comparing runs,
    which both rely on the same seed giving the same tasks."""
    assert make_arith("train", 40, seed=0) == make_arith("train", 40, seed=0)
    assert make_arith("train", 40, seed=0) != make_arith("train", 40, seed=1)
    assert make_lookup("test", 30, seed=0) == make_lookup("test", 30, seed=0)
    assert make_lookup("test", 30, seed=0)[0].corpus != make_lookup("test", 30, seed=1)[0].corpus
    assert load_tasks("arith", "test", 5, seed=3) == make_arith("test", 5, seed=3)


def test_a_smaller_n_is_a_prefix():
    """Breaks: evaluating on --n 20 and later --n 40 with the first 20 tasks unchanged."""
    assert make_arith("test", 20, seed=0) == make_arith("test", 40, seed=0)[:20]
    assert make_lookup("test", 20, seed=0) == make_lookup("test", 40, seed=0)[:20]


def test_train_and_test_share_no_task():
    """Breaks: held-out evaluation (a test question seen in training inflates every score)."""
    for seed in (0, 1):
        train, test = make_arith("train", 1000, seed), make_arith("test", 200, seed)
        assert len({t.id for t in train}) == 1000 and len({t.id for t in test}) == 200
        assert not {t.id for t in train} & {t.id for t in test}
        assert not {t.question for t in train} & {t.question for t in test}
    # The arith split hangs on the content, not the seed: no test task of one seed trains another.
    assert not {t.question for t in make_arith("train", 1000, 1)} & {
        t.question for t in make_arith("test", 200, 0)}
    train, test = make_lookup("train", None, 0), make_lookup("test", None, 0)
    assert len(test) >= 50 and len(train) >= 4 * len(test) - 20
    assert not {t.id for t in train} & {t.id for t in test}
    assert not {t.question for t in train} & {t.question for t in test}
    # Lookup splits by company: no company or person on a test chain is on a training chain
    # (checkpoints with a space are company and person names; cities and years are shared pools).
    def chain_entities(tasks):
        return {c for t in tasks for step in t.solution for c in step.checkpoints if " " in c}
    assert chain_entities(test) and not chain_entities(test) & chain_entities(train)


def test_arith_split_ignores_names():
    """Breaks: the issue-12 leak: problems that differ only in a person's name (or the item bought)
    fell in both splits (9 of the 200 test tasks at n = 1000). The split hashes the numbers and the
    template; within a split a name-only variant is no new task; ids still address the full content."""
    words = "|".join(map(re.escape, tasks_module._NAMES + tasks_module._ITEMS))

    def numbers_and_wording(task):  # the question with every name and item blanked out
        return re.sub(rf"\b(?:{words})\b", "_", task.question)

    for seed in (0, 1):
        train, test = make_arith("train", 1000, seed), make_arith("test", 200, seed)
        assert not {numbers_and_wording(t) for t in train} & {numbers_and_wording(t) for t in test}
        assert len({numbers_and_wording(t) for t in train}) == 1000
    # Ids stay content-addressed, names included: one id per question text, whatever the seed.
    pairs = {(t.id, t.question) for seed in (0, 1) for split, n in (("train", 1000), ("test", 200))
             for t in make_arith(split, n, seed)}
    assert len({i for i, _ in pairs}) == len({q for _, q in pairs}) == len(pairs)


# ---------------------------------------------------------------------------------------------------
# arith: the answer is what the question asks
# ---------------------------------------------------------------------------------------------------

class _ScriptedRng:
    """Stands in for random.Random: returns the given values in order, checking each is allowed."""

    def __init__(self, *values):
        self.values = list(values)

    def choice(self, options):
        value = self.values.pop(0)
        assert value in options
        return value

    def randint(self, low, high):
        value = self.values.pop(0)
        assert low <= value <= high
        return value


def test_shop_template_by_hand():
    """Breaks: the shop template's text, answer or checkpoints. By hand: 24 pens at $15 is $360;
    15% of $360 is $54; she pays $306. Python prints 24 * 15 as 360 and the divisions as floats."""
    draw = _shop(_ScriptedRng("Mia", "pens", 24, 60, 15))
    assert draw.question == ("A shop sells pens for $15 each. Mia buys 24 pens and gets 15% off "
                             "the whole order. How much does Mia pay, in dollars?")
    assert draw.answer == 306
    plan, first, second = draw.solution
    assert plan.code == "" and plan.thought
    assert first.code == "subtotal = 24 * 15\nprint(subtotal)"
    assert first.checkpoints == ("360",) and first.defines == (("subtotal", "360"),)
    assert second.checkpoints == ("54.0", "306.0") and second.reads == ("subtotal",)
    assert second.code.endswith("final_answer(total)")


# One pattern per arith template, with the answer recomputed from the question's own numbers.
_ARITH_QUESTIONS = [
    (r"sells .+ for \$([\d.]+) each\. \w+ buys (\d+) .+ gets (\d+)% off",
     lambda price, count, pct: price * count * (100 - pct) / 100),
    (r"recipe for (\d+) servings uses (\d+) grams of flour and (\d+) grams of butter\..* for "
     r"(\d+) servings", lambda s, flour, butter, t: (flour + butter) * t / s),
    (r"at (\d+) km/h for (\d+) hours, then at (\d+) km/h for (\d+) minutes",
     lambda v1, h, v2, m: v1 * h + v2 * m / 60),
    (r"puts \$(\d+) in .+ pays (\d+)% interest .+ after 2 years",
     lambda p, r: p * (1 + r / 100) ** 2),
    (r"earns \$([\d.]+) per hour\. \w+ works (\d+) hours on each of (\d+) weekdays and (\d+) "
     r"hours on Saturday", lambda rate, h, d, s: rate * (h * d + Fraction(3, 2) * s)),
    (r"floor is ([\d.]+) m long and ([\d.]+) m wide\. Tiles cost \$(\d+) per square metre, and "
     r"(\d+)% extra", lambda length, width, c, x: length * width * (1 + x / 100) * c),
    (r"uses ([\d.]+) litres of fuel per 100 km\. A trip is (\d+) km long and fuel costs "
     r"\$([\d.]+) per litre", lambda f, d, c: f * d / 100 * c),
    (r"buys (\d+) bags of coffee at \$([\d.]+) each and (\d+) boxes of tea at \$([\d.]+) each\. "
     r"Sales tax of (\d+)%", lambda b, bp, x, xp, t: (b * bp + x * xp) * (1 + t / 100)),
]


def test_arith_answers_recomputed_from_the_question_text():
    """Breaks: a template whose stated problem and reference answer disagree (the student would be
    trained towards wrong answers). Every template must appear and be recomputed exactly."""
    seen = set()
    for task in make_arith("train", 300, seed=0) + make_arith("test", 100, seed=0):
        matches = [(i, m) for i, (pattern, _) in enumerate(_ARITH_QUESTIONS)
                   if (m := re.search(pattern, task.question))]
        assert len(matches) == 1, task.question
        index, match = matches[0]
        expected = _ARITH_QUESTIONS[index][1](*(Fraction(g) for g in match.groups()))
        assert Fraction(task.answer) == expected, task.question
        assert task.grader == "numeric" and task.corpus is None
        seen.add(index)
    assert seen == set(range(len(_ARITH_QUESTIONS)))


def test_arith_solution_shape():
    """Breaks: the CPU preset's 6-step budget, the reference teacher's self-contained replays
    (reads must be defined earlier, defines must be literals) and the final_answer rule."""
    for task in make_arith("train", 200, seed=2):
        plan, *actions = task.solution
        assert plan.code == "" and plan.thought and 2 <= len(actions) <= 3
        assert len(task.solution) <= 5
        defined = {}
        for number, step in enumerate(actions, start=1):
            assert step.thought and step.code and step.checkpoints
            assert ("final_answer(" in step.code) == (number == len(actions))
            assert set(step.reads) <= set(defined)
            # Each checkpoint is the printed value of a name the step binds, as a Python literal.
            assert step.checkpoints == tuple(value for _, value in step.defines)
            for name, literal in step.defines:
                defined[name] = eval(literal)  # a literal such as "306.0": safe to evaluate
        assert is_correct("numeric", str(defined[actions[-1].code.split("final_answer(")[1][:-1]]),
                          task.answer)


# ---------------------------------------------------------------------------------------------------
# lookup: the answer is what the question asks, and each hop's search finds its fact
# ---------------------------------------------------------------------------------------------------

def _facts(corpus):
    """Title -> passage text, read back from the corpus strings ("Title: text")."""
    return dict(passage.split(": ", 1) for passage in corpus)


def _answer_from_corpus(question, facts):
    """Follow the chain of the question through the passages, as a careful reader would."""
    def maker(product):
        return re.search(r"made by (.+), first sold", facts[product])[1]

    def founder(company):
        return re.search(r"founded in \d+ by (.+) and is based in", facts[company])[1]

    def birth(person):
        return re.search(r"was born in (\d+) in (\w+)\.", facts[person]).groups()

    if m := re.fullmatch(r"In what year was the founder of the company that makes the (\w+) "
                         r"born\?", question):
        return birth(founder(maker(m[1])))[0]
    if m := re.fullmatch(r"In which city was the founder of the company that makes the (\w+) "
                         r"born\?", question):
        return birth(founder(maker(m[1])))[1]
    if m := re.fullmatch(r"Who founded the company that makes the (\w+)\?", question):
        return founder(maker(m[1]))
    if m := re.fullmatch(r"In which city is the company that makes the (\w+) based\?", question):
        return re.search(r"is based in (\w+)\.", facts[maker(m[1])])[1]
    if m := re.fullmatch(r"In what year was the founder of (.+) born\?", question):
        return birth(founder(m[1]))[0]
    if m := re.fullmatch(r"In which city was the founder of (.+) born\?", question):
        return birth(founder(m[1]))[1]
    raise AssertionError(f"no pattern for {question!r}")


def test_lookup_answers_follow_from_the_corpus():
    """Breaks: a question whose reference answer is not what its chain of passages says."""
    train, test = make_lookup("train", None, seed=1), make_lookup("test", None, seed=1)
    facts = _facts(train[0].corpus)
    assert len(facts) == len(train[0].corpus)                 # every entity has one passage
    for tasks in (train, test):
        for task in tasks:
            assert _answer_from_corpus(task.question, facts) == task.answer
            assert task.grader == ("numeric" if task.answer.isdigit() else "f1")
            # One world per seed: both splits search the same corpus, shared as one object.
            assert task.corpus is tasks[0].corpus and task.corpus_id == "lookup-seed1"
    assert train[0].corpus == test[0].corpus


def test_lookup_has_distractors():
    """Breaks: the need for exact multi-hop queries: every company shares its name stem with
    another company and every founder shares a surname with another person."""
    corpus = make_lookup("test", 1, seed=0)[0].corpus
    facts = _facts(corpus)
    companies = [title for title, text in facts.items() if " was founded in " in text]
    people = [title for title, text in facts.items() if " was born in " in text]
    stems = [name.split()[0] for name in companies]
    surnames = [name.split()[1] for name in people]
    assert all(stems.count(stem) == 2 for stem in stems)
    assert all(surnames.count(surname) == 2 for surname in surnames)


def test_lookup_hops_surface_their_checkpoint():
    """Breaks: the reference solutions and the reference teacher's lookup checkpoints: each
    search, run on a BM25 index of the corpus, must show the fact the next hop needs in its top 3
    (here even top 1), within the CPU preset's 400-character observation budget; in the held-out
    world too."""
    for seed, tasks in [(seed, tasks) for seed in (0, 3) for tasks in (
            make_lookup("train", 60, seed) + make_lookup("test", 40, seed),
            load_tasks("lookup-heldout", "test", 60, seed))]:
        corpus = list(tasks[0].corpus)
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(corpus, show_progress=False), show_progress=False)
        for task in tasks:
            plan, *actions = task.solution
            assert plan.code == "" and 3 <= len(task.solution) <= 5
            assert actions[-1].code == f'final_answer("{task.answer}")'
            for step in actions[:-1]:
                query = re.fullmatch(r'print\(search\("(.+)"\)\)', step.code)[1]
                docs, _ = retriever.retrieve(bm25s.tokenize([query], show_progress=False), k=3,
                                             show_progress=False)
                top3 = [corpus[i] for i in docs[0]]
                assert step.checkpoints[0] in top3[0], (task.question, query)
                assert sum(len(p) + 5 for p in top3) <= 400


# ---------------------------------------------------------------------------------------------------
# Held-out families: test only, other templates, another world
# ---------------------------------------------------------------------------------------------------

# One pattern per held-out template, with the answer recomputed from the question's own numbers.
_HELDOUT_QUESTIONS = [
    (r"and (\d+) friends? order (\d+) .+ costing \$([\d.]+) apiece, plus a \$([\d.]+) delivery",
     lambda friends, count, price, fee: (count * price + fee) / (friends + 1)),
    (r"measures (\d+) metres by (\d+) metres\..* gate ([\d.]+) metres wide\. If fencing is "
     r"\$([\d.]+) a metre", lambda length, width, gate, price: (2 * (length + width) - gate) * price),
    (r"at (\d+) litres per minute while a leak drains (\d+) litres per minute\. The tank holds "
     r"(\d+) litres", lambda inflow, leak, volume: volume / (inflow - leak) / 60),
    (r"paid \$(\d+) a month and then gets a (\d+)% pay rise\. Of the new monthly pay, (\d+)%",
     lambda pay, rise, tax: pay * (1 + rise / 100) * (1 - tax / 100)),
    (r"pay a \$([\d.]+) booking fee plus \$([\d.]+) for every hour\. A group hires (\d+) of them "
     r"for (\d+) hours", lambda fee, hourly, count, hours: count * (fee + hourly * hours)),
    (r"scored (\d+), (\d+) and (\d+)\..* average exactly (\d+)\?",
     lambda a, b, c, mean: 4 * mean - a - b - c),
    (r"needs (\d+) minutes to warm up and then turns out (\d+) pages a minute\. Someone sends "
     r"(\d+) copies of a (\d+)-page report", lambda warm, rate, copies, pages: warm + copies * pages / rate),
]


def test_heldout_sets_are_test_only():
    """Breaks: held-out generalisation: a held-out family that could be trained on measures nothing.
    Its train split is refused with one line; its test split is listed and loads."""
    for name in ("arith-heldout", "arith-reworded", "lookup-heldout"):
        assert name in TASK_SETS
        with pytest.raises(TaskError, match=f"{name} is a test-only set") as caught:
            load_tasks(name, "train", 5)
        assert "\n" not in str(caught.value)
        tasks = load_tasks(name, "test", 5, seed=2)
        assert len(tasks) == 5 and all(t.task_set == name and t.id.startswith(name + "-") for t in tasks)
    assert len(load_tasks("arith-heldout", "test")) == len(load_tasks("arith-reworded", "test")) == 200
    assert len(load_tasks("lookup-heldout", "test")) == len(load_tasks("lookup", "test"))
    assert len(load_tasks("lookup-heldout", "test", 700)) == 700


def test_heldout_sets_are_deterministic():
    """Breaks: comparing arms and seeds on the same held-out tasks, and resuming an evaluation."""
    for name in ("arith-heldout", "arith-reworded", "lookup-heldout"):
        assert load_tasks(name, "test", 30, seed=1) == load_tasks(name, "test", 30, seed=1)
        assert load_tasks(name, "test", 10, seed=1) == load_tasks(name, "test", 30, seed=1)[:10]
        assert load_tasks(name, "test", 30, seed=1) != load_tasks(name, "test", 30, seed=2)


def test_arith_heldout_is_another_family():
    """Breaks: the held-out arith family as a test of the method rather than of the templates: no
    held-out question matches a training template or shares a question or a name with the training
    family; each answer is what its own question asks (recomputed from the text); every held-out
    template appears; solutions keep the CPU preset's shape."""
    training = make_arith("train", 1000, 0) + make_arith("test", 200, 0)
    heldout = load_tasks("arith-heldout", "test", 300, seed=0)
    assert not {t.question for t in heldout} & {t.question for t in training}
    assert not {t.id for t in heldout} & {t.id for t in training}
    seen = set()
    for task in heldout:
        assert not any(re.search(pattern, task.question) for pattern, _ in _ARITH_QUESTIONS), task.question
        assert not any(re.search(rf"\b{name}\b", task.question) for name in tasks_module._NAMES)
        matches = [(i, m) for i, (pattern, _) in enumerate(_HELDOUT_QUESTIONS) if (m := re.search(pattern, task.question))]
        assert len(matches) == 1, task.question
        index, match = matches[0]
        assert Fraction(task.answer) == _HELDOUT_QUESTIONS[index][1](*(Fraction(g) for g in match.groups()))
        assert task.grader == "numeric" and task.corpus is None and 3 <= len(task.solution) <= 4
        seen.add(index)
    assert seen == set(range(len(_HELDOUT_QUESTIONS)))
    # No two held-out tasks are one problem under other names.
    words = "|".join(map(re.escape, tasks_module._HELDOUT_NAMES + tasks_module._MEALS + tasks_module._RENTALS))
    assert len({re.sub(rf"\b(?:{words})\b", "_", t.question) for t in heldout}) == len(heldout)


# The reworded questions (environment/tasks.py, REWORDINGS), each with the answer recomputed from its text.
_REWORDED_QUESTIONS = [
    (r"orders (\d+) .+ priced at \$([\d.]+) apiece, and the store takes (\d+) percent off",
     lambda count, price, pct: count * price * (100 - pct) / 100),
    (r"To cook for (\d+) people, a cook scales a recipe written for (\d+) people, which calls for "
     r"(\d+) g of flour and (\d+) g of butter", lambda t, s, flour, butter: (flour + butter) * t / s),
    (r"drives (\d+) hours at (\d+) km per hour and afterwards (\d+) minutes at (\d+) km per hour",
     lambda h, v1, m, v2: v1 * h + v2 * m / 60),
    (r"deposits \$(\d+) into an account earning (\d+) percent a year", lambda p, r: p * (1 + r / 100) ** 2),
    (r"pay is \$([\d.]+) an hour\. In one week \w+ puts in (\d+) hours a day on (\d+) weekdays, plus "
     r"(\d+) hours on Saturday", lambda rate, h, d, s: rate * (h * d + Fraction(3, 2) * s)),
    (r"floor of ([\d.]+) m by ([\d.]+) m\. Tiles are \$(\d+) a square metre, and (\d+) percent more",
     lambda length, width, c, x: length * width * (1 + x / 100) * c),
    (r"burns ([\d.]+) L every 100 km makes a drive of (\d+) km, with fuel at \$([\d.]+) a litre",
     lambda f, d, c: f * d / 100 * c),
    (r"orders (\d+) boxes of tea costing \$([\d.]+) per box and (\d+) bags of coffee costing "
     r"\$([\d.]+) per bag, and pays (\d+)% sales tax", lambda x, xp, b, bp, t: (b * bp + x * xp) * (1 + t / 100)),
]


def test_arith_reworded_is_the_test_split_in_other_words():
    """Breaks: arith-reworded as a test of wording alone: task i must be arith test task i of the same
    seed (same answer, same reference solution, so the two sets pair task by task), asked in words no
    training template uses, with an answer that follows from its own text; every wording appears, and
    no id is shared with arith or arith-heldout."""
    seen = set()
    for seed in (0, 3):
        reworded, test = load_tasks("arith-reworded", "test", 120, seed), make_arith("test", 120, seed)
        training = {t.question for t in make_arith("train", 300, seed)}
        others = {t.id for t in test + make_arith("train", 300, seed) + load_tasks("arith-heldout", "test", 120, seed)}
        assert not {t.id for t in reworded} & others and len({t.id for t in reworded}) == 120
        for new, old in zip(reworded, test):
            assert new.task_set == "arith-reworded" and new.question != old.question and new.question not in training
            assert (new.answer, [s.code for s in new.solution]) == (old.answer, [s.code for s in old.solution])
            assert not any(re.search(pattern, new.question) for pattern, _ in _ARITH_QUESTIONS), new.question
            matches = [(i, m) for i, (pattern, _) in enumerate(_REWORDED_QUESTIONS) if (m := re.search(pattern, new.question))]
            assert len(matches) == 1, new.question
            index, match = matches[0]
            assert Fraction(new.answer) == _REWORDED_QUESTIONS[index][1](*(Fraction(g) for g in match.groups())), new.question
            seen.add(index)
    assert seen == set(range(len(_REWORDED_QUESTIONS)))


def test_lookup_heldout_is_another_world():
    """Breaks: the held-out lookup world as a test of searching rather than of memory: it shares no
    name with the training world of the same seed (no fact learnt there holds), it has the same
    relations and question forms, and every answer follows from its own corpus."""
    for seed in (0, 1):
        train = make_lookup("train", None, seed)
        heldout = load_tasks("lookup-heldout", "test", 700, seed=seed)
        words = lambda corpus: {w for passage in corpus for w in passage.split(": ", 1)[0].split()}
        assert not words(heldout[0].corpus) & words(train[0].corpus) - set(tasks_module._SUFFIXES)
        assert not {t.question for t in heldout} & {t.question for t in train}
        assert heldout[0].corpus_id == f"lookup-heldout-seed{seed}" != train[0].corpus_id
        facts = _facts(heldout[0].corpus)
        for task in heldout:
            assert _answer_from_corpus(task.question, facts) == task.answer
            assert task.corpus is heldout[0].corpus
        # Same relations: the same facts kinds ("founder|...", "born|...") on every chain.
        relations = lambda tasks: {s.fact.split("|")[0] for t in tasks for s in t.solution if s.fact}
        assert relations(heldout) == relations(train) == {"maker", "founder", "born", "birthplace", "base"}


# ---------------------------------------------------------------------------------------------------
# Privileged knowledge: a solution rewritten for a teacher that knows some of its facts
# ---------------------------------------------------------------------------------------------------

def test_knowing_solution_by_hand():
    """Breaks: the knowing teacher's steps (environment/reference_teacher.py with --teacher-knowledge).
    By hand, the shop problem of test_shop_template_by_hand: knowing the subtotal, the teacher writes
    `subtotal = 360` and goes straight on to the discount in the same step; knowing both steps, it
    answers in one step of literals; knowing nothing, the solution is the reference itself. A lookup
    chain: knowing who makes the product, it states the maker and searches for its founder through
    the variable; its plan does not name the founder it has yet to find."""
    draw = _shop(_ScriptedRng("Mia", "pens", 24, 60, 15))
    solution = tuple(replace(s, fact=f"shop/{s.defines[0][0]}") if s.defines else s for s in draw.solution)
    assert knowing_solution(solution, lambda fact: False) is solution
    plan, step = knowing_solution(solution, {"shop/subtotal"}.__contains__)
    assert plan.thought == step.thought == ("subtotal = 24 * 15 = 360. Now take 15% off the subtotal; that is "
                                            "what Mia pays.")
    assert step.code == ("subtotal = 360\ndiscount = subtotal * 15 / 100\ntotal = subtotal - discount\n"
                         "print(discount, total)\nfinal_answer(total)")
    assert step.reads == () and step.checkpoints == ("360", "54.0", "306.0")
    _, everything = knowing_solution(solution, lambda fact: True)
    assert everything.code == "subtotal = 360\ndiscount = 54.0\ntotal = 306.0\nprint(discount, total)\nfinal_answer(total)"
    # Knowing only the second step: the first is the reference step itself, the second states it all.
    first, covered = knowing_step(solution, 1, {"shop/discount"}.__contains__)
    assert first is solution[1] and covered == 1
    second, covered = knowing_step(solution, 2, {"shop/discount"}.__contains__)
    assert covered == 2 and second.code == "discount = 54.0\ntotal = 306.0\nprint(discount, total)\nfinal_answer(total)"

    task = next(t for t in make_lookup("train", 60, seed=0) if t.id == "lookup-9ae2caaef7")
    facts = [s.fact for s in task.solution]
    assert facts == ["", "maker|Goulaisais", "founder|Druzideim Industries", "born|Vokel Breitail", ""]
    plan, *steps = knowing_solution(task.solution, {"maker|Goulaisais"}.__contains__)
    assert plan.thought == ("The Goulaisais is made by Druzideim Industries. Find out who founded Druzideim "
                            "Industries. Then go on one fact at a time.")
    assert [s.code for s in steps] == ['company = "Druzideim Industries"\nprint(search(company))',
                                       'print(search("Vokel Breitail"))', 'final_answer("1937")']
    *_, last = knowing_solution(task.solution, {"born|Vokel Breitail"}.__contains__)
    assert (last.thought, last.code) == ("Vokel Breitail was born in 1937.", "born = 1937\nfinal_answer(born)")


def test_lookup_facts_are_world_edges():
    """Breaks: one teacher, one memory: a world edge is one fact whichever question reaches it (so the
    teacher knows the founder of a company in every question about it, or in none), and an arith
    intermediate is a fact of its own task. Every action step but a lookup answer has a fact with a
    statement and the bindings that state it."""
    lookup = make_lookup("train", None, seed=0)
    by_edge = {}
    for task in lookup:
        for step in task.solution[1:]:
            if step.fact:
                by_edge.setdefault(step.fact, set()).add((step.checkpoints, step.stated, step.statement))
            else:
                assert "final_answer(" in step.code and step is task.solution[-1]
    assert all(len(versions) == 1 for versions in by_edge.values())
    assert sum(1 for t in lookup for s in t.solution if s.fact == "founder|" + t.solution[2].fact.split("|")[1]) > 5
    arith = make_arith("train", 50, seed=0)
    arith_facts = [s.fact for t in arith for s in t.solution[1:]]
    assert all(f.startswith(t.id + "/") for t in arith for f in [s.fact for s in t.solution[1:]])
    assert len(set(arith_facts)) == len(arith_facts)
    for task in arith:
        for step in task.solution[1:]:
            assert step.stated == step.defines and step.statement.count(" = ") == 2 * len(step.defines)


# ---------------------------------------------------------------------------------------------------
# The reference solutions run: every one reaches its answer in the project's sandbox
# ---------------------------------------------------------------------------------------------------

def test_reference_solutions_reach_their_answers():
    """Breaks: phase 0 (BC) and the reference teacher, which replay these solutions: each step must
    run without error in the sandbox, print exactly its checkpoints (arith) or show its fact
    (lookup), and the final answer must grade correct. The held-out families too: the reference
    teacher evaluates on them."""
    from tools import Sandbox, SearchIndex

    lookup = (make_lookup("train", 25, seed=0) + make_lookup("test", 25, seed=0)
              + load_tasks("lookup-heldout", "test", 25, seed=0))
    arith = (make_arith("train", 25, seed=0) + make_arith("test", 25, seed=0)
             + load_tasks("arith-heldout", "test", 40, seed=0))
    # One index per corpus, as the agent loop builds it.
    indexes = {t.corpus_id: SearchIndex(t.corpus) for t in lookup}
    assert len(indexes) == 2
    for task in arith + lookup:
        # The CPU preset's 400-character observation budget: the facts must survive it.
        with Sandbox(corpus=indexes[task.corpus_id] if task.corpus else None, timeout_s=10,
                     max_output_chars=400) as sandbox:
            for step in task.solution[1:]:
                result = sandbox.run(step.code)
                assert not result.error, (task.id, step.code, result.error)
                if task.task_set in ("arith", "arith-heldout"):
                    assert result.text.split() == list(step.checkpoints), (task.id, result.text)
                else:
                    assert all(c in result.text for c in step.checkpoints), (task.id, result.text)
            assert is_correct(task.grader, result.answer, task.answer), (task.id, result.answer)


# ---------------------------------------------------------------------------------------------------
# The paper's benchmarks: converters on stand-in rows with the real schemas, offline errors
# ---------------------------------------------------------------------------------------------------

# Stand-in rows (invented text) with each dataset's real field names and nesting.
_ROWS = {
    "gsm8k": [{"question": "A farm packs 30 boxes of 40 eggs. How many eggs is that?",
               "answer": "30 * 40 = <<30*40=1200>>1200 eggs.\n#### 1,200"}],
    "math500": [{"problem": "Compute $\\frac{7}{3} \\cdot 2$.", "solution": "It is $\\boxed{\\frac{14}{3}}$.",
                 "answer": "\\frac{14}{3}", "subject": "Algebra", "level": 1,
                 "unique_id": "test/algebra/1.json"}],
    "aime24": [{"id": 60, "problem": "Find n.", "solution": "So n = 204.", "answer": "204",
                "url": "https://example.org/aime", "year": "2024"}],
    "aime25": [{"problem_idx": 1, "problem": "Find m.", "answer": 70,
                "problem_type": ["Number Theory"]}],
    "hotpotqa": [{"id": "5a8b", "question": "Were Alpha and Beta founded in the same year?",
                  "answer": "yes", "type": "comparison", "level": "hard",
                  "supporting_facts": {"title": ["Alpha", "Beta"], "sent_id": [0, 0]},
                  "context": {"title": ["Alpha", "Beta"],
                              "sentences": [["Alpha is a band.", " It formed in 1990."],
                                            ["Beta formed in 1990."]]}}],
    "2wiki": [{"_id": "a1b2", "type": "compositional", "question": "Who is the father of Gamma?",
               "context": {"title": ["Gamma"], "content": [["Gamma is the son of Delta.", "He sings."]]},
               "supporting_facts": {"title": ["Gamma"], "sent_id": [0]},
               "evidences": {"fact": ["Gamma"], "relation": ["father"], "entity": ["Delta"]},
               "answer": "Delta"}],
    "musique": [{"id": "2hop__1_2", "question": "Where was the author of Epsilon born?",
                 "paragraphs": [{"idx": 0, "title": "Epsilon", "paragraph_text": "Epsilon is by Zeta. ",
                                 "is_supporting": True},
                                {"idx": 1, "title": "Zeta", "paragraph_text": "Zeta was born in Eta.",
                                 "is_supporting": True}],
                 "question_decomposition": [{"id": 1, "question": "author of Epsilon",
                                             "answer": "Zeta", "paragraph_support_idx": 0}],
                 "answer": "Eta", "answer_aliases": ["Eta City"], "answerable": True}],
    "bamboogle": [{"Question": "Who founded Theta?", "Answer": "Iota"}],
}


def test_convert_math_rows():
    """Breaks: GSM8K / MATH500 / AIME loading: answer extraction ("#### 1,200" -> "1200"), graders,
    worked solutions for --teacher-sees solution, and ids that do not collide."""
    (gsm,) = _convert("gsm8k", _ROWS["gsm8k"])
    assert gsm.answer == "1200" and gsm.grader == "numeric"
    assert gsm.solution_text == "30 * 40 = 1200 eggs." and gsm.id.startswith("gsm8k-")
    # A repeated question keeps a unique id (ids key records and resumed runs).
    twice = _convert("gsm8k", _ROWS["gsm8k"] * 2)
    assert twice[0].id == gsm.id and twice[1].id == gsm.id + "-2"
    (math500,) = _convert("math500", _ROWS["math500"])
    assert (math500.id, math500.answer, math500.grader) == (
        "math500-test/algebra/1.json", "\\frac{14}{3}", "math")
    assert math500.solution_text == "It is $\\boxed{\\frac{14}{3}}$." and math500.corpus is None
    (aime24,) = _convert("aime24", _ROWS["aime24"])
    assert (aime24.id, aime24.answer, aime24.solution_text) == ("aime24-60", "204", "So n = 204.")
    (aime25,) = _convert("aime25", _ROWS["aime25"])
    assert (aime25.id, aime25.answer, aime25.grader, aime25.solution_text) == (
        "aime25-1", "70", "math", None)


def test_convert_multihop_rows():
    """Breaks: the offline multi-hop setting (METHOD.md section 4): each question searches its
    own context paragraphs as "Title: sentences", keyed by the task id; Bamboogle has none."""
    (hotpot,) = _convert("hotpotqa", _ROWS["hotpotqa"])
    assert hotpot.corpus == ("Alpha: Alpha is a band. It formed in 1990.", "Beta: Beta formed in 1990.")
    assert (hotpot.id, hotpot.corpus_id, hotpot.answer, hotpot.grader) == (
        "hotpotqa-5a8b", "hotpotqa-5a8b", "yes", "f1")
    (wiki,) = _convert("2wiki", _ROWS["2wiki"])
    assert wiki.corpus == ("Gamma: Gamma is the son of Delta. He sings.",) and wiki.answer == "Delta"
    (musique,) = _convert("musique", _ROWS["musique"])
    assert musique.corpus == ("Epsilon: Epsilon is by Zeta.", "Zeta: Zeta was born in Eta.")
    assert musique.id == musique.corpus_id == "musique-2hop__1_2"
    (bamboogle,) = _convert("bamboogle", _ROWS["bamboogle"])
    assert (bamboogle.answer, bamboogle.corpus, bamboogle.corpus_id) == ("Iota", None, None)
    # The original HotpotQA JSON stores context as [[title, [sentences]], ...]: same passages.
    original = dict(_ROWS["hotpotqa"][0], context=[["Alpha", ["Alpha is a band.", " It formed in 1990."]],
                                                    ["Beta", ["Beta formed in 1990."]]])
    assert _convert("hotpotqa", [original])[0].corpus == hotpot.corpus


def test_every_paper_set_has_a_source_and_a_stand_in():
    """Breaks: a name in TASK_SETS that load_tasks cannot route anywhere."""
    generated = {"arith", "lookup", "arith-heldout", "arith-reworded", "lookup-heldout"}
    assert set(TASK_SETS) == generated | set(PAPER_SETS) == generated | set(_ROWS)


def test_load_paper_set_shuffles_and_cuts(monkeypatch):
    """Breaks: load_tasks' contract for loaded sets: shuffled by the seed, then the first n."""
    rows = [dict(_ROWS["bamboogle"][0], Question=f"Question {i}?") for i in range(20)]
    monkeypatch.setattr(tasks_module, "_fetch", lambda name, split: rows)
    first, again = load_tasks("bamboogle", "test", 5, seed=0), load_tasks("bamboogle", "test", 5, seed=0)
    assert first == again and len(first) == 5
    assert [t.question for t in first] != [f"Question {i}?" for i in range(5)]
    assert load_tasks("bamboogle", "test", 5, seed=1) != first


def test_paper_sets_offline_give_one_line(monkeypatch):
    """Breaks: DESIGN.md's promise that a user error ends with one clear line, not a traceback:
    offline (no hub), `datasets` must not leak a connection error."""
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    for name in PAPER_SETS:
        with pytest.raises(TaskError) as caught:
            load_tasks(name, "test", 3)
        message = str(caught.value)
        assert "\n" not in message and "unreachable" in message and "JSONL" in message
        assert PAPER_SETS[name].hf_id in message
    with pytest.raises(TaskError, match="no train split"):
        load_tasks("math500", "train")


# ---------------------------------------------------------------------------------------------------
# Local JSONL files and user errors
# ---------------------------------------------------------------------------------------------------

def test_local_jsonl(tmp_path):
    """Breaks: running the loop on one's own tasks: default graders, per-question corpora and the
    split field."""
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"id": "q1", "question": "6 x 7?", "answer": 42, "split": "train"}\n'
        '\n'
        '{"id": "q2", "question": "Capital of France?", "answer": "Paris", "corpus": ["France: Paris."], '
        '"split": "train"}\n'
        '{"id": "q3", "question": "Half of 1?", "answer": "\\\\frac{1}{2}", "grader": "math", "split": "train"}\n'
        '{"id": "q4", "question": "Held out?", "answer": "yes", "split": "test"}\n'
        '{"id": "q5", "question": "Which? (A) x (B) y", "answer": "B", "split": "train"}\n')
    train = {t.id: t for t in load_tasks(str(path), "train")}
    assert set(train) == {"q1", "q2", "q3", "q5"}
    assert train["q5"].grader == "choice"  # a lone option letter (under f1, "A" normalises to nothing)
    assert (train["q1"].answer, train["q1"].grader, train["q1"].task_set) == ("42", "numeric", "mine")
    assert train["q2"].grader == "f1" and train["q2"].corpus == ("France: Paris.",)
    assert train["q2"].corpus_id == "q2" and train["q1"].corpus is None
    assert train["q3"].grader == "math" and train["q3"].answer == "\\frac{1}{2}"
    assert {t.id for t in load_tasks(str(path), "test")} == {"q4"}
    assert len(load_tasks(str(path), "train", n=2, seed=4)) == 2


def test_jsonl_without_split_fields(tmp_path, capsys):
    """Breaks: a leak: a JSONL file whose rows have no split field used to serve every row as a
    training AND a test task, silently. Now: training on it is refused with one line naming the
    fix; evaluating on it (split test) serves every row; --split-jsonl splits the rows without a
    field by a hash of their id (a row with a field keeps it) and says so in one line."""
    path = tmp_path / "mine.jsonl"
    rows = [f'{{"id": "q{i}", "question": "{i} + 1?", "answer": {i + 1}}}' for i in range(40)]
    path.write_text("\n".join(rows + ['{"id": "fixed", "question": "?", "answer": 1, "split": "train"}']))
    with pytest.raises(TaskError, match="40 of 41 rows have no split field.*--split-jsonl") as caught:
        load_tasks(str(path), "train")
    assert "\n" not in str(caught.value)
    assert {t.id for t in load_tasks(str(path), "test")} == {f"q{i}" for i in range(40)}
    train = {t.id for t in load_tasks(str(path), "train", split_jsonl=True)}
    test = {t.id for t in load_tasks(str(path), "test", split_jsonl=True)}
    assert not train & test and train | test == {f"q{i}" for i in range(40)} | {"fixed"}
    assert "fixed" in train and 2 <= len(test) <= 16   # TEST_FRACTION = 1/5 of 40, by hash
    # The same rule as the generated sets (_is_test of the id), whatever the seed or n.
    assert test == {f"q{i}" for i in range(40) if tasks_module._is_test("jsonl", f"q{i}")}
    assert {t.id for t in load_tasks(str(path), "test", seed=3, split_jsonl=True)} == test
    notes = [line for line in capsys.readouterr().out.splitlines() if "split field" in line]
    assert len(notes) == 3 and f"put {len(test)} of them in test and {40 - len(test)} in train" in notes[0]


@pytest.mark.parametrize("bad_line, expected", [
    ('{"id": "q2", "question": "oops", "answer": }', r"mine\.jsonl:3: not valid JSON"),
    ('{"id": "q2", "question": "no answer"}', r"mine\.jsonl:3: missing field 'answer'"),
    ('{"id": "q1", "question": "again", "answer": "1"}', r"mine\.jsonl:3: duplicate id"),
    ('{"id": "q2", "question": "?", "answer": "1", "grader": "fuzzy"}', r"mine\.jsonl:3: unknown grader"),
    ('["id", "question", "answer"]', r"mine\.jsonl:3: expected a JSON object"),
    ('{"id": "q2", "question": "?", "answer": "1", "corpus": "one passage"}', r"mine\.jsonl:3: corpus"),
])
def test_malformed_jsonl_names_its_line(tmp_path, bad_line, expected):
    """Breaks: the one-line error that points a user at the broken line of their task file."""
    path = tmp_path / "mine.jsonl"
    path.write_text('{"id": "q1", "question": "a?", "answer": "1"}\n\n' + bad_line + "\n")
    with pytest.raises(TaskError, match=expected) as caught:
        load_tasks(str(path), "train")
    assert "\n" not in str(caught.value)


def test_user_errors_are_one_line():
    """Breaks: clear errors for a misspelt set, a bad split, a missing file and an oversized n."""
    cases = [(("arithmetic", "test"), "unknown task set 'arithmetic'"),
             (("arith", "dev"), "unknown split 'dev'"),
             (("missing.jsonl", "test"), "does not exist"),
             (("lookup", "test", 10_000), "has .* test tasks, 10000 asked")]
    for args, expected in cases:
        with pytest.raises(TaskError, match=expected) as caught:
            load_tasks(*args)
        assert "\n" not in str(caught.value)
    assert isinstance(TaskError("x"), ValueError)


def test_task_records_are_frozen():
    """Breaks: sharing one Task (and its corpus tuple) between episodes and threads safely."""
    task = make_arith("test", 1)[0]
    assert isinstance(task, Task)
    with pytest.raises(AttributeError):
        task.answer = "0"
