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
(solved alone, corrected, hard and why) to pick from. With one: the episode as the teacher saw it,
the first error marked, the teacher's verdict and replacement step beside the student's wrong step,
and what the student did afterwards.
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

from runs import finished_phases, read_jsonl, write_atomic

# The evaluations in the order the loop runs them: (label of eval/<label>.json, row name).
EVAL_ROWS = (("teacher", "teacher"), ("base", "student before"), ("bc", "after BC"),
             ("sft", "after SFT"), ("rl", "after RL"))
TRAINING_PHASES = ("bc", "mps", "sft", "rl")  # the keys of phases.json, in run order


def outcome(record: dict) -> str:
    if record.get("hard"):
        return f"hard: {record.get('hard_reason', '')}"
    if any(c.get("valid") for c in record.get("corrections", [])):
        return "corrected"
    return "solved alone" if record.get("correct") else "wrong"


def step_text(step: dict) -> str:
    """One step as code (or plan text) followed by its observation."""
    body = step.get("code") or step.get("thought") or step.get("content", "")
    observation = (step.get("observation") or "").strip()
    if step.get("final_answer") is not None:
        observation = f"final_answer({step['final_answer']!r})"
    return f"{body}\n[dim]-> {observation[:300]}[/dim]" if observation else body


def show(run_dir: Path, task_id: str | None = None, console: Console | None = None) -> int:
    console = console or Console()
    records = read_jsonl(run_dir / "mps.jsonl")
    if not records:
        console.print(f"error: {run_dir} has no mps.jsonl yet: run `python score.py mps` first", highlight=False)
        return 2
    if task_id is None:
        table = Table(title=f"{run_dir.name}: MPS episodes (show one with: python score.py show {run_dir} TASK_ID)")
        for column in ("task id", "split", "steps", "corrections", "outcome"):
            table.add_column(column)
        for r in records:
            table.add_row(r["task_id"], r["split"], str(len(r["steps"])), str(len(r["corrections"])), outcome(r))
        console.print(table)
        return 0
    matches = [r for r in records if r["task_id"] == task_id]
    if not matches:
        console.print(f"error: no episode {task_id!r} in {run_dir}/mps.jsonl", highlight=False)
        return 2
    record = matches[-1]
    console.print(Panel(f"{record['question']}\n[bold]reference answer:[/bold] {record['reference_answer']}",
                        title=f"{task_id} ({record['split']}): {outcome(record)}"))
    for number, correction in enumerate(record["corrections"], start=1):
        verdict = correction["verdict"]
        console.print(f"[bold]correction {number}[/bold]: first error at step {correction['k']} "
                      f"({'valid' if correction.get('valid') else 'not valid'})\n  analysis: {verdict['analysis']}")
        if correction.get("wrong_step") and correction.get("teacher_step"):
            side = Table(show_header=True, expand=True)
            side.add_column(f"student's step {correction['k']} (wrong)")
            side.add_column(f"teacher's step {correction['k']}")
            side.add_row(step_text(correction["wrong_step"]), step_text(correction["teacher_step"]))
            console.print(side)
    console.print("[bold]final trajectory[/bold]")
    for step in record["steps"]:
        marker = "T" if step["author"] == "teacher" else " "
        console.print(f"{marker} {step['index']:>2} {step['kind']:<6} " + step_text(step).replace("\n", "\n            "))
    console.print(f"final answer: {record.get('final_answer')!r}  correct: {record.get('correct')}  "
                  f"end: {record.get('end_reason')}")
    return 0


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


def read_evaluations(run_dir: Path) -> list[tuple[str, dict]]:
    """(row name, summary) for each eval/<label>.json that exists, in the order the loop runs them,
    then the held-out evaluations (eval/heldout-<label>.json, written by `score.py compare`: the
    same student on a task family it never trained on). The reference teacher knows every task's
    reference solution, so its row says "oracle"."""
    found = []
    for prefix, suffix in (("", ""), ("heldout-", ", held-out")):
        for label, name in EVAL_ROWS:
            path = run_dir / "eval" / f"{prefix}{label}.json"
            if path.exists():
                summary = json.loads(path.read_text())
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
    names = dict(EVAL_ROWS)
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
        rows.append((f"{names[before]} -> {names[after]}", by_set))
    headers = ["change", *task_sets]
    return headers, [[name, *(f"+{by_set[t][0]} -{by_set[t][1]} (p={sign_test(*by_set[t]):.2g})"
                               if t in by_set else "-" for t in task_sets)] for name, by_set in rows]


def counts_text(counts: dict) -> str:
    """A phase's counts other than its wall time and teacher calls, e.g. "tasks=6, trained=True"."""
    shown = []
    for key, value in counts.items():
        if key in ("wall_s", "teacher_calls"):
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
    evaluations = read_evaluations(run_dir)
    phases = finished_phases(run_dir)
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
    text = "\n".join(lines)
    write_atomic(run_dir / "report.md", text)
    console.print(f"report: {run_dir / 'report.md'}" + (f", curves: {curves}" if curves else ""), highlight=False)
    return text
