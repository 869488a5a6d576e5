"""score: SCoRe (arXiv 2509.14257), student-centred distillation of LLM agents, on one machine.

    python score.py                          # the loop offline: eval -> bc -> mps -> sft -> rl, evaluating after each
    python score.py eval --n 16 --tasks arith  # one phase: eval | bc | mps | sft
    python score.py eval --student qwen-7b   # a GPU preset (needs the hub, or a local directory)
    python score.py --teacher smol-135m-q4   # the same loop with a real LLM teacher through llama.cpp
    python score.py show RUN [TASK_ID]       # the audit view of MPS: first error, verdict, correction
    python score.py compare --seeds 0,1,2    # SCoRe against imitation and the RL ablations (compare.py)
    python score.py assignments list         # the course kit: make, grade (course/kit.py)

The default teacher is `reference`, a scripted expert that knows each generated task's reference
solution: the only GGUF that ships offline (SmolLM2-135M) is far too small to teach (DESIGN.md,
Models), so offline the reference teacher shows the method's mechanism honestly. Its own evaluation
row is an oracle and is labelled so.

The options live in config.py: one frozen dataclass for every entry point, its presets (`cpu` for
small students, `gpu` for the others), the checks made before any work, and --help. This file runs
the phases with them.

The run directory runs/<name>/ is named from the config's hash unless --run is given, so running the
same command again resumes it (runs.py).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import student  # noqa: F401  (first: it sets OpenMP's waiting policy before torch loads; student.py says why)
from config import (OPERATIONAL, Config, check_gpu_plan, check_memory, check_resources, command_for,
                    init_from, init_source, load_tasks_for, mps_splits, parse_args, phase_config, print_budget,
                    reusable_phases, rollout_dtype, run_name, world_size)
from report import print_summary, summarise
from runs import finished_phases, guarded


# ----------------------------------------------------------------------------------------------
# Phases


def rollout_config(config: Config, temperature: float, top_p: float = 1.0):
    from agent import RolloutConfig
    return RolloutConfig(max_steps=config.max_steps, max_new_tokens=config.max_new_tokens,
                         max_context_tokens=config.max_context_tokens, temperature=temperature, top_p=top_p,
                         timeout_s=config.timeout_s, max_output_chars=config.max_output_chars)


def make_sandbox(config: Config):
    from tools import Sandbox
    return lambda corpus: Sandbox(corpus=corpus, timeout_s=config.timeout_s, max_output_chars=config.max_output_chars,
                                  isolation=config.sandbox)


OPENED_TEACHERS: list = []  # every teacher this process opened: their call counts go to phases.json


def teacher_calls() -> int:
    return sum(t.stats.calls for t in OPENED_TEACHERS)


def add_phase_cost(run_dir: Path, phase: str, wall_s: float, calls: int, console) -> None:
    """Add this invocation's wall time and teacher calls to the phase's entry (summed over resumes),
    and its peak GPU memory when there is a GPU; print them in one line. An invocation interrupted
    before the phase finished keeps its cost in pending_costs.json, added when the phase finishes."""
    import torch
    from runs import mark_phase_done, write_json_atomic
    pending_path = run_dir / "pending_costs.json"
    pending = json.loads(pending_path.read_text()) if pending_path.exists() else {}
    earlier = pending.pop(phase, {"wall_s": 0.0, "teacher_calls": 0})
    earlier = {"wall_s": earlier["wall_s"] + wall_s, "teacher_calls": earlier["teacher_calls"] + calls}
    entry = finished_phases(run_dir).get(phase)
    if entry is None:  # not finished (interrupted, or stopped early with nothing to do): keep the cost
        write_json_atomic(pending_path, dict(pending, **{phase: earlier}))
        return
    cost = dict(wall_s=entry.get("wall_s", 0.0) + earlier["wall_s"],
                teacher_calls=entry.get("teacher_calls", 0) + earlier["teacher_calls"])
    line = f"{phase}: done in {wall_s:.0f} s, {calls} teacher calls"
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cost["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
        torch.cuda.reset_peak_memory_stats()
        line += f", peak GPU memory {cost['peak_gpu_gb']:.1f} GiB (torch; llama.cpp's own memory not included)"
    mark_phase_done(run_dir, phase, dict(entry, **cost))
    if pending_path.exists():
        write_json_atomic(pending_path, pending)
    console.print(line)


def open_teacher(config: Config, run_dir: Path, tasks: list, console):
    from teacher import make_teacher
    if config.teacher == "reference" and not config.teacher_url:
        console.print("teacher: reference (a scripted expert built from the tasks' reference solutions; the "
                      "offline GGUF is too small to teach, see README)")
    cache = Path(config.teacher_cache) if config.teacher_cache else run_dir / "teacher_cache.jsonl"
    if config.teacher_knowledge:  # the same knowing teacher writes BC trajectories and MPS steps
        console.print(f"teacher: knows a share {config.teacher_knowledge:g} of the facts and intermediate results "
                      "(--teacher-knowledge): it states them instead of searching or computing"
                      + (" in its own episodes; its corrections search and compute (--corrections-show-work)"
                         if config.corrections_show_work else ""))
    teacher = make_teacher(config.teacher, tasks=tasks, cache_path=cache, url=config.teacher_url or None,
                           gpu_layers=config.teacher_gpu_layers, threads=config.threads, sees=config.teacher_sees,
                           seed=config.seed, knowledge=config.teacher_knowledge,
                           repeats_are_errors=config.repeats_are_errors, show_work=config.corrections_show_work)
    OPENED_TEACHERS.append(teacher)
    return teacher


def main_process() -> bool:
    """False in the other processes of `accelerate launch` (they train; rank 0 alone evaluates)."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone(config: Config) -> None:
    """Under several processes, none goes on until all are here: rank 0 writes the records (teacher
    trajectories, phases.json) that the others then read. One process: nothing to wait for. The
    process group is accelerate's, set up as sft.py's Accelerator will use it (gloo on the CPU)."""
    if world_size() > 1:
        from accelerate import PartialState
        from student import resolve_device
        PartialState(cpu=resolve_device(config.device).type == "cpu").wait_for_everyone()


def phase_eval(config: Config, run_dir: Path, console, label: str = "", student_path: str = "") -> dict:
    """Run the student (or, with label "teacher", the teacher) as an agent on test tasks; one graded
    trajectory per line in eval/<label>.jsonl, resumable by task id."""
    if not main_process():  # under `accelerate launch` the other processes train; rank 0 alone evaluates
        return {}
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from agent import Start, build_indexes, derive_seed, rollout
    from runs import append_jsonl, read_jsonl, write_json_atomic
    from student import load_student

    label = label or config.label or "base"
    who = "teacher " + (config.teacher_url or config.teacher) if label == "teacher" else (student_path or config.student)
    tasks = load_tasks_for(config, "test")
    records_path = run_dir / "eval" / f"{label}.jsonl"
    done = {r["task_id"]: r for r in read_jsonl(records_path)}  # resume: keep what finished
    todo = [t for t in tasks if t.id not in done]
    console.print(f"eval \\[{label}]: {len(tasks)} tasks ({len(done)} already done), {who}")
    summary_path = run_dir / "eval" / f"{label}.json"
    if not todo and summary_path.exists():  # finished before (a resume, or copied by --init-from): keep
        summary = json.loads(summary_path.read_text())  # its summary and the wall time it really took
        print_summary(summary, console)
        return summary
    began = time.perf_counter()
    if todo:
        settings = rollout_config(config, config.eval_temperature, config.eval_top_p)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task(f"eval {label}", total=len(todo))

            def record(trajectory):
                trajectory.split, trajectory.run = "test", run_dir.name
                append_jsonl(records_path, trajectory.to_dict())  # line-atomic: a crash loses nothing
                progress.advance(bar)

            if label == "teacher":  # the teacher solves each task itself, one at a time
                teacher = open_teacher(config, run_dir, tasks, console)
                for task in todo:
                    record(teacher.solve(task, settings, derive_seed(config.seed, "eval-teacher", task.id)))
                teacher.close()
            else:
                student = load_student(student_path or config.student, config.device, rollout_dtype(config),
                                       config.threads)
                # Continuous batching: eval_batch_size episodes in flight, a finished one's row taken
                # by the next task at once (agent.rollout), so the batch does not drain between chunks.
                starts = [Start(task=t, seed=derive_seed(config.seed, "eval", t.id)) for t in todo]
                rollout(student, starts, settings, indexes=build_indexes(todo), on_episode_end=record,
                        sandbox_factory=make_sandbox(config), max_active=config.eval_batch_size)
    wanted = {t.id for t in tasks}
    trajectories = [r for r in read_jsonl(records_path) if r["task_id"] in wanted]
    summary = summarise(trajectories, time.perf_counter() - began)
    summary.update(label=label, student=who, oracle=label == "teacher" and config.teacher == "reference")
    write_json_atomic(summary_path, summary)
    print_summary(summary, console)
    return summary


def phase_bc(config: Config, run_dir: Path, console) -> None:
    """Phase 0: the teacher solves the BC share of the training tasks (all of them with --method
    imitation); its correct trajectories train the base student into checkpoints/bc."""
    from agent import Trajectory, derive_seed
    from mps import assign_split
    from runs import append_jsonl, mark_phase_done, read_jsonl
    from sft import train_sft
    from student import load_student
    tasks = load_tasks_for(config, "train")
    share = [t for t in tasks if config.method == "imitation" or assign_split(t.id, config.seed, config.bc_fraction) == "bc"]
    path = run_dir / "bc.jsonl"
    done = {r["task_id"] for r in read_jsonl(path)}
    todo = [t for t in share if t.id not in done]
    console.print(f"bc: the teacher solves {len(share)} training tasks ({len(done)} already done)")
    if todo and main_process():  # rank 0 alone asks the teacher and writes bc.jsonl; the others wait for it
        teacher = open_teacher(config, run_dir, tasks, console)
        settings = rollout_config(config, 0.0)
        for task in todo:  # every attempt is kept, with its grade; training uses the correct ones
            trajectory = teacher.solve(task, settings, derive_seed(config.seed, "bc", task.id))
            trajectory.split, trajectory.run = "bc", run_dir.name
            append_jsonl(path, trajectory.to_dict())
        teacher.close()
    wait_for_everyone(config)
    correct = [Trajectory.from_dict(r) for r in read_jsonl(path) if r["correct"]]
    console.print(f"bc: {len(correct)} of {len(share)} teacher trajectories are correct; training the student on them")
    if not correct:
        reason = "0 examples: the teacher solved none of its tasks"
        console.print(f"bc: skipped: {reason}")
        if main_process():
            mark_phase_done(run_dir, "bc", {"tasks": len(share), "correct": 0, "trained": False, "skipped": reason})
        return
    student = load_student(config.student, config.device, config.dtype, config.threads)
    summary = train_sft(student, correct, phase_config(config, "bc"), run_dir / "checkpoints" / "bc",
                        run_dir / "metrics.jsonl", label="bc")
    del student
    release_memory()  # the trained weights are on disk; evaluation loads them afresh
    if main_process():
        mark_phase_done(run_dir, "bc", {"tasks": len(share), "correct": len(correct), "trained": True,
                                        "updates": summary.get("num_updates")})
    phase_eval(config, run_dir, console, label="bc", student_path=str(run_dir / "checkpoints" / "bc"))


def phase_rl(config: Config, run_dir: Path, console) -> None:
    """Phase 3: prefix-restart REINFORCE from checkpoints/sft on keysteps.jsonl into checkpoints/rl."""
    from rl import train_rl
    from runs import ConfigError, mark_phase_done, read_jsonl
    from student import load_student
    if "mps" not in finished_phases(run_dir):
        raise ConfigError(f"rl needs a finished mps phase in this run: run `{command_for(config, 'mps')}` first")
    keysteps = read_jsonl(run_dir / "keysteps.jsonl")
    episodes = read_jsonl(run_dir / "mps.jsonl")
    done = finished_phases(run_dir)
    start = next((str(run_dir / "checkpoints" / p) for p in ("sft", "bc") if done.get(p, {}).get("trained")),
                 config.student)
    rl_config = phase_config(config, "rl")
    usable = [k for k in keysteps if k.get("last") and k.get("split") == "rl"]
    if not usable and config.rl_start == "prefix" and not episodes:
        reason = "0 examples: no key-step record in the RL half"
        console.print(f"rl: skipped: {reason}")
        if main_process():
            mark_phase_done(run_dir, "rl", {"trained": False, "skipped": reason})
        return
    tasks_by_id = {t.id: t for t in load_tasks_for(config, "train")}
    teacher = open_teacher(config, run_dir, list(tasks_by_id.values()), console) \
        if config.key_step_judge == "teacher" else None
    console.print(f"rl: {len(usable)} key-step start states, student {start}")
    student = load_student(start, config.device, config.dtype, config.threads)
    summary = train_rl(student, keysteps, tasks_by_id, rl_config, run_dir / "checkpoints" / "rl",
                       run_dir / "metrics.jsonl", run_dir / "samples", episodes=episodes, teacher=teacher,
                       rollout_config=rollout_config(config, 1.0), sandbox_factory=make_sandbox(config))
    if teacher is not None:
        teacher.close()
    del student
    release_memory()
    # Trained only if some update took a step: a group whose rewards are all equal has no signal
    # and is skipped, and an update whose groups were all skipped changes nothing.
    stepped = sum(1 for r in read_jsonl(run_dir / "metrics.jsonl")
                  if "rl/update" in r and r.get("rl/skipped_groups", 0) < r.get("rl/groups", 0))
    counts = {"start_states": len(usable), "trained": bool(stepped), "updates": summary.get("num_updates"),
              "updates_with_signal": stepped}
    if not summary.get("num_updates"):
        counts["skipped"] = "0 start states"
    elif not stepped:
        counts["skipped"] = f"no signal: in all {summary['num_updates']} updates every group had equal rewards"
    if "skipped" in counts:
        console.print(f"rl: skipped: {counts['skipped']}")
    if main_process():  # under several processes rank 0 wrote metrics.jsonl and writes phases.json
        mark_phase_done(run_dir, "rl", counts)
    if stepped:
        phase_eval(config, run_dir, console, label="rl", student_path=str(run_dir / "checkpoints" / "rl"))


def release_memory() -> None:
    """Give a finished phase's memory back to the system. Freed tensors go back to the C allocator,
    which keeps the pages: without the trim, the ~5 GB of SFT stayed resident through evaluation and
    RL then added its own (10 GB for the whole default run, measured). Harmless where there is no glibc."""
    import ctypes
    import gc
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


MPS_CHUNK = 4  # MPS tasks per run_mps call, in batches: more keeps rows busy, fewer loses less to a kill


def phase_mps(config: Config, run_dir: Path, console) -> None:
    """Phase 1: student rollouts with one-step teacher corrections; mps.jsonl, sft.jsonl, keysteps.jsonl."""
    from agent import Trajectory
    from mps import derive_outputs, diagnostics, run_mps
    from runs import append_jsonl, mark_phase_done, read_jsonl, write_json_atomic
    from student import load_student
    tasks = load_tasks_for(config, "train")
    splits = mps_splits(config, tasks)
    share = [t for t in tasks if splits[t.id] in ("sft", "rl")]
    path = run_dir / "mps.jsonl"
    done = {r["task_id"] for r in read_jsonl(path)}
    todo = [t for t in share if t.id not in done]
    bc_dir = run_dir / "checkpoints" / "bc"
    student_path = str(bc_dir) if finished_phases(run_dir).get("bc", {}).get("trained") else config.student
    if student_path == config.student:
        console.print(f"[yellow]warning:[/yellow] this run has no trained checkpoints/bc: MPS rolls out "
                      f"--student {config.student} as it is (an untrained small student finishes almost no "
                      "episode in the agent format)")
    console.print(f"mps: {len(share)} tasks ({len(done)} already done), student {student_path}")
    mps_config = phase_config(config, "mps")
    if todo:
        student = load_student(student_path, config.device, rollout_dtype(config), config.threads)
        teacher = open_teacher(config, run_dir, tasks, console)

        def record(trajectory):
            trajectory.run = run_dir.name
            append_jsonl(path, trajectory.to_dict())  # line-atomic: resumable by task id

        settings = rollout_config(config, config.mps_temperature)
        # MPS_CHUNK x eval_batch_size tasks a call, eval_batch_size of them in flight (continuous
        # batching); a call's episodes are recorded as its rounds end, so a kill loses one chunk at most.
        chunk = MPS_CHUNK * config.eval_batch_size
        for i in range(0, len(todo), chunk):
            run_mps(student, teacher, todo[i:i + chunk], splits, settings, mps_config, make_sandbox(config), record,
                    on_round=lambda r, n: console.print(f"mps: round {r}: {n} episodes rolling out"),
                    max_active=config.eval_batch_size)
        console.print(f"teacher: {teacher.stats}")
        teacher.close()
    episodes = [Trajectory.from_dict(r) for r in read_jsonl(path) if r["task_id"] in splits]
    sft_records, keysteps = derive_outputs(episodes, mps_config)
    for name, records in (("sft.jsonl", sft_records), ("keysteps.jsonl", keysteps)):
        tmp = run_dir / (name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        tmp.replace(run_dir / name)
    report = diagnostics(episodes)
    write_json_atomic(run_dir / "mps_diagnostics.json", report)
    console.print(f"mps: {report['episodes']} episodes: {report['solved_alone']} solved alone, "
                  f"{report['corrected']} corrected, {report['hard']} hard {report['hard_reasons']}; "
                  f"first-error steps {report['first_error_histogram']}; "
                  f"{len(sft_records)} SFT trajectories, {len(keysteps)} key steps")
    mark_phase_done(run_dir, "mps", {"episodes": len(episodes), "sft": len(sft_records), "keysteps": len(keysteps)})


def phase_sft(config: Config, run_dir: Path, console) -> None:
    """Phase 2: continue from checkpoints/bc on sft.jsonl into checkpoints/sft."""
    from agent import Trajectory
    from runs import ConfigError, mark_phase_done, read_jsonl
    from sft import train_sft
    from student import load_student
    if "mps" not in finished_phases(run_dir):
        raise ConfigError(f"sft needs a finished mps phase in this run: run `{command_for(config, 'mps')}` first")
    records = [Trajectory.from_dict(r) for r in read_jsonl(run_dir / "sft.jsonl")]
    if config.sft_replay_bc:  # the remedy: the BC share's teacher trajectories again, beside the corrected ones
        replay = [Trajectory.from_dict(r) for r in read_jsonl(run_dir / "bc.jsonl") if r["correct"]]
        console.print(f"sft: {len(records)} MPS trajectories and {len(replay)} BC trajectories replayed")
        records += replay
    if not records:
        reason = "0 examples: MPS produced no correct trajectory in the SFT half"
        console.print(f"sft: skipped: {reason}")
        if main_process():
            mark_phase_done(run_dir, "sft", {"examples": 0, "trained": False, "skipped": reason})
        return
    trained_bc = finished_phases(run_dir).get("bc", {}).get("trained")
    start = str(run_dir / "checkpoints" / "bc") if trained_bc else config.student
    student = load_student(start, config.device, config.dtype, config.threads)
    summary = train_sft(student, records, phase_config(config, "sft"), run_dir / "checkpoints" / "sft",
                        run_dir / "metrics.jsonl", label="sft")
    del student
    release_memory()
    if main_process():
        mark_phase_done(run_dir, "sft", {"examples": len(records), "trained": True,
                                         "updates": summary.get("num_updates")})
    phase_eval(config, run_dir, console, label="sft", student_path=str(run_dir / "checkpoints" / "sft"))


# ----------------------------------------------------------------------------------------------
# The command line


def main(argv: list[str] | None = None) -> int:
    from runs import make_console
    console = make_console(quiet=not main_process())  # under several processes rank 0 alone prints
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "show":  # the audit view: show RUN [TASK_ID], show RUN --eval LABEL [TASK_ID]
        from report import show_main  # its own arguments (show --help), parsed there
        return show_main(argv[1:], console)
    if argv and argv[0] == "compare":  # every arm over seeds, one table (compare.py)
        from compare import main as compare_main
        return compare_main(argv[1:])
    if argv and argv[0] == "assignments":  # the course kit: list | make | grade (course/kit.py)
        from course.kit import main as assignments_main
        return assignments_main(argv[1:])
    return guarded(lambda: run_loop(parse_args(argv), console), console)


def quiet_libraries() -> None:
    """The libraries' own progress bars and notices (weight loading, GGUF conversion, shard writing)
    would bury the loop's lines; --verbose keeps them."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    disable_progress_bars()


def run_loop(config: Config, console) -> int:
    """The phases of config.phases in order, in the run directory the config names."""
    from runs import open_run
    if not config.verbose:
        quiet_libraries()
    run_dir = Path(config.runs_dir) / run_name(config)
    check_gpu_plan(config)
    check_prerequisites(config, run_dir)
    check_resources(config)
    new_run = not run_dir.exists()
    try:
        if main_process():  # under several processes rank 0 alone writes the run's files
            open_run(run_dir, config, OPERATIONAL)
        wait_for_everyone(config)
        return run_phases(config, run_dir, console)
    finally:  # a run that failed before recording anything leaves no directory behind
        if new_run and main_process() and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {"config.json"}:
            shutil.rmtree(run_dir, ignore_errors=True)


def check_prerequisites(config: Config, run_dir: Path) -> None:
    """sft and rl train on MPS's records: the run must have them, make them now, or copy them."""
    from runs import ConfigError
    asked = config.phases.split(",")
    have = set(asked) | set(finished_phases(run_dir))
    if config.init_from and (init_source(config) / "config.json").exists():
        have |= set(reusable_phases(config, init_source(config))[0]) & set(finished_phases(init_source(config)))
    for phase in ("sft", "rl"):
        if phase in asked and "mps" not in have and config.method == "score":
            raise ConfigError(f"{phase} trains on MPS's records and run {run_dir.name} has none: run "
                              f"`{command_for(config, 'mps')}` first, or branch from a run that has them "
                              "(--init-from RUN)")


def run_phases(config: Config, run_dir: Path, console) -> int:
    from runs import mark_phase_done
    console.print(f"run: {run_dir}")
    if config.init_from and not finished_phases(run_dir) and main_process():  # a new branch, or one killed
        init_from(config, run_dir, console)                                      # while copying
    wait_for_everyone(config)
    print_budget(config, console, finished_phases(run_dir))
    from student import configure_threads
    from tools import describe_isolation
    console.print(configure_threads(config.threads), highlight=False)
    console.print(describe_isolation(config.sandbox), soft_wrap=True)
    for phase in config.phases.split(","):
        if config.method == "imitation" and phase not in ("eval", "bc"):  # the baseline: BC on all training tasks
            console.print(f"{phase}: skipped: --method imitation trains only by imitation (phase bc)")
            continue
        check_memory(config, phase)
        began, calls_before = time.perf_counter(), teacher_calls()
        try:
            if phase == "eval":
                phase_eval(config, run_dir, console)
                if "," in config.phases:  # the whole loop also evaluates the teacher, in the same harness
                    phase_eval(config, run_dir, console, label="teacher")
                if main_process():
                    mark_phase_done(run_dir, "eval", {})
            elif phase == "bc":
                phase_bc(config, run_dir, console)
            elif phase == "mps":
                phase_mps(config, run_dir, console)
            elif phase == "sft":
                phase_sft(config, run_dir, console)
            elif phase == "rl":
                phase_rl(config, run_dir, console)
        finally:  # also when interrupted: the time and teacher calls spent so far count
            if main_process():
                add_phase_cost(run_dir, phase, time.perf_counter() - began, teacher_calls() - calls_before, console)
        wait_for_everyone(config)  # the next phase reads what this one wrote
        release_memory()
    if "," in config.phases and main_process():  # the whole loop ends with the report
        from report import final_report
        final_report(run_dir, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
