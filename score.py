"""score: SCoRe (arXiv 2509.14257), student-centred distillation of LLM agents, on one machine.

    python score.py eval                     # the offline student as an agent on the offline task sets
    python score.py eval --n 16 --tasks arith
    python score.py eval --student qwen-7b   # a GPU preset (needs the hub, or a local directory)

One frozen config dataclass serves every entry point; `--help` is generated from its fields. Fields
left at None take the value of the preset chosen for the student (DESIGN.md, Presets): `cpu` for
small students (SmolLM2-135M: greedy, 6 steps, 96 new tokens a turn, 2048-token context) and `gpu`
for the others (temperature 0.6, 8 steps, 1024 new tokens, 8192-token context).

The run directory runs/<name>/ is named from the config's hash unless --run is given, so running the
same command again resumes it (runs.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PHASES = ("eval",)  # the phases this command can run, in order


def arg(default, help_text: str):
    """A config field whose --help text is its one-line comment."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class Config:
    # what to run
    phases: str = arg("eval", "comma-separated phases to run, in order: " + ",".join(PHASES))
    student: str = arg("smol-135m", "student: a preset (smol-135m, qwen-0.5b..qwen-7b, llama-8b), hub id or local dir")
    tasks: str = arg("arith,lookup", "comma-separated task sets (arith, lookup, gsm8k, math500, aime24, aime25, "
                                     "hotpotqa, 2wiki, musique, bamboogle) or paths to .jsonl files")
    n: int = arg(20, "training tasks for training phases; test tasks per task set for eval")
    seed: int = arg(0, "the one seed; every rollout's seed is derived from it")
    preset: str = arg("auto", "budget preset: auto (gpu for a large student on a GPU, else cpu), cpu, gpu")
    # agent budgets (None = from the preset)
    max_steps: int | None = arg(None, "steps per episode, the plan included (paper: 8)")
    max_new_tokens: int | None = arg(None, "new tokens per assistant turn")
    max_context_tokens: int | None = arg(None, "context cap; an episode that would overflow ends unfinished")
    max_output_chars: int | None = arg(None, "observation budget in characters (middle elided)")
    timeout_s: float = arg(10.0, "wall-clock limit of one code step")
    eval_temperature: float | None = arg(None, "evaluation sampling temperature (0 = greedy)")
    eval_top_p: float | None = arg(None, "evaluation top-p")
    # hardware (DESIGN.md: torch's `mps` device is unrelated to the MPS phase)
    device: str = arg("auto", "auto, cpu or cuda (torch's Apple 'mps' device is not the MPS phase)")
    dtype: str = arg("auto", "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
    # operational (may change on resume)
    threads: int | None = arg(None, "CPU threads for torch (default: torch's choice)")
    eval_batch_size: int | None = arg(None, "episodes generated together in one batch")
    run: str = arg("", "run name under runs/ (default: <student>-<teacher>-<config hash>)")
    runs_dir: str = arg("runs", "where run directories live")
    label: str = arg("", "eval label, the file eval/<label>.json (default: base)")


# Fields that do not change results: they may differ when a run resumes.
OPERATIONAL = {"phases", "threads", "eval_batch_size", "run", "runs_dir", "label"}

# DESIGN.md, Presets: starting points, tuned by measurement (bench/RESULTS.md).
PRESETS = {
    "cpu": dict(max_steps=6, max_new_tokens=96, max_context_tokens=2048, max_output_chars=400,
                eval_temperature=0.0, eval_top_p=1.0, eval_batch_size=32),
    "gpu": dict(max_steps=8, max_new_tokens=1024, max_context_tokens=8192, max_output_chars=2000,
                eval_temperature=0.6, eval_top_p=0.95, eval_batch_size=32),
}
SMALL_STUDENTS = {"smol-135m"}


def resolve(config: Config) -> Config:
    """Fill the fields left at None from the preset."""
    preset = config.preset
    if preset == "auto":  # the GPU budgets only where a GPU is and the student is not a small one
        import torch
        on_gpu = config.device != "cpu" and torch.cuda.is_available()
        preset = "gpu" if on_gpu and config.student not in SMALL_STUDENTS else "cpu"
    if preset not in PRESETS:
        raise SystemExit(f"error: unknown --preset {config.preset!r}: use auto, {', '.join(PRESETS)}")
    filled = {k: v for k, v in PRESETS[preset].items() if getattr(config, k) is None}
    return dataclasses.replace(config, preset=preset, **filled)


def parse_args(argv: list[str]) -> Config:
    """`score.py [PHASE] --field value ...` -> Config. A leading phase name sets --phases."""
    parser = argparse.ArgumentParser(prog="score.py", description=__doc__.split("\n")[0])
    parser.add_argument("phase", nargs="?", choices=PHASES, help="run only this phase")
    for f in dataclasses.fields(Config):
        kind = {int: int, float: float, str: str}.get(type(f.default), None)
        if kind is None:  # Optional fields: the type named in the annotation
            kind = float if "float" in str(f.type) else int if "int" in str(f.type) else str
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f.metadata["help"])
    args = vars(parser.parse_args(argv))
    phase = args.pop("phase")
    config = Config(**args)
    if phase:
        config = dataclasses.replace(config, phases=phase)
    return resolve(config)


# ----------------------------------------------------------------------------------------------
# Scores with intervals


def interval95(scores: list[float]) -> tuple[float, float, float]:
    """Mean and 95% interval: Wilson for 0/1 scores (sound at small n), normal otherwise (F1)."""
    n = len(scores)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = sum(scores) / n
    z = 1.96
    if all(s in (0.0, 1.0) for s in scores):
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return mean, max(0.0, centre - half), min(1.0, centre + half)
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / max(1, n - 1))
    return mean, max(0.0, mean - z * sd / math.sqrt(n)), min(1.0, mean + z * sd / math.sqrt(n))


def summarise(trajectories: list[dict], wall_s: float) -> dict:
    """Per task set: score with n and 95% interval, finished rate, mean steps, generated tok/s."""
    table = {}
    for name in sorted({t["task_set"] for t in trajectories}):
        rows = [t for t in trajectories if t["task_set"] == name]
        mean, low, high = interval95([t["score"] or 0.0 for t in rows])
        table[name] = {"n": len(rows), "score": mean, "ci95": [low, high],
                       "correct": sum(bool(t["correct"]) for t in rows) / len(rows),
                       "finished": sum(t["finished"] for t in rows) / len(rows),
                       "mean_steps": sum(len(t["steps"]) for t in rows) / len(rows)}
    generated = sum(len(s["token_ids"] or []) for t in trajectories for s in t["steps"] if s["author"] == "student")
    return {"task_sets": table, "generated_tokens": generated, "wall_s": wall_s,
            "tok_per_s": generated / wall_s if wall_s > 0 else 0.0}


# ----------------------------------------------------------------------------------------------
# Phases


def phase_eval(config: Config, run_dir: Path, console) -> dict:
    """Run the student as an agent on test tasks; one graded trajectory per line in eval/<label>.jsonl."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from agent import RolloutConfig, Start, build_indexes, derive_seed, rollout
    from bench.tasks import load_tasks
    from runs import append_jsonl, read_jsonl, write_json_atomic
    from student import load_student

    label = config.label or "base"
    tasks = [t for name in config.tasks.split(",") for t in load_tasks(name.strip(), "test", config.n, config.seed)]
    records_path = run_dir / "eval" / f"{label}.jsonl"
    done = {r["task_id"]: r for r in read_jsonl(records_path)}  # resume: keep what finished
    todo = [t for t in tasks if t.id not in done]
    console.print(f"eval [{label}]: {len(tasks)} tasks ({len(done)} already done), student {config.student}")
    began = time.perf_counter()
    if todo:
        student = load_student(config.student, config.device, config.dtype, config.threads)
        rollout_config = RolloutConfig(max_steps=config.max_steps, max_new_tokens=config.max_new_tokens,
                                       max_context_tokens=config.max_context_tokens,
                                       temperature=config.eval_temperature, top_p=config.eval_top_p,
                                       timeout_s=config.timeout_s, max_output_chars=config.max_output_chars)
        indexes = build_indexes(todo)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task(f"eval {label}", total=len(todo))

            def record(trajectory):
                trajectory.split, trajectory.run = "test", run_dir.name
                append_jsonl(records_path, trajectory.to_dict())  # line-atomic: a crash loses nothing
                progress.advance(bar)

            for i in range(0, len(todo), config.eval_batch_size):
                batch = todo[i:i + config.eval_batch_size]
                starts = [Start(task=t, seed=derive_seed(config.seed, "eval", t.id)) for t in batch]
                rollout(student, starts, rollout_config, indexes=indexes, on_episode_end=record)
    wanted = {t.id for t in tasks}
    trajectories = [r for r in read_jsonl(records_path) if r["task_id"] in wanted]
    summary = summarise(trajectories, time.perf_counter() - began)
    summary.update(label=label, student=config.student)
    write_json_atomic(run_dir / "eval" / f"{label}.json", summary)
    print_summary(summary, console)
    return summary


def print_summary(summary: dict, console) -> None:
    from rich.table import Table
    table = Table(title=f"eval: {summary['label']} ({summary['student']})")
    for column in ("task set", "n", "score", "95% interval", "finished", "mean steps"):
        table.add_column(column, justify="right" if column != "task set" else "left")
    for name, row in summary["task_sets"].items():
        table.add_row(name, str(row["n"]), f"{row['score']:.3f}", f"[{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}]",
                      f"{row['finished']:.0%}", f"{row['mean_steps']:.1f}")
    console.print(table)
    console.print(f"generated {summary['generated_tokens']} tokens in {summary['wall_s']:.0f} s "
                  f"({summary['tok_per_s']:.1f} tok/s, tools and prefill included)")


def run_name(config: Config) -> str:
    from runs import config_hash
    student = Path(config.student.rstrip("/")).name.replace("/", "-")
    return config.run or f"{student}-reference-{config_hash(config, OPERATIONAL)}"


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from bench.tasks import TaskError
    from runs import ConfigError, open_run
    from student import StudentError
    console = Console()
    config = parse_args(sys.argv[1:] if argv is None else argv)
    run_dir = Path(config.runs_dir) / run_name(config)
    try:
        open_run(run_dir, config, OPERATIONAL)
        console.print(f"run: {run_dir}  (preset {config.preset}: {config.max_steps} steps, "
                      f"{config.max_new_tokens} new tokens a turn, context {config.max_context_tokens})")
        for phase in config.phases.split(","):
            if phase not in PHASES:
                raise ConfigError(f"unknown phase {phase!r}: choose from {', '.join(PHASES)}")
            if phase == "eval":
                phase_eval(config, run_dir, console)
    except (ConfigError, StudentError, TaskError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: finished records are saved; run the same command again to resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
