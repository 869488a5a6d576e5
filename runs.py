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

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path


class ConfigError(ValueError):
    """A run cannot start or resume with this config: printed as one line."""


def config_hash(config, operational: set[str]) -> str:
    """8 hex digits over every field that affects results (operational fields excluded)."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in operational}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def open_run(run_dir: Path, config, operational: set[str]) -> None:
    """Write config.json on first use; on resume refuse if a result-affecting field changed."""
    run_dir.mkdir(parents=True, exist_ok=True)
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


def write_json_atomic(path: Path, value) -> None:
    """Write under a temporary name, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


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


def mark_phase_done(run_dir: Path, phase: str, counts: dict) -> None:
    path = run_dir / "phases.json"
    phases = json.loads(path.read_text()) if path.exists() else {}
    phases[phase] = counts
    write_json_atomic(path, phases)
