"""Phases under several processes (`accelerate launch`, two CPU processes over gloo): rank 0 alone asks
the teacher and writes records, the others train on them; a phase that runs in one process says so."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def launch(args, tmp_path, timeout=300):
    """accelerate's multi-process launcher (it gives plain CPU processes where there is no GPU)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(ROOT / "score.py"), *args, "--runs-dir", str(tmp_path / "runs")]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny_dir(tmp_path, tokenizer):
    from conftest import make_tiny_student
    make_tiny_student(tokenizer).save(tmp_path / "tiny")
    return str(tmp_path / "tiny")


def test_bc_under_two_processes_writes_each_record_once(tiny_dir, tmp_path):
    """Two ranks of `score.py bc`: one teacher trajectory per BC task (not one per rank), one metrics
    line per update, and the update plan counts both processes."""
    result = launch(["bc", "--student", tiny_dir, "--n", "3", "--tasks", "arith", "--run", "mp", "--max-steps", "3",
                     "--max-new-tokens", "6", "--bc-epochs", "1"], tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run = tmp_path / "runs" / "mp"
    bc = [json.loads(line) for line in (run / "bc.jsonl").read_text().splitlines()]
    assert len(bc) == len({r["task_id"] for r in bc}) == json.loads((run / "phases.json").read_text())["bc"]["tasks"]
    updates = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [u["sft/update"] for u in updates] == list(range(1, len(updates) + 1))
    assert "x 2 processes per update" in result.stdout


def test_phases_that_run_in_one_process_say_so(tmp_path):
    result = launch(["mps", "--n", "2"], tmp_path, timeout=120)
    assert result.returncode != 0  # the launcher reports a failed child (it exits 2) as 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "mps runs in one process" in errors[0], result.stdout
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
