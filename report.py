"""What a run shows its user: the end-of-run report and the audit view (DESIGN.md, What users see).

The report, `final_report(run_dir)`, reads only files in the run directory, so it can be redrawn at any
time, even for a run that stopped half way:

    eval/<label>.json  ->  one row per evaluation: teacher, student before, after BC / SFT / RL,
                           then any held-out evaluation (eval/heldout-<label>.json); one column per
                           task set (score, 95% interval, n), the finished share, and the
                           evaluation's wall time
    eval/<label>.jsonl ->  changes task by task between consecutive student evaluations: tasks
                           gained and lost, with a sign test
    phases.json        ->  one row per finished training phase with its counts
    metrics.jsonl      ->  curves.png: SFT loss per update (one line per label: bc, sft) and the RL
                           mean reward per update

It prints the two tables, writes the same tables as markdown to report.md, and returns that text.

The audit view, `python score.py show RUN [TASK_ID]`: without a task id, one line per MPS episode
(solved alone, corrected, hard and why) to pick from, then the run's evaluations. With one: the
episode as the teacher saw it, the first error marked, the teacher's verdict and replacement step
beside the student's wrong step, and what the student did afterwards. `show RUN --eval LABEL
[TASK_ID]` does the same for the test episodes of eval/LABEL.jsonl. A run without MPS episodes is
told the command, with its own options, that writes them.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from runs import finished_phases, human_size, read_jsonl, run_size, write_atomic

# The evaluations in the order the loop runs them: (label of eval/<label>.json, row name).
EVAL_ROWS = (("teacher", "teacher"), ("base", "student before"), ("bc", "after BC"),
             ("sft", "after SFT"), ("rl", "after RL"))
TRAINING_PHASES = ("bc", "mps", "sft", "rl")  # the keys of phases.json, in run order


# ----------------------------------------------------------------------------------------------
# Scores with intervals: each evaluation's summary (score.py, phase_eval)


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



def print_summary(summary: dict, console) -> None:
    from rich.table import Table
    oracle = " - an oracle: it knows the reference solutions" if summary.get("oracle") else ""
    table = Table(title=f"eval: {summary['label']} ({summary['student']}){oracle}")
    for column in ("task set", "n", "score", "95% interval", "finished", "mean steps"):
        table.add_column(column, justify="right" if column != "task set" else "left")
    for name, row in summary["task_sets"].items():
        table.add_row(name, str(row["n"]), f"{row['score']:.3f}", f"[{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}]",
                      f"{row['finished']:.0%}", f"{row['mean_steps']:.1f}")
    console.print(table)
    console.print(f"generated {summary['generated_tokens']} tokens in {summary['wall_s']:.0f} s "
                  f"({summary['tok_per_s']:.1f} tok/s, tools and prefill included)")



def outcome(record: dict) -> str:
    if record.get("hard"):
        return f"hard: {record.get('hard_reason', '')}"
    if any(c.get("valid") for c in record.get("corrections", [])):
        return "corrected"
    return "solved alone" if record.get("correct") else "wrong"


def step_text(step: dict) -> str:
    """One step as code (or plan text) followed by its observation, as rich markup: the model's text
    is escaped, so code such as `x[0]` or "[/b]" prints as written."""
    body = step.get("code") or step.get("thought") or step.get("content", "")
    observation = (step.get("observation") or "").strip()
    if step.get("final_answer") is not None:
        observation = f"final_answer({step['final_answer']!r})"
    return f"{escape(body)}\n[dim]-> {escape(observation[:300])}[/dim]" if observation else escape(body)


def known_ids(records: list[dict], shown: int = 5) -> str:
    """A few task ids of `records`, to pick from after a mistyped one."""
    ids = list(dict.fromkeys(r["task_id"] for r in records))
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def eval_labels(run_dir: Path) -> list[str]:
    """The evaluations with records (eval/<label>.jsonl), in the order the loop runs them, then the others."""
    found = sorted(path.stem for path in (run_dir / "eval").glob("*.jsonl"))
    order = [label for label, _ in EVAL_ROWS]
    return sorted(found, key=lambda label: (order.index(label) if label in order else len(order), label))


def mps_command(run_dir: Path) -> str | None:
    """The command that runs MPS in this run (None for an imitation run, which has none): its name and
    the options of its config.json (config.command_for), so the run resumes instead of being refused for
    changed settings, or a fresh run being started."""
    import dataclasses
    from config import PRESETS, Config, command_for
    path = run_dir / "config.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    if saved.get("method") == "imitation":
        return None
    known = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in saved.items() if k in known})  # fields of older runs are dropped
    runs_dir = str(Path(run_dir).parent) if Path(run_dir).parent != Path("runs") else "runs"
    config = dataclasses.replace(config, run=run_dir.name, runs_dir=runs_dir,
                                 preset=config.preset if config.preset in PRESETS else "cpu")
    return command_for(config, "mps" if "bc" in finished_phases(run_dir) else "--phases bc,mps")


def run_contents(run_dir: Path) -> str:
    """What a run holds so far, in one line: its finished phases and its evaluations."""
    phases, labels = finished_phases(run_dir), eval_labels(run_dir)
    return (f"finished phases: {', '.join(phases) or 'none'}; "
            f"evaluations: {', '.join(labels) or 'none'}")


def no_mps_text(run_dir: Path) -> str:
    """Why a run has no MPS episode yet, and the command that would write them for it."""
    command = mps_command(run_dir)
    if command is None:
        return (f"{run_dir.name} has no MPS episodes: it trains by imitation only (--method imitation), which has "
                f"no MPS phase ({run_contents(run_dir)})")
    return (f"{run_dir.name} has no MPS episodes yet (no mps.jsonl; {run_contents(run_dir)}); "
            f"they come from: {command}")


def evaluations_table(run_dir: Path, labels: list[str]) -> Table:
    """One row per evaluation with records: its test tasks, mean score and shares, and whether its
    summary (eval/<label>.json, written when it completes) exists."""
    table = Table(title=escape(f"{run_dir.name}: evaluations (show one with: python score.py show {run_dir} --eval LABEL)"))
    for column in ("label", "tasks", "score", "correct", "finished", "complete"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for label in labels:
        records = list({r["task_id"]: r for r in read_jsonl(run_dir / "eval" / f"{label}.jsonl")}.values())
        n = len(records) or 1
        table.add_row(escape(label), str(len(records)), f"{sum(float(r.get('score') or 0) for r in records) / n:.2f}",
                      f"{sum(bool(r.get('correct')) for r in records) / n:.0%}",
                      f"{sum(bool(r.get('finished')) for r in records) / n:.0%}",
                      "yes" if (run_dir / "eval" / f"{label}.json").exists() else "no (stopped or running)")
    return table


def task_panel(record: dict, title: str) -> Panel:
    return Panel(f"{escape(record['question'])}\n[bold]reference answer:[/bold] {escape(str(record['reference_answer']))}",
                 title=escape(title))


def print_steps(record: dict, console: Console) -> None:
    """An episode's steps, teacher steps marked T, and how it ended."""
    for step in record["steps"]:
        marker = "T" if step["author"] == "teacher" else " "
        console.print(f"{marker} {step['index']:>2} {step['kind']:<6} " + step_text(step).replace("\n", "\n            "))
    console.print(f"final answer: {record.get('final_answer')!r}  correct: {record.get('correct')}  "
                  f"end: {record.get('end_reason')}", highlight=False, markup=False)


def show_eval(run_dir: Path, label: str, task_id: str | None, console: Console) -> int:
    """An evaluation's episodes (eval/<label>.jsonl), or one of them step by step."""
    labels = eval_labels(run_dir)
    if label not in labels:
        console.print(f"error: no evaluation {label!r} in {run_dir} (evaluations there: {', '.join(labels) or 'none'})",
                      highlight=False, markup=False)
        return 2
    records = list({r["task_id"]: r for r in read_jsonl(run_dir / "eval" / f"{label}.jsonl")}.values())
    if task_id is None:
        table = Table(title=escape(f"{run_dir.name}: evaluation {label}, {len(records)} episodes (show one with: "
                                   f"python score.py show {run_dir} --eval {label} TASK_ID)"))
        for column in ("task id", "task set", "steps", "answer", "score", "correct", "end reason"):
            table.add_column(column)
        for r in records:
            answer = r.get("final_answer")
            table.add_row(escape(r["task_id"]), escape(r.get("task_set", "")), str(len(r.get("steps", []))),
                          "-" if answer is None else escape(str(answer)[:40]), f"{float(r.get('score') or 0):.2f}",
                          str(r.get("correct")), escape(r.get("end_reason", "")))
        console.print(table)
        return 0
    matches = [r for r in records if r["task_id"] == task_id]
    if not matches:
        console.print(f"error: no episode {task_id!r} in {run_dir}/eval/{label}.jsonl (known ids: {known_ids(records)})",
                      highlight=False, markup=False)
        return 2
    record = matches[-1]
    console.print(task_panel(record, f"{task_id} ({record.get('task_set', '')}), evaluation {label}: "
                                     + ("correct" if record.get("correct") else "not correct")))
    print_steps(record, console)
    return 0


def show(run_dir: Path, task_id: str | None = None, console: Console | None = None, label: str | None = None) -> int:
    """The audit view of one run directory: MPS episodes (or, with `label`, an evaluation's), or one
    episode step by step. Returns the exit code: 2 for something the user asked that is not there."""
    console = console or Console()
    run_dir = Path(run_dir)
    if label is not None:
        return show_eval(run_dir, label, task_id, console)
    records = read_jsonl(run_dir / "mps.jsonl")
    if task_id is None:
        if records:
            table = Table(title=escape(f"{run_dir.name}: MPS episodes (show one with: python score.py show {run_dir} TASK_ID)"))
            for column in ("task id", "split", "steps", "corrections", "outcome"):
                table.add_column(column)
            for r in records:
                table.add_row(escape(r["task_id"]), r["split"], str(len(r["steps"])), str(len(r["corrections"])),
                              escape(outcome(r)))
            console.print(table)
        else:
            console.print(no_mps_text(run_dir), highlight=False, markup=False, soft_wrap=True)
        labels = eval_labels(run_dir)
        if labels:
            console.print(evaluations_table(run_dir, labels))
        return 0
    matches = [r for r in records if r["task_id"] == task_id]
    if not matches:
        in_evals = [label for label in eval_labels(run_dir)
                    if any(r["task_id"] == task_id for r in read_jsonl(run_dir / "eval" / f"{label}.jsonl"))]
        where = (f"; it is in evaluation {in_evals[0]}: python score.py show {run_dir} --eval {in_evals[0]} {task_id}"
                 if in_evals else "")
        if not records:
            console.print(f"error: {no_mps_text(run_dir)}{where}", highlight=False, markup=False, soft_wrap=True)
        else:
            console.print(f"error: no episode {task_id!r} in {run_dir}/mps.jsonl (known ids: {known_ids(records)}){where}",
                          highlight=False, markup=False, soft_wrap=True)
        return 2
    record = matches[-1]
    console.print(task_panel(record, f"{task_id} ({record['split']}): {outcome(record)}"))
    for number, correction in enumerate(record["corrections"], start=1):
        verdict = correction["verdict"]
        console.print(f"[bold]correction {number}[/bold]: first error at step {correction['k']} "
                      f"({'valid' if correction.get('valid') else 'not valid'})\n  analysis: {escape(str(verdict['analysis']))}")
        if correction.get("wrong_step") and correction.get("teacher_step"):
            side = Table(show_header=True, expand=True)
            side.add_column(f"student's step {correction['k']} (wrong)")
            side.add_column(f"teacher's step {correction['k']}")
            side.add_row(step_text(correction["wrong_step"]), step_text(correction["teacher_step"]))
            console.print(side)
    console.print("[bold]final trajectory[/bold]")
    print_steps(record, console)
    return 0


def find_run(run: str, runs_dir: Path) -> tuple[Path | None, str]:
    """(the run directory RUN names, "") or (None, why not): a directory, or a name under runs_dir."""
    if Path(run).is_dir():
        run_dir = Path(run)
    else:
        run_dir = runs_dir / run
        if not run_dir.is_dir():
            if not runs_dir.is_dir():
                return None, f"no run {run} under {runs_dir}/ ({runs_dir}/ does not exist here; --runs-dir names another)"
            names = sorted(d.name for d in runs_dir.iterdir() if (d / "config.json").exists())
            listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            return None, f"no run {run} under {runs_dir}/ (" + (f"runs there: {listed})" if names else "it holds no run yet)")
    if not any((run_dir / name).exists() for name in ("config.json", "phases.json", "mps.jsonl", "eval")):
        return None, f"{run_dir} is not a run directory (no config.json, phases.json, mps.jsonl or eval/)"
    return run_dir, ""


def show_main(argv: list[str], console: Console | None = None) -> int:
    """`python score.py show ...`: parse show's own arguments, then show. Exit code 2 for a user's mistake."""
    import argparse
    parser = argparse.ArgumentParser(
        prog="score.py show", description="The audit view of a run: its MPS episodes and evaluations, or one "
                                          "episode step by step (the first error, the verdict, the teacher's step).")
    parser.add_argument("run", help="a run name under --runs-dir, or a run directory")
    parser.add_argument("task_id", nargs="?", help="one episode, by task id: of MPS, or of the evaluation --eval names")
    parser.add_argument("--eval", dest="label", metavar="LABEL",
                        help="an evaluation's episodes (eval/LABEL.jsonl: base, teacher, bc, sft, rl, ...) instead of MPS")
    parser.add_argument("--runs-dir", default="runs", help="where run directories live (default: runs)")
    try:  # intermixed: `show RUN --eval LABEL TASK_ID` has its task id after the option
        args = parser.parse_intermixed_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error that argparse has already printed (2)
        return exc.code if isinstance(exc.code, int) else 2
    console = console or Console()
    run_dir, problem = find_run(args.run, Path(args.runs_dir))
    if run_dir is None:
        console.print(f"error: {problem}", highlight=False, markup=False, soft_wrap=True)
        return 2
    return show(run_dir, args.task_id, console, label=args.label)


# ----------------------------------------------------------------------------------------------
# The end-of-run report: tables built once as plain strings, then shown twice (rich and markdown)


def duration(seconds) -> str:
    """Wall time in the unit a reader takes in at a glance; "-" where it was not recorded."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def score_cell(row: dict) -> str:
    """One task set of one evaluation, e.g. "0.35 [0.18, 0.57] n=20": the mean score, its 95%
    interval (score.py, interval95) and the number of test tasks behind both."""
    low, high = row.get("ci95") or (math.nan, math.nan)
    return f"{row.get('score', math.nan):.2f} [{low:.2f}, {high:.2f}] n={row.get('n', 0)}"


def finished_share(summary: dict) -> str:
    """Share of all test episodes (every task set, weighted by its n) that called final_answer."""
    rows = summary.get("task_sets", {}).values()
    total = sum(row.get("n", 0) for row in rows)
    if total == 0:
        return "-"
    return f"{sum(row.get('finished', 0.0) * row.get('n', 0) for row in rows) / total:.0%}"


def skipped_reason(entry) -> str | None:
    """Why a phase of phases.json trained nothing ("" when it does not say), or None if it trained:
    score.py records such a phase with "trained": false, and with "skipped": "reason"."""
    if not isinstance(entry, dict) or (entry.get("trained") is not False and not entry.get("skipped")):
        return None
    return str(entry.get("skipped") or "")


def row_name(label: str, phases: dict) -> str:
    """The name of an evaluation's row. "after BC" claims a student trained by BC: when phases.json
    says that phase was skipped, an eval/bc.json (one a user ran with --label bc, say) is shown
    under its label instead, with the reason, never as a trained student."""
    name = dict(EVAL_ROWS).get(label, label)
    reason = skipped_reason(phases.get(label)) if label in TRAINING_PHASES else None
    if reason is not None:
        name = f"eval {label} ({label} skipped{': ' + reason if reason else ''}; no student trained by it)"
    return name


def read_evaluations(run_dir: Path, phases: dict | None = None) -> list[tuple[str, dict]]:
    """(row name, summary) for each eval/<label>.json that exists, in the order the loop runs them,
    then the held-out evaluations (eval/heldout-<label>.json, written by `score.py compare`: the
    same student on a task family it never trained on). The reference teacher knows every task's
    reference solution, so its row says "oracle"."""
    phases = finished_phases(run_dir) if phases is None else phases
    found = []
    for prefix, suffix in (("", ""), ("heldout-", ", held-out")):
        for label, _ in EVAL_ROWS:
            path = run_dir / "eval" / f"{prefix}{label}.json"
            if path.exists():
                summary = json.loads(path.read_text())
                name = row_name(label, phases)
                found.append((name + suffix + (" (oracle)" if summary.get("oracle") else ""), summary))
    return found


def evaluation_table(evaluations: list[tuple[str, dict]]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one row per evaluation, one column per task set ("-" where an evaluation
    did not run that set), then the finished share and the evaluation's wall time."""
    task_sets = list(dict.fromkeys(name for _, s in evaluations for name in s.get("task_sets", {})))
    headers = ["evaluation", *task_sets, "finished", "eval wall time"]
    rows = []
    for name, summary in evaluations:
        by_set = summary.get("task_sets", {})
        cells = [score_cell(by_set[t]) if t in by_set else "-" for t in task_sets]
        rows.append([name, *cells, finished_share(summary), duration(summary.get("wall_s"))])
    return headers, rows


def sign_test(gained: int, lost: int) -> float:
    """Exact two-sided sign test. If a phase changed nothing but noise, each task whose score changed
    would be as likely to rise as to fall; p is the chance of a split at least this uneven:
        p = min(1, 2 * sum_{i <= min(g, l)} C(g + l, i) / 2^(g + l))      (p = 1 when nothing changed)"""
    changed = gained + lost
    tail = sum(math.comb(changed, i) for i in range(min(gained, lost) + 1)) / 2 ** changed
    return min(1.0, 2 * tail)


def task_scores(run_dir: Path, label: str) -> dict[str, tuple[str, float]]:
    """task id -> (task set, score) of eval/<label>.jsonl; the last record of a task wins."""
    return {r["task_id"]: (r["task_set"], float(r["score"])) for r in read_jsonl(run_dir / "eval" / f"{label}.jsonl")}


def changes_table(run_dir: Path) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one row per pair of consecutive student evaluations (before -> BC -> SFT ->
    RL, skipping any that did not run). Every evaluation runs the same test tasks, so a phase's effect
    is read task by task: in each task set, how many tasks scored higher (+) and lower (-) than in the
    evaluation before, and the sign test's p on them. Intervals of two rows can overlap while such a
    paired change is clear, and the other way round."""
    phases = finished_phases(run_dir)
    present = [label for label in ("base", "bc", "sft", "rl") if (run_dir / "eval" / f"{label}.jsonl").exists()]
    rows, task_sets = [], {}
    for before, after in zip(present, present[1:]):
        old, new = task_scores(run_dir, before), task_scores(run_dir, after)
        by_set: dict[str, list[int]] = {}
        for task_id in old.keys() & new.keys():
            task_set, change = new[task_id][0], new[task_id][1] - old[task_id][1]
            counts = by_set.setdefault(task_set, [0, 0])
            counts[0] += change > 0
            counts[1] += change < 0
        task_sets.update(dict.fromkeys(sorted(by_set)))
        rows.append((f"{row_name(before, phases)} -> {row_name(after, phases)}", by_set))
    headers = ["change", *task_sets]
    return headers, [[name, *(f"+{by_set[t][0]} -{by_set[t][1]} (p={sign_test(*by_set[t]):.2g})"
                               if t in by_set else "-" for t in task_sets)] for name, by_set in rows]


def counts_text(counts: dict) -> str:
    """A phase's counts other than its wall time and teacher calls, e.g. "tasks=6, trained=True";
    a phase that trained nothing starts with "skipped (reason)"."""
    reason = skipped_reason(counts)
    shown = [] if reason is None else [f"skipped ({reason})" if reason else "skipped"]
    for key, value in counts.items():
        if key in ("wall_s", "teacher_calls") or (reason is not None and key in ("trained", "skipped")):
            continue
        shown.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(shown) or "-"


def phase_table(phases: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one row per finished training phase (phases.json), in run order. Phases keep
    different counts (BC: tasks, correct; MPS: episodes, key steps; ...), so they share one column."""
    headers = ["phase", "counts", "wall time", "teacher calls"]
    order = [p for p in TRAINING_PHASES if p in phases] + [p for p in phases if p not in TRAINING_PHASES]
    rows = []
    for phase in order:
        counts = phases[phase] if isinstance(phases[phase], dict) else {}
        calls = counts.get("teacher_calls")
        rows.append([phase, counts_text(counts), duration(counts.get("wall_s")), "-" if calls is None else str(calls)])
    return headers, rows


def rich_table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    """The terminal form of a table; cells are escaped so a "[...]" in them is text, not markup."""
    table = Table(title=title)
    for number, header in enumerate(headers):
        table.add_column(header, justify="left" if number == 0 else "right")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """The report.md form of the same table (GitHub-flavoured markdown)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def curve(records: list[dict], x_key: str, y_key: str) -> tuple[list, list]:
    """The (update, value) points of one metric, sorted by update. Records without both numbers are
    skipped. A resumed phase redoes the updates after its last checkpoint and logs them again, so
    the last record of each update wins."""
    points = {}
    for record in records:
        x, y = record.get(x_key), record.get(y_key)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y)):
            points[x] = y
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def draw_curves(run_dir: Path) -> Path | None:
    """curves.png from metrics.jsonl: SFT loss per update, one line per label (bc = the warm start,
    sft = training on MPS data), and the RL mean reward per update when RL ran. Returns None, and
    draws nothing, when there is no curve to draw.

    The figure is drawn on an Agg canvas (matplotlib's file renderer, no display needed) without
    pyplot, so no global figure state is left behind."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    sft_curves = {}  # label -> (updates, losses); each SFT run counts its updates from 1
    for label in dict.fromkeys(r.get("label", "sft") for r in records if "sft/loss" in r):
        xs, ys = curve([r for r in records if r.get("label", "sft") == label], "sft/update", "sft/loss")
        if xs:
            sft_curves[label] = (xs, ys)
    rl_curve = curve(records, "rl/update", "rl/reward_mean")
    panels = (["sft"] if sft_curves else []) + (["rl"] if rl_curve[0] else [])
    if not panels:
        return None

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(5 * len(panels), 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel == "sft":
            for label, (xs, ys) in sft_curves.items():
                ax.plot(xs, ys, marker=".", label=label)
            ax.set(title="SFT loss (mean -log pi per supervised token)", xlabel="update", ylabel="sft/loss")
            ax.legend()
        else:
            ax.plot(*rl_curve, marker=".", color="tab:green")
            ax.set(title="RL mean reward per update", xlabel="update", ylabel="rl/reward_mean")
    path = run_dir / "curves.png"
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    write_atomic(path, png.getvalue())
    return path


def final_report(run_dir: Path, console: Console | None = None) -> str:
    """Print the run's results, write them to run_dir/report.md (with curves.png beside it when
    metrics.jsonl has any) and return the markdown. Missing files leave their rows out."""
    console = console or Console()
    run_dir = Path(run_dir)
    phases = finished_phases(run_dir)
    evaluations = read_evaluations(run_dir, phases)
    eval_headers, eval_rows = evaluation_table(evaluations)
    phase_headers, phase_rows = phase_table(phases)
    change_headers, change_rows = changes_table(run_dir)
    curves = draw_curves(run_dir)

    console.print(rich_table(f"{run_dir.name}: score per task set, 95% interval, n test tasks", eval_headers, eval_rows))
    if change_rows:
        console.print(rich_table(f"{run_dir.name}: test tasks whose score rose (+) or fell (-), sign test p",
                                 change_headers, change_rows))
    console.print(rich_table(f"{run_dir.name}: training phases", phase_headers, phase_rows))

    lines = [f"# Report: {run_dir.name}", "", "## Evaluation", ""]
    if any("(oracle)" in name for name, _ in evaluations):
        lines += ["The teacher row is an oracle: the reference teacher knows each task's reference solution.", ""]
    lines += [markdown_table(eval_headers, eval_rows) if eval_rows else "No evaluation has finished yet.", ""]
    if change_rows:
        lines += ["## Changes task by task", "",
                  "Each evaluation runs the same test tasks. Per task set: tasks whose score rose (+) and fell (-) "
                  "from the row before, and the exact sign test's p on them (small p: unlikely to be noise).", "",
                  markdown_table(change_headers, change_rows), ""]
    lines += ["## Training phases", ""]
    lines += [markdown_table(phase_headers, phase_rows) if phase_rows else "No training phase has finished yet.", ""]
    if curves is not None:
        lines += ["## Training curves", "", f"![training curves]({curves.name})", ""]
    # What the run holds on disk (checkpoints are most of it; hard links shared with a branch count once).
    size_line = f"run directory: {run_dir}, {human_size(run_size(run_dir))}"
    lines += [size_line, ""]
    text = "\n".join(lines)
    write_atomic(run_dir / "report.md", text)
    console.print(f"report: {run_dir / 'report.md'}" + (f", curves: {curves}" if curves else ""), highlight=False)
    console.print(size_line, highlight=False)
    return text
