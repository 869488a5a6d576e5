"""The audit view: `python score.py show RUN [TASK_ID]`.

Without a task id: one line per MPS episode (solved alone, corrected, hard and why) to pick from.
With one: the episode as the teacher saw it, the first error marked, the teacher's verdict and
replacement step beside the student's wrong step, and what the student did afterwards.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from runs import read_jsonl


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
