"""The default evaluation on an idle machine and beside one busy process: how much slower does it get?

`python score.py eval --n 8` (16 episodes of the untrained student, the CPU default) runs `--repeats`
times alone and `--repeats` times beside one competing busy process that this script starts and
stops itself: a pure-Python spin loop with a time limit (one core kept busy, like a test run or a
browser tab on a laptop). Idle and busy runs alternate, so a change in the machine's load from other
jobs falls on both. Each run gets a fresh run directory (nothing resumes).

    python bench/contention.py                   # OpenMP threads sleep when they wait (student.py)
    python bench/contention.py --waiting today   # torch's OpenMP default: spin ~3 ms at each barrier
    python bench/contention.py --waiting both    # both, run by run in one sitting
    python bench/contention.py --waiting spin=10000,passive   # libgomp spinning 10k iterations, then sleeping

`--waiting` sets the OpenMP environment of each score.py process explicitly: passive is
OMP_WAIT_POLICY=PASSIVE (what student.py sets when score.py imports it before torch), today is
GOMP_SPINCOUNT=300000, libgomp's documented default spin when no policy is set. A run that exceeds
`--timeout-s` is stopped and counted at the timeout (the figure is then a lower bound, marked >=).

Prints `RESULT name=value` lines last (contention_slowdown = median busy wall / median idle wall
of the chosen setting); figures go to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPIN = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"
WAITING = {"passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "today": {"GOMP_SPINCOUNT": "300000"}}


def waiting_env(name: str) -> dict[str, str]:
    """The OpenMP environment of a setting: passive, today, or spin=N (GOMP_SPINCOUNT=N: spin N
    iterations at a barrier, then sleep)."""
    if name in WAITING:
        return WAITING[name]
    count = name.partition("spin=")[2]
    if not name.startswith("spin=") or not count.isdigit():
        raise SystemExit(f"error: --waiting takes passive, today, both or spin=N (comma-separated), not {name!r}")
    return {"GOMP_SPINCOUNT": count}


def run_eval(n: int, waiting: str, busy: bool, timeout_s: float, extra: list[str]) -> tuple[float, bool, str]:
    """(wall seconds, finished in time, the `threads:` line score.py printed or '') of one score.py eval."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(waiting_env(waiting))
    spinner = None
    if busy:  # the competitor outlives the run by a margin, and is stopped when the run ends
        spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(limit=timeout_s + 60)])
    with tempfile.TemporaryDirectory(prefix="contention-") as runs_dir:
        command = [sys.executable, str(ROOT / "score.py"), "eval", "--n", str(n), "--runs-dir", runs_dir,
                   "--run", "contention", *extra]
        began = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
            wall, finished, output = time.perf_counter() - began, True, done.stdout + done.stderr
            if done.returncode != 0:
                raise SystemExit(f"score.py eval failed (exit {done.returncode}): {output.strip()[-400:]}")
        except subprocess.TimeoutExpired:  # subprocess.run has killed score.py
            wall, finished, output = timeout_s, False, ""
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    threads_line = next(iter(re.findall(r"threads: .*", output)), "")
    return wall, finished, threads_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8, help="tasks per task set (score.py eval --n)")
    parser.add_argument("--repeats", type=int, default=3, help="runs idle and runs busy (medians reported)")
    parser.add_argument("--waiting", default="passive",
                        help="passive, today, both (= passive,today) or spin=N; several comma-separated, the first "
                             "is the one RESULT contention_slowdown reports")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="a run is stopped after this")
    parser.add_argument("extra", nargs="*", help="more score.py options after --, e.g. -- --threads 1")
    args = parser.parse_args()
    settings = ["passive", "today"] if args.waiting == "both" else args.waiting.split(",")
    for waiting in settings:
        waiting_env(waiting)  # a bad name ends here, before any run
    walls: dict[tuple[str, bool], list[tuple[float, bool]]] = {}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for repeat in range(args.repeats):
        for waiting in settings:
            for busy in (False, True):
                wall, finished, threads_line = run_eval(args.n, waiting, busy, args.timeout_s, args.extra)
                walls.setdefault((waiting, busy), []).append((wall, finished))
                print(f"run {repeat + 1} waiting={waiting:11s} {'busy' if busy else 'idle'}: "
                      f"{'' if finished else '>= '}{wall:6.1f} s   load {os.getloadavg()[0]:.2f}   "
                      f"{threads_line or '(score.py printed no threads line)'}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for waiting in settings:
        idle = statistics.median(w for w, _ in walls[(waiting, False)])
        busy = statistics.median(w for w, _ in walls[(waiting, True)])
        bound = "" if all(f for _, f in walls[(waiting, True)]) else ">="
        print(f"waiting={waiting}: median idle {idle:.1f} s, median busy {bound}{busy:.1f} s, "
              f"slowdown {bound}{busy / idle:.2f}x")
    if "passive" in settings and "today" in settings:
        idle_ratio = (statistics.median(w for w, _ in walls[("passive", False)])
                      / statistics.median(w for w, _ in walls[("today", False)]))
        print(f"RESULT contention_idle_passive_vs_today={idle_ratio:.2f}")
        today = walls[("today", True)]
        print(f"RESULT contention_slowdown_today={statistics.median(w for w, _ in today) / statistics.median(w for w, _ in walls[('today', False)]):.2f}")
    chosen = settings[0]
    slowdown = statistics.median(w for w, _ in walls[(chosen, True)]) / statistics.median(w for w, _ in walls[(chosen, False)])
    print(f"RESULT contention_slowdown={slowdown:.2f}")


if __name__ == "__main__":
    main()
