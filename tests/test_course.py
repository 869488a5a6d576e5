"""The course kit (course/kit.py): a kit is the project with the chosen bodies stubbed and nothing else
changed; every stub and every kept wrong variant fails its grader, the reference passes; the capstone
runs the loop on a kit whose assignments are all written; bad input is one line."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from course import kit
from course.kit import ASSIGNMENTS, BY_NAME

ROOT = Path(__file__).resolve().parent.parent


def functions_of(path: Path) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}


@pytest.fixture(scope="module")
def full_kit(tmp_path_factory):
    return kit.make_kit(tmp_path_factory.mktemp("kits") / "all", list(ASSIGNMENTS))


def test_every_assignment_names_real_functions_and_a_grader():
    """Each assignment's functions exist in the project, no function is in two assignments, each has
    its grader file with a docstring per test and at least two kept wrong variants (a renamed function
    or a deleted grader would otherwise surface only when a course hands the kit out)."""
    assert len(ASSIGNMENTS) >= 7
    seen = set()
    for a in ASSIGNMENTS:
        assert a.grader.is_file(), f"{a.name} has no grader at {a.grader}"
        assert a.difficulty in {"easy", "medium", "hard"} and 5 <= a.minutes <= 120 and a.goal and a.section
        for target in a.functions:
            module, name = target.split(".")
            assert name in functions_of(ROOT / f"{module}.py"), f"{target} is not a top-level function"
            assert target not in seen, f"{target} is in two assignments"
            seen.add(target)
        variants = kit.wrong_variants(a)
        assert len(variants) >= 2, f"{a.name} keeps {len(variants)} wrong variants"
        assert all(v["target"] in a.functions and v["expect"] and v["mistake"] for v in variants)


def test_a_kit_stubs_exactly_the_chosen_bodies(full_kit):
    """In the kit each chosen function keeps its signature and docstring and its body is a raise of
    NotImplementedError naming the assignment and the METHOD.md section; every other top-level
    statement of every file is unchanged; .git, caches and runs are not copied (they hold the answers)."""
    for path in ROOT.glob("*.py"):
        original, copied = ast.parse(path.read_text()), ast.parse((full_kit / path.name).read_text())
        chosen = {t.split(".")[1]: a for a in ASSIGNMENTS for t in a.functions if t.split(".")[0] == path.stem}
        assert len(original.body) == len(copied.body)
        for before, after in zip(original.body, copied.body):
            if isinstance(before, ast.FunctionDef) and before.name in chosen:
                signature = lambda f: (ast.dump(f.args), f.returns and ast.unparse(f.returns))  # noqa: E731
                assert signature(before) == signature(after)
                assert ast.get_docstring(before) == ast.get_docstring(after)
                raise_node = after.body[-1]
                assert isinstance(raise_node, ast.Raise) and raise_node.exc.func.id == "NotImplementedError"
                message = ast.literal_eval(raise_node.exc.args[0])
                assert chosen[before.name].name in message and "METHOD.md" in message
                assert len(after.body) == 2  # the docstring and the raise: no code left
            else:
                assert ast.dump(before) == ast.dump(after), f"{path.name}: {getattr(before, 'name', '')} changed"
    assert not any(p.name in {".git", "__pycache__", "runs"} for p in full_kit.rglob("*"))
    assert json.loads((full_kit / "course" / "kit.json").read_text())["assignments"] == [a.name for a in ASSIGNMENTS]
    assert "| pg-loss |" in (full_kit / "ASSIGNMENTS.md").read_text()


def test_stubbed_code_raises_with_the_assignment_name(full_kit):
    """Calling a stub says which assignment it is and how to check it, and the rest of the copy still
    imports and runs (the kit's own score.py answers --help)."""
    code = ("import rl\ntry:\n    rl.group_advantages([0.0, 1.0], 'mean')\nexcept NotImplementedError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=full_kit, capture_output=True, text=True, check=True).stdout
    assert "assignment 'advantages'" in out and "grade --only advantages" in out
    done = subprocess.run([sys.executable, "score.py", "--help"], cwd=full_kit, capture_output=True, text=True)
    assert done.returncode == 0 and "--teacher-knowledge" in done.stdout


def test_graders_pass_the_reference_and_fail_every_stub_and_every_kept_wrong_variant(tmp_path):
    """The heart of the kit: a grader that passes a stub, or a close-but-wrong implementation kept in its
    WRONG list, or that fails on the reference code, cannot grade. check_graders runs them all."""
    problems = kit.check_graders(list(ASSIGNMENTS), tmp_path)
    assert problems == [], "\n".join(problems)


def test_grade_prints_a_table_and_exits_by_the_result(full_kit, tmp_path, capsys):
    """`assignments grade` over a class (an untouched kit and the reference, two at once): exit 1, one
    row per submission, and JSON/CSV lines in which every stub fails with its message and the
    reference passes. One directory alone gets the per-assignment table; the reference exits 0."""
    out, table_csv = tmp_path / "grades.jsonl", tmp_path / "grades.csv"
    argv = ["grade", str(full_kit), str(ROOT), "--only", "advantages,rl-mask", "--jobs", "2",
            "--json", str(out), "--csv", str(table_csv)]
    assert kit.main(argv) == 1
    assert "2 submissions" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["submission"], r["assignment"]) for r in rows] == [
        (str(full_kit), "advantages"), (str(full_kit), "rl-mask"), (str(ROOT), "advantages"), (str(ROOT), "rl-mask")]
    stubbed, reference = rows[:2], rows[2:]
    assert not any(r["ok"] or r["passed"] for r in stubbed) and all(r["total"] >= 2 for r in stubbed)
    assert all("NotImplementedError" in r["failure"] for r in stubbed) and all(r["ok"] for r in reference)
    assert len(table_csv.read_text().splitlines()) == 5  # a header and one line per submission and assignment
    assert kit.main(["grade", str(ROOT), "--only", "advantages"]) == 0
    assert "passed" in capsys.readouterr().out


def test_grading_isolates_a_hostile_submission(tmp_path):
    """Under bubblewrap a submission sees only its own copy: a group_advantages that reads a file of
    the host (another student's work) or writes outside its copy cannot, so the right values it
    returns only when cut off make it pass, and nothing appears on the host. If this failed, one
    submission could copy another's answers or tamper with the grader's machine."""
    from tools import probe_isolation
    if probe_isolation() != "bwrap":
        pytest.skip("bubblewrap does not work on this machine")
    secret, escape = tmp_path / "other-student.txt", tmp_path / "escaped.txt"
    secret.write_text("answers")
    directory = kit.make_kit(tmp_path / "kit", [BY_NAME["advantages"]])  # graded from a copy elsewhere
    reference = ast.get_source_segment((ROOT / "rl.py").read_text(), functions_of(ROOT / "rl.py")["group_advantages"])
    body = reference.split('"""', 2)[2]  # the reference body, after the docstring
    hostile = (f"def group_advantages(rewards, kind):\n    import os\n"
               f"    for path in ({str(secret)!r}, {str(ROOT / 'README.md')!r}, {str(directory / 'score.py')!r}):\n"
               f"        if os.path.exists(path):  # another student's file, the grader's checkout, the original\n"
               f"            return [0.0] * len(rewards)  # saw the host: a wrong answer, so the grade fails\n"
               f"    try:\n        open({str(escape)!r}, 'w').write('out')\n    except OSError:\n        pass\n"
               f"{body}")
    kit.inject_function(directory, "rl.group_advantages", hostile)
    assert kit.main(["grade", str(directory), "--isolation", "bwrap"]) == 0
    assert not escape.exists() and (directory / "rl.py").read_text().count("escaped.txt") == 1


def solve(directory: Path, assignments) -> None:
    """Write every assignment of a kit back from the reference: what a class of perfect students hands in."""
    for a in assignments:
        for target in a.functions:
            module, name = target.split(".")
            source = (ROOT / f"{module}.py").read_text()
            kit.inject_function(directory, target, ast.get_source_segment(source, functions_of(ROOT / f"{module}.py")[name]))


def test_capstone_runs_the_loop_on_a_solved_kit(tmp_path, tokenizer):
    """With every assignment written (here: restored from the reference), the capstone runs the whole
    loop on the kit's code; on the untouched kit it fails with the stub's message. A tiny random
    student never answers, so MPS gives SFT and RL no data: the capstone must say that those phases
    trained nothing and fail, not pass on a loop that never ran the student's loss or reward code.
    (The default loop with the real student, where every phase trains, is measured in README.)"""
    from student import make_tiny_student
    tiny = tmp_path / "tiny"
    make_tiny_student(tokenizer).save(tiny)
    directory = kit.make_kit(tmp_path / "kit", list(ASSIGNMENTS))
    extra = (f"--student {tiny} --n 2 --max-steps 2 --max-new-tokens 6 --sft-epochs 1 --rl-epochs 1 "
             f"--runs-dir {tmp_path / 'runs'}").split()
    passed, why = kit.run_capstone(directory, extra, timeout_s=900)
    assert not passed and "NotImplementedError" in why, why
    solve(directory, ASSIGNMENTS)
    passed, why = kit.run_capstone(directory, extra, timeout_s=900)
    assert not passed and why.startswith("the loop finished, but") and "sft (0 examples" in why and "rl (" in why, why


@pytest.mark.parametrize("argv, needle", [
    (["make", "--out", "{tmp}/k", "--only", "advantages,nope"], "unknown assignment nope: choose from"),
    (["make", "--out", "{tmp}/busy"], "exists and is not empty"),
    (["make", "--out", "{tmp}/busy/file.txt"], "is a file"),
    (["grade", "{tmp}/busy"], "has no score.py"),
    (["grade", str(ROOT), "--only", "pg-los"], "unknown assignment pg-los"),
])
def test_bad_input_is_one_line(argv, needle, tmp_path, capsys):
    """Bad input ends with one clear line and exit 2, and writes nothing."""
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("keep me")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert kit.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "k").exists() and (tmp_path / "busy" / "file.txt").read_text() == "keep me"


def test_force_replaces_an_earlier_kit_only_whole(tmp_path):
    """--force replaces an earlier kit entirely (no stale stub survives a re-make with fewer
    assignments) and, in a directory that is not a kit, writes its files without deleting others."""
    out = tmp_path / "kit"
    kit.make_kit(out, [BY_NAME["advantages"], BY_NAME["rl-mask"]])
    kit.make_kit(out, [BY_NAME["advantages"]], force=True)
    assert "raise NotImplementedError" not in ast.get_source_segment(
        (out / "rl.py").read_text(), functions_of(out / "rl.py")["continuation_mask"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    kit.make_kit(other, [BY_NAME["advantages"]], force=True)
    assert (other / "notes.txt").read_text() == "mine" and (other / "score.py").exists()
