"""`python score.py compare`: every arm over seeds, phases shared and never computed twice, resume after
an interruption, the pooled table, and the same table rebuilt from the results files alone.

The arms run with a tiny random student and the reference teacher (as in test_score.py): the scores
mean nothing, the plumbing is what is checked. If these tests fail, a comparison either recomputes
what it could reuse (hours at cpu-full scale), loses or duplicates work after an interruption,
misreports an arm, or cannot be rebuilt from the committed files.
"""
import collections
import io
import dataclasses
import json
import shutil

import pytest

import compare
import score
from config import PHASES
from runs import read_jsonl

SEEDS = (0, 1)
N = 3  # tasks per set and seed: 3 training (BC share 0.4: 1 and 2 of them), 3 test and 3 held-out tasks


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    from conftest import make_tiny_student
    path = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny_student(tokenizer).save(path)
    return str(path)


@pytest.fixture
def heldout(monkeypatch):
    """arith-heldout from environment/tasks.py; where that checkout has none yet, a stand-in with the same
    interface (load_tasks("arith-heldout", "test", n, seed)): arith test tasks of another seed."""
    from environment import tasks
    if "arith-heldout" in tasks.TASK_SETS:
        return
    real = tasks.load_tasks

    def load_tasks(name, split, n=None, seed=0, **kwargs):
        if name != "arith-heldout":
            return real(name, split, n, seed, **kwargs)
        return [dataclasses.replace(t, id="heldout-" + t.id, task_set="arith-heldout")
                for t in real("arith", "test", n, seed + 1000)]

    monkeypatch.setattr(tasks, "load_tasks", load_tasks)
    monkeypatch.setattr(tasks, "TASK_SETS", tasks.TASK_SETS + ("arith-heldout",))


def _args(tiny_dir, runs_dir, *extra):
    return ["compare", "--student", tiny_dir, "--tasks", "arith", "--n", str(N), "--bc-fraction", "0.4",
            "--max-steps", "5", "--max-new-tokens", "6", "--sft-epochs", "1", "--rl-epochs", "1",
            "--group-size", "2", "--runs-dir", str(runs_dir), "--run", "cmp",
            "--seeds", ",".join(map(str, SEEDS)), *extra]


def _count_work(monkeypatch) -> collections.Counter:
    """Count what each run really computes: training phases entered, and evaluations that were not
    already finished (a finished one is only read back)."""
    work = collections.Counter()
    for name in ("phase_bc", "phase_mps", "phase_sft", "phase_rl"):
        def phase(config, run_dir, console, _real=getattr(score, name), _name=name[len("phase_"):]):
            work[run_dir.name, _name] += 1
            return _real(config, run_dir, console)
        monkeypatch.setattr(score, name, phase)
    real_eval = score.phase_eval

    def phase_eval(config, run_dir, console, label="", student_path=""):
        if not (run_dir / "eval" / f"{label or 'base'}.json").exists():
            work[run_dir.name, "eval " + (label or "base")] += 1
        return real_eval(config, run_dir, console, label=label, student_path=student_path)

    monkeypatch.setattr(score, "phase_eval", phase_eval)
    return work


def _interrupt_imitation_eval(monkeypatch, seed: int) -> None:
    """Ctrl-C in the imitation arm of `seed`, after its BC training, with one test episode of its
    evaluation written: the phase is marked done in phases.json but its student is not yet scored."""
    import runs
    real = runs.append_jsonl
    fired = []

    def append_jsonl(path, record):
        real(path, record)
        if not fired and path.parent.parent.name == f"s{seed}-imitation" and path.name == "bc.jsonl" \
                and path.parent.name == "eval":
            fired.append(path)
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "append_jsonl", append_jsonl)


def test_compare_runs_every_arm_reuses_phases_resumes_and_rebuilds_from_results(
        tiny_dir, tmp_path, heldout, monkeypatch, capsys):
    work = _count_work(monkeypatch)
    _interrupt_imitation_eval(monkeypatch, seed=1)
    assert score.main(_args(tiny_dir, tmp_path)) == 130
    assert "interrupted" in capsys.readouterr().out
    home = tmp_path / "cmp"
    assert (home / "results" / "seed-0.jsonl").exists() and not (home / "results" / "seed-1.jsonl").exists()
    assert "bc" in json.loads((home / "s1-imitation" / "phases.json").read_text())  # killed after training
    assert len(read_jsonl(home / "s1-imitation" / "eval" / "bc.jsonl")) == 1

    monkeypatch.undo()  # the same command again, without the interruption
    work_before = collections.Counter(work)
    work = _count_work(monkeypatch)
    assert score.main(_args(tiny_dir, tmp_path)) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"eval [bc]: {N} tasks (1 already done)" in out  # the interrupted evaluation resumed
    for run in ("s0-score", "s0-imitation", "s0-outcome", "s0-question", "s1-score"):
        assert f"seed {run[1]}, {run}: finished" in out
    work.update(work_before)

    for seed in SEEDS:
        s = f"s{seed}-"
        # One main run: the shared evaluation before training and score-sft's BC, MPS and SFT, once.
        for phase in ("eval base", "eval teacher", "mps", "sft"):
            assert work[s + "score", phase] == 1 and all(work[s + r, phase] == 0 for r in ("imitation", "outcome", "question"))
        assert work[s + "score", "bc"] == 1
        # imitation trains its own BC (entered again only to finish the interrupted evaluation: its
        # training was restored, not redone, so every BC update is logged once).
        assert work[s + "imitation", "bc"] == (2 if seed == 1 else 1)
        updates = [m["sft/update"] for m in read_jsonl(home / (s + "imitation") / "metrics.jsonl") if m.get("label") == "bc"]
        assert updates == sorted(set(updates)) and updates
        # score's RL, and each RL ablation's own RL from the shared SFT student
        for run in ("score", "outcome", "question"):
            assert work[s + run, "rl"] == 1
        for run in ("outcome", "question"):
            phases = json.loads((home / (s + run) / "phases.json").read_text())
            assert all(phases[p]["copied_from"] == s + "score" for p in ("eval", "bc", "mps", "sft"))
            assert "copied_from" not in phases["rl"]
        base = read_jsonl(home / (s + "score") / "eval" / "base.jsonl")
        assert read_jsonl(home / (s + "imitation") / "eval" / "base.jsonl") == base  # the same base evaluation
        # every evaluation holds each test task once: nothing lost, nothing duplicated (a held-out
        # evaluation holds N tasks of each held-out set: arith-heldout and arith-reworded)
        for path in home.glob(s + "*/eval/*.jsonl"):
            ids = [r["task_id"] for r in read_jsonl(path)]
            assert len(ids) == len(set(ids)) == N * (2 if path.name.startswith("heldout-") else 1), path
        # one results line per arm, with per-task scores on the test split and the held-out set
        lines = {r["arm"]: r for r in read_jsonl(home / "results" / f"seed-{seed}.jsonl")}
        assert list(lines) == list(compare.ARMS)
        for arm, line in lines.items():
            assert set(line["scores"]) == {"arith", "arith-heldout", "arith-reworded"} and line["seed"] == seed
            assert all(len(line["scores"][t]) == N for t in line["scores"])
            assert line["run"] == s + compare.ARMS[arm].run
        bc_records = read_jsonl(home / (s + "imitation") / "bc.jsonl")
        assert lines["imitation"]["teacher_calls"] == len(bc_records) == N  # imitation: BC on every training task
        share = read_jsonl(home / (s + "score") / "bc.jsonl")
        mps = json.loads((home / (s + "score") / "phases.json").read_text())["mps"]
        assert len(share) < N  # SCoRe: the teacher solves only the BC share, then corrects MPS episodes
        assert lines["score-sft"]["teacher_calls"] == len(share) + mps["teacher_calls"] == lines["score"]["teacher_calls"]
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
        tokens = lambda steps: sum(len(tokenizer(step["content"], add_special_tokens=False)["input_ids"]) for step in steps)
        assert lines["imitation"]["teacher_tokens"] == tokens(step for r in bc_records for step in r["steps"])
        corrections = [c["teacher_step"] for r in read_jsonl(home / (s + "score") / "mps.jsonl")
                       for c in r["corrections"] if c.get("teacher_step")]
        assert lines["score-sft"]["teacher_tokens"] == tokens(step for r in share for step in r["steps"]) + tokens(corrections)
        assert lines["imitation"]["tokens_counted_by"] == "student tokenizer"

    text = (home / "compare.md").read_text()
    score_rows = [line for line in text.split("## Score per arm")[1].split("##")[0].splitlines() if line.startswith("| ")]
    assert score_rows[0] == "| arm | arith | arith-heldout | arith-reworded |"  # test split first, then the held-out family
    assert [r.split(" | ")[0].lstrip("| ") for r in score_rows[1:]] == list(compare.ARMS)
    assert all(r.count(f"n={N * len(SEEDS)}") == 3 for r in score_rows[1:])  # pooled over both seeds, 3 sets
    changes = text.split("## Against imitation")[1].split("##")[0]
    assert changes.count(f" of {N * len(SEEDS)} (p=") == 3 * (len(compare.ARMS) - 1)
    cost = text.split("## Cost")[1]
    assert f"| imitation | after BC | 0, 1 | {N} |" in cost
    assert (home / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The table again, from the results files alone (as committed under bench/results/)
    committed = tmp_path / "bench" / "results" / "tiny"
    shutil.copytree(home / "results", committed)
    shutil.rmtree(home)
    assert score.main(["compare", "--from", str(committed)]) == 0
    assert (committed / "compare.md").read_text() == text
    assert score.main(["compare", "--from", str(committed / "seed-0.jsonl"), "--arms", "imitation,score"]) == 0
    only = (committed / "compare.md").read_text()
    assert "| score |" in only and "| outcome |" not in only and f"n={N} " in only


@pytest.mark.parametrize("argv,needle", [
    (["--arms", "imitation,scores"], "unknown arm 'scores' in --arms: choose from imitation, score-sft, score, outcome, question"),
    (["--arms", ""], "--arms is empty"),
    (["--seeds", ""], "--seeds is empty"),
    (["--seeds", "0,x"], "--seeds '0,x': 'x' is not a seed"),
    (["--seeds", "0,,1"], "--seeds '0,,1' has an empty item"),
    (["--seeds", "1,1"], "--seeds '1,1' names 1 twice"),
    (["--seeds", "-1"], "'-1' is not a seed"),
    (["--teacher-knowledge", "1.5"], "--teacher-knowledge 1.5 is outside [0, 1]"),
    (["--teacher-knowledge", "-0.1"], "--teacher-knowledge -0.1 is outside [0, 1]"),
    (["--seed", "3"], "compare sets --seed itself"),
    (["--reward", "outcome"], "compare sets --reward itself"),
    (["--from", "/nowhere/results"], "--from /nowhere/results: no such file or directory"),
    (["--from", "RUNS", "--n", "4"], "--from rebuilds the table from results files alone: drop --n 4"),
    (["eval"], "compare runs every phase itself: drop 'eval'"),
])
def test_bad_input_is_one_line(argv, needle, tmp_path, capsys):
    """Each ends with one clear line and exit code 2, before anything is written."""
    if "--from" in argv:
        argv = [str(tmp_path) if a == "RUNS" else a for a in argv]
    else:
        argv = [*argv, "--runs-dir", str(tmp_path)]
    assert score.main(["compare", *argv]) == 2
    out = capsys.readouterr().out
    assert needle in " ".join(out.split()) and out.count("error:") == 1 and "Traceback" not in out
    assert list(tmp_path.iterdir()) == []


def test_teacher_knowledge_out_of_range_in_the_loop_too(tmp_path, capsys):
    assert score.main(["eval", "--teacher-knowledge", "2", "--runs-dir", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "--teacher-knowledge 2 is outside [0, 1]" in " ".join(out.split()) and out.count("error:") == 1
    assert list(tmp_path.iterdir()) == []


def test_plan_of_a_seed():
    """The main run goes as far as the arms need; every other run branches from it."""
    plan = compare.plan_seed(("imitation", "score-sft"))
    assert plan.phases == {"score": ("eval", "bc", "mps", "sft"), "imitation": ("eval", "bc")}
    assert plan.source == {"imitation": "score"}
    plan = compare.plan_seed(("question",))
    assert plan.phases == {"score": ("eval", "bc", "mps", "sft"), "question": PHASES}
    assert compare.plan_seed(("imitation",)) == compare.Plan({"imitation": ("eval", "bc")}, {})
    assert compare.plan_seed(tuple(compare.ARMS)).phases["score"] == PHASES


def test_pooled_tables_from_hand_written_lines():
    """Scores pooled over seeds with n and a Wilson interval; pairs matched by (seed, task); costs are
    means over seeds."""
    def line(arm, seed, scores, calls):
        return {"compare": "h", "comparison": "c", "seed": seed, "arm": arm, "label": "bc", "skipped": [],
                "scores": {"arith": scores}, "heldout_sets": [], "teacher_calls": calls, "teacher_tokens": 10 * calls,
                "tokens_counted_by": "student tokenizer", "wall_s": 60.0, "rl_start_states": None}
    lines = [line("imitation", 0, {"a": 1.0, "b": 0.0}, 4), line("imitation", 1, {"a": 0.0, "b": 0.0}, 6),
             line("score", 0, {"a": 1.0, "b": 1.0}, 2), line("score", 1, {"a": 1.0, "b": 1.0}, 3)]
    tables = compare.pooled_tables(lines)
    assert tables["scores"][1] == [["imitation", "0.25 [0.05, 0.70] n=4"], ["score", "1.00 [0.51, 1.00] n=4"]]
    assert tables["changes"][1] == [["score", "+3 -0 of 4 (p=0.25)"]]  # seed 1's "a" and both "b" rose
    assert tables["cost"][1][0][3:5] == ["5", "50"] and tables["cost"][1][1][3:5] == ["2.5", "25"]


def test_a_comparison_run_in_pieces_tables_every_arm_run_so_far(tmp_path, monkeypatch):
    """`compare --arms outcome,question` after `--arms imitation,score`: compare.md covers every arm of
    the comparison's results, so the ablations are still paired with imitation."""
    directory = tmp_path / "cmp"
    earlier = [{"compare": "h", "comparison": "cmp", "seed": 0, "arm": arm, "label": "bc", "skipped": [],
                "scores": {"arith": {"a": float(arm != "imitation"), "b": 0.0}}, "heldout_sets": [],
                "teacher_calls": 1, "teacher_tokens": 10, "tokens_counted_by": "student tokenizer", "wall_s": 60.0,
                "rl_start_states": None, "options": compare.shared_options(compare.parse_args([]))}
               for arm in ("imitation", "score", "outcome")]
    (directory / "results").mkdir(parents=True)
    (directory / "results" / "seed-0.jsonl").write_text("".join(json.dumps(line) + "\n" for line in earlier))
    monkeypatch.setattr(compare, "run_seed", lambda *args: None)  # the arms asked for are found finished
    monkeypatch.setattr(compare, "open_compare", lambda *args: None)
    request = compare.parse_request(["--seeds", "0", "--arms", "outcome", "--run", "cmp", "--runs-dir", str(tmp_path)])
    from rich.console import Console
    assert compare.run_compare(request, Console(file=io.StringIO())) == 0
    text = (directory / "compare.md").read_text()
    assert "| imitation |" in text and "| score |" in text and "| outcome | +1 -0 of 2" in text


def test_a_remedy_branches_from_another_comparison(tiny_dir, tmp_path, monkeypatch, capsys):
    """`--branch-from` a finished comparison: a remedy that changes only SCoRe-SFT (here
    --sft-replay-bc) copies the main run's evaluation, BC and MPS and trains only SFT, and imitation
    is copied whole, so the remedy costs one SFT phase and the pairs are the same tasks."""
    base = ["compare", "--student", tiny_dir, "--tasks", "arith", "--n", str(N), "--bc-fraction", "0.4",
            "--max-steps", "5", "--max-new-tokens", "6", "--sft-epochs", "1", "--runs-dir", str(tmp_path),
            "--seeds", "0", "--arms", "imitation,score-sft", "--keep-correct-rate", "1"]
    assert score.main([*base, "--run", "first"]) == 0
    work = _count_work(monkeypatch)
    trained = []
    import sft
    real = sft.train_sft

    def train_sft(student, records, *args, **kwargs):
        trained.append(len(records))
        return real(student, records, *args, **kwargs)

    monkeypatch.setattr(sft, "train_sft", train_sft)
    assert score.main([*base, "--run", "remedy", "--sft-replay-bc", "--branch-from", str(tmp_path / "first")]) == 0
    capsys.readouterr()
    assert {key for key, count in work.items() if count} == {
        ("s0-score", "sft"), ("s0-score", "eval sft"), ("s0-score", "eval heldout-sft")}  # and nothing else
    first, remedy = tmp_path / "first" / "s0-score", tmp_path / "remedy" / "s0-score"
    phases = json.loads((remedy / "phases.json").read_text())
    assert all(phases[p]["copied_from"] == "s0-score" for p in ("eval", "bc", "mps"))
    assert "copied_from" not in phases["sft"]
    replayed = [r for r in read_jsonl(first / "bc.jsonl") if r["correct"]]
    assert replayed and trained == [len(read_jsonl(first / "sft.jsonl")) + len(replayed)]
    imitation = json.loads((tmp_path / "remedy" / "s0-imitation" / "phases.json").read_text())
    assert all(imitation[p]["copied_from"] == "s0-imitation" for p in ("eval", "bc"))
    lines = {r["arm"]: r for r in read_jsonl(tmp_path / "remedy" / "results" / "seed-0.jsonl")}
    assert lines["imitation"]["scores"] == {r["arm"]: r for r in read_jsonl(
        tmp_path / "first" / "results" / "seed-0.jsonl")}["imitation"]["scores"]


def test_branch_from_must_be_a_comparison(tmp_path, capsys):
    assert score.main(["compare", "--branch-from", str(tmp_path / "none"), "--runs-dir", str(tmp_path)]) == 2
    assert "no comparison there (no compare.json)" in " ".join(capsys.readouterr().out.split())


def test_results_pool_across_an_added_option_but_not_across_a_changed_one(tmp_path):
    """Seeds pool when their shared options agree; an option missing from an older line counts as its
    default (results written before it existed), and a real difference is refused in one line."""
    def write(name, **options):
        line = {"compare": name, "seed": len(list(tmp_path.glob("*.jsonl"))), "arm": "imitation",
                "options": {"n": 20, "teacher_knowledge": 0.25, **options}}
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(line) + "\n")
    write("old")  # before --mps-tasks existed
    write("new", mps_tasks="rest")
    assert len(compare.read_results([tmp_path])) == 2
    write("other", mps_tasks="all")
    with pytest.raises(compare.ConfigError, match="mps_tasks differ"):
        compare.read_results([tmp_path])
