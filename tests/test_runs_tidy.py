"""Tidy run directories (runs.py): plain run names, no leftovers of a killed save, one copy of the
weights per checkpoint, and the run's size at the end of the report.

A run name that is a path writes a run (reference answers included) outside runs/; leftovers of a
killed save and a second copy of the weights fill the disk (538 MB each for SmolLM2-135M).
"""
import json
import os

import pytest
import torch

from conftest import make_tiny_student
from runs import (ConfigError, TrainingRun, check_run_name, find_training_state, human_size, open_run,
                  remove_temporaries, run_size, save_training_state)
from sft import train_sft
from student import load_student
from test_sft import sum_trajectory, tiny_config

GOOD_NAMES = ["a", "r", "smol-135m-reference-1a2b3c4d", "Qwen2.5-7B_lora.v2", "0", "x" * 100, "a.b-c_d"]
BAD_NAMES = ["", ".", "..", "../../etc", "../x", "a/b", "/abs", "a\\b", ".hidden", "-rf", "--run", "a b",
             "tab\there", "new\nline", "semi;colon", "star*", "é", "x" * 101]


def test_run_names_are_plain_names():
    """Breaks if a path or an odd name (`--run ../../etc`, `--run ..`, a leading '-' or '.') gets
    through, or a plain name is refused. The error is one line that names the run name."""
    for name in GOOD_NAMES:
        check_run_name(name)
    for name in BAD_NAMES:
        with pytest.raises(ConfigError) as error:
            check_run_name(name)
        message = str(error.value)
        assert "\n" not in message and message.startswith("run name ") and "plain name" in message, message


def test_open_run_refuses_a_path_and_creates_nothing(tmp_path):
    """open_run is the last guard: a run directory whose name is not plain is refused before anything
    is created. Breaks if `runs/..` (the repository root) or `runs/../../etc` were written to."""
    from config import Config
    runs = tmp_path / "runs"
    runs.mkdir()
    for name in ("..", "a b", ".hidden"):
        with pytest.raises(ConfigError):
            open_run(runs / name, Config(), set())
    assert sorted(os.listdir(tmp_path)) == ["runs"] and os.listdir(runs) == []
    assert not (tmp_path / "config.json").exists()
    open_run(runs / "ok", Config(), set())
    assert (runs / "ok" / "config.json").exists()


def test_open_run_removes_what_killed_writers_left(tmp_path):
    """Temporary files of write_atomic (new ".tmp" names and the older "<name>.<8 chars>" ones) and of
    score.py's MPS outputs are removed from the run directory, eval/ and samples/; nothing else is.
    Breaks if leftovers pile up across resumes, or if a real file were taken for one."""
    from config import Config
    run = tmp_path / "r"
    leftovers = [run / "phases.json.tmpk2j_x9q1", run / "metrics.jsonl.a1b2c3d4", run / "sft.jsonl.tmp",
                 run / "eval" / "base.json.tmp0abc_def", run / "eval" / "bc.json.zz_1x2y3",
                 run / "samples" / "rl-update-0001.json.tmpq1w2e3r4"]
    kept = [run / "phases.json", run / "notes.txt", run / "eval" / "base.jsonl", run / "eval" / "base.json",
            run / "samples" / "rl-update-0001.json", run / "report.md"]
    for path in leftovers + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    open_run(run, Config(), set())
    assert not any(p.exists() for p in leftovers), [p.name for p in leftovers if p.exists()]
    assert all(p.exists() for p in kept)


def test_a_killed_checkpoint_save_leaves_nothing_after_the_resume(tokenizer, tmp_path, monkeypatch):
    """A save killed half way (here: torch.save dies on the optimiser file) leaves checkpoint.tmp*
    with the weights in it. The resumed call removes it (and final.tmp*, state.json temporaries),
    resumes from the last good state and ends on the weights of an uninterrupted run. Breaks if the
    leftovers survive the resume, or the cleaning touched the state the resume needs."""
    trajectories = [sum_trajectory(a, b) for a, b in [(1, 1), (2, 5), (3, 8), (4, 4), (5, 1), (6, 2)]]
    config = tiny_config(lr=5e-3, micro_batch_tokens=256, max_length=256)
    straight = make_tiny_student(tokenizer, seed=4)
    train_sft(straight, trajectories, config, tmp_path / "straight", tmp_path / "straight.jsonl")

    out = tmp_path / "out"
    train_sft(make_tiny_student(tokenizer, seed=4), trajectories, config, out, tmp_path / "m.jsonl", stop_after=2)
    real_save = torch.save

    def dies_on_the_optimiser(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt"):
            raise KeyboardInterrupt  # the process is stopped in the middle of the save
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dies_on_the_optimiser)
    with pytest.raises(KeyboardInterrupt):
        train_sft(make_tiny_student(tokenizer, seed=4), trajectories, config, out, tmp_path / "m.jsonl", stop_after=4)
    monkeypatch.setattr(torch, "save", real_save)
    [left] = list(out.glob("checkpoint.tmp*"))  # the killed save's directory, with its weights
    assert (left / "trainable.pt").exists()
    (out / "final.tmpab12cd").mkdir()  # what a save_final killed half way leaves
    (out / "final.tmpab12cd" / "model.safetensors").write_bytes(b"partial")
    (out / "checkpoint" / "state.json.tmp9x8y7z").write_text("{")
    assert json.loads((out / "checkpoint" / "state.json").read_text())["update"] == 2  # the last good state

    resumed = make_tiny_student(tokenizer, seed=4)
    summary = train_sft(resumed, trajectories, config, out, tmp_path / "m.jsonl")
    assert summary["finished"] and summary["updates_done"] == 6
    assert sorted(p.name for p in out.iterdir() if ".tmp" in p.name) == []
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["state.json"]
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_full_fine_tuning_keeps_one_copy_of_the_weights(tokenizer, tmp_path):
    """A finished full fine-tuning checkpoint holds the weights once: model.safetensors (loadable by
    from_pretrained) and a checkpoint/ with state.json only, pointing at it. A re-run restores the
    trained weights bit for bit from there. Breaks if trainable.pt (a second copy) is kept, if the
    restore reads other weights, or the saved model stops loading."""
    trajectories = [sum_trajectory(a, b) for a, b in [(1, 2), (3, 4), (5, 6)]]
    config = tiny_config(epochs=2)
    trained = make_tiny_student(tokenizer, seed=5)
    num_updates = train_sft(trained, trajectories, config, tmp_path / "out", tmp_path / "m.jsonl")["num_updates"]
    out = tmp_path / "out"
    weights = out / "model.safetensors"
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["state.json"]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["finished"] and state["weights_in"] == ["model.safetensors"]
    parameter_bytes = sum(p.numel() * p.element_size() for p in trained.model.parameters())
    assert weights.stat().st_size >= parameter_bytes
    assert run_size(out) - weights.stat().st_size < parameter_bytes / 2  # the rest: tokenizer, json; no 2nd copy

    restored = make_tiny_student(tokenizer, seed=9)  # other weights, which the restore must overwrite
    assert train_sft(restored, trajectories, config, out, tmp_path / "m.jsonl")["restored"]
    loaded = load_student(str(out), device="cpu", dtype="float32")
    for (name, a), (_, b), (_, c) in zip(trained.model.named_parameters(), restored.model.named_parameters(),
                                         loaded.model.named_parameters()):
        assert torch.equal(a, b) and torch.equal(a, c), name
    assert len(open(tmp_path / "m.jsonl").readlines()) == num_updates  # restored, not trained again


def test_a_lora_checkpoint_keeps_its_small_adapter_state(tokenizer, tmp_path):
    """With LoRA the saved model is the adapter under peft's names, so trainable.pt (the adapter, a
    few kB) stays and the restore reads it. Breaks if the dedup drops a state nothing else holds."""
    trajectories = [sum_trajectory(a, b) for a, b in [(1, 2), (3, 4)]]
    config = tiny_config(lora=True, lora_rank=4, lora_alpha=8, epochs=2, lr=1e-2)
    base = tmp_path / "base"
    make_tiny_student(tokenizer, seed=5).save(base)
    trained = load_student(str(base), device="cpu", dtype="float32")
    train_sft(trained, trajectories, config, tmp_path / "out", tmp_path / "m.jsonl")
    checkpoint = tmp_path / "out" / "checkpoint"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state.json", "trainable.pt"]
    assert "weights_in" not in json.loads((checkpoint / "state.json").read_text())
    assert (checkpoint / "trainable.pt").stat().st_size < 200_000
    again = load_student(str(base), device="cpu", dtype="float32")
    assert train_sft(again, trajectories, config, tmp_path / "out", tmp_path / "m.jsonl")["restored"]
    for (name, a), (_, b) in zip(trained.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(a, b), name


def test_rl_full_fine_tuning_keeps_one_copy_and_restores_exactly(tokenizer, tmp_path):
    """RL's finished checkpoint too: model.safetensors and a state.json pointing at it, and a re-run
    restores the trained fp32 weights exactly. Breaks as the SFT case does, for rl.py's save."""
    from test_rl import CandidateStudent, quick, run_candidates, two_way
    trained = CandidateStudent(make_tiny_student(tokenizer, seed=7), two_way)
    assert run_candidates(tmp_path, trained, quick(group_size=4, num_updates=2))["finished"]
    checkpoint = tmp_path / "run" / "checkpoint"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state.json"]
    again = CandidateStudent(make_tiny_student(tokenizer, seed=8), two_way)
    assert run_candidates(tmp_path, again, quick(group_size=4, num_updates=2)).get("restored")
    for (name, a), (_, b) in zip(trained.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(a, b), name


def test_an_unfinished_checkpoint_keeps_everything_a_resume_needs(tokenizer, tmp_path):
    """Before the end there is no saved model to point at: trainable.pt and the optimiser stay."""
    student = make_tiny_student(tokenizer)
    params = list(student.model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    save_training_state(tmp_path / "checkpoint", student.model, optimizer, {"update": 1})
    found = find_training_state(tmp_path / "checkpoint")
    assert sorted(p.name for p in found.iterdir()) == ["optimizer.pt", "rng.pt", "state.json", "trainable.pt"]


def test_training_run_logs_each_update_once_across_a_kill(tmp_path):
    """TrainingRun (train_sft's and train_rl's bookkeeping) checkpoints every checkpoint_every updates and
    where a call stops, and appends an update's metrics line only with the checkpoint that covers it:
    after a kill between two checkpoints the resumed call redoes the uncovered updates, and every update
    is logged exactly once. A checkpoint of another identity is refused in one line. Breaks if an update
    is logged twice or lost, or a resume starts from the wrong update or another run's state."""
    import io
    from rich.console import Console
    out, metrics = tmp_path / "out", tmp_path / "m.jsonl"
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    start = model.weight.detach().clone()

    def training_run(stop_after=None, identity=None):
        return TrainingRun("t", out, metrics, 7, identity or {"config": {"a": 1}}, checkpoint_every=3,
                           console=Console(file=io.StringIO()), progress=False, stop_after=stop_after)

    def logged():
        return [json.loads(line)["u"] for line in metrics.read_text().splitlines()] if metrics.exists() else []

    def train(run, kill_after=None):
        with run:
            for update_idx in run.updates():
                with torch.no_grad():
                    model.weight += 1.0  # the "update"
                run.end_update({"u": update_idx + 1}, f"t update {update_idx + 1}")
                if update_idx + 1 == kill_after:
                    raise KeyboardInterrupt

    first = training_run(stop_after=2)
    assert first.resume(model, optimizer) == 0
    train(first)
    assert logged() == [1, 2] and not first.finished  # stopping after 2 checkpoints there
    second = training_run()
    assert second.resume(model, optimizer) == 2
    with pytest.raises(KeyboardInterrupt):  # killed after update 4: 3 is checkpointed, 4 only printed
        train(second, kill_after=4)
    assert logged() == [1, 2, 3] and json.loads((out / "checkpoint" / "state.json").read_text())["update"] == 3
    third = training_run()
    assert third.resume(model, optimizer) == 3 and list(third.updates()) == [3, 4, 5, 6]
    torch.testing.assert_close(model.weight, start + 3)  # the weights of update 3, not those of the lost 4
    train(third)
    assert logged() == [1, 2, 3, 4, 5, 6, 7] and third.finished
    with pytest.raises(ValueError) as error:
        training_run(identity={"config": {"a": 2}}).resume(model, optimizer)
    assert "\n" not in str(error.value) and "other data or settings" in str(error.value)


def test_remove_temporaries_leaves_other_names_alone(tmp_path):
    """Only the names this package's writers give temporaries go (directories too, never through a
    symlink); checkpoint/, checkpoint.old (read by a resume) and the model files stay."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious").write_text("x")
    for name in ("checkpoint.tmpabc_12", "final.tmpzz"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainable.pt").write_bytes(b"0" * 10)
    (tmp_path / "checkpoint.tmplink").symlink_to(tmp_path / "outside")
    for name in ("checkpoint", "checkpoint.old"):
        (tmp_path / name).mkdir()
    for name in ("model.safetensors", "summary.json", "config.json", "tokenizer.json", "summary.json.tmpq1"):
        (tmp_path / name).write_text("{}")
    removed = remove_temporaries(tmp_path)
    assert sorted(removed) == ["checkpoint.tmpabc_12", "checkpoint.tmplink", "final.tmpzz", "summary.json.tmpq1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "checkpoint.old", "config.json",
                                                           "model.safetensors", "outside", "summary.json",
                                                           "tokenizer.json"]
    assert (tmp_path / "outside" / "precious").exists()
    assert remove_temporaries(tmp_path / "missing") == []


def test_run_size_counts_hard_links_once_and_reads_in_human_units(tmp_path):
    """--init-from hard-links checkpoints: a linked file is one copy on disk and counts once.
    Breaks if the size doubles for a branch, follows a symlink, or the units read wrong."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "weights").write_bytes(b"w" * 5000)
    os.link(tmp_path / "a" / "weights", tmp_path / "a" / "linked")
    (tmp_path / "b.txt").write_bytes(b"x" * 123)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "big").write_bytes(b"y" * 10_000)
    (tmp_path / "a" / "link").symlink_to(tmp_path / "elsewhere" / "big")
    symlink_bytes = os.lstat(tmp_path / "a" / "link").st_size
    assert run_size(tmp_path / "a") == 5000 + symlink_bytes
    assert run_size(tmp_path) == 5000 + 123 + 10_000 + symlink_bytes
    assert [human_size(n) for n in (0, 812, 4200, 538_000_000, 1_076_000_000, 999_700_000, 25_300_000)] == \
        ["0 B", "812 B", "4.2 kB", "538 MB", "1.1 GB", "1.0 GB", "25 MB"]


def test_the_report_ends_with_the_run_directory_and_its_size(tmp_path):
    """The report's last line says where the run is and how much disk it holds (links once)."""
    import io
    from rich.console import Console
    from report import final_report
    run = tmp_path / "x"
    (run / "checkpoints" / "bc").mkdir(parents=True)
    (run / "checkpoints" / "bc" / "model.safetensors").write_bytes(b"0" * 2_000_000)
    os.link(run / "checkpoints" / "bc" / "model.safetensors", run / "checkpoints" / "bc" / "copy")
    console = Console(file=io.StringIO(), width=200)
    text = final_report(run, console)
    assert text.rstrip().splitlines()[-1] == f"run directory: {run}, 2.0 MB"
    assert f"run directory: {run}, 2.0 MB" in console.file.getvalue()
