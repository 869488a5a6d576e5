"""The end-of-run report (report.final_report) on hand-written run directories.

The report is the only place most users read a run's results, so a wrong row, a number taken from
the wrong file or a crash on a half-finished run would hide or misstate the outcome.
"""
import io
import json
import struct

from rich.console import Console

from report import changes_table, curve, duration, final_report, score_cell, sign_test

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def quiet_console() -> Console:
    """A wide console writing to a string, so tests can read what was printed."""
    return Console(file=io.StringIO(), width=200)


def write_eval(run_dir, label, task_sets, wall_s=10.0, oracle=False):
    """eval/<label>.json shaped like score.summarise's output: task_sets maps a name to
    (n, score, low, high, finished)."""
    table = {name: {"n": n, "score": score, "ci95": [low, high], "correct": score, "finished": finished,
                    "mean_steps": 3.0}
             for name, (n, score, low, high, finished) in task_sets.items()}
    summary = {"task_sets": table, "generated_tokens": 100, "wall_s": wall_s, "tok_per_s": 1.0,
               "label": label, "student": "smol", "oracle": oracle}
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval" / f"{label}.json").write_text(json.dumps(summary))


def write_metrics(run_dir, records, tail=""):
    """metrics.jsonl, one record a line; `tail` is appended raw (a truncated last line)."""
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    (run_dir / "metrics.jsonl").write_text(text)


def png_width(path) -> int:
    """The image width from the PNG header (IHDR: width is the 4 bytes after the 16th)."""
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def full_run(run_dir):
    """A run that went through every phase, with the numbers the assertions below look for."""
    write_eval(run_dir, "teacher", {"arith": (20, 1.0, 0.84, 1.0, 1.0), "lookup": (20, 0.95, 0.76, 0.99, 1.0)},
               wall_s=3.2, oracle=True)
    write_eval(run_dir, "base", {"arith": (20, 0.0, 0.0, 0.16, 0.0), "lookup": (20, 0.0, 0.0, 0.16, 0.5)}, wall_s=156)
    write_eval(run_dir, "bc", {"arith": (20, 0.35, 0.18, 0.57, 0.9), "lookup": (20, 0.2, 0.08, 0.42, 0.7)})
    write_eval(run_dir, "sft", {"arith": (20, 0.45, 0.26, 0.66, 1.0), "lookup": (20, 0.3, 0.15, 0.52, 0.8)})
    write_eval(run_dir, "rl", {"arith": (20, 0.5, 0.3, 0.7, 1.0), "lookup": (20, 0.4, 0.22, 0.61, 0.9)})
    phases = {"bc": {"tasks": 6, "correct": 6, "trained": True, "updates": 6, "wall_s": 42.0, "teacher_calls": 30},
              "mps": {"episodes": 14, "sft": 9, "keysteps": 4, "teacher_calls": 51},
              "sft": {"examples": 9, "trained": True, "updates": 3},
              "rl": {"start_states": 4, "trained": True, "updates": 2, "wall_s": 600}}
    (run_dir / "phases.json").write_text(json.dumps(phases))
    records = [{"label": "bc", "sft/update": u, "sft/loss": 1.5 / u} for u in (1, 2, 3)]
    records += [{"label": "sft", "sft/update": u, "sft/loss": 0.9 / u} for u in (1, 2)]
    records += [{"label": "sft", "sft/update": 3}]  # a record without a loss: skipped, no crash
    records += [{"rl/update": 1, "rl/reward_mean": 0.25}, {"rl/update": 2, "rl/reward_mean": 0.5},
                {"rl/update": 3, "rl/reward_mean": None}]  # None: skipped
    write_metrics(run_dir, records)


def test_full_run_report_has_every_row_number_and_the_curves(tmp_path):
    """Every evaluation and phase appears with its own numbers; report.md holds the returned text
    and points at a real PNG. Breaks if a row reads the wrong file or a column drops a number."""
    full_run(tmp_path)
    console = quiet_console()
    text = final_report(tmp_path, console)

    assert (tmp_path / "report.md").read_text() == text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert list(rows) == ["evaluation", "teacher (oracle)", "student before", "after BC", "after SFT",
                          "after RL", "phase", "bc", "mps", "sft", "rl"]
    assert rows["evaluation"] == "| evaluation | arith | lookup | finished | eval wall time |"
    assert rows["after BC"] == "| after BC | 0.35 [0.18, 0.57] n=20 | 0.20 [0.08, 0.42] n=20 | 80% | 10 s |"
    assert rows["teacher (oracle)"].endswith("| 100% | 3 s |")
    assert rows["student before"].endswith("| 25% | 2.6 min |")  # (0.0*20 + 0.5*20) / 40 finished
    assert rows["bc"] == "| bc | tasks=6, correct=6, trained=True, updates=6 | 42 s | 30 |"
    assert rows["mps"] == "| mps | episodes=14, sft=9, keysteps=4 | - | 51 |"
    assert rows["sft"] == "| sft | examples=9, trained=True, updates=3 | - | - |"
    assert rows["rl"] == "| rl | start_states=4, trained=True, updates=2 | 10.0 min | - |"
    assert "oracle: the reference teacher knows" in text
    assert "![training curves](curves.png)" in text

    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert png_width(png) == 1000  # two panels of 500 px: SFT loss and RL reward
    printed = console.file.getvalue()
    assert "after RL" in printed and "0.50 [0.30, 0.70] n=20" in printed and "report.md" in printed


def test_only_the_base_evaluation_and_no_metrics(tmp_path):
    """A run stopped after its first evaluation still gets a report: one row, no phases, no PNG and
    no link to one. Breaks if a missing file raises or leaves an empty row behind."""
    write_eval(tmp_path, "base", {"arith": (8, 0.125, 0.02, 0.47, 0.25)})
    text = final_report(tmp_path, quiet_console())

    assert "| student before | 0.12 [0.02, 0.47] n=8 | 25% | 10 s |" in text
    for missing in ("teacher", "after BC", "after SFT", "after RL"):
        assert f"| {missing}" not in text
    assert "No training phase has finished yet." in text
    assert "oracle" not in text
    assert not (tmp_path / "curves.png").exists() and "curves.png" not in text


def test_an_empty_run_directory(tmp_path):
    """Nothing finished yet: the report says so instead of failing."""
    text = final_report(tmp_path, quiet_console())
    assert "No evaluation has finished yet." in text and "No training phase has finished yet." in text
    assert (tmp_path / "report.md").exists() and not (tmp_path / "curves.png").exists()


def test_truncated_last_metrics_line_is_ignored(tmp_path):
    """A crash mid-append leaves half a line in metrics.jsonl; the curves are drawn from the whole
    lines before it (one SFT panel, no RL panel). Breaks if the reader chokes on the partial line."""
    write_eval(tmp_path, "base", {"arith": (4, 0.0, 0.0, 0.49, 0.0)})
    write_metrics(tmp_path, [{"label": "sft", "sft/update": u, "sft/loss": 1.0 / u} for u in (1, 2)],
                  tail='{"rl/update": 1, "rl/rew')
    text = final_report(tmp_path, quiet_console())

    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and "curves.png" in text
    assert png_width(png) == 500  # the partial RL line was dropped: only the SFT panel


def test_metrics_without_any_curve_skip_the_png(tmp_path):
    """Records that carry neither an SFT loss nor an RL reward draw nothing (an empty figure would
    look like a run that trained and learned nothing)."""
    write_metrics(tmp_path, [{"label": "sft", "sft/update": 1}, {"eval/accuracy": 0.5}])
    text = final_report(tmp_path, quiet_console())
    assert not (tmp_path / "curves.png").exists() and "curves.png" not in text


def test_curve_sorts_skips_and_keeps_the_last_record_of_a_redone_update():
    """A resumed SFT phase logs the updates after its last checkpoint again; the curve must show
    each update once, with the later value, and skip records missing a number."""
    records = [{"sft/update": 2, "sft/loss": 0.8}, {"sft/update": 1, "sft/loss": 1.0},
               {"sft/update": 2, "sft/loss": 0.7}, {"sft/update": 3}, {"sft/loss": 0.1},
               {"sft/update": 4, "sft/loss": None}, {"sft/update": 5, "sft/loss": True}]
    assert curve(records, "sft/update", "sft/loss") == ([1, 2], [1.0, 0.7])


def test_cell_formats():
    """The units a reader sees: a score cell with its interval and n, wall times in s, min and h."""
    assert score_cell({"n": 20, "score": 0.35, "ci95": [0.181, 0.567]}) == "0.35 [0.18, 0.57] n=20"
    assert [duration(s) for s in (None, 59.6, 150, 9000)] == ["-", "60 s", "2.5 min", "2.5 h"]


def test_sign_test_against_hand_computed_values():
    """p = min(1, 2 * P(X <= min(g, l))) for X ~ Binomial(g + l, 1/2)."""
    assert sign_test(0, 0) == 1.0 and sign_test(1, 1) == 1.0
    assert sign_test(5, 0) == sign_test(0, 5) == 2 / 32
    assert abs(sign_test(13, 1) - 2 * 15 / 2 ** 14) < 1e-15
    assert abs(sign_test(3, 13) - 2 * (1 + 16 + 120 + 560) / 2 ** 16) < 1e-15


def test_changes_task_by_task_between_consecutive_student_evaluations(tmp_path):
    """Tasks are matched by id across eval/<label>.jsonl files (in any order, a redone task's last
    record wins); a missing evaluation is skipped, so BC is compared with RL directly; the teacher's
    evaluation is no student's and takes no part."""
    (tmp_path / "eval").mkdir()
    def records(label, scores):
        lines = [json.dumps({"task_id": f"{s}-{i}", "task_set": s, "score": v}) for (s, i), v in scores.items()]
        (tmp_path / "eval" / f"{label}.jsonl").write_text("\n".join(lines) + "\n")
    base = {("arith", i): 0.0 for i in range(6)} | {("lookup", i): 0.0 for i in range(2)}
    bc = {("arith", i): 1.0 for i in range(5)} | {("arith", 5): 0.0, ("lookup", 0): 0.5, ("lookup", 1): 0.0}
    rl = dict(reversed(list(bc.items()))) | {("arith", 0): 0.0, ("arith", 5): 1.0, ("lookup", 0): 0.0}
    records("base", base)
    records("bc", bc)
    records("rl", {**rl, ("arith", 1): 0.0})
    with open(tmp_path / "eval" / "rl.jsonl", "a") as f:  # arith-1 redone: its last record (1.0) counts
        f.write(json.dumps({"task_id": "arith-1", "task_set": "arith", "score": 1.0}) + "\n")
    records("teacher", {key: 1.0 for key in base})
    headers, rows = changes_table(tmp_path)
    assert headers == ["change", "arith", "lookup"]
    assert rows == [["student before -> after BC", "+5 -0 (p=0.062)", "+1 -0 (p=1)"],
                    ["after BC -> after RL", "+1 -1 (p=1)", "+0 -1 (p=1)"]]
    assert "## Changes task by task" in final_report(tmp_path, quiet_console())


def test_held_out_evaluations_follow_the_others_in_their_own_columns(tmp_path):
    """`score.py compare` evaluates a run's final student on held-out task sets too
    (eval/heldout-<label>.json); the report shows them after the ordinary rows, in their own columns,
    and leaves them out of the changes task by task (other tasks, nothing to pair)."""
    write_eval(tmp_path, "bc", {"arith": (20, 0.35, 0.18, 0.57, 0.9)})
    write_eval(tmp_path, "rl", {"arith": (20, 0.5, 0.3, 0.7, 1.0)})
    write_eval(tmp_path, "heldout-rl", {"arith-heldout": (10, 0.2, 0.06, 0.51, 0.8)}, wall_s=30)
    text = final_report(tmp_path, quiet_console())
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| evaluation | arith | arith-heldout | finished | eval wall time |"
    assert rows[1:] == ["| after BC | 0.35 [0.18, 0.57] n=20 | - | 90% | 10 s |",
                        "| after RL | 0.50 [0.30, 0.70] n=20 | - | 100% | 10 s |",
                        "| after RL, held-out | - | 0.20 [0.06, 0.51] n=10 | 80% | 30 s |"]
