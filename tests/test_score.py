"""The command line: config, presets, resume rules, and `score.py eval` on a tiny saved student."""
import collections
import dataclasses
import json

import pytest

import report
import score
from config import (KEY_STEPS_PER_TASK, reusable_phases, run_name, KNOWLEDGE, OPERATIONAL, PHASES, RL_STARTS_PER_TASK, Config, budget, hardware,
                    load_tasks_for, parse_args, phase_config, print_budget)
from runs import read_jsonl


@pytest.fixture
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny random student saved in Hugging Face format, as a checkpoint would be."""
    from conftest import make_tiny_student
    student = make_tiny_student(tokenizer)
    path = tmp_path_factory.mktemp("tiny")
    student.save(path / "model")
    return str(path / "model")


def _eval_args(tiny_dir, runs, *extra):
    return ["eval", "--student", tiny_dir, "--tasks", "arith,lookup", "--n", "2", "--runs-dir", str(runs),
            "--max-steps", "2", "--max-new-tokens", "6", "--run", "t", *extra]


def test_presets_fill_unset_fields_only():
    """Fields left at None take the preset's value; an explicit value wins."""
    config = parse_args(["--preset", "cpu", "--max-steps", "3"])
    assert config.max_steps == 3 and config.max_new_tokens == 96 and config.eval_temperature == 0.0
    assert parse_args(["--preset", "gpu"]).max_context_tokens == 8192
    assert parse_args(["eval"]).phases == "eval"


def test_eval_writes_records_and_summary_and_resumes(tiny_dir, tmp_path, capsys):
    """eval writes one graded trajectory per task and a summary with n and a 95% interval; re-running
    the same command finds every task done, duplicates nothing and keeps the summary (with the wall
    time the evaluation took, not the ~0 s of finding it done)."""
    assert score.main(_eval_args(tiny_dir, tmp_path)) == 0
    records = read_jsonl(tmp_path / "t" / "eval" / "base.jsonl")
    assert sorted(r["task_set"] for r in records) == ["arith", "arith", "lookup", "lookup"]
    assert all(len(r["steps"]) <= 2 and r["split"] == "test" for r in records)
    summary = json.loads((tmp_path / "t" / "eval" / "base.json").read_text())
    assert summary["task_sets"]["arith"]["n"] == 2 and len(summary["task_sets"]["lookup"]["ci95"]) == 2
    assert score.main(_eval_args(tiny_dir, tmp_path)) == 0
    assert "4 already done" in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "t" / "eval" / "base.jsonl")) == 4
    assert json.loads((tmp_path / "t" / "eval" / "base.json").read_text()) == summary


def test_resume_with_changed_settings_is_refused(tiny_dir, tmp_path, capsys):
    """A result-affecting change on resume stops with one line naming it; an operational one is fine."""
    assert score.main(_eval_args(tiny_dir, tmp_path)) == 0
    assert score.main(_eval_args(tiny_dir, tmp_path, "--seed", "3")) == 2
    out = capsys.readouterr().out
    assert "seed: 0 -> 3" in out and "Traceback" not in out
    assert score.main(_eval_args(tiny_dir, tmp_path, "--threads", "1")) == 0


@pytest.mark.parametrize("argv,needle", [
    (["eval", "--student", "no-such-preset"], "unknown student"),
    (["eval", "--tasks", "no-such-set"], "no-such-set"),
    (["eval", "--device", "cuda"], "CUDA"),
    (["eval", "--student", "/nowhere/model.gguf"], "student GGUF file not found: /nowhere/model.gguf"),
    (["eval", "--tasks", "BAD_JSONL"], "bad.jsonl:2: not valid JSON"),
    (["bc", "--teacher", "/nowhere/teacher.gguf", "--n", "1"], "/nowhere/teacher.gguf"),
])
def test_user_errors_are_one_line(argv, needle, tmp_path, capsys, monkeypatch):
    """Mistakes a user can make end with one clear line and exit code 2, not a traceback."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bad = tmp_path / "bad.jsonl"  # a malformed task file: its second line is not JSON
    bad.write_text('{"id": "a", "question": "1+1?", "answer": "2"}\n{"id": "b", "question": \n')
    argv = [str(bad) if a == "BAD_JSONL" else a for a in argv]
    assert score.main(argv + ["--runs-dir", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert needle in " ".join(out.split()) and "Traceback" not in out and out.count("error:") == 1


def test_interval95():
    """Wilson interval for 0/1 scores; it stays inside [0, 1] and contains the mean."""
    mean, low, high = report.interval95([1.0] * 8 + [0.0] * 8)
    assert mean == 0.5 and 0.27 < low < 0.3 and 0.7 < high < 0.73
    assert report.interval95([0.0] * 16)[1:] == (0.0, pytest.approx(0.194, abs=0.002))


def test_phases_bc_mps_sft_chain(tiny_dir, tmp_path, capsys):
    """The loop's chain of weights and records with a tiny student and the reference teacher: bc writes the
    teacher's trajectories and trains checkpoints/bc, which is evaluated; mps rolls out from it and writes
    mps.jsonl / sft.jsonl / keysteps.jsonl; sft, with nothing correct to learn from, says it is skipped.
    Re-running the same command redoes nothing."""
    args = ["--student", tiny_dir, "--n", "3", "--runs-dir", str(tmp_path), "--run", "loop", "--bc-fraction", "0.5",
            "--max-steps", "5", "--max-new-tokens", "6", "--sft-epochs", "1", "--rl-epochs", "1", "--phases", "bc,mps,sft,rl"]
    assert score.main(args) == 0
    run = tmp_path / "loop"
    bc = read_jsonl(run / "bc.jsonl")
    assert bc and all(r["correct"] and r["split"] == "bc" for r in bc)  # the reference teacher is an oracle
    assert (run / "checkpoints" / "bc" / "config.json").exists() and (run / "eval" / "bc.json").exists()
    phases = json.loads((run / "phases.json").read_text())
    assert phases["bc"]["trained"] and phases["mps"]["episodes"] == len(read_jsonl(run / "mps.jsonl"))
    assert {r["split"] for r in read_jsonl(run / "mps.jsonl")} <= {"sft", "rl"}
    assert {r["task_id"] for r in bc}.isdisjoint({r["task_id"] for r in read_jsonl(run / "mps.jsonl")})
    assert (run / "keysteps.jsonl").exists() and (run / "mps_diagnostics.json").exists()
    out = capsys.readouterr().out
    assert "sft: skipped: 0 examples" in out or phases["sft"]["trained"]
    assert "rl" in phases  # with no key step, RL has only question-only starts (or nothing) but finishes
    assert score.main(args) == 0
    assert "0 already done" not in capsys.readouterr().out.split("mps:")[1].split("\n")[0]
    phases = json.loads((run / "phases.json").read_text())
    assert all(phases[p]["wall_s"] > 0 for p in ("bc", "mps", "sft", "rl"))  # costs for the report
    assert phases["bc"]["teacher_calls"] == len(bc) and phases["mps"]["teacher_calls"] >= 0
    assert (run / "report.md").exists() and "after BC" in (run / "report.md").read_text()

    # --init-from: an RL ablation shares bc, mps and sft with the run above and recomputes only rl
    ablation = args[:args.index("--run")] + ["--run", "ablation", "--init-from", "loop", "--reward", "outcome",
                                             *args[args.index("--run") + 2:]]
    assert score.main(ablation) == 0
    out = capsys.readouterr().out
    assert "copied finished phases bc, mps, sft (changed: reward)" in out
    branched = json.loads((tmp_path / "ablation" / "phases.json").read_text())
    assert branched["mps"]["copied_from"] == "loop" and "copied_from" not in branched["rl"]
    assert read_jsonl(tmp_path / "ablation" / "mps.jsonl") == read_jsonl(run / "mps.jsonl")


def test_budget_table_is_printed_at_start(tiny_dir, tmp_path, capsys):
    config = parse_args(["--n", "20"])
    rows = {phase: (work, minutes) for phase, work, minutes in budget(config)}
    assert list(rows) == list(PHASES) and all(m is not None and m > 0 for _, m in rows.values())
    assert "18 tasks" in rows["bc"][0]  # the hash split's share of 40 training tasks at bc_fraction 0.5
    imitation = parse_args(["--method", "imitation"])
    assert [p for p, _, _ in budget(imitation)] == ["eval", "bc"]
    assert score.main(_eval_args(tiny_dir, tmp_path)) == 0
    assert "budget: preset" in capsys.readouterr().out
    # A resumed or branched run: finished phases say so and count nothing in the total
    import io
    from rich.console import Console
    console = Console(file=io.StringIO(), width=200)
    print_budget(config, console, {"eval": {"wall_s": 1.0}, "bc": {"copied_from": "main-run"}})
    lines = {line.split("│")[1].strip(): line for line in console.file.getvalue().splitlines() if line.count("│") > 2}
    assert "done" in lines["eval"] and "done (copied from main-run)" in lines["bc"]
    assert lines["all"].split("│")[3].strip() == f"{sum(rows[p][1] for p in ('mps', 'sft', 'rl')):.0f}"


def test_cpu_phase_that_would_not_fit_in_memory_is_refused(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("config.available_memory_gb", lambda: 0.25)  # where check_memory looks it up
    assert score.main(_eval_args(tiny_dir, tmp_path)) == 2
    out = capsys.readouterr().out
    assert "needs about" in out and "GB is free" in out and out.count("error:") == 1
    assert not (tmp_path / "t" / "eval" / "base.jsonl").exists()  # refused before it started


def test_cuda_out_of_memory_ends_with_a_hint(tiny_dir, tmp_path, capsys, monkeypatch):
    """The error is injected: the phase raises what torch raises when a CUDA allocation fails."""
    import torch

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(score, "phase_eval", out_of_memory)
    assert score.main(_eval_args(tiny_dir, tmp_path)) == 2
    out = capsys.readouterr().out
    assert "CUDA out of memory" in out and "--eval-batch-size" in out and "Traceback" not in out


def test_unknown_preset_and_missing_init_from_are_one_line(tmp_path, capsys):
    assert score.main(["eval", "--preset", "huge", "--runs-dir", str(tmp_path)]) == 2
    assert score.main(["eval", "--init-from", "nowhere", "--runs-dir", str(tmp_path), "--n", "1"]) == 2
    out = capsys.readouterr().out
    assert "unknown --preset 'huge'" in out and "--init-from nowhere: no run there" in out
    assert out.count("error:") == 2 and "Traceback" not in out


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all("--" + f.name.replace("_", "-") in out for f in dataclasses.fields(Config))


def test_cpu_full_preset_is_the_cpu_preset_scaled_up():
    quick, full = parse_args([]), parse_args(["--preset", "cpu-full"])
    assert (quick.preset, quick.n, quick.n_train, quick.rl_epochs, quick.rl_updates) == ("cpu", 20, None, 3, 5)
    assert (full.n, full.n_train, full.bc_fraction, full.rl_epochs, full.rl_updates) == (80, 250, 0.16, 2, None)
    assert hardware(full) == "cpu" and full.max_steps == quick.max_steps
    assert phase_config(full, "sft") == phase_config(quick, "sft")  # the same training presets, more data
    small = parse_args(["--preset", "cpu-full", "--n", "5"])  # an explicit --n wins, for training too
    assert small.n == 5 and small.n_train is None
    assert {t.id for t in load_tasks_for(small, "train")} != set()
    assert len(load_tasks_for(small, "train")) == len(load_tasks_for(small, "test")) == 10


def test_cpu_full_gives_rl_enough_key_steps_in_two_hours():
    """cpu-full is sized so that RL sees at least 60 distinct key-step start states, each at most
    twice, within 2 hours here; the default stays within 20 minutes. The key steps are estimated from
    the measured yield (config.KEY_STEPS_PER_TASK: 0.35 per RL-half MPS episode) on the RL half the
    hash split really makes of the training tasks, for each of three seeds."""
    import collections
    from mps import assign_split
    from config import TRAINING_PRESETS
    from training import start_batches
    for seed in (0, 1, 2):
        full = parse_args(["--preset", "cpu-full", "--seed", str(seed)])
        train, test = load_tasks_for(full, "train"), load_tasks_for(full, "test")
        assert (len(train), len(test)) == (500, 160) and not {t.id for t in train} & {t.id for t in test}
        splits = collections.Counter(assign_split(t.id, seed, full.bc_fraction) for t in train)
        assert 60 <= splits["bc"] <= 100  # the BC warm start keeps the size it had at n = 80 (79 trajectories)
        assert splits["rl"] * KEY_STEPS_PER_TASK >= 70  # ~73 expected: 60 with a margin
    starts = round(splits["rl"] * RL_STARTS_PER_TASK)  # key steps and question-only starts
    plan = start_batches(starts, dataclasses.replace(TRAINING_PRESETS["cpu"]["rl"], epochs=full.rl_epochs,
                                                     num_updates=full.rl_updates))
    seen = collections.Counter(i for update in plan for i in update)
    assert len(seen) == starts and set(seen.values()) == {2}  # every start state, twice
    minutes = lambda config: sum(m for _, _, m in budget(config))
    assert minutes(full) <= 120 and minutes(parse_args([])) <= 20


def test_whole_loop_through_llama_cpp(tiny_dir, tmp_path, capsys):
    """`python score.py --teacher smol-135m-q4`: the same loop with the SmolLM2 GGUF teacher through
    llama.cpp (a tiny student, one task per set). The 135M teacher is too small to be right, so this checks
    the plumbing, not the scores: every phase finishes, the teacher is evaluated and asked, the report
    is written."""
    args = ["--student", tiny_dir, "--teacher", "smol-135m-q4", "--n", "1", "--runs-dir", str(tmp_path),
            "--run", "gguf", "--max-steps", "2", "--max-new-tokens", "24", "--sft-epochs", "1", "--rl-epochs", "1"]
    assert score.main(args) == 0
    run = tmp_path / "gguf"
    phases = json.loads((run / "phases.json").read_text())
    assert set(phases) >= {"eval", "bc", "mps", "sft", "rl"}
    assert phases["eval"]["teacher_calls"] >= 2  # the teacher's own evaluation: one task per set, >= 1 call each
    assert phases["bc"]["teacher_calls"] >= phases["bc"]["tasks"] == len(read_jsonl(run / "bc.jsonl")) >= 1
    assert len(read_jsonl(run / "eval" / "teacher.jsonl")) == 2
    assert (run / "report.md").exists() and "teacher" in (run / "report.md").read_text()
    out = capsys.readouterr().out
    assert "smol-135m-q4" in out


class RecordingTeacher:
    """Stands in for environment.reference_teacher.ReferenceTeacher with the knowledge keyword (its
    arguments are recorded; knowledge None = not passed)."""
    made: list = []

    def __init__(self, tasks=(), seed=0, knowledge=None, repeats_are_errors=False, show_work=False):
        RecordingTeacher.made.append({"seed": seed, "knowledge": knowledge, "repeats": repeats_are_errors,
                                      "show_work": show_work})


def test_teacher_knowledge_reaches_the_reference_teacher_and_counts_from_bc(tmp_path, monkeypatch):
    """--teacher-knowledge P goes to ReferenceTeacher(tasks, seed=..., knowledge=P), the one teacher
    that writes BC trajectories and MPS steps; P = 0 keeps today's call. P is in the config hash,
    and an --init-from branch that changes only P reuses the evaluation before training, nothing more."""
    import io
    import environment.reference_teacher as reference_teacher
    from rich.console import Console
    from runs import open_run
    monkeypatch.setattr(reference_teacher, "ReferenceTeacher", RecordingTeacher)
    monkeypatch.setattr(score, "OPENED_TEACHERS", [])  # the stand-ins must not reach later tests' cost counts
    RecordingTeacher.made.clear()
    console = Console(file=io.StringIO())
    knowing = parse_args(["--teacher-knowledge", "0.3", "--seed", "2"])
    score.open_teacher(knowing, tmp_path, [], console)
    assert RecordingTeacher.made[-1] == {"seed": 2, "knowledge": 0.3, "repeats": False, "show_work": False}
    score.open_teacher(parse_args(["--repeats-are-errors"]), tmp_path, [], console)
    assert RecordingTeacher.made[-1]["repeats"] is True
    score.open_teacher(parse_args(["--corrections-show-work"]), tmp_path, [], console)
    assert RecordingTeacher.made[-1]["show_work"] is True
    assert parse_args([]).teacher_knowledge == KNOWLEDGE  # the reference teacher's default
    assert parse_args(["--teacher", "smol-135m-q4"]).teacher_knowledge == 0.0  # an LLM knows its own
    plain = parse_args(["--teacher-knowledge", "0"])
    score.open_teacher(plain, tmp_path, [], console)  # through make_teacher, as before
    assert RecordingTeacher.made[-1]["knowledge"] in (None, 0.0)  # not passed, or passed as 0
    assert run_name(parse_args(["--teacher-knowledge", "0.3"])) != run_name(plain)
    open_run(tmp_path / "source", plain, OPERATIONAL)
    assert reusable_phases(parse_args(["--teacher-knowledge", "0.5"]), tmp_path / "source") == \
        (["eval"], ["teacher_knowledge"])
    assert reusable_phases(parse_args(["--n-train", "7"]), tmp_path / "source")[0] == ["eval"]


@pytest.mark.parametrize("argv,needle", [
    (["--teacher-knowledge", "0.5", "--teacher", "smol-135m-q4"], "--teacher-knowledge is the reference teacher's"),
    (["--teacher-knowledge", "nan"], "--teacher-knowledge nan: give a finite number"),
    (["--n-train", "0"], "--n-train 0: give at least 1"),
    (["--sandbox", "docker"], "unknown --sandbox 'docker'"),
])
def test_knowledge_and_training_size_errors_are_one_line(argv, needle, tmp_path, capsys):
    assert score.main(["eval", *argv, "--runs-dir", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert needle in " ".join(out.split()) and out.count("error:") == 1 and list(tmp_path.iterdir()) == []


def test_split_jsonl_reaches_the_task_loader(monkeypatch):
    """Breaks: --split-jsonl being dropped on the way to environment/tasks.py (a file without split fields
    would then be refused for training although the user asked to split it)."""
    from environment import tasks
    calls = []
    monkeypatch.setattr(tasks, "load_tasks", lambda name, split, n=None, seed=0, split_jsonl=False:
                        calls.append((name, split, n, split_jsonl)) or [])
    load_tasks_for(parse_args(["--tasks", "a.jsonl", "--split-jsonl", "--n", "4", "--n-train", "9"]), "train")
    load_tasks_for(parse_args(["--tasks", "a.jsonl", "--n", "4"]), "test")
    assert calls == [("a.jsonl", "train", 9, True), ("a.jsonl", "test", 4, False)]
    assert parse_args(["--split-jsonl"]).split_jsonl and not parse_args([]).split_jsonl


def test_branch_links_checkpoints_and_marks_phases_last(tmp_path):
    """--init-from: checkpoint files are hard links (one copy of the weights on disk), records are
    copies (a resumed run appends to them), and phases.json is written once everything is copied."""
    import os
    from runs import branch_run, write_json_atomic
    source, target = tmp_path / "source", tmp_path / "target"
    (source / "checkpoints" / "bc" / "checkpoint").mkdir(parents=True)
    (source / "checkpoints" / "bc" / "model.safetensors").write_bytes(b"weights")
    (source / "checkpoints" / "bc" / "checkpoint" / "state.json").write_text("{}")
    (source / "bc.jsonl").write_text('{"task_id": "a"}\n')
    (source / "metrics.jsonl").write_text('{"label": "bc", "sft/update": 1}\n{"label": "sft", "sft/update": 1}\n')
    write_json_atomic(source / "phases.json", {"bc": {"trained": True, "wall_s": 5.0}, "sft": {"trained": True}})
    assert branch_run(source, target, ["eval", "bc"]) == ["bc"]
    linked = target / "checkpoints" / "bc" / "model.safetensors"
    assert os.stat(linked).st_ino == os.stat(source / "checkpoints" / "bc" / "model.safetensors").st_ino
    assert os.stat(target / "bc.jsonl").st_ino != os.stat(source / "bc.jsonl").st_ino
    assert json.loads((target / "phases.json").read_text()) == {"bc": {"trained": True, "wall_s": 5.0,
                                                                       "copied_from": "source"}}
    assert read_jsonl(target / "metrics.jsonl") == [{"label": "bc", "sft/update": 1}]
    assert branch_run(source, target, ["eval", "bc"]) == ["bc"]  # branching again (after a kill) duplicates nothing
    assert read_jsonl(target / "metrics.jsonl") == [{"label": "bc", "sft/update": 1}]


def test_sandbox_option_reaches_every_episode_sandbox():
    """Breaks: --sandbox limits (to compare isolation costs, or where namespaces misbehave) being
    ignored, or the mode printed at start disagreeing with the one the episodes get."""
    from tools import describe_isolation
    config = parse_args(["--sandbox", "limits"])
    with score.make_sandbox(config)(None) as box:
        assert box.mode == "limits"
    assert describe_isolation("limits").startswith("sandbox: limits (")



def test_mps_on_every_task_splits_them_by_their_own_hash():
    """--mps-tasks all: MPS rolls out the BC share too, split 50/50 into SFT and RL by a hash of its
    own, so neither half is the BC share; with --bc-fraction 1 it is SCoRe after full imitation."""
    from config import load_tasks_for, mps_splits
    from mps import assign_split
    rest = parse_args(["--n", "40"])
    every = parse_args(["--n", "40", "--mps-tasks", "all", "--bc-fraction", "1"])
    tasks = load_tasks_for(rest, "train")
    assert mps_splits(rest, tasks) == {t.id: assign_split(t.id, rest.seed, rest.bc_fraction) for t in tasks}
    splits = mps_splits(every, tasks)
    halves = collections.Counter(splits.values())
    assert set(halves) == {"sft", "rl"} and min(halves.values()) >= 0.3 * len(tasks)
    in_bc = [t for t in tasks if assign_split(t.id, rest.seed, rest.bc_fraction) == "bc"]
    assert {splits[t.id] for t in in_bc} == {"sft", "rl"}  # the BC share lands in both halves
    rows = {phase: what for phase, what, _ in budget(every)}
    assert rows["mps"].startswith(f"{len(tasks)} tasks") and f"teacher solves {len(tasks)} tasks" in rows["bc"]


@pytest.mark.parametrize("tasks_flag", [["--mps-tasks", "all", "--bc-fraction", "1"], []])
def test_per_set_split_gives_each_half_each_sets_share(tasks_flag):
    """--mps-split per-set rolls out the same tasks as the hash split, but each half holds each task
    set's share to one task; the hash split of seed 1 is far from that (11 arith / 5 lookup in SFT)."""
    from config import load_tasks_for, mps_splits
    hashed = parse_args(["--n", "20", "--seed", "1", *tasks_flag])
    per_set = parse_args(["--n", "20", "--seed", "1", "--mps-split", "per-set", *tasks_flag])
    tasks = load_tasks_for(hashed, "train")
    by_hash, by_set = mps_splits(hashed, tasks), mps_splits(per_set, tasks)
    assert {i for i, s in by_hash.items() if s == "bc"} == {i for i, s in by_set.items() if s == "bc"}
    count = lambda splits, name, half: sum(splits[t.id] == half for t in tasks if t.task_set == name)
    for name in ("arith", "lookup"):
        assert abs(count(by_set, name, "sft") - count(by_set, name, "rl")) <= 1
    assert by_set == mps_splits(per_set, list(reversed(tasks)))  # the order tasks come in does not matter
    if tasks_flag:
        assert (count(by_hash, "arith", "sft"), count(by_hash, "lookup", "sft")) == (11, 5)


def test_imitation_reuses_bc_whatever_the_bc_share(tmp_path):
    """--bc-fraction only splits SCoRe's tasks: an imitation run trains on all of them, so a branch
    that changes only the share copies its BC instead of training it again."""
    source = tmp_path / "source"
    source.mkdir()
    saved = dataclasses.asdict(parse_args(["--method", "imitation", "--bc-fraction", "0.5"]))
    (source / "config.json").write_text(json.dumps(saved))
    assert reusable_phases(parse_args(["--method", "imitation", "--bc-fraction", "0.8"]), source)[0] == \
        ["eval", "bc", "mps", "sft", "rl"]
    assert reusable_phases(parse_args(["--bc-fraction", "0.8"]), source)[0] == ["eval"]  # SCoRe: BC changes
    # SCoRe with --bc-fraction 1 trains BC on every task too: the same BC as imitation's, both ways.
    full = parse_args(["--bc-fraction", "1", "--mps-tasks", "all"])
    assert reusable_phases(full, source)[0] == ["eval", "bc"]
    (source / "config.json").write_text(json.dumps(dataclasses.asdict(full)))
    assert reusable_phases(parse_args(["--method", "imitation"]), source)[0] == ["eval", "bc"]
    assert reusable_phases(parse_args(["--method", "imitation", "--bc-lr", "1e-4"]), source)[0] == ["eval"]


def test_rl_speed_options_come_from_the_preset_unless_given(capsys):
    """--rl-autocast, --rl-share-context and --rl-micro-batch-tokens are RLConfig's autocast, share_context
    and micro_batch_tokens in phase 3; left out, each is the training preset's (cpu: bf16 where the CPU has
    it, every row padded whole, 1024 tokens; gpu: 32768 tokens). Bad values end in one line."""
    from config import check_config, resolve
    from runs import ConfigError

    def rl(*flags):
        config = resolve(parse_args(list(flags)))
        check_config(config)
        found = phase_config(config, "rl")
        return found.autocast, found.share_context, found.micro_batch_tokens

    assert rl("--preset", "cpu") == rl("--preset", "cpu-full") == ("auto", False, 1024)
    assert rl("--preset", "cpu", "--rl-autocast", "off", "--rl-share-context", "true",
              "--rl-micro-batch-tokens", "2048") == ("off", True, 2048)
    assert rl("--preset", "cpu", "--rl-share-context", "auto") == ("auto", False, 1024)
    assert rl("--preset", "gpu")[2] == 32768
    with pytest.raises(ConfigError, match="unknown --rl-autocast 'fp8': use off, auto, bfloat16"):
        check_config(parse_args(["--rl-autocast", "fp8"]))
    with pytest.raises(ConfigError, match="--rl-micro-batch-tokens 0: give at least 1"):
        check_config(parse_args(["--rl-micro-batch-tokens", "0"]))
    with pytest.raises(SystemExit):
        parse_args(["--rl-share-context", "maybe"])
    assert "--rl-share-context: 'maybe': use auto, true or false" in capsys.readouterr().err


def test_training_autocast_comes_from_the_preset_unless_given():
    """--bc-autocast and --sft-autocast are SFTConfig.autocast of BC and of SCoRe-SFT, each on its own;
    left out, both are the training preset's (cpu and cpu-full: bf16 where the CPU has it; gpu: off, its
    bf16 runs through accelerate). A bad value ends in one line."""
    from config import check_config, resolve
    from runs import ConfigError

    def autocast(*flags):
        config = resolve(parse_args(list(flags)))
        check_config(config)
        return phase_config(config, "bc").autocast, phase_config(config, "sft").autocast

    assert autocast("--preset", "cpu") == autocast("--preset", "cpu-full") == ("auto", "auto")
    assert autocast("--preset", "gpu") == ("off", "off")
    assert autocast("--preset", "cpu", "--bc-autocast", "off") == ("off", "auto")
    assert autocast("--preset", "cpu", "--sft-autocast", "off") == ("auto", "off")
    assert autocast("--preset", "gpu", "--bc-autocast", "bfloat16") == ("bfloat16", "off")
    with pytest.raises(ConfigError, match="unknown --sft-autocast 'fp16': use off, auto, bfloat16"):
        check_config(parse_args(["--sft-autocast", "fp16"]))


def test_an_rl_update_line_shows_the_log_prob_gap_and_warns_when_it_is_off_policy():
    """The console line of an update ends with rl/logprob_gap, and says so when it is over 1e-2 (bf16
    autocast on an untrained student): the rows were then not sampled by the policy being trained."""
    from training import OFF_POLICY_GAP, human_line
    record = {"rl/update": 1, "rl/reward_mean": 0.5, "rl/share_correct": 0.25, "rl/share_key_teacher": 0.0,
              "rl/skipped_groups": 0, "rl/groups": 4, "rl/loss": -0.01, "rl/grad_norm": 0.3,
              "rl/supervised_tokens": 10, "rl/generated_tokens": 12, "rl/rollout_s": 1.0, "rl/reward_s": 0.0,
              "rl/update_s": 2.0, "rl/logprob_gap": 3e-3}
    assert human_line(record, 5).endswith("gap 3.0e-03")
    line = human_line({**record, "rl/logprob_gap": 2 * OFF_POLICY_GAP}, 5)
    assert "gap 2.0e-02 (over 0.01: off-policy" in line and "--rl-autocast off" in line
    assert human_line({**record, "rl/logprob_gap": None, "rl/loss": None}, 5).endswith("gap -")


def test_repeats_are_errors_is_for_the_reference_teacher_only():
    """--repeats-are-errors is a rule of the scripted teacher: with an LLM teacher it ends in one line."""
    from config import check_config
    from runs import ConfigError
    check_config(parse_args(["--repeats-are-errors"]))
    with pytest.raises(ConfigError, match="repeats-are-errors is a rule of the reference teacher"):
        check_config(parse_args(["--repeats-are-errors", "--teacher", "smol-135m-q4"]))


def test_corrections_show_work_needs_a_knowing_reference_teacher():
    """--corrections-show-work hides the reference teacher's knowledge from its corrections: with an
    LLM teacher, or at knowledge 0 (nothing to hide), it ends in one line; it affects MPS on, so an
    --init-from branch that adds it reuses BC."""
    from config import FIRST_PHASE_OF, check_config
    from runs import ConfigError
    check_config(parse_args(["--corrections-show-work"]))
    with pytest.raises(ConfigError, match="corrections-show-work is a rule of the reference teacher"):
        check_config(parse_args(["--corrections-show-work", "--teacher", "smol-135m-q4"]))
    with pytest.raises(ConfigError, match="knows nothing to hide"):
        check_config(parse_args(["--corrections-show-work", "--teacher-knowledge", "0"]))
    assert FIRST_PHASE_OF["corrections_show_work"] == "mps"
