"""The resume promise under `kill -9` (DESIGN.md, run directory): a run killed in the middle of a
phase and started again with the same command loses and duplicates nothing.

Each test runs `python score.py` as a separate process with a tiny random student and the reference
teacher, waits until the phase under test is visibly half done, sends SIGKILL (no handler runs, no
file is closed), checks that the phase really was unfinished, then re-runs the same command to the
end and checks the records against what an uninterrupted run must produce.
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_EVERY = 10  # sft.SFTConfig.checkpoint_every: SFT writes a resumable state every 10 updates


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny random student saved in Hugging Face format (loads in well under a second)."""
    from conftest import make_tiny_student
    path = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny_student(tokenizer).save(path)
    return str(path)


def _args(tiny_dir, runs_dir, *extra) -> list[str]:
    """Budgets that keep a run short: 5 steps (the reference teacher needs them to solve arith),
    6 new tokens a turn, one SFT epoch, one episode per batch (so MPS appends its records one by one
    and there is time to kill it between two of them)."""
    return ["--student", tiny_dir, "--tasks", "arith", "--n", "10", "--bc-fraction", "0.2", "--runs-dir",
            str(runs_dir), "--run", "r", "--max-steps", "5", "--max-new-tokens", "6", "--sft-epochs", "1",
            "--threads", "1", "--eval-batch-size", "1", *extra]


def _start(args, log: Path) -> subprocess.Popen:
    """score.py in its own process; stdout goes to a file (never a pipe that an orphan could hold open)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(ROOT / "score.py"), *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _run_to_end(args, log: Path) -> str:
    process = _start(args, log)
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    return log.read_text()


def _phases(run: Path) -> dict:
    path = run / "phases.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _kill_when(process: subprocess.Popen, ready, log: Path, what: str, timeout_s: float = 240.0) -> None:
    """Poll until ready() holds, then SIGKILL. A run that ends first is a failure, not a skip: the
    test exists to kill mid-phase (make the phase longer if this fires)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"score.py ended (rc {process.returncode}) before it could be killed {what}:\n"
                        + log.read_text()[-3000:])
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting to kill {what}:\n" + log.read_text()[-3000:])
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


def _complete_lines(path: Path) -> list[dict]:
    """Every line of a JSONL file, each required to be whole and valid JSON (no reader repairs)."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"{path.name} ends with a partial line"
    return [json.loads(line) for line in raw.decode().splitlines()]


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_9_during_mps_then_resume_loses_and_duplicates_nothing(tiny_dir, tmp_path):
    """`bc,mps` killed after MPS has appended some episodes but before it finished; the same command
    then resumes MPS where it stopped. If this fails, a killed MPS either re-rolls finished tasks
    (duplicate task ids), forgets some (missing ids), leaves a torn record, or marks itself done early."""
    from agent import Step, Trajectory
    from config import load_tasks_for, parse_args
    from mps import assign_split
    args = _args(tiny_dir, tmp_path, "--phases", "bc,mps")
    run = tmp_path / "r"
    config = parse_args(args)
    splits = {t.id: assign_split(t.id, config.seed, config.bc_fraction) for t in load_tasks_for(config, "train")}
    expected = {task_id: split for task_id, split in splits.items() if split in ("sft", "rl")}
    assert len(expected) >= 4  # enough episodes for the kill to land between two of them

    process = _start(args, tmp_path / "killed.log")
    _kill_when(process, lambda: _count_lines(run / "mps.jsonl") >= 1 and "mps" not in _phases(run),
               tmp_path / "killed.log", "during MPS")
    assert "mps" not in _phases(run) and _phases(run)["bc"]["trained"]  # killed mid-phase, after a finished bc
    killed_at = _count_lines(run / "mps.jsonl")  # whole lines (a torn last one is the reader's to drop)
    assert 1 <= killed_at < len(expected)

    out = _run_to_end(args, tmp_path / "resumed.log")
    assert f"mps: {len(expected)} tasks ({killed_at} already done)" in out  # the finished episodes were kept
    bc_share = len(splits) - len(expected)
    assert f"bc: the teacher solves {bc_share} training tasks ({bc_share} already done)" in out

    records = _complete_lines(run / "mps.jsonl")
    task_ids = [r["task_id"] for r in records]
    assert len(task_ids) == len(set(task_ids)), "duplicate episodes after resume"
    assert set(task_ids) == set(expected)
    trajectory_keys = {f.name for f in dataclasses.fields(Trajectory)}
    step_keys = {f.name for f in dataclasses.fields(Step)}
    for record in records:
        assert set(record) == trajectory_keys and all(set(step) == step_keys for step in record["steps"])
        assert record["split"] == expected[record["task_id"]] and record["run"] == "r"
        assert record["steps"] and len(record["steps"]) <= 5
    phases = _phases(run)
    assert phases["mps"]["episodes"] == len(expected)
    assert [r["task_id"] for r in _complete_lines(run / "bc.jsonl")] and (run / "keysteps.jsonl").exists()


def test_kill_9_during_sft_then_resume_finishes_from_the_checkpoint(tiny_dir, tmp_path):
    """SFT killed between two checkpoints, then resumed with the same command: it restarts from the
    last checkpoint, finishes, logs each update exactly once, and its final weights are those of an
    uninterrupted run, bit for bit. If this fails, a killed SFT redoes or skips updates, repeats
    metrics lines, or resumes from a state that differs from the one it saved.

    A random tiny student finishes no MPS episode, so MPS yields no SFT data; sft.jsonl is seeded
    with copies of the teacher's correct BC trajectories (the same kind of record MPS writes there),
    enough of them for about 16 updates, so the kill lands mid-phase."""
    import torch
    from agent import Trajectory
    from config import parse_args, phase_config
    from sft import train_sft
    from student import load_student
    run = tmp_path / "r"
    _run_to_end(_args(tiny_dir, tmp_path, "--phases", "bc,mps"), tmp_path / "setup.log")
    teacher = [r for r in _complete_lines(run / "bc.jsonl") if r["correct"]]
    assert teacher
    copies = -(-4 * (CHECKPOINT_EVERY + 6) // len(teacher))  # ~4 trajectories an update: ~16 updates
    seeded = [{**r, "split": "sft", "task_id": f"{r['task_id']}#{i}"} for i in range(copies) for r in teacher]
    (run / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seeded))

    args = _args(tiny_dir, tmp_path, "--phases", "sft")
    log = tmp_path / "killed.log"
    process = _start(args, log)
    # Killed two updates after the first checkpoint: updates 11 and 12 are done but not saved.
    _kill_when(process, lambda: f"sft update {CHECKPOINT_EVERY + 2}/" in log.read_text(), log, "during SFT")
    state = json.loads((run / "checkpoints" / "sft" / "checkpoint" / "state.json").read_text())
    num_updates = state["num_updates"]
    assert "sft" not in _phases(run) and not (run / "checkpoints" / "sft" / "summary.json").exists()
    assert state["update"] == CHECKPOINT_EVERY < num_updates and not state.get("finished")

    out = _run_to_end(args, tmp_path / "resumed.log")
    resumed_line = f"sft: resumed from {run / 'checkpoints' / 'sft' / 'checkpoint'} after update {CHECKPOINT_EVERY}/{num_updates}"
    assert "".join(resumed_line.split()) in "".join(out.split())  # (rich may wrap the line)
    phases = _phases(run)
    assert phases["sft"]["trained"] and phases["sft"]["examples"] == len(seeded)
    assert phases["sft"]["updates"] == num_updates
    metrics = [m for m in _complete_lines(run / "metrics.jsonl") if m["label"] == "sft"]
    assert [m["sft/update"] for m in metrics] == list(range(1, num_updates + 1))  # none lost, none repeated
    assert all(set(m) >= {"sft/loss", "sft/lr", "sft/grad_norm", "sft/tokens"} for m in metrics)
    summary = json.loads((run / "checkpoints" / "sft" / "summary.json").read_text())
    assert summary["finished"] and summary["updates_done"] == num_updates
    assert (run / "eval" / "sft.json").exists()

    # The final checkpoint loads, and equals an uninterrupted run of the same SFT on the same data.
    resumed = load_student(str(run / "checkpoints" / "sft"), "cpu", "float32", threads=1)
    reference = load_student(str(run / "checkpoints" / "bc"), "cpu", "float32", threads=1)
    bc_weights = {n: p.clone() for n, p in reference.model.named_parameters()}
    config = parse_args(args)
    train_sft(reference, [Trajectory.from_dict(r) for r in seeded],
              dataclasses.replace(phase_config(config, "sft"), progress=False), tmp_path / "uninterrupted",
              tmp_path / "uninterrupted" / "metrics.jsonl", label="sft")
    got, want = dict(resumed.model.named_parameters()), dict(reference.model.named_parameters())
    assert set(got) == set(want)
    assert any(not torch.equal(got[n], bc_weights[n]) for n in got)  # SFT moved the weights
    for name in want:
        assert torch.equal(got[name], want[name]), f"{name} differs from the uninterrupted run"
