"""Phases under several processes (`accelerate launch`, two CPU processes over gloo): rank 0 alone asks
the teacher and writes records, the others train on them; a phase that runs in one process says so."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def launch(args, tmp_path, timeout=300, script=ROOT / "score.py"):
    """accelerate's multi-process launcher (it gives plain CPU processes where there is no GPU)."""
    runs = ["--runs-dir", str(tmp_path / "runs")] if script.name == "score.py" else []
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(script), *args, *runs]
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


RL_SCRIPT = """
import dataclasses, sys
from pathlib import Path
sys.path[:0] = [{root!r}, {tests!r}]
from transformers import AutoTokenizer
import rl
from agent import RolloutConfig
from student import make_tiny_student, resolve_model_path
from test_rl import TASK, CandidateStudent, InProcessSandbox, keystep_record, quick, two_way
tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smol-135m"))
student = CandidateStudent(make_tiny_student(tokenizer, seed=4), two_way)
tasks = {{f"toy-{{i}}": dataclasses.replace(TASK, id=f"toy-{{i}}") for i in range(3)}}
out = Path(sys.argv[1])
rl.train_rl(student, [keystep_record(task_id=t) for t in tasks], tasks, quick(num_updates=3, prompts_per_update=3),
            out, out / "metrics.jsonl", out / "samples", rollout_config=RolloutConfig(max_steps=4, max_new_tokens=32),
            sandbox_factory=InProcessSandbox)
"""


def test_rl_under_two_processes_takes_the_steps_of_one(tmp_path):
    """Two processes share each RL update (3 start states: 2 on rank 0, 1 on rank 1): N summed over
    both, gradients summed before the one clipped step. Both processes cut the micro-batches one
    process would, so the first update's forwards, and its loss, are one process's to the bit; later
    updates differ only by the order the gradients were added in. Rank 0 alone writes the metrics. If
    this failed, data-parallel RL would average instead of sum, normalise per process, batch other
    rows together than one process, or drift apart between processes."""
    from safetensors.torch import load_file
    script = tmp_path / "rl_run.py"
    script.write_text(RL_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests")))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    alone = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=env, capture_output=True,
                           text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    two = launch([str(tmp_path / "two")], tmp_path, script=script)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    one_metrics, two_metrics = ([json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
                                for d in ("one", "two"))
    assert len(one_metrics) == len(two_metrics) == 3  # one line per update, not one per process
    assert one_metrics[0]["rl/loss"] == two_metrics[0]["rl/loss"]  # the same weights and micro-batches
    for a, b in zip(one_metrics, two_metrics):
        assert a["rl/groups"] == b["rl/groups"] == 3 and a["rl/reward_mean"] == b["rl/reward_mean"]
        assert a["rl/supervised_tokens"] == b["rl/supervised_tokens"]
        assert a["rl/loss"] == pytest.approx(b["rl/loss"], rel=1e-5, abs=1e-7)
        assert a["rl/grad_norm"] == pytest.approx(b["rl/grad_norm"], rel=1e-4)
    assert one_metrics[0]["rl/skipped_groups"] < 3  # the updates really stepped
    one, two_weights = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("one", "two"))
    assert one.keys() == two_weights.keys()
    for name in one:
        assert torch.allclose(one[name], two_weights[name], atol=1e-6), name
