"""The run directory: config identity, resume checks, line-atomic records (DESIGN.md, run directory).

    runs/<name>/config.json      the resolved config, written once
    runs/<name>/phases.json      finished phases with their counts
    runs/<name>/eval/<label>.jsonl  one graded trajectory per line, appended as episodes end
    runs/<name>/eval/<label>.json   the summary, written when the evaluation is complete

Resume promise: re-running the same command loses and duplicates nothing. Records are appended one
whole line at a time (a crash can leave at most a truncated last line, which is ignored and
overwritten), and readers key records by task id.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path


class ConfigError(ValueError):
    """A run cannot start or resume with this config: printed as one line."""


# A run name becomes one directory under runs/, so it must be a plain name: a path ("../../etc", "..")
# would put the run's files, reference answers included, somewhere else.
RUN_NAME_RULE = ("a run name is a plain name: ASCII letters, digits, '-', '_' and '.', at most 100 characters, "
                 "not starting with '.' or '-'")
RUN_NAME_MAX_CHARS = 100


DISK_ERRORS = {errno.EACCES: "choose another --runs-dir, or fix its permissions",
               errno.EPERM: "choose another --runs-dir, or fix its permissions",
               errno.EROFS: "the filesystem is read-only: choose another --runs-dir",
               errno.ENOSPC: "the disk is full: free space, or choose another --runs-dir",
               errno.EDQUOT: "the disk quota is used up: free space, or choose another --runs-dir"}


# ----------------------------------------------------------------------------------------------
# Config dataclasses on the command line: one adapter for score.py's Config and the standalone
# sft.py and rl.py


def option(default, help_text: str, **metadata):
    """A field of a config dataclass with its --help text (and whatever else its config records)."""
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})


def option_type(f: dataclasses.Field):
    """How a flag's text becomes the field's value: by the default's type, or the one in `X | None`;
    `bool | None` (lora) reads auto / true / false."""
    if "bool" in str(f.type) and f.default is None:
        return auto_true_false
    if f.default is not None:
        return type(f.default)
    return float if "float" in str(f.type) else int if "int" in str(f.type) else str


def auto_true_false(text: str) -> bool | None:
    """A `bool | None` flag's value: auto (None), true or false; anything else is argparse's one-line error."""
    values = {"auto": None, "true": True, "false": False}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, true or false")
    return values[text.lower()]


def add_flags(parser, config_class, group_of=None, aliases: dict | None = None, none_means: str = "") -> None:
    """One --flag per field of `config_class` (dashes for underscores), its default the field's. The help
    is the field's text, its allowed values (metadata "choices") and its default (`none_means` says what
    a default of None stands for); `group_of(field)` picks the argument group. A boolean with default
    False is a switch; one with default True has --no-NAME."""
    for f in dataclasses.fields(config_class):
        group = group_of(f) if group_of else parser
        choices = f.metadata.get("choices", ())
        default = f.default if f.default is not None else none_means or ("auto" if "bool" in str(f.type) else None)
        default = repr(default) if default == "" else default
        text = (f.metadata.get("help", "") + (f" [{' | '.join(choices)}]" if choices else "")
                + f" (default: {default})").replace("%", "%%")
        name = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            action = "store_true" if f.default is False else argparse.BooleanOptionalAction
            group.add_argument(name, dest=f.name, action=action, default=f.default, help=text)
        else:
            group.add_argument(name, *(aliases or {}).get(f.name, ()), dest=f.name, type=option_type(f),
                               default=f.default, metavar=f.name.upper(), help=text)


def flag_values(args, config_class) -> dict:
    """The fields of `config_class` from parsed flags (add_flags), ready for config_class(**...)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)}


def guarded(work, console) -> int:
    """Run work() -> exit code; a mistake a user can cause ends with one line and exit code 2."""
    import torch
    from environment.tasks import TaskError
    from student import StudentError
    from teacher import TeacherError
    try:
        return work()
    except (ConfigError, StudentError, TaskError, TeacherError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    except torch.OutOfMemoryError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        console.print(f"[red]error:[/red] CUDA out of memory ({first[:120]}): try a smaller --eval-batch-size, "
                      "a LoRA student (automatic from 1B), or a smaller teacher (--teacher qwen-32b-q4 or "
                      "--teacher-url); finished records are kept and the same command resumes", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: finished records are saved; run the same command again to resume")
        return 130
    except OSError as exc:  # the disk, not the program: read-only, full, or not ours
        if exc.errno not in DISK_ERRORS:
            raise
        console.print(f"[red]error:[/red] cannot write {exc.filename or 'the run directory'}: {exc.strerror} "
                      f"({DISK_ERRORS[exc.errno]}); finished records are kept and the same command resumes",
                      highlight=False)
        return 2


def check_run_name(name: str) -> None:
    """Raise ConfigError, in one line, unless `name` is a plain run name (RUN_NAME_RULE)."""
    bad = sorted(set(re.sub(r"[A-Za-z0-9._-]", "", name)))
    if not name:
        problem = "it is empty (leave --run out for the default name)"
    elif "/" in name or "\\" in name or os.sep in name:
        problem = "it is a path, not a name"
    elif name in (".", ".."):
        problem = "it names the directory itself or its parent, not a run"
    elif bad:
        problem = "it contains " + " ".join(repr(c) for c in bad[:5])
    elif name[0] in ".-":
        problem = "a leading '.' hides the directory" if name[0] == "." else "a leading '-' reads as an option"
    elif len(name) > RUN_NAME_MAX_CHARS:
        problem = f"it has {len(name)} characters"
    else:
        return
    shown = name if len(name) <= 60 else name[:57] + "..."
    raise ConfigError(f"run name {shown!r}: {problem}; {RUN_NAME_RULE}")


def config_hash(config, operational: set[str]) -> str:
    """8 hex digits over every field that affects results (operational fields excluded)."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in operational}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def open_run(run_dir: Path, config, operational: set[str]) -> None:
    """Write config.json on first use; on resume refuse if a result-affecting field changed.

    The run directory is the owner's alone (mode 0700): it holds reference answers, and the code
    sandbox's own uid (tools.py, a root host) must not read them even where no bwrap hides them.
    Temporary files left by a killed process are removed here (remove_temporaries)."""
    check_run_name(run_dir.name)  # the last guard: nothing is created outside the runs directory
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    for directory in (run_dir, run_dir / "eval", run_dir / "samples"):
        remove_temporaries(directory)
    path = run_dir / "config.json"
    current = dataclasses.asdict(config)
    if not path.exists():
        write_json_atomic(path, current)
        return
    saved = json.loads(path.read_text())
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items()
               if k not in operational and k in saved and saved[k] != v]
    if changed:
        raise ConfigError(f"run {run_dir.name} was started with other settings ({'; '.join(changed)}); "
                          "use --run NEW_NAME, or --init-from to branch from it")


def make_console(quiet: bool = False):
    """Rich output. Into a file or a pipe (not a terminal) lines are not hard-wrapped at 80 columns,
    so an error line or a printed command stays one line that can be searched and pasted."""
    import sys
    from rich.console import Console
    return Console(quiet=quiet) if sys.stdout.isatty() else Console(quiet=quiet, soft_wrap=True, width=160)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write under a temporary name, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp", dir=path.parent)  # a name remove_temporaries knows
    with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes files private; run files are meant to be read by others
    os.replace(tmp, path)


def write_json_atomic(path: Path, value) -> None:
    write_atomic(path, json.dumps(value, indent=2) + "\n")


# What a killed writer leaves behind: "<name>.tmp<random>" (write_atomic, save_training_state,
# save_final), "<name>.tmp" (score.py's MPS outputs), and "<name>.<8 random characters>" of
# write_atomic before it named its files ".tmp" (only after the extensions it writes).
TEMPORARY_NAME = re.compile(r".+\.tmp[a-z0-9_]*|.+\.(json|jsonl|md|png)\.[a-z0-9_]{8}")


def remove_temporaries(directory: Path) -> list[str]:
    """Remove the temporary files and directories a killed writer left directly in `directory`
    (not below it); returns their names. Only writers of this package make such names, and a run
    directory has one writer at a time, so what matches is a leftover, never a write in progress."""
    removed = []
    if not directory.is_dir():
        return removed
    for item in sorted(directory.iterdir()):
        if not TEMPORARY_NAME.fullmatch(item.name):
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
        removed.append(item.name)
    return removed


def run_size(run_dir: Path) -> int:
    """Bytes of the files under run_dir, a file with several hard links counted once (--init-from
    links checkpoints, so a branch holds no second copy of the weights). Symlinks are not followed."""
    seen, total = set(), 0
    for root, _, names in os.walk(run_dir):
        for name in names:
            info = os.lstat(os.path.join(root, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def human_size(num_bytes: int) -> str:
    """Bytes in decimal units as a reader takes them in: "812 B", "4.2 kB", "538 MB", "1.1 GB"."""
    value = float(num_bytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 999.5 or unit == "TB":  # (999.7 MB reads as 1.0 GB)
            break
        value /= 1000
    return f"{num_bytes} B" if unit == "B" else f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record as one line with a single write, flushed to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """All complete records; a truncated last line (a crash mid-write) is dropped and cut from the
    file so the next append starts on a fresh line."""
    if not path.exists():
        return []
    records, good_bytes = [], 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                records.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return records


def finished_phases(run_dir: Path) -> dict:
    """phases.json: each finished phase with its counts ({} before the first one finishes)."""
    path = run_dir / "phases.json"
    return json.loads(path.read_text()) if path.exists() else {}


def mark_phase_done(run_dir: Path, phase: str, counts: dict) -> None:
    path = run_dir / "phases.json"
    phases = finished_phases(run_dir)
    kept = {k: v for k, v in phases.get(phase, {}).items() if k in ("wall_s", "teacher_calls", "copied_from")}
    phases[phase] = {**kept, **counts}  # costs summed over earlier invocations and provenance are kept
    write_json_atomic(path, phases)


# ----------------------------------------------------------------------------------------------
# Resumable training state, shared by sft.py and rl.py


def learned_settings(config) -> dict:
    """A training config (SFTConfig, RLConfig) as TrainingRun's identity: every field that changes what
    is learned, i.e. all but those marked operational (how often to checkpoint, the progress bar)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if not f.metadata.get("operational")}


class TrainingRun:
    """PLUMBING: one training phase's resumable state in out_dir/checkpoint/, shared by train_sft and
    train_rl, so that the loops hold the method and this holds the bookkeeping:

        run = TrainingRun("sft", out_dir, metrics_path, num_updates, identity, ...)
        run.resume(model, optimizer, scheduler)     # restore the last checkpoint, if there is one
        with run:                                    # the progress bar
            for update_idx in run.updates():         # the updates still to do (up to stop_after)
                ...                                  # the phase's own update
                run.end_update(record, line, info)   # print, buffer the metrics line, checkpoint when due
        summary = run.finish(model, tokenizer, summary)  # the final model and summary.json, once

    Metrics lines are appended together with the checkpoint that covers them, so an update redone
    after a crash never logs twice. `identity` (the config without operational fields, a fingerprint
    of the data, ...) must equal the saved one, or resuming refuses; `record` is saved, not checked.
    Under `accelerate launch` only the main process writes, and `barrier` lines the processes up."""

    def __init__(self, label: str, out_dir: Path, metrics_path: Path, num_updates: int, identity: dict, *,
                 checkpoint_every: int, console, progress: bool = True, stop_after: int | None = None,
                 on_update=None, record: dict | None = None, main_process: bool = True, barrier=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.label, self.out_dir, self.metrics_path = label, Path(out_dir), Path(metrics_path)
        self.path = self.out_dir / "checkpoint"
        self.num_updates, self.identity, self.record = num_updates, identity, record or {}
        self.checkpoint_every, self.stop_after, self.on_update = checkpoint_every, stop_after, on_update
        self.console, self.main_process, self.barrier = console, main_process, barrier or (lambda: None)
        self.done = 0  # updates done, by this call and earlier ones
        self.finished_before = False  # the saved state was finished: only its weights were restored
        self.pending: list[dict] = []  # metrics lines that no checkpoint covers yet
        self.model = self.optimizer = self.scheduler = None
        self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                                 disable=not progress)

    @property
    def finished(self) -> bool:
        return self.done == self.num_updates

    def resume(self, model, optimizer, scheduler=None) -> int:
        """Remove what a save killed half way left (checkpoint.tmp*, final.tmp*, ...), then restore the
        last checkpoint, if there is one: weights, optimiser, scheduler and RNG (only the weights of a
        finished one). A checkpoint of another identity is refused. Returns the updates already done."""
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        if self.main_process:
            for directory in (self.out_dir, self.path):
                remove_temporaries(directory)
        found = find_training_state(self.path)
        if found is None:
            return 0
        saved = json.loads((found / "state.json").read_text())
        if any(saved.get(key) != value for key, value in self.identity.items()):
            raise ValueError(f"{found} was written by a run with other data or settings; use another out_dir")
        self.finished_before = saved.get("finished", False)
        optimizer = None if self.finished_before else optimizer
        self.done = load_training_state(found, model, optimizer, scheduler)["update"]
        self.console.print(f"{self.label}: resumed from {found} after update {self.done}/{self.num_updates}")
        return self.done

    def updates(self) -> range:
        """The indices of the updates this call does: from the first not done to the end, or to stop_after."""
        end = self.num_updates if self.stop_after is None else min(self.num_updates, self.stop_after)
        return range(self.done, end)

    def __enter__(self) -> "TrainingRun":
        self.progress.start()
        self.bar = self.progress.add_task(self.label, total=self.num_updates, completed=self.done, info="")
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def end_update(self, record: dict, line: str, info: str = "") -> None:
        """One update is done: print its line, keep its metrics line, and checkpoint when one is due:
        every checkpoint_every updates, after the last update, and where this call stops (stop_after)."""
        self.done += 1
        self.pending.append(record)
        self.console.print(line, highlight=False)
        self.progress.update(self.bar, advance=1, info=info)
        if self.on_update is not None:
            self.on_update(record)
        if self.done % self.checkpoint_every == 0 or self.done == self.num_updates or self.done == self.stop_after:
            state = {"update": self.done, "num_updates": self.num_updates, **self.identity, **self.record,
                     "commit": git_commit()}
            if self.main_process:
                save_training_state(self.path, self.model, self.optimizer, state, self.scheduler)
                for pending in self.pending:
                    append_jsonl(self.metrics_path, pending)
            self.pending = []
            self.barrier()

    def finish(self, model, tokenizer, summary: dict) -> dict:
        """After the last update: the final model in Hugging Face format and summary.json in out_dir,
        then the checkpoint marked finished (it keeps the weights once and drops the optimiser state).
        A run that had finished before returns its saved summary, marked restored. Stopped early:
        nothing is written. Returns the summary."""
        if self.finished_before:
            summary = {**json.loads((self.out_dir / "summary.json").read_text()), "restored": True}
        elif self.finished and self.main_process:
            save_final(self.out_dir, model, tokenizer)
            write_json_atomic(self.out_dir / "summary.json", summary)
            finish_training_state(self.path)  # last: a crash before it saves the final model again
        self.barrier()
        return summary

    def outcome(self) -> str:
        """The end of the phase's last line: where the model went, or how to go on."""
        return f" -> {self.out_dir}" if self.finished else " (stopped early; re-run to resume)"


def save_final(path: Path, model, tokenizer) -> None:
    """The trained model in Hugging Face format, file by file atomically, next to checkpoint/."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="final.tmp", dir=path))
    model.save_pretrained(str(tmp))  # full weights, or only the adapter for a peft model
    tokenizer.save_pretrained(str(tmp))
    for item in tmp.iterdir():
        os.replace(item, path / item.name)
    tmp.rmdir()


def save_training_state(path: Path, model, optimizer, state: dict, scheduler=None) -> None:
    """path/ = trainable tensors, optimiser, scheduler, RNG, state.json: filled under a temporary name,
    then swapped in by renames (a crash between the two renames leaves path.old, which
    find_training_state reads)."""
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp", dir=path.parent))
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    torch.save(trainable, tmp / "trainable.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "rng.pt")
    write_json_atomic(tmp / "state.json", state)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def find_training_state(path: Path) -> Path | None:
    return next((c for c in (path, path.with_name(path.name + ".old")) if (c / "state.json").exists()), None)


def saved_weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model saved by save_pretrained: one file, or the shards its index
    names ([] when there are none: a LoRA adapter, or nothing saved yet)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return [model_dir / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [model_dir / "model.safetensors"] if (model_dir / "model.safetensors").exists() else []


def finish_training_state(path: Path, drop: tuple[str, ...] = ("optimizer.pt", "scheduler.pt", "rng.pt")) -> None:
    """Mark the state at `path` finished, once the final model is saved beside it (path.parent):
    a finished run keeps only what restores its trained weights. The optimiser state goes. And when
    the final model's safetensors hold every trainable tensor under its own name and shape (full
    fine-tuning: the trainable tensors are the model), trainable.pt would be a second copy of the
    weights (538 MB for SmolLM2-135M): it goes too, and state.json points at the saved model
    instead. A LoRA adapter is named differently in the saved files and is small: it stays.
    Restoring from the saved model is exact: it holds the weights in the dtype the trained model is
    handed back in (sft.py casts back to it; rl.py trains and saves in fp32)."""
    import torch
    from safetensors import safe_open
    state = json.loads((path / "state.json").read_text())
    state["finished"] = True
    files = saved_weight_files(path.parent)
    trainable_path = path / "trainable.pt"
    if files and trainable_path.exists():
        shapes = {}
        for file in files:  # the headers only: names and shapes, no tensor is read
            with safe_open(str(file), "pt") as f:
                shapes.update({name: list(f.get_slice(name).get_shape()) for name in f.keys()})
        trainable = torch.load(trainable_path, map_location="cpu", mmap=True)  # mmap: shapes without reading
        if all(shapes.get(name) == list(t.shape) for name, t in trainable.items()):
            state["weights_in"] = [f.name for f in files]  # relative to path.parent
        del trainable
    write_json_atomic(path / "state.json", state)  # first: a crash after it still has the weights
    for name in drop + (("trainable.pt",) if "weights_in" in state else ()):
        (path / name).unlink(missing_ok=True)


def load_training_state(path: Path, model, optimizer, scheduler=None) -> dict:
    """Restore what save_training_state wrote; tensors are loaded onto the CPU first, then copied in.
    With optimizer None only the weights are restored (a finished run): from trainable.pt, or from
    the final model's files that finish_training_state pointed state.json at."""
    import torch
    state = json.loads((path / "state.json").read_text())
    if (path / "trainable.pt").exists():
        tensors = torch.load(path / "trainable.pt", map_location="cpu")
    elif state.get("weights_in"):
        from safetensors.torch import load_file
        tensors = {}
        for name in state["weights_in"]:
            tensors.update(load_file(str(path.parent / name), device="cpu"))
    else:
        raise ValueError(f"checkpoint {path} holds no weights (no trainable.pt, no saved model named)")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or {n for n, p in model.named_parameters() if p.requires_grad} & set(missing):
        raise ValueError(f"checkpoint {path} does not match this model (LoRA vs full weights?)")
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))
        if scheduler is not None:
            scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu"))
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def git_commit() -> str:
    """The short commit of the code, recorded with every checkpoint ("" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def link_or_copy(src: str, dst: str) -> None:
    """A hard link where the filesystem allows (one copy of a checkpoint's weights on disk), else a copy.
    Sharing the file is safe because nothing here rewrites a file in place: every writer writes a new
    file under a temporary name and renames it over the old one, which leaves the other link alone."""
    if os.path.lexists(dst):
        os.unlink(dst)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def branch_run(source: Path, target: Path, phases: list[str]) -> list[str]:
    """--init-from: copy the records and checkpoints of `phases` (finished in `source`) into the new
    run `target`, so an ablation reuses them instead of recomputing. Returns the phases copied.
    Directories (checkpoints, samples) are hard-linked file by file; records are copied, since a
    resumed run appends to them. phases.json is written last, in one go: a branch killed half way
    has no finished phase, and branching again redoes it whole."""
    done = finished_phases(source)
    evals = lambda label: [f"eval/{label}.json", f"eval/{label}.jsonl",  # and the held-out sets (compare)
                           f"eval/heldout-{label}.json", f"eval/heldout-{label}.jsonl"]
    files = {"eval": [*evals("base"), "eval/teacher.json", "eval/teacher.jsonl"],
             "bc": ["bc.jsonl", "checkpoints/bc", *evals("bc")],
             "mps": ["mps.jsonl", "sft.jsonl", "keysteps.jsonl", "mps_diagnostics.json", "teacher_cache.jsonl"],
             "sft": ["checkpoints/sft", *evals("sft")],
             "rl": ["checkpoints/rl", *evals("rl"), "samples"]}
    copied = [p for p in phases if p in done]
    for phase in copied:
        for name in files[phase]:
            src, dst = source / name, target / name
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True, copy_function=link_or_copy)
            elif src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    labels = {"bc", "sft", "rl"} & set(copied)  # the training curves of the copied phases
    curves = [r for r in read_jsonl(source / "metrics.jsonl")
              if r.get("label") in labels or ("rl" in copied and any(k.startswith("rl/") for k in r))]
    if curves:
        write_atomic(target / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in curves))
    if copied:
        phases_now = finished_phases(target)
        phases_now.update({p: dict(done[p], copied_from=source.name) for p in copied})
        write_json_atomic(target / "phases.json", phases_now)
    return copied
