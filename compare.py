"""compare: SCoRe against imitation and the RL ablations, over seeds, on the same tasks (the paper's Tables 2-3).

    python score.py compare --n 4 --seeds 0,1                  # every arm, two seeds, the quick CPU preset
    python score.py compare --preset cpu-full --seeds 0,1,2 --arms imitation,score-sft,score
    python score.py compare --from bench/results/cpu-full      # the pooled table again, from committed files

Every loop option (--preset, --n, --teacher-knowledge, ...) applies to every arm. For each seed, every
arm trains the same base student on the same training tasks and is scored on the same test tasks:

    imitation  BC on every training task (--method imitation): the paper's BC baseline
    score-sft  the BC share + MPS + SCoRe-SFT: the student after sft of the seed's main run
    score      + prefix-restart RL with the key-step reward: the same run, after rl
    outcome    RL ablation, --reward outcome: branched from the main run after sft
    question   RL ablation, --rl-start question: branched from the main run after sft

No phase is computed twice: score-sft and score are one run (read after sft and after rl); the other
arms start from it with --init-from (score.py), which copies the finished phases a changed option does
not affect: imitation reuses the evaluation before training, outcome and question reuse everything up
to SCoRe-SFT and train only RL. Each arm's final student is also evaluated on the held-out task sets
(`arith-heldout`, `arith-reworded`, `lookup-heldout` in environment/tasks.py: other templates, the test
problems in other words, another world) where they exist.

The directory (runs/compare-<student>-<teacher>-<hash>/, or runs/<--run>/) holds the arms' runs and
the results; the hash covers every result-affecting option except those the arms set themselves, so
the same command with more seeds or arms continues the same comparison, and re-running it after an
interruption resumes (each run resumes as score.py runs do):

    compare.json              the options shared by every arm, written once
    s<seed>-score/            the main run (eval, bc, mps, sft, rl): arms score-sft and score
    s<seed>-imitation/, s<seed>-outcome/, s<seed>-question/   the branched runs
    results/seed-<seed>.jsonl one line per arm of a finished seed: per-task scores and costs
    compare.md, compare.png   the pooled table and the arms side by side

results/*.jsonl is all the table needs: copy the files under bench/results/ and
`python score.py compare --from bench/results/<dir>` rebuilds it without runs/.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import score
from config import OPERATIONAL, PHASES, Config, check_memory, init_source, parse_args, reusable_phases
from report import duration, interval95, markdown_table, rich_table, score_cell, sign_test
from runs import (ConfigError, config_hash, finished_phases, git_commit, guarded, make_console, read_jsonl,
                  write_atomic, write_json_atomic)


@dataclass(frozen=True)
class Arm:
    run: str  # the run of a seed whose student this arm reads (s<seed>-<run>/)
    options: tuple[tuple[str, str], ...]  # the score.py options that make that run
    phases: tuple[str, ...]  # the phases the run needs for this arm
    labels: tuple[str, ...]  # the evaluation of the arm's final student: the first phase that trained
    about: str


ARMS = {
    "imitation": Arm("imitation", (("--method", "imitation"),), ("eval", "bc"), ("bc",),
                     "BC on every training task (the paper's BC baseline)"),
    "score-sft": Arm("score", (), ("eval", "bc", "mps", "sft"), ("sft", "bc"), "BC share + MPS + SCoRe-SFT"),
    "score": Arm("score", (), PHASES, ("rl", "sft", "bc"), "+ prefix-restart RL, key-step reward (SCoRe)"),
    "outcome": Arm("outcome", (("--reward", "outcome"),), PHASES, ("rl", "sft", "bc"),
                   "RL ablation: prefix restart, outcome reward"),
    "question": Arm("question", (("--rl-start", "question"),), PHASES, ("rl", "sft", "bc"),
                    "RL ablation: RL from the bare question"),
}
BASELINE = "imitation"  # every arm is compared with it task by task
RUN_ORDER = ("score", "imitation", "outcome", "question")  # the main run first: the others branch from it
# Config fields each arm sets itself: not options of a comparison (and not part of its hash).
ARM_FIELDS = ("seed", "method", "reward", "rl_start", "init_from", "phases", "label")
ROW_NAMES = {"base": "student before", "bc": "after BC", "sft": "after SFT", "rl": "after RL"}


# ----------------------------------------------------------------------------------------------
# The command line


@dataclass(frozen=True)
class Request:
    config: Config  # the options shared by every arm (seed 0 and the arms' own fields at default)
    loop_args: tuple[str, ...]  # the same, as score.py arguments, passed on to every arm's run
    seeds: tuple[int, ...]
    arms: tuple[str, ...]
    sources: tuple[str, ...]  # --from: results files or directories (then nothing is run)
    branch_from: str = ""  # --branch-from: another comparison whose runs this one's may start from


def parse_list(flag: str, text: str | None, example: str) -> list[str]:
    items = [item.strip() for item in (text or "").split(",")]
    if not any(items):
        raise ConfigError(f"{flag} is empty: give a comma-separated list, e.g. {flag} {example}")
    if "" in items:
        raise ConfigError(f"{flag} {text!r} has an empty item: give a comma-separated list, e.g. {flag} {example}")
    twice = sorted({item for item in items if items.count(item) > 1})
    if twice:
        raise ConfigError(f"{flag} {text!r} names {', '.join(twice)} twice")
    return items


def parse_seeds(text: str | None) -> tuple[int, ...]:
    items = parse_list("--seeds", text, "0,1,2")
    bad = [item for item in items if not item.isdigit()]
    if bad:
        raise ConfigError(f"--seeds {text!r}: {bad[0]!r} is not a seed; give non-negative integers, "
                          "e.g. --seeds 0,1,2")
    return tuple(int(item) for item in items)


def parse_arms(text: str | None) -> tuple[str, ...]:
    items = parse_list("--arms", text, ",".join(ARMS))
    unknown = [item for item in items if item not in ARMS]
    if unknown:
        raise ConfigError(f"unknown arm {unknown[0]!r} in --arms: choose from {', '.join(ARMS)}")
    return tuple(sorted(items, key=list(ARMS).index))  # the table's order


def parse_request(argv: list[str]) -> Request:
    """`compare [--seeds 0,1,2] [--arms a,b] [--from PATHS] [loop options]` -> Request. Every other
    option is a loop option (config.Config); those the arms set themselves are refused."""
    parser = argparse.ArgumentParser(prog="score.py compare", allow_abbrev=False,  # --seed is not --seeds
                                     description=__doc__.split("\n")[0], add_help=False)
    parser.add_argument("--seeds")
    parser.add_argument("--arms")
    parser.add_argument("--from", dest="sources", default="")
    parser.add_argument("--branch-from", dest="branch_from", default="")
    known, loop_args = parser.parse_known_args(argv)
    if "-h" in loop_args or "--help" in loop_args:
        print(__doc__.strip() + "\n\ncompare options: --seeds 0,1,2  --arms " + ",".join(ARMS)
              + "  --from PATHS\nloop options: as for `python score.py --help`")
        raise SystemExit(0)
    if known.branch_from and not (Path(known.branch_from) / "compare.json").exists():
        raise ConfigError(f"--branch-from {known.branch_from}: no comparison there (no compare.json)")
    if known.sources and loop_args:
        raise ConfigError(f"--from rebuilds the table from results files alone: drop {' '.join(loop_args)}")
    if loop_args and not loop_args[0].startswith("-"):
        raise ConfigError(f"compare runs every phase itself: drop {loop_args[0]!r} (usage: python score.py "
                          "compare --seeds 0,1,2 --arms ARMS, then any loop options)")
    config = parse_args(loop_args)
    defaults = Config()
    set_here = [f for f in ARM_FIELDS if getattr(config, f) != getattr(defaults, f)]
    if set_here:
        flag = "--" + set_here[0].replace("_", "-")
        raise ConfigError(f"compare sets {flag} itself for each arm: drop it (seeds: --seeds, arms: --arms "
                          f"{','.join(ARMS)})")
    sources = tuple(parse_list("--from", known.sources, "bench/results/cpu-full")) if known.sources else ()
    # With --from, --seeds and --arms only select (default: everything in the files).
    seeds = () if sources and known.seeds is None else parse_seeds("0,1,2" if known.seeds is None else known.seeds)
    arms = () if sources and known.arms is None else parse_arms(",".join(ARMS) if known.arms is None else known.arms)
    return Request(config, tuple(loop_args), seeds, arms, sources, known.branch_from)


def compare_dir(config: Config) -> Path:
    """runs/<--run> or runs/compare-<student>-<teacher>-<hash of the shared options>."""
    if config.run:
        return Path(config.runs_dir) / config.run
    student = Path(config.student.rstrip("/")).name
    teacher = Path(config.teacher.rstrip("/")).stem if not config.teacher_url else "url"
    return Path(config.runs_dir) / f"compare-{student}-{teacher}-{shared_hash(config)}"


def shared_hash(config: Config) -> str:
    return config_hash(config, OPERATIONAL | set(ARM_FIELDS))


def shared_options(config: Config) -> dict:
    """The result-affecting options every arm shares: what compare.json and each results line record."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in OPERATIONAL | set(ARM_FIELDS)}


def open_compare(directory: Path, config: Config) -> None:
    """compare.json on first use; a later command with other shared options is refused (with --run)."""
    path = directory / "compare.json"
    mine = {"hash": shared_hash(config), "options": shared_options(config)}
    if path.exists():
        saved = json.loads(path.read_text())
        changed = [f"{k}: {saved['options'].get(k)!r} -> {v!r}" for k, v in mine["options"].items()
                   if k in saved["options"] and saved["options"][k] != v]
        if changed:
            raise ConfigError(f"comparison {directory.name} was started with other options ({'; '.join(changed)}); "
                              "use another --run")
        return
    write_json_atomic(path, mine)


# ----------------------------------------------------------------------------------------------
# Running the arms of one seed


@dataclass
class Plan:
    """The runs of one seed: run name -> phases it needs, and the run it branches from."""
    phases: dict[str, tuple[str, ...]]
    source: dict[str, str]


def plan_seed(arms: tuple[str, ...]) -> Plan:
    """Which runs the arms need. The main run ("score") is needed by every arm but imitation, and then
    runs up to sft, plus rl when the score arm is asked for; the others branch from it."""
    phases: dict[str, tuple[str, ...]] = {}
    for name in arms:
        arm = ARMS[name]
        wanted = set(phases.get(arm.run, ())) | set(arm.phases)
        phases[arm.run] = tuple(p for p in PHASES if p in wanted)
    if any(ARMS[name].run != "imitation" for name in arms):
        phases.setdefault("score", ("eval", "bc", "mps", "sft"))
    source = {run: "score" for run in phases if run != "score" and "score" in phases}
    return Plan({run: phases[run] for run in RUN_ORDER if run in phases}, source)


def run_args(request: Request, directory: Path, seed: int, run: str, init_from: str) -> list[str]:
    """The score.py arguments of one run: the shared loop options, then what the arm sets."""
    options = next((arm.options for arm in ARMS.values() if arm.run == run), ())
    args = [*request.loop_args, "--seed", str(seed), "--runs-dir", str(directory), "--run", f"s{seed}-{run}"]
    args += [item for pair in options for item in pair]
    return args + (["--init-from", init_from] if init_from else [])


def finished_run_phases(run_dir: Path) -> set[str]:
    """Phases finished in phases.json whose evaluation is finished too: a training phase is marked
    done before its student is evaluated, so one interrupted in that evaluation runs again (it finds
    its training done and resumes the evaluation by task id)."""
    phases = finished_phases(run_dir)
    return {p for p, counts in phases.items()
            if p not in ("bc", "sft", "rl") or not counts.get("trained") or (run_dir / "eval" / f"{p}.json").exists()}


def run_once(request: Request, directory: Path, seed: int, run: str, plan: Plan, console) -> Config:
    """Run the phases this run still lacks (none if it is finished); returns its config."""
    run_dir = directory / f"s{seed}-{run}"
    existing = run_dir / "config.json"
    if existing.exists():  # a resume keeps the branching it was started with
        init_from = json.loads(existing.read_text()).get("init_from", "")
    else:
        init_from = branch_source(request, directory, seed, run, plan)
    args = run_args(request, directory, seed, run, init_from)
    config = parse_args(args)
    done = finished_run_phases(run_dir)
    source = init_source(config) if init_from else None
    if source and not finished_phases(run_dir) and (source / "config.json").exists():
        done |= set(reusable_phases(config, source)[0]) & finished_run_phases(source)  # it branches first
    todo = [p for p in plan.phases[run] if p not in done]
    if not todo and source and not finished_phases(run_dir):  # all it needs is in the run it branches from:
        score.run_loop(parse_args(args + ["--phases", "eval"]), quiet())  # copy it (eval is found done)
    if not todo:
        console.print(f"compare: seed {seed}, {run_dir.name}: finished")
        return config
    console.print(f"compare: seed {seed}, {run_dir.name}: phases {','.join(todo)}"
                  + (f" (branched from {init_from})" if init_from else ""), highlight=False)
    score.run_loop(parse_args(args + ["--phases", ",".join(todo)]), console)
    from report import final_report  # the run's own report.md, also for a run of one phase
    final_report(run_dir, quiet())
    return config


def branch_source(request: Request, directory: Path, seed: int, run: str, plan: Plan) -> str:
    """The run a new run starts from: the run of this seed it branches from in this comparison, or
    the same run of the comparison --branch-from names (a remedy that changes only SFT or RL reuses
    its BC and MPS), whichever has more of the phases this run may copy."""
    candidates = [f"s{seed}-{plan.source[run]}"] if run in plan.source else []
    if request.branch_from:
        candidates.append(str(Path(request.branch_from) / f"s{seed}-{run}"))
    config = parse_args(run_args(request, directory, seed, run, ""))
    best, most = "", 0
    for name in candidates:
        source = Path(name) if Path(name).is_dir() else directory / name
        if (source / "config.json").exists():
            reusable = set(reusable_phases(config, source)[0]) & finished_run_phases(source)
            if len(reusable) > most:
                best, most = name, len(reusable)
    return best


def quiet():
    from rich.console import Console
    return Console(file=io.StringIO(), width=200)


def heldout_sets(config: Config) -> list[str]:
    """The held-out families (environment/tasks.HELDOUT_SETS) of the task sets in --tasks."""
    from environment import tasks
    names = {name.strip() for name in config.tasks.split(",")}
    return [held for held in tasks.HELDOUT_SETS if held.split("-")[0] in names]


def final_label(run_dir: Path, arm: Arm) -> str:
    """The evaluation of the arm's final student: its last phase that trained and was evaluated."""
    phases = finished_phases(run_dir)
    for label in arm.labels:
        if phases.get(label, {}).get("trained") and (run_dir / "eval" / f"{label}.json").exists():
            return label
    return "base"


def count_tokens(texts: list[str], student: str) -> tuple[int, str]:
    """Tokens of `texts` with the student's tokenizer, or characters / 4 where it cannot be loaded."""
    try:
        from transformers import AutoTokenizer
        from student import resolve_model_path
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(student))
    except Exception:  # a hub id without a hub: the rough rule, and say so
        return sum(len(t) for t in texts) // 4, "characters / 4"
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts), "student tokenizer"


def teacher_texts(run_dir: Path, chain: tuple[str, ...]) -> list[str]:
    """Every step the teacher wrote for this student's training: all BC trajectories (correct or not)
    and every MPS replacement step (valid or not)."""
    texts = []
    if "bc" in chain:
        texts += [s["content"] for r in read_jsonl(run_dir / "bc.jsonl") for s in r["steps"] if s["author"] == "teacher"]
    if "mps" in chain:
        texts += [c["teacher_step"]["content"] for r in read_jsonl(run_dir / "mps.jsonl")
                  for c in r["corrections"] if c.get("teacher_step")]
    return texts


def arm_result(name: str, seed: int, config: Config, run_dir: Path, heldout: list[str], console) -> dict:
    """One results line: the arm's per-task scores on the test split and the held-out sets, and what
    its student cost (teacher calls and tokens, wall time of the phases behind it)."""
    from report import task_scores
    arm = ARMS[name]
    label = final_label(run_dir, arm)
    phases = finished_phases(run_dir)
    chain = tuple(p for p in arm.phases if p != "eval")  # the training phases this arm ran (or reused)
    if heldout:  # the held-out evaluation of this student, resumable like every evaluation
        student = str(run_dir / "checkpoints" / label) if label != "base" else ""
        held = dataclasses.replace(config, tasks=",".join(heldout))
        check_memory(held, "eval")
        score.phase_eval(held, run_dir, console, label=f"heldout-{label}", student_path=student)
    scores: dict[str, dict[str, float]] = {}
    for file_label in [label] + ([f"heldout-{label}"] if heldout else []):
        for task_id, (task_set, value) in sorted(task_scores(run_dir, file_label).items()):
            scores.setdefault(task_set, {})[task_id] = value
    tokens, counted = count_tokens(teacher_texts(run_dir, chain), config.student)
    rl = phases.get("rl", {}) if "rl" in chain else {}
    above = arm.labels[:arm.labels.index(label)] if label in arm.labels else arm.labels
    skipped = [p for p in PHASES if p in above and p in phases]  # phases that ran but trained nothing
    return {"compare": shared_hash(config), "comparison": run_dir.parent.name, "seed": seed, "arm": name,
            "run": run_dir.name, "label": label, "skipped": skipped,
            "scores": scores, "heldout_sets": heldout,
            "teacher_calls": sum(phases.get(p, {}).get("teacher_calls", 0) for p in chain),
            "teacher_tokens": tokens, "tokens_counted_by": counted,
            "wall_s": sum(phases.get(p, {}).get("wall_s", 0.0) for p in chain),
            "rl_start_states": rl.get("start_states"), "chain": list(chain),
            "commit": git_commit(), "options": shared_options(config)}


def run_seed(request: Request, directory: Path, seed: int, console) -> list[dict]:
    """Every arm of one seed, then its results file (results/seed-<seed>.jsonl, one line per arm;
    lines of arms asked for by an earlier command are kept)."""
    plan = plan_seed(request.arms)
    configs = {run: run_once(request, directory, seed, run, plan, console) for run in plan.phases}
    heldout = heldout_sets(request.config)
    lines = [arm_result(name, seed, configs[ARMS[name].run], directory / f"s{seed}-{ARMS[name].run}", heldout,
                        console) for name in request.arms]
    path = directory / "results" / f"seed-{seed}.jsonl"
    kept = [r for r in read_jsonl(path) if r["arm"] not in request.arms]
    merged = sorted(kept + lines, key=lambda r: list(ARMS).index(r["arm"]))
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in merged))
    console.print(f"compare: seed {seed} finished: {path}", highlight=False)
    return merged


# ----------------------------------------------------------------------------------------------
# The pooled table


def read_results(sources: list[Path]) -> list[dict]:
    """Results lines of every .jsonl file given or inside a directory given (one comparison only)."""
    files = []
    for source in sources:
        if source.is_dir():
            files += sorted(source.glob("*.jsonl"))
        elif source.is_file():
            files.append(source)
        else:
            raise ConfigError(f"--from {source}: no such file or directory")
    lines = [line for f in files for line in read_jsonl(f)]
    if not lines:
        raise ConfigError(f"--from {', '.join(map(str, sources))}: no results lines (results/seed-<seed>.jsonl "
                          "files of a comparison)")
    # One comparison: the same shared options. An option a line's code did not have yet had its default
    # there, so results written before an option was added still pool with later seeds.
    defaults = shared_options(Config())
    first = dict(defaults, **lines[0].get("options", {}))
    for line in lines[1:]:
        options = dict(defaults, **line.get("options", {}))
        differ = sorted(k for k in first if first[k] != options.get(k))
        if differ:
            raise ConfigError(f"--from mixes results of different comparisons ({lines[0]['compare']}, "
                              f"{line['compare']}: {', '.join(differ)} differ): give one's files")
    return lines


def number(value: float) -> str:
    """A mean over seeds: whole numbers as such, others to three significant digits (0.5, 12.5, 1234)."""
    return f"{value:.0f}" if value == int(value) or value >= 1000 else f"{value:.3g}"


def pooled_tables(lines: list[dict]) -> dict:
    """Headers and rows of the three tables, from results lines alone.

    Scores: per arm and task set, the per-task scores of every seed pooled (n = tasks x seeds) with a
    95% interval (interval95). Against imitation: pairs (seed, task) scored by both arms; tasks
    whose score rose / fell, and the exact two-sided sign test on them (report.sign_test). Cost: per
    seed, the mean over the seeds."""
    arms = [a for a in ARMS if any(line["arm"] == a for line in lines)]
    heldout = {s for line in lines for s in line.get("heldout_sets", [])}
    sets = sorted({s for line in lines for s in line["scores"]}, key=lambda s: (s in heldout, s))
    by_arm = {a: [line for line in lines if line["arm"] == a] for a in arms}

    def pooled(arm: str, task_set: str) -> dict[tuple[int, str], float]:
        return {(line["seed"], task): value for line in by_arm[arm] for task, value in line["scores"].get(task_set, {}).items()}

    score_rows, change_rows = [], []
    for arm in arms:
        cells = []
        for task_set in sets:
            values = list(pooled(arm, task_set).values())
            if values:
                mean, low, high = interval95(values)
                cells.append(score_cell({"n": len(values), "score": mean, "ci95": [low, high]}))
            else:
                cells.append("-")
        score_rows.append([arm, *cells])
        if arm != BASELINE and BASELINE in by_arm:
            cells = []
            for task_set in sets:
                mine, theirs = pooled(arm, task_set), pooled(BASELINE, task_set)
                pairs = [(mine[k], theirs[k]) for k in mine.keys() & theirs.keys()]
                if not pairs:
                    cells.append("-")
                    continue
                gained, lost = sum(a > b for a, b in pairs), sum(a < b for a, b in pairs)
                cells.append(f"+{gained} -{lost} of {len(pairs)} (p={sign_test(gained, lost):.2g})")
            change_rows.append([arm, *cells])
    cost_rows = []
    for arm in arms:
        rows, seeds = by_arm[arm], sorted({line["seed"] for line in by_arm[arm]})
        mean = lambda key: sum(line[key] or 0 for line in rows) / len(rows)
        labels = sorted({ROW_NAMES.get(line["label"], line["label"])
                         + (f" ({', '.join(line['skipped'])} trained nothing)" if line.get("skipped") else "")
                         for line in rows})
        starts = [line["rl_start_states"] for line in rows if line.get("rl_start_states") is not None]
        cost_rows.append([arm, " / ".join(labels), ", ".join(map(str, seeds)), number(mean("teacher_calls")),
                          number(mean("teacher_tokens")), number(sum(starts) / len(starts)) if starts else "-",
                          duration(mean("wall_s"))])
    return {"sets": sets, "heldout": sorted(heldout),
            "scores": (["arm", *sets], score_rows),
            "changes": (["arm", *sets], change_rows),
            "cost": (["arm", "student", "seeds", "teacher calls", "teacher tokens", "RL start states",
                      "wall time"], cost_rows)}


def draw_arms(lines: list[dict], path: Path) -> Path:
    """compare.png: per task set, one bar per arm (pooled score) with its 95% interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    tables = pooled_tables(lines)
    arms, sets = [row[0] for row in tables["scores"][1]], tables["sets"]
    figure = Figure(figsize=(max(6.0, 1.6 * len(sets) + 2), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        means, errors = [], [[], []]
        for task_set in sets:
            values = [v for line in lines if line["arm"] == arm for v in line["scores"].get(task_set, {}).values()]
            mean, low, high = interval95(values) if values else (math.nan,) * 3
            means.append(mean)
            errors[0].append(mean - low if values else 0)
            errors[1].append(high - mean if values else 0)
        ax.bar([x + (i - (len(arms) - 1) / 2) * width for x in range(len(sets))], means, width, yerr=errors,
               capsize=3, label=arm)
    seeds = sorted({line["seed"] for line in lines})
    ax.set_xticks(range(len(sets)), sets)
    ax.set(ylim=(0, 1.05), ylabel="score, 95% interval",
           title=f"{lines[0]['comparison']}: seeds {', '.join(map(str, seeds))} pooled")
    ax.legend(fontsize="small", ncols=min(5, len(arms)), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    write_atomic(path, png.getvalue())
    return path


def write_table(lines: list[dict], directory: Path, console) -> str:
    """Print the pooled tables and write compare.md and compare.png into `directory`."""
    tables = pooled_tables(lines)
    name = lines[0]["comparison"]
    seeds = sorted({line["seed"] for line in lines})
    options = lines[0]["options"]
    counted = sorted({line["tokens_counted_by"] for line in lines})
    commits = sorted({line["commit"] for line in lines if line.get("commit")})
    title = f"{name}: score per arm and task set, pooled over seeds {', '.join(map(str, seeds))}"
    console.print(rich_table(title, *tables["scores"]))
    if tables["changes"][1]:
        console.print(rich_table("against imitation, task by task: rose (+) / fell (-), sign test p",
                                 *tables["changes"]))
    console.print(rich_table("cost per seed (mean over seeds)", *tables["cost"]))
    png = draw_arms(lines, directory / "compare.png")
    train_n = options.get("n_train") or options["n"]
    text = "\n".join([
        f"# Comparison: {name}", "",
        f"Student {options['student']}, teacher {options['teacher']} (knowledge {options.get('teacher_knowledge', 0):g}), "
        f"tasks {options['tasks']}: {train_n} training and {options['n']} test tasks per set and seed, "
        f"preset {options['preset']}; seeds {', '.join(map(str, seeds))}; commit {', '.join(commits) or '-'}.",
        "",
        "Arms: " + "; ".join(f"`{a}` {ARMS[a].about}" for a in ARMS if any(line["arm"] == a for line in lines)) + ".",
        "",
        "## Score per arm and task set", "",
        "Each arm's final student; the per-task scores of every seed pooled (n = tasks x seeds), with a 95% interval. "
        + (f"Held-out sets ({', '.join(tables['heldout'])}) are a test-only family the student never trained on."
           if tables["heldout"] else "No held-out task set was evaluated (environment/tasks.py has none for these tasks)."),
        "", markdown_table(*tables["scores"]), "",
        *(["## Against imitation, task by task", "",
           "Pairs: the same task of the same seed, scored under both arms. Tasks whose score rose (+) and fell (-) "
           "against imitation, of all pairs, and the exact two-sided sign test's p on the changed ones.", "",
           markdown_table(*tables["changes"]), ""] if tables["changes"][1] else []),
        "## Cost", "",
        "Per seed, the mean over the seeds. Student: the evaluation the arm's scores come from (a phase that "
        "trained nothing is skipped). Teacher calls: the calls of the phases behind the student (its own evaluation "
        "row not counted). Teacher tokens: tokens of the steps the teacher wrote (every BC trajectory, every MPS "
        f"replacement step), counted with the {' / '.join(counted)}; an LLM teacher's verdicts are not in them. "
        "Wall time: the phases behind the student (bc, mps, sft, rl as they apply, each with its test evaluation; "
        "a phase shared by arms counts in each); the evaluations before training and on the held-out sets are not "
        "included.", "",
        markdown_table(*tables["cost"]), "",
        f"![arms side by side]({png.name})", ""])
    write_atomic(directory / "compare.md", text)
    console.print(f"compare: {directory / 'compare.md'}, {png}", highlight=False)
    return text


# ----------------------------------------------------------------------------------------------


def run_compare(request: Request, console) -> int:
    if request.sources:  # rebuild the table from results files alone
        lines = [line for line in read_results([Path(s) for s in request.sources])
                 if (not request.seeds or line["seed"] in request.seeds)
                 and (not request.arms or line["arm"] in request.arms)]
        if not lines:
            raise ConfigError("--from: no results line for these --seeds / --arms")
        first = Path(request.sources[0])
        write_table(lines, first if first.is_dir() else first.parent, console)
        return 0
    directory = compare_dir(request.config)
    directory.mkdir(parents=True, exist_ok=True)
    open_compare(directory, request.config)
    console.print(f"compare: {directory}: arms {', '.join(request.arms)}; seeds "
                  f"{', '.join(map(str, request.seeds))}", highlight=False)
    for seed in request.seeds:
        run_seed(request, directory, seed, console)
    # The table covers the whole comparison, every seed and arm run so far: a run in pieces (--arms
    # outcome,question after imitation,score) extends it, and its arms are still paired with imitation.
    write_table(read_results([directory / "results"]), directory, console)
    console.print(f"per-seed results: {directory / 'results'} (commit them under bench/results/ to rebuild the "
                  f"table with --from)", highlight=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    console = make_console()
    argv = sys.argv[1:] if argv is None else argv
    return guarded(lambda: run_compare(parse_request(argv), console), console)


if __name__ == "__main__":
    sys.exit(main())
