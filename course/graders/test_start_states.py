"""Grader for the assignment start-states: `mps.assign_split`, `rl.select_start_states`, `rl.step_limit`.

The rules (METHOD.md section 3, Split and Phase 3, items 1, 2 and 6; section 7, item 23):
- split: u = sha256(task id | seed) read as a number in [0, 1); "bc" if u < bc_fraction, else "sft"
  or "rl", 50/50. The same task gets the same split on every run, in every process;
- RL starts: one per key-step record with `last: true` of the RL half: the task, the verified prefix
  (steps 1..k-1, authors kept) and k; the teacher's step k is NOT in the prefix (it is kept, with the
  wrong step, for the reward only). `rl_start="question"` starts the same tasks from the bare task;
- RL-half episodes without a key-step record join as question-only starts (k = 1) with probability
  rate_hard (hard episodes) or rate_other, drawn from a seeded hash of the task id;
- a continuation from step k may run to step max(H, k + steps_after_key).
"""
import dataclasses
import os
import random
import subprocess
import sys

import mps
from agent import Step, format_step
from environment.tasks import Task
from mps import assign_split
from rl import RLConfig, select_start_states, step_limit

TASK = Task(id="toy-0", task_set="toy", question="What is 6 times 7?", answer="42", grader="numeric")


def step(index, author, code, observation, kind="action"):
    return Step(index, kind, author, format_step(kind, "t", code), thought="t", code=code, observation=observation)


PLAN = step(1, "student", "", "None", kind="plan")


def record(task_id, k, prefix, last=True, split="rl"):
    """A key-step record as mps.keystep_records writes it (steps as dicts)."""
    teacher = step(k, "teacher", "y = x * 7\nprint(y)", "42")
    wrong = step(k, "student", "y = x * 8\nprint(y)", "48")
    return {"task_id": task_id, "task_set": "toy", "question": TASK.question, "reference_answer": "42", "split": split,
            "k": k, "prefix": [dataclasses.asdict(s) for s in prefix], "teacher_step": dataclasses.asdict(teacher),
            "wrong_step": dataclasses.asdict(wrong), "last": last, "run": "r", "config_hash": "h"}


def keysteps():
    """toy-0: two valid corrections (k = 2, then k = 3 after the teacher's step 2; only the second is
    `last`); toy-1: one at k = 2; toy-2: one of the SFT half."""
    first_teacher = step(2, "teacher", "x = 6\nprint(x)", "6")
    return [record("toy-0", 2, [PLAN], last=False),
            record("toy-0", 3, [PLAN, first_teacher]),
            record("toy-1", 2, [PLAN]),
            record("toy-2", 2, [PLAN], split="sft")]


def tasks(n=5):
    return {f"toy-{i}": dataclasses.replace(TASK, id=f"toy-{i}") for i in range(n)}


def summary(starts):
    return sorted((s.task.id, s.k, s.source) for s in starts)


# ----------------------------------------------------------------------------------------------
# select_start_states: key-step starts


def test_one_start_per_last_key_step_record_of_the_rl_half():
    """Of the 4 records, only toy-0's second correction (last) and toy-1's are RL starts: toy-0's first
    correction is not `last`, toy-2's is of the SFT half."""
    got = summary(select_start_states(keysteps(), tasks(), RLConfig()))
    expected = [("toy-0", 3, "keystep"), ("toy-1", 2, "keystep")]
    hint = ""
    if ("toy-0", 2, "keystep") in got:
        hint = "; a record without last: true was used (RL takes each episode's LAST valid correction)"
    elif any(task_id == "toy-2" for task_id, _, _ in got):
        hint = "; a record of the sft half was used (config.split names the half RL trains on)"
    assert got == expected, (
        f"one RL start per key-step record with last: true of the RL half (METHOD.md 3, Phase 3, item 1){hint}: "
        f"got (task, k, source) {got}, expected {expected}")


def test_the_prefix_is_steps_1_to_k_minus_1_and_the_teacher_step_is_not_in_it():
    """The start holds the record's prefix as Step objects, authors kept (toy-0's holds the earlier teacher
    step 2), and NOT the teacher's step k: the student must find such a step by itself."""
    starts = {s.task.id: s for s in select_start_states(keysteps(), tasks(), RLConfig())}
    for rec in keysteps()[1:3]:
        start = starts[rec["task_id"]]
        expected = [Step(**s) for s in rec["prefix"]]
        got = [(s.index, s.author) for s in start.prefix]
        want = [(s.index, s.author) for s in expected]
        hint = " (the teacher's step k is in it)" if any(getattr(s, "index", 0) == rec["k"] for s in start.prefix) else ""
        assert got == want, (
            "the teacher's step k is NOT in the prefix: the start holds steps 1..k-1 only, authors kept (METHOD.md 3, "
            f"Phase 3, item 1): {rec['task_id']} with k = {rec['k']} got (index, author) {got}, expected {want}{hint}")
        assert all(isinstance(s, Step) for s in start.prefix) and start.prefix == expected, (
            f"the prefix's steps are agent.Step objects equal to the record's (rl.step_from_dict): {rec['task_id']} got "
            f"{[type(s).__name__ for s in start.prefix]}")


def test_the_teacher_and_wrong_steps_are_kept_for_the_reward():
    """Each key-step start carries the task, k, and the teacher's step k and the wrong step k as Steps
    (the reward compares the first generated step with them)."""
    table = tasks()
    starts = {s.task.id: s for s in select_start_states(keysteps(), table, RLConfig())}
    for rec in keysteps()[1:3]:
        start = starts[rec["task_id"]]
        assert start.task is table[rec["task_id"]], f"a start's task is tasks_by_id[task_id]: got {start.task!r}"
        assert (start.k, start.source) == (rec["k"], "keystep"), (
            f"a key-step start has the record's k and source 'keystep': got k = {start.k}, source {start.source!r}, "
            f"expected {rec['k']}, 'keystep'")
        assert start.teacher_step == Step(**rec["teacher_step"]) and start.wrong_step == Step(**rec["wrong_step"]), (
            "the teacher step and the wrong step are kept, as Steps, for the reward only (METHOD.md 3, Phase 3, item 1): "
            f"{rec['task_id']} got teacher_step {start.teacher_step!r}")


def test_the_question_ablation_starts_the_same_tasks_from_the_bare_task():
    """rl_start="question" (the paper's Table 3 ablation): the same tasks, prefix [], k = 1, source 'question'."""
    starts = select_start_states(keysteps(), tasks(), RLConfig(rl_start="question"))
    got = sorted((s.task.id, s.k, s.source, len(s.prefix)) for s in starts)
    expected = [("toy-0", 1, "question", 0), ("toy-1", 1, "question", 0)]
    assert got == expected, (
        "the question ablation starts the same tasks from the bare task: prefix [], k = 1 (METHOD.md 3, Phase 3, "
        f"Ablations): got (task, k, source, prefix length) {got}, expected {expected}")


def test_an_empty_split_takes_every_record():
    """config.split = "" trains on the records of every half (still only the `last` ones)."""
    got = summary(select_start_states(keysteps(), tasks(), RLConfig(split="")))
    expected = [("toy-0", 3, "keystep"), ("toy-1", 2, "keystep"), ("toy-2", 2, "keystep")]
    assert got == expected, (
        f"split = '' takes every half's last records (RLConfig.split): got {got}, expected {expected}")


# ----------------------------------------------------------------------------------------------
# select_start_states: question-only starts


def episodes(n=300):
    """MPS episodes: toy-0 (hard, has a key step), n hard and n other RL-half episodes without a key step,
    and n of the SFT half."""
    out = [{"task_id": "toy-0", "split": "rl", "hard": True, "correct": True}]
    out += [{"task_id": f"hard-{i}", "split": "rl", "hard": True, "correct": False} for i in range(n)]
    out += [{"task_id": f"other-{i}", "split": "rl", "hard": False, "correct": True} for i in range(n)]
    out += [{"task_id": f"sft-{i}", "split": "sft", "hard": True, "correct": False} for i in range(n)]
    return out


def episode_tasks(n=300):
    table = tasks()
    for name in ("hard", "other", "sft"):
        table.update({f"{name}-{i}": dataclasses.replace(TASK, id=f"{name}-{i}") for i in range(n)})
    return table


def question_only(config, eps, table=None):
    starts = select_start_states(keysteps(), table or episode_tasks(), config, eps)
    chosen = [s for s in starts if s.source == "question_only"]
    for s in chosen:
        assert (s.prefix, s.k) == ([], 1), (
            f"a question-only start is the bare task: prefix [], k = 1 (METHOD.md 3, Phase 3, item 6): {s.task.id} got "
            f"k = {s.k}, {len(s.prefix)} prefix steps")
    return [s.task.id for s in chosen]


def test_question_only_starts_are_rl_episodes_without_a_key_step_at_their_rates():
    """Rate 1 takes every eligible episode, rate 0 none; never an episode that has a key-step start (toy-0)
    nor one of the SFT half. 0.5 / 0.1 are the shares drawn."""
    eps = episodes()
    hard_ids = sorted(e["task_id"] for e in eps if e["task_id"].startswith("hard-"))
    other_ids = sorted(e["task_id"] for e in eps if e["task_id"].startswith("other-"))
    for rates, expected, name in [((1.0, 0.0), hard_ids, "rate_hard 1, rate_other 0"),
                                  ((0.0, 1.0), other_ids, "rate_hard 0, rate_other 1"), ((0.0, 0.0), [], "both 0")]:
        got = sorted(question_only(RLConfig(question_only_rate_hard=rates[0], question_only_rate_other=rates[1]), eps))
        extra = sorted(set(got) - set(expected))[:3]
        missing = sorted(set(expected) - set(got))[:3]
        assert got == expected, (
            "question-only starts come from RL-half episodes WITHOUT a key-step start, hard ones at rate_hard, the others "
            f"at rate_other (METHOD.md 3, Phase 3, item 6): with {name} got {len(got)} starts, expected {len(expected)} "
            f"(extra {extra}, missing {missing})")
    got = question_only(RLConfig(question_only_rate_hard=0.5, question_only_rate_other=0.1), eps)
    hard_share = sum(t.startswith("hard-") for t in got) / len(hard_ids)
    other_share = sum(t.startswith("other-") for t in got) / len(other_ids)
    assert abs(hard_share - 0.5) < 0.12 and abs(other_share - 0.1) < 0.06, (
        "hard episodes join with probability rate_hard, the others with rate_other (METHOD.md 3, Phase 3, item 6): "
        f"rates 0.5 / 0.1 got shares {hard_share:.2f} / {other_share:.2f} of {len(hard_ids)} episodes each")


def test_question_only_draws_are_a_seeded_hash_of_the_task_id():
    """Whether an episode joins depends on (seed, task id) only: not on the order of the episodes, nor on
    which other episodes are there (a rerun with more tasks keeps the same starts); another seed draws anew."""
    config = RLConfig(question_only_rate_hard=0.5, question_only_rate_other=0.5)
    eps = episodes()
    everything = set(question_only(config, eps))
    shuffled = list(eps)
    random.Random(1).shuffle(shuffled)
    assert set(question_only(config, shuffled)) == everything, (
        "the question-only draw is a seeded hash of the task id (METHOD.md 3, Phase 3, item 6): the chosen episodes "
        "changed when the episodes came in another order")
    half = shuffled[::2]
    kept = {e["task_id"] for e in half}
    got = set(question_only(config, half))
    assert got == everything & kept, (
        "the question-only draw is a seeded hash of the task id (METHOD.md 3, Phase 3, item 6): with half of the "
        f"episodes, {len(got ^ (everything & kept))} of them were drawn differently than with all of them")
    reseeded = set(question_only(dataclasses.replace(config, seed=1), eps))
    assert reseeded != everything, (
        "the question-only draw is seeded by config.seed too (METHOD.md 3, Phase 3, item 6): seeds 0 and 1 drew the "
        "same starts")


# ----------------------------------------------------------------------------------------------
# step_limit


def test_step_limit_keeps_the_paper_horizon_where_it_leaves_room():
    """k <= H - steps_after_key: the limit is H itself (H = 6, 3 steps after a_k: k = 1, 2, 3 -> 6)."""
    for k in (1, 2, 3):
        got = step_limit(k, 6, 3)
        assert got == 6, (
            "the continuation keeps the paper's horizon H where it leaves room, limit = max(H, k + steps_after_key) "
            f"(METHOD.md 3, Phase 3, item 2; 7, item 23): step_limit(k={k}, max_steps=6, steps_after_key=3) got {got}, "
            "expected 6")


def test_step_limit_leaves_steps_after_a_late_key_step():
    """A late key step (MPS gives a fresh budget, so k >= H happens) still leaves a_k and steps_after_key more."""
    for k, max_steps, after, expected in [(4, 6, 3, 7), (6, 6, 3, 9), (9, 6, 3, 12), (5, 8, 5, 10), (2, 8, 5, 8)]:
        got = step_limit(k, max_steps, after)
        assert got == expected, (
            "a late key step still leaves steps_after_key steps after a_k, limit = max(H, k + steps_after_key) "
            f"(METHOD.md 3, Phase 3, item 2; 7, item 23): step_limit(k={k}, max_steps={max_steps}, "
            f"steps_after_key={after}) got {got}, expected {expected}")


# ----------------------------------------------------------------------------------------------
# assign_split


IDS = [f"arith-{i}" for i in range(10000)]


def test_the_split_is_deterministic():
    """The same (task id, seed, bc_fraction) always gives the same split, one of bc / sft / rl."""
    first = [assign_split(i, 0, 0.2) for i in IDS[:500]]
    again = [assign_split(i, 0, 0.2) for i in reversed(IDS[:500])][::-1]
    assert set(first) <= {"bc", "sft", "rl"}, f"a split is 'bc', 'sft' or 'rl': got {sorted(set(first))}"
    assert first == again, (
        "the split is deterministic, a hash of (task id, seed) (METHOD.md 3, Split): "
        f"{sum(a != b for a, b in zip(first, again))} of 500 tasks changed split on a second call")


def test_the_bc_share_comes_first_then_the_rest_50_50():
    """Over 10000 tasks: a share bc_fraction goes to bc, and the rest splits 50/50 into sft and rl."""
    for bc_fraction in (0.2, 0.5, 0.0):
        splits = [assign_split(i, 0, bc_fraction) for i in IDS]
        bc = splits.count("bc") / len(IDS)
        rest = len(IDS) - splits.count("bc")
        sft = splits.count("sft") / rest if rest else 0.0
        assert abs(bc - bc_fraction) < 0.025, (
            "first the BC share: u < bc_fraction goes to bc (METHOD.md 3, Split): bc_fraction "
            f"{bc_fraction} over {len(IDS)} tasks got a bc share of {bc:.3f}")
        assert abs(sft - 0.5) < 0.03, (
            "after the BC share the rest is split 50/50 into sft and rl (METHOD.md 3, Split): bc_fraction "
            f"{bc_fraction} got sft {sft:.3f} and rl {1 - sft:.3f} of the rest, expected 0.5 each")


def test_the_split_depends_on_the_seed():
    """Another seed gives another split of the same tasks (the seed is part of the hash)."""
    zero = [assign_split(i, 0, 0.2) for i in IDS[:1000]]
    one = [assign_split(i, 1, 0.2) for i in IDS[:1000]]
    changed = sum(a != b for a, b in zip(zero, one))
    assert changed > 300, (
        f"the split hashes (task id, seed) (METHOD.md 3, Split): seeds 0 and 1 split only {changed} of 1000 tasks differently")


def test_the_split_is_the_same_in_every_process():
    """A resumed phase or another machine gets the same split: sha256, not Python's hash(), which is
    salted per process (PYTHONHASHSEED). Compared with two fresh interpreters that import this mps."""
    here = [assign_split(i, 0, 0.2) for i in IDS[:200]]
    folder = os.path.dirname(os.path.abspath(mps.__file__))
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from mps import assign_split; "
              f"print(' '.join(assign_split(f'arith-{{i}}', 0, 0.2) for i in range(200)))")
    for salt in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", script, folder], capture_output=True, text=True, cwd=folder,
                              env=dict(os.environ, PYTHONHASHSEED=salt), timeout=60)
        assert done.returncode == 0, f"importing mps in a fresh interpreter failed: {done.stderr.strip()[-300:]}"
        there = done.stdout.split()
        assert there == here, (
            "the split is the same in every process: a sha256 hash of (task id, seed), never Python's salted hash() "
            f"(METHOD.md 3, Split): {sum(a != b for a, b in zip(here, there))} of 200 tasks split differently in a "
            f"process with PYTHONHASHSEED={salt}")


WRONG = [
    {"target": "rl.select_start_states", "mistake": "the teacher's step k is put into the prefix, so RL shows the student the answer step",
     "expect": "NOT in the prefix",
     "source": '''
def select_start_states(keysteps, tasks_by_id, config, episodes=None):
    def in_split(record):
        return not config.split or record.get("split") == config.split

    records = sorted((r for r in keysteps if r.get("last") and in_split(r)), key=lambda r: r["task_id"])
    starts = []
    for r in records:
        task = tasks_by_id[r["task_id"]]
        if config.rl_start == "question":
            starts.append(StartState(task, [], 1, None, None, "question"))
        else:
            prefix = [step_from_dict(s) for s in r["prefix"]] + [step_from_dict(r["teacher_step"])]
            starts.append(StartState(task, prefix, r["k"], step_from_dict(r["teacher_step"]),
                                     step_from_dict(r["wrong_step"]), "keystep"))
    seen = {r["task_id"] for r in records}
    for episode in sorted(episodes or [], key=lambda e: e["task_id"]):
        if episode["task_id"] in seen or not in_split(episode):
            continue
        seen.add(episode["task_id"])
        rate = config.question_only_rate_hard if episode.get("hard") else config.question_only_rate_other
        if random.Random(derive_seed(config.seed, "rl", "question_only", episode["task_id"])).random() < rate:
            starts.append(StartState(tasks_by_id[episode["task_id"]], [], 1, None, None, "question_only"))
    return starts
'''},
    {"target": "rl.select_start_states", "mistake": "every valid correction is a start, not only the last one of each episode",
     "expect": "a record without last",
     "source": '''
def select_start_states(keysteps, tasks_by_id, config, episodes=None):
    def in_split(record):
        return not config.split or record.get("split") == config.split

    records = sorted((r for r in keysteps if in_split(r)), key=lambda r: (r["task_id"], r["k"]))
    starts = []
    for r in records:
        task = tasks_by_id[r["task_id"]]
        if config.rl_start == "question":
            starts.append(StartState(task, [], 1, None, None, "question"))
        else:
            starts.append(StartState(task, [step_from_dict(s) for s in r["prefix"]], r["k"],
                                     step_from_dict(r["teacher_step"]), step_from_dict(r["wrong_step"]), "keystep"))
    seen = {r["task_id"] for r in records}
    for episode in sorted(episodes or [], key=lambda e: e["task_id"]):
        if episode["task_id"] in seen or not in_split(episode):
            continue
        seen.add(episode["task_id"])
        rate = config.question_only_rate_hard if episode.get("hard") else config.question_only_rate_other
        if random.Random(derive_seed(config.seed, "rl", "question_only", episode["task_id"])).random() < rate:
            starts.append(StartState(tasks_by_id[episode["task_id"]], [], 1, None, None, "question_only"))
    return starts
'''},
    {"target": "rl.select_start_states", "mistake": "question-only starts drawn from one random stream in episode order, not per task",
     "expect": "seeded hash of the task id",
     "source": '''
def select_start_states(keysteps, tasks_by_id, config, episodes=None):
    def in_split(record):
        return not config.split or record.get("split") == config.split

    records = sorted((r for r in keysteps if r.get("last") and in_split(r)), key=lambda r: r["task_id"])
    starts = []
    for r in records:
        task = tasks_by_id[r["task_id"]]
        if config.rl_start == "question":
            starts.append(StartState(task, [], 1, None, None, "question"))
        else:
            starts.append(StartState(task, [step_from_dict(s) for s in r["prefix"]], r["k"],
                                     step_from_dict(r["teacher_step"]), step_from_dict(r["wrong_step"]), "keystep"))
    seen = {r["task_id"] for r in records}
    rng = random.Random(config.seed)
    for episode in episodes or []:
        if episode["task_id"] in seen or not in_split(episode):
            continue
        seen.add(episode["task_id"])
        rate = config.question_only_rate_hard if episode.get("hard") else config.question_only_rate_other
        if rng.random() < rate:
            starts.append(StartState(tasks_by_id[episode["task_id"]], [], 1, None, None, "question_only"))
    return starts
'''},
    {"target": "rl.step_limit", "mistake": "the paper's horizon H only: a key step at k >= H leaves no room to answer",
     "expect": "late key step",
     "source": '''
def step_limit(k, max_steps, steps_after_key):
    return max_steps
'''},
    {"target": "rl.step_limit", "mistake": "k + steps_after_key only: early key steps lose the paper's horizon H",
     "expect": "keeps the paper's horizon",
     "source": '''
def step_limit(k, max_steps, steps_after_key):
    return k + steps_after_key
'''},
    {"target": "mps.assign_split", "mistake": "the rest after the BC share is cut at u < 0.5, not 50/50 of what is left",
     "expect": "50/50",
     "source": '''
def assign_split(task_id, seed, bc_fraction):
    digest = hashlib.sha256(f"{task_id}|{seed}".encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2 ** 64
    if u < bc_fraction:
        return "bc"
    return "sft" if u < 0.5 else "rl"
'''},
    {"target": "mps.assign_split", "mistake": "Python's hash(), salted per process: a resumed phase splits the tasks anew",
     "expect": "same in every process",
     "source": '''
def assign_split(task_id, seed, bc_fraction):
    u = random.Random(hash((task_id, seed))).random()
    if u < bc_fraction:
        return "bc"
    return "sft" if (u - bc_fraction) / (1 - bc_fraction) < 0.5 else "rl"
'''},
]
