"""The command line never runs another experiment than the one asked for: every option is checked before
any work, with one line and exit code 2, and nothing is written for a command that cannot run."""
import collections
import json
import time

import pytest

import score
from config import FIRST_PHASE_OF, OPERATIONAL, PHASES, budget, load_tasks_for, parse_args


def fails_with_one_line(argv, runs, capsys, needle) -> str:
    """score.main(argv) exits 2 with exactly one error line containing `needle`, and leaves runs/ empty."""
    assert score.main(argv + ["--runs-dir", str(runs)]) == 2
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], out
    assert "Traceback" not in out
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
    return errors[0]


@pytest.mark.parametrize("argv,needle", [
    (["--reward", "foo"], "unknown --reward 'foo': use keystep, outcome"),
    (["--rl-start", "foo"], "unknown --rl-start 'foo': use prefix, question"),
    (["--advantage", "foo"], "unknown --advantage 'foo': use mean, grpo, rloo"),
    (["--method", "imitaton"], "unknown --method 'imitaton'"),
    (["--key-step-judge", "judge"], "unknown --key-step-judge"),
    (["--teacher-sees", "all"], "unknown --teacher-sees"),
    (["--dtype", "fp8"], "unknown --dtype 'fp8'"),
    (["--bc-fraction", "1.5"], "--bc-fraction 1.5 is outside [0, 1]"),
    (["--bc-fraction", "1"], "that is the imitation baseline"),
    (["--keep-correct-rate", "-0.1"], "--keep-correct-rate -0.1 is outside [0, 1]"),
    (["--teacher-knowledge", "nan"], "--teacher-knowledge nan: give a finite number"),
    (["--group-size", "1"], "--group-size 1: the group baseline (mean) needs at least 2"),
    (["--max-steps", "0"], "--max-steps 0: give at least 1"),
    (["--n", "0"], "--n 0: give at least 1"),
    (["--n-train", "0"], "--n-train 0: give at least 1"),
    (["--max-corrections", "0"], "--max-corrections 0"),
    (["--eval-batch-size", "0"], "--eval-batch-size 0"),
    (["--rl-lr", "0"], "--rl-lr 0: give a number above 0"),
    (["--timeout-s", "-1"], "--timeout-s -1"),
    (["--eval-top-p", "0"], "--eval-top-p 0: give a share in (0, 1]"),
    (["--mps-temperature", "-1"], "--mps-temperature -1: give 0 or more"),
    (["--max-new-tokens", "4096", "--max-context-tokens", "2048"], "leaves no room for the prompt"),
    (["--phases", "eval,rl,sft"], "in the loop's order eval,bc,mps,sft,rl"),
    (["--phases", "eval,eval"], "each phase once"),
    (["--phases", "train"], "unknown phase 'train'"),
    (["--tasks", "arith,"], "an empty task set name"),
    (["--tasks", "arith,lookup,arith"], "a task set named twice"),
    (["eval", "--label", "../../x"], "--label '../../x': a label is a plain name"),
    (["--teacher-cache", "/nonexistent/dir/cache.jsonl"], "no directory /nonexistent/dir"),
    (["--run", "../../etc"], "run name"),
    (["--run", ".."], "run name"),
    (["--run", "a/b"], "run name"),
])
def test_options_out_of_range_are_refused_before_any_work(argv, needle, tmp_path, capsys):
    """Each of these once ran a different experiment (or crashed after the whole pipeline); now each
    is one line, exit 2, and no run directory."""
    fails_with_one_line(argv, tmp_path / "runs", capsys, needle)


def test_run_names_cannot_leave_the_runs_directory(tmp_path, capsys):
    outside = tmp_path / "etc"
    for name in ("../etc", "..", ".", "x/../../etc", "/tmp/x"):
        fails_with_one_line(["eval", "--run", name], tmp_path / "runs", capsys, "run name")
    assert not outside.exists() and not (tmp_path / "config.json").exists()


def test_a_phase_that_needs_mps_records_names_the_command(tmp_path, capsys):
    line = fails_with_one_line(["rl", "--n", "3", "--seed", "4"], tmp_path / "runs", capsys, "has none")
    assert f"`python score.py mps --preset cpu --n 3 --seed 4 --runs-dir {tmp_path / 'runs'}`" in line  # its own options


@pytest.mark.parametrize("content,needle", [
    (b"", "is empty"),
    (b'{"id": "a", "question": "caf\xe9?", "answer": "1", "split": "test"}\n', "not UTF-8 text"),
])
def test_bad_task_files_are_one_line(content, needle, tmp_path, capsys):
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(content)
    fails_with_one_line(["eval", "--tasks", str(path)], tmp_path / "runs", capsys, needle)


def test_a_task_file_without_test_rows_gives_no_tasks(tmp_path, capsys):
    path = tmp_path / "train_only.jsonl"
    path.write_text('{"id": "a", "question": "1+1?", "answer": "2", "split": "train"}\n')
    fails_with_one_line(["eval", "--tasks", str(path)], tmp_path / "runs", capsys, "gives no test tasks")


def test_students_that_cannot_load_are_found_at_once(tmp_path, capsys, monkeypatch):
    """A missing directory is not diagnosed as a bad hub id; a hub model that is not cached while the hub
    is unreachable fails in well under a second (the hub library's retries took 79 s)."""
    import student
    fails_with_one_line(["eval", "--student", "/nonexistent"], tmp_path / "runs", capsys, "no such directory")
    fails_with_one_line(["eval", "--student", str(tmp_path)], tmp_path / "runs", capsys, "has no config.json")
    fails_with_one_line(["eval", "--student", "gpt-9"], tmp_path / "runs", capsys, "unknown student 'gpt-9'")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    began = time.perf_counter()
    fails_with_one_line(["eval", "--student", "qwen-7b"], tmp_path / "runs", capsys,
                        "Qwen/Qwen2.5-7B-Instruct is not in the local hub cache and the hub does not answer")
    assert time.perf_counter() - began < 5
    assert student.hub_reachable() is False


def test_a_missing_teacher_is_found_before_the_student_is_evaluated(tmp_path, capsys):
    """The whole loop needs the teacher: a missing GGUF file fails in seconds, before any evaluation."""
    began = time.perf_counter()
    fails_with_one_line(["--teacher", str(tmp_path / "nope.gguf")], tmp_path / "runs", capsys, "nope.gguf")
    fails_with_one_line(["--teacher-url", "http://127.0.0.1:9"], tmp_path / "runs", capsys, "127.0.0.1:9")
    assert time.perf_counter() - began < 10


def test_an_unwritable_runs_directory_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert score.main(["eval", "--runs-dir", str(blocker / "runs")]) == 2
    out = capsys.readouterr().out
    assert "is not a directory this user can write" in out and "Traceback" not in out


def test_budget_counts_come_from_the_split_the_phases_use():
    """At a small --n the shares and the hash split differ: the table shows the split's counts."""
    from mps import assign_split
    for n in (2, 3, 5):
        config = parse_args(["--n", str(n), "--seed", "1"])
        halves = collections.Counter(assign_split(t.id, config.seed, config.bc_fraction)
                                     for t in load_tasks_for(config, "train"))
        rows = {phase: work for phase, work, _ in budget(config)}
        assert f"teacher solves {halves['bc']} tasks" in rows["bc"]
        assert f"{halves['sft'] + halves['rl']} tasks" in rows["mps"]
        assert (f"the {halves['sft']} SFT-half tasks" in rows["sft"]) if halves["sft"] else "skipped" in rows["sft"]
        assert (f"the {halves['rl']} RL-half tasks" in rows["rl"]) if halves["rl"] else "skipped" in rows["rl"]


def test_error_lines_are_not_wrapped_into_a_file(tmp_path, capsys):
    """Output that is not a terminal (a log file) keeps each error and command on one line."""
    line = fails_with_one_line(["rl", "--n", "3", "--seed", "4", "--max-steps", "3", "--mps-temperature", "0.7"],
                               tmp_path / "runs", capsys, "--mps-temperature 0.7")
    assert len(line) > 80


def test_rl_without_signal_is_recorded_as_skipped(tmp_path):
    """phase_rl records `trained: False` and why when every group of every update had equal rewards."""
    from runs import append_jsonl, finished_phases, mark_phase_done
    run = tmp_path / "r"
    mark_phase_done(run, "mps", {"episodes": 1})
    for update in (1, 2):
        append_jsonl(run / "metrics.jsonl", {"rl/update": update, "rl/groups": 2, "rl/skipped_groups": 2})
    (run / "keysteps.jsonl").write_text(json.dumps({"task_id": "x", "last": True, "split": "rl"}) + "\n")
    (run / "mps.jsonl").write_text("")

    class Console:
        lines = []

        def print(self, text, **_):
            self.lines.append(str(text))

    import rl
    import student
    config = parse_args(["--n", "2"])
    console = Console()
    original = (rl.train_rl, student.load_student)
    try:
        rl.train_rl = lambda *a, **k: {"num_updates": 2}
        student.load_student = lambda *a, **k: object()
        score.phase_rl(config, run, console)
    finally:
        rl.train_rl, student.load_student = original
    entry = finished_phases(run)["rl"]
    assert entry["trained"] is False and entry["updates_with_signal"] == 0
    assert "no signal" in entry["skipped"] and any("rl: skipped: no signal" in line for line in console.lines)
    assert not (run / "eval" / "rl.json").exists()


def test_help_groups_options_by_phase_with_defaults_and_choices(capsys):
    """--help is generated from the config: one group per phase, each option with its default and,
    for a choice, its allowed values; the phase a field affects is the one --init-from uses."""
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    groups = ["every phase", "phase 0: BC warm start", "phase 1: MPS", "phase 2: SCoRe-SFT",
              "phase 3: prefix-restart RL", "operational"]
    positions = [out.index(title) for title in groups]
    assert positions == sorted(positions)
    rl_part = out[positions[4]:positions[5]]
    assert "--reward" in rl_part and "[keystep | outcome] (default: keystep)" in rl_part
    assert "--rl-lr" in rl_part and "(default: 1e-05)" in rl_part
    assert "--max-corrections" in out[positions[2]:positions[3]]
    assert FIRST_PHASE_OF["reward"] == "rl" and FIRST_PHASE_OF["teacher_sees"] == "mps"
    assert "threads" in OPERATIONAL and "seed" not in OPERATIONAL


def test_config_file_sets_options_and_flags_override_it(tmp_path, capsys):
    """--config FILE (JSON or YAML, field names with - or _) sets options; a flag given too wins; the
    file is checked like the flags, one line for each mistake."""
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("rl_lr: 2e-5\nseed: 3\ngroup-size: 6\nreward: outcome\n")
    config = parse_args(["--config", str(yaml_file), "--seed", "4"])
    assert (config.rl_lr, config.seed, config.group_size, config.reward) == (2e-5, 4, 6, "outcome")
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"n": 3, "tasks": "arith"}))
    assert (parse_args(["eval", "--config", str(json_file)]).n, parse_args(["--config", str(json_file)]).phases) \
        == (3, ",".join(PHASES))
    for text, needle in [("seed: x", "seed must be a number (a whole one)"), ("foo: 1", "unknown option 'foo'"),
                         ("[1, 2]", "expected a mapping"), ("rl_lr: true", "rl_lr must be a number"),
                         ("reward: foo", "unknown --reward 'foo'"), ("{bad", "not JSON or YAML")]:
        yaml_file.write_text(text)
        fails_with_one_line(["--config", str(yaml_file)], tmp_path / "runs", capsys, needle)
    fails_with_one_line(["--config", str(tmp_path / "missing.yaml")], tmp_path / "runs", capsys, "cannot read it")


def test_the_standalone_sft_and_rl_commands_take_their_flags_from_the_same_adapter():
    """`python rl.py` and `python sft.py` get one flag per field of RLConfig / SFTConfig from the adapter
    that builds score.py's (runs.add_flags): each with its help text and default; no flag gives the
    defaults back, and booleans, `lora` (auto / true / false) and numbers parse to the field's type."""
    import argparse
    import dataclasses
    import subprocess
    import sys
    from rl import RLConfig
    from runs import add_flags, flag_values
    from sft import SFTConfig
    for config_class in (RLConfig, SFTConfig):
        parser = argparse.ArgumentParser()
        add_flags(parser, config_class)
        assert config_class(**flag_values(parser.parse_args([]), config_class)) == config_class()
        text = "".join(parser.format_help().split())  # without the help formatter's line breaks
        for f in dataclasses.fields(config_class):
            assert "--" + f.name.replace("_", "-") in text and "".join(f.metadata["help"].split()) in text, f.name
    parser = argparse.ArgumentParser()
    add_flags(parser, RLConfig)
    args = parser.parse_args(["--lr", "2e-5", "--lora", "true", "--no-progress", "--gradient-checkpointing",
                              "--num-updates", "3", "--advantage", "rloo"])
    assert RLConfig(**flag_values(args, RLConfig)) == dataclasses.replace(
        RLConfig(), lr=2e-5, lora=True, progress=False, gradient_checkpointing=True, num_updates=3, advantage="rloo")
    assert RLConfig(**flag_values(parser.parse_args(["--lora", "auto"]), RLConfig)).lora is None
    parser = argparse.ArgumentParser()
    add_flags(parser, SFTConfig)
    assert SFTConfig(**flag_values(parser.parse_args(["--no-bf16", "--epochs", "2"]), SFTConfig)) == \
        dataclasses.replace(SFTConfig(), bf16=False, epochs=2)
    for script in ("rl.py", "sft.py"):
        shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0 and "--learning" not in shown.stdout and "--lr LR" in shown.stdout, shown.stderr


def test_standalone_training_commands_refuse_a_missing_file_or_autocast_in_one_line(tmp_path, capsys):
    """`python sft.py` and `python rl.py` with a records file that is not there, or an --autocast that
    names no setting, end with argparse's one line before loading anything (a missing file used to read
    as no records and end in a ValueError traceback)."""
    from training import rl_main, sft_main
    records = tmp_path / "records.jsonl"
    for main, flag in ((sft_main, "--trajectories"), (rl_main, "--keysteps")):
        with pytest.raises(SystemExit) as exited:
            main([flag, str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out")])
        assert exited.value.code == 2
        assert f"{flag} {tmp_path / 'missing.jsonl'}: no such file" in capsys.readouterr().err
        records.write_text("")
        with pytest.raises(SystemExit):
            main([flag, str(records), "--out", str(tmp_path / "out"), "--autocast", "fp8"])
        assert "--autocast 'fp8': use off, auto, bfloat16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_training_run_is_identified_by_what_it_learns():
    """TrainingRun's identity (runs.learned_settings) is every field but the ones marked operational:
    how often to checkpoint and write samples, and the progress bar, may change when a run resumes."""
    import dataclasses
    from rl import RLConfig
    from runs import learned_settings
    from sft import SFTConfig
    for config_class, operational in ((RLConfig, {"checkpoint_every", "samples_every", "progress"}),
                                      (SFTConfig, {"checkpoint_every", "progress"})):
        names = {f.name for f in dataclasses.fields(config_class)}
        assert set(learned_settings(config_class())) == names - operational
        assert learned_settings(config_class(progress=False)) == learned_settings(config_class())
        assert learned_settings(config_class(seed=1)) != learned_settings(config_class())
