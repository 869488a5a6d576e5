"""End-to-end budget of `python score.py`: wall time and peak memory of the whole command.

Runs `python score.py [ARGS]` from the repo root `--repeats` times, each in a fresh temporary
--runs-dir (so nothing resumes), and reports the median wall seconds and the median peak RSS.
Peak memory is of the whole process tree (score.py plus its children, e.g. sandbox workers): the sum
of VmRSS at each sample, every 0.2 s, an upper bound where processes share pages. One case is left
out: a child that score.py has just forked to start a sandbox worker runs the parent's program in the
parent's pages until it execs, and reports the parent's whole RSS; a child whose command line is its
parent's is taken for such a fork and adds nothing (counted, a 5 GB run read as 10 GB). Summing Pss
(/proc/PID/smaps_rollup) would be exact, but reading it walks a 5 GB process's page tables under its
memory lock and slowed the run it measured about 2x. A spike shorter than 0.2 s may be missed.

    python bench/e2e.py                                   # the default loop, 3 times (~20 min each on 2 cores)
    python bench/e2e.py --repeats 1 -- --preset cpu       # anything after `--` goes to score.py
    python bench/e2e.py --repeats 1 --keep -- eval --n 4 --threads 1

Prints the machine, commit and date, a line per run with its eval scores, then `RESULT name=value`
lines last; figures go to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_S = 0.2  # how often /proc is read


def parents() -> dict[int, list[int]]:
    """parent pid -> child pids, from one scan of /proc/*/stat (for kernels without children lists)."""
    tree: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
        except (OSError, IndexError):  # exited since it was listed
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))  # fields: state, ppid, ...
    return tree


def children(pid: int, tree: dict[int, list[int]] | None) -> list[int]:
    """Direct children of `pid`: the kernel's per-thread lists where it keeps them (CONFIG_PROC_CHILDREN),
    else the /proc scan in `tree`."""
    if tree is not None:
        return tree.get(pid, [])
    found = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            found += [int(x) for x in Path(path).read_text().split()]
        except OSError:  # the thread ended between glob and read
            pass
    return found


def rss_and_command(pid: int) -> tuple[int, bytes] | None:
    """(VmRSS in KiB, command line) of one process, or None if it is gone."""
    try:  # the command line first: a fork that execs in between is then either skipped or small
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # exited since it was listed
        return None
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return rss, command


def tree_rss_kib(root: int) -> int:
    """Sum of VmRSS (KiB) over `root` and its descendants alive now, forks not yet exec'd left out."""
    tree = None if glob.glob(f"/proc/{root}/task/*/children") else parents()
    total, stack = 0, [(root, None)]
    while stack:
        pid, parent_command = stack.pop()
        found = rss_and_command(pid)
        if found is None:
            continue
        rss, command = found
        if command != parent_command:  # the parent's own command line: a fork before its exec
            total += rss
        stack += [(child, command) for child in children(pid, tree)]
    return total


def line_before(log: Path, offset: int) -> str:
    """The last complete output line written before byte `offset` of the log: what ran then."""
    lines = [line.strip() for line in log.read_bytes()[:offset].decode(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line and not line.startswith(("┃", "│", "┏", "┡", "└"))), "")


def run_once(extra: list[str], runs_dir: Path) -> tuple[int, float, float, float, Path, str]:
    """(exit code, wall s, peak tree RSS in MB, score.py's own peak RSS in MB, log file, the output line
    last written when the sampled peak was reached) of one run. The second peak is the kernel's
    high-water mark of the score.py process (wait4's ru_maxrss): exact, and missing no spike, but it
    leaves the sandbox workers out (each ~15 MB)."""
    log = runs_dir / "output.log"
    # Our --runs-dir comes last, so it wins over one in `extra` (argparse keeps the last value).
    command = [sys.executable, "score.py", *extra, "--runs-dir", str(runs_dir)]
    peak_kib = 0
    began = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            rss_kib = tree_rss_kib(process.pid)
            if rss_kib > peak_kib:
                peak_kib, peak_at = rss_kib, (time.perf_counter() - began, log.stat().st_size)
            time.sleep(SAMPLE_S)
    wall_s = time.perf_counter() - began
    code = os.waitstatus_to_exitcode(status)
    during = f"at {peak_at[0]:.0f} s, after: {line_before(log, peak_at[1])[:160]}" if peak_kib else ""
    return code, wall_s, peak_kib * 1024 / 1e6, usage.ru_maxrss * 1024 / 1e6, log, during


def score_lines(runs_dir: Path) -> list[str]:
    """One line per eval/<label>.json of the run (in the order they were written) and task set."""
    lines = []
    for path in sorted(runs_dir.glob("*/eval/*.json"), key=lambda p: p.stat().st_mtime):
        for name, row in json.loads(path.read_text())["task_sets"].items():
            low, high = row["ci95"]
            lines.append(f"    {path.stem:>10} {name:>8}: {row['score']:.2f} [{low:.2f}, {high:.2f}] n={row['n']}")
    return lines


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown CPU")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return (f"machine: {model}, {os.cpu_count()} cores | commit {commit.stdout.strip() or 'unknown'} | "
            f"date {datetime.date.today().isoformat()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     usage="python bench/e2e.py [--repeats N] [--keep] [-- SCORE_ARGS ...]")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the command (medians reported)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories and print where they are")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:split]), argv[split + 1:]
    preset = next((a.split("=", 1)[1] for a in extra if a.startswith("--preset=")), None)
    if "--preset" in extra[:-1]:
        preset = extra[extra.index("--preset") + 1]
    name = f"e2e_{(preset or 'default').replace('-', '_')}"
    print(machine())
    print(f"command: python score.py {' '.join(extra)}  (x{args.repeats}, each in a fresh --runs-dir)", flush=True)
    walls, peaks = [], []
    for index in range(1, args.repeats + 1):
        runs_dir = Path(tempfile.mkdtemp(prefix="score_e2e_"))
        code, wall_s, peak_mb, own_mb, log, during = run_once(extra, runs_dir)
        print(f"run {index}/{args.repeats}: exit {code}, {wall_s:.1f} s wall, peak RSS {peak_mb:.0f} MB (tree, "
              f"sampled), {own_mb:.0f} MB (score.py's own high-water mark)")
        print(f"    sampled peak {during}")
        if code != 0:
            print(f"score.py failed (exit {code}); its last output lines:")
            print("\n".join(log.read_text(errors="replace").splitlines()[-30:]))
            print(f"run directory kept: {runs_dir}")
            return 1
        print("\n".join(score_lines(runs_dir)) or "    (no eval/*.json written)", flush=True)
        walls.append(wall_s)
        peaks.append(max(peak_mb, own_mb))  # the sampled tree, or the exact high-water mark if a spike was missed
        if args.keep:
            print(f"    kept: {runs_dir}")
        else:
            shutil.rmtree(runs_dir)
    print(f"median over {len(walls)} runs: {statistics.median(walls):.1f} s wall, "
          f"peak RSS {statistics.median(peaks):.0f} MB")
    print(f"RESULT {name}_wall_s={statistics.median(walls):.1f}")
    print(f"RESULT e2e_peak_rss_mb={statistics.median(peaks):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
