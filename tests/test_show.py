"""The audit view (`python score.py show`, report.show_main) and the report's skipped phases, on run
directories written by hand.

`show` is how a user reads what a run did episode by episode; a wrong exit code, a message that
points at a command that would start another run, or a crash on model text would mislead them.
"""
import dataclasses
import io
import json
import shlex

import pytest
from rich.console import Console

import score
from agent import Step, Trajectory
from config import OPERATIONAL, parse_args
from report import final_report, mps_command, phase_table, show, show_main
from runs import write_json_atomic

# A run started with these options (the others at their defaults): the command show prints for it
# must carry every one of them, and no option left at its default.
OPTIONS = ["--tasks", "arith", "--n", "4", "--seed", "3", "--bc-fraction", "0.25", "--teacher-sees", "solution",
           "--sft-lr", "1e-05", "--kl-coef", "0.05", "--max-steps", "5", "--threads", "1"]


def console() -> Console:
    return Console(file=io.StringIO(), width=250)


def printed(out: Console) -> str:
    return out.file.getvalue()


def episode(task_id: str, correct: bool, code: str = "x = 6 * 7\nprint(x)", answer="42", **fields) -> dict:
    """One graded episode as agent.Trajectory writes it: a plan, a code step, a final answer."""
    steps = [Step(index=1, kind="plan", author="student", content="plan", thought="Multiply.", observation="None"),
             Step(index=2, kind="action", author="student", content="code", code=code, observation="42"),
             Step(index=3, kind="action", author="student", content="answer", code=f"final_answer({answer})",
                  final_answer=answer)]
    record = Trajectory(task_id=task_id, task_set="arith", question=f"What is 6 x 7? ({task_id})",
                        reference_answer="42", steps=steps, final_answer=answer, finished=True,
                        end_reason="final_answer", score=float(correct), correct=correct, split="test")
    return dict(record.to_dict(), **fields)


def write_jsonl(path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make_run(runs, name="a", options=OPTIONS, phases=("eval", "bc"), mps=False):
    """A run directory as score.py leaves it: config.json of the resolved options, phases.json, the
    base and bc evaluations (base: 1 of 3 correct; bc: 2 of 3), and MPS episodes if asked."""
    run = runs / name
    config = parse_args([*options, "--run", name, "--runs-dir", str(runs)])
    write_json_atomic(run / "config.json", dataclasses.asdict(config))
    write_json_atomic(run / "phases.json", {p: {"trained": True} if p == "bc" else {} for p in phases})
    write_jsonl(run / "eval" / "base.jsonl", [episode("arith-0", True), episode("arith-1", False, answer="41"),
                                              episode("arith-2", False, answer="40")])
    write_json_atomic(run / "eval" / "base.json", {"task_sets": {}})
    write_jsonl(run / "eval" / "bc.jsonl", [episode("arith-0", True), episode("arith-1", True),
                                            episode("arith-2", False, answer="7", end_reason="max_steps")])
    if mps:
        write_jsonl(run / "mps.jsonl", [episode("arith-9", True, split="sft"),
                                        episode("arith-8", False, split="rl", hard=True, hard_reason="unfinished")])
    return run


def test_help_and_usage_errors(capsys):
    """`show --help` / `-h` print show's own usage (prog "score.py show") and exit 0; no run, or an
    unknown option, is a usage error: exit 2. Breaks if help were an error or errors passed."""
    for flag in ("--help", "-h"):
        assert show_main([flag], console()) == 0
        out = capsys.readouterr().out
        assert "usage: score.py show" in out and "--eval" in out and "TASK_ID" in out.upper()
    assert show_main([], console()) == 2
    assert "usage: score.py show" in capsys.readouterr().err
    assert show_main(["a", "--bogus"], console()) == 2


def test_an_unknown_run_lists_the_runs_there(tmp_path):
    """`show nosuchrun` names where it looked and which runs are there (exit 2)."""
    runs = tmp_path / "runs"
    for name in ("b", "a", "c"):
        make_run(runs, name)
    (runs / "not-a-run").mkdir()
    out = console()
    assert show_main(["nosuchrun", "--runs-dir", str(runs)], out) == 2
    assert f"no run nosuchrun under {runs}/ (runs there: a, b, c)" in printed(out)
    out = console()
    assert show_main(["x", "--runs-dir", str(tmp_path / "missing")], out) == 2 and "does not exist" in printed(out)
    out = console()
    assert show_main([str(tmp_path / "runs" / "not-a-run")], out) == 2 and "not a run directory" in printed(out)


def test_a_run_without_mps_lists_its_evaluations_and_the_command_for_mps(tmp_path):
    """No mps.jsonl: show says what the run has, lists its evaluations (tasks, score) and prints the
    command that writes MPS records for THIS run: --run NAME and every option it was started with,
    none at its default. Parsing that command gives the run's own settings, so it resumes the run
    rather than being refused or starting another. Breaks if an option is dropped or wrong."""
    runs = tmp_path / "runs"
    run = make_run(runs)
    out = console()
    assert show_main(["a", "--runs-dir", str(runs)], out) == 0
    text = printed(out)
    assert "a has no MPS episodes yet" in text and "finished phases: eval, bc" in text
    assert "evaluations: base, bc" in text
    rows = {cells[0]: cells[1:] for line in text.splitlines() if line.startswith("│")
            for cells in [[cell.strip() for cell in line.split("│")[1:-1]]]}
    assert rows == {"base": ["3", "0.33", "33%", "100%", "yes"], "bc": ["3", "0.67", "67%", "100%", "no (stopped or running)"]}

    command = mps_command(run)
    assert command in "".join(text.split("\n"))
    words = shlex.split(command)
    assert words[:3] == ["python", "score.py", "mps"]  # bc is finished: MPS alone
    for option in ("--n-train", "--max-corrections", "--teacher", "--student", "--phases", "--label"):
        assert option not in words, option  # left at the default: not repeated
    resumed = dataclasses.asdict(parse_args(words[2:]))
    saved = json.loads((run / "config.json").read_text())
    assert resumed["run"] == "a" and resumed["runs_dir"] == str(runs) and resumed["phases"] == "mps"
    assert {k: v for k, v in resumed.items() if k not in OPERATIONAL} == \
        {k: v for k, v in saved.items() if k not in OPERATIONAL}
    assert resumed["threads"] == 1


def test_the_mps_command_starts_with_bc_when_bc_has_not_run_and_none_for_imitation(tmp_path):
    """MPS rolls out from the BC checkpoint, so a run without a finished bc gets `--phases bc,mps`;
    an imitation run has no MPS phase at all, and show says so instead of giving a command."""
    runs = tmp_path / "runs"
    words = shlex.split(mps_command(make_run(runs, "early", phases=("eval",))))
    assert words[2:4] == ["--phases", "bc,mps"] and parse_args(words[2:]).phases == "bc,mps"
    imitation = make_run(runs, "imit", options=[*OPTIONS, "--method", "imitation"])
    assert mps_command(imitation) is None
    out = console()
    assert show(imitation, None, out) == 0 and "--method imitation" in printed(out)
    assert "score.py mps" not in printed(out)
    out = console()
    assert show(imitation, "arith-0", out) == 2 and "imitation" in printed(out)


def test_a_task_id_without_mps_is_an_error_that_points_at_the_evaluation(tmp_path):
    """`show RUN TASK_ID` on a run without MPS: exit 2, the MPS command, and, since the id is an
    evaluation's, the command that shows it there."""
    run = make_run(tmp_path / "runs")
    out = console()
    assert show(run, "arith-1", out) == 2
    text = printed(out)
    assert "no MPS episodes" in text and "--run a" in text
    assert f"python score.py show {run} --eval base arith-1" in text


def test_mps_episodes_and_evaluations_together(tmp_path):
    """With mps.jsonl, `show RUN` lists the MPS episodes and then the evaluations; an unknown task id
    lists known ones (exit 2); a known one prints its steps."""
    run = make_run(tmp_path / "runs", mps=True)
    out = console()
    assert show(run, None, out) == 0
    text = printed(out)
    assert "MPS episodes" in text and "arith-9" in text and "hard: unfinished" in text and "solved alone" in text
    assert "evaluations" in text and "no MPS episodes" not in text
    out = console()
    assert show(run, "nope", out) == 2 and "known ids: arith-9, arith-8" in printed(out)
    out = console()
    assert show(run, "arith-9", out) == 0 and "final trajectory" in printed(out) and "What is 6 x 7? (arith-9)" in printed(out)


def test_an_evaluation_s_episodes_and_one_of_them(tmp_path):
    """`show RUN --eval LABEL` lists that evaluation's episodes (task id, steps, answer, correct, end
    reason); with a task id, its steps; an unknown label or id is exit 2 with what exists. Model text
    with rich markup in it ("[/b]", "x[0]") prints as written. Breaks on a wrong column, a crash on
    markup, or an error that does not say what is there."""
    runs = tmp_path / "runs"
    run = make_run(runs)
    out = console()
    assert show_main(["a", "--runs-dir", str(runs), "--eval", "bc"], out) == 0
    text = printed(out)
    assert "evaluation bc, 3 episodes" in text
    line = next(line for line in text.splitlines() if "arith-2" in line)
    assert [cell.strip() for cell in line.split("│")[1:-1]] == ["arith-2", "arith", "3", "7", "0.00", "False", "max_steps"]

    write_jsonl(run / "eval" / "base.jsonl", [episode("arith-0", False, code="print('[/b]', [1][0])  # x[0]")])
    out = console()
    assert show_main([str(run), "--eval", "base", "arith-0"], out) == 0
    text = printed(out)
    assert "print('[/b]', [1][0])  # x[0]" in text and "What is 6 x 7? (arith-0)" in text
    assert "final answer: '42'  correct: False  end: final_answer" in text

    out = console()
    assert show_main([str(run), "--eval", "rl"], out) == 2
    assert "no evaluation 'rl' in" in printed(out) and "(evaluations there: base, bc)" in printed(out)
    out = console()
    assert show_main([str(run), "--eval", "bc", "arith-77"], out) == 2
    assert "known ids: arith-0, arith-1, arith-2" in printed(out)


def test_score_py_show_goes_through_show_main(tmp_path, monkeypatch, capsys):
    """The command itself: `python score.py show ...` (runs/ under the working directory)."""
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "runs", "a")
    assert score.main(["show", "--help"]) == 0 and "usage: score.py show" in capsys.readouterr().out
    assert score.main(["show", "zzz"]) == 2 and "no run zzz under runs/ (runs there: a)" in capsys.readouterr().out
    assert score.main(["show", "a", "--eval", "base"]) == 0 and "arith-1" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- report


def test_a_skipped_phase_is_shown_skipped_and_claims_no_trained_student(tmp_path):
    """phases.json `"trained": false` (with `"skipped": reason`) reads "skipped (reason)" in the
    phase table, and an eval/bc.json present anyway (say, `score.py eval --label bc`) is not shown
    as "after BC", in the evaluation table or the changes table. Breaks if a report claims a
    student trained by a phase that trained nothing."""
    phases = {"bc": {"tasks": 6, "correct": 0, "trained": False, "skipped": "0 examples: the teacher solved none"},
              "mps": {"episodes": 3},
              "sft": {"examples": 0, "trained": False},
              "rl": {"start_states": 4, "trained": True, "updates": 2}}
    write_json_atomic(tmp_path / "phases.json", phases)
    rows = dict((row[0], row[1]) for row in phase_table(phases)[1])
    assert rows["bc"] == "skipped (0 examples: the teacher solved none), tasks=6, correct=0"
    assert rows["sft"] == "skipped, examples=0"
    assert rows["rl"] == "start_states=4, trained=True, updates=2"
    summary = {"task_sets": {"arith": {"n": 3, "score": 0.0, "ci95": [0.0, 0.56], "finished": 1.0}}, "wall_s": 1}
    for label in ("base", "bc", "rl"):
        write_json_atomic(tmp_path / "eval" / f"{label}.json", summary)
        write_jsonl(tmp_path / "eval" / f"{label}.jsonl", [episode("arith-0", False)])
    text = final_report(tmp_path, console())
    assert "after BC" not in text and "eval bc (bc skipped: 0 examples: the teacher solved none" in text
    assert "| after RL |" in text and "| student before |" in text
    assert "skipped (0 examples: the teacher solved none)" in text
