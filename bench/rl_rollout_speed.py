"""RL rollouts of the default loop, timed: one code version against another on the same start states.

Takes a finished default run (`python score.py`, its run directory) and rolls out its first RL
update as `train_rl` would: the first `prompts_per_update` start states x G continuations, from its
SFT checkpoint, fp32, the CPU budget. Each `--code` directory (a checkout of this repository, e.g. a
`git worktree` of an older commit; default: this one) runs in its own process, the versions taking
turns repeat by repeat. Prints rollout seconds, sampled tokens and tokens/s, and the on-policy gap
(mean |log pi at sampling - log pi of this checkout's training forward|); same seeds, so equal token
counts mean the same samples.

    git worktree add /tmp/old COMMIT
    python bench/rl_rollout_speed.py --run runs/NAME --code /tmp/old,. --repeats 2

Prints `RESULT rl_rollout_speedup=...` (median tok/s of the last version over the first) last.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_rollout(run_dir: Path) -> dict:
    """In this process (its sys.path set to the checkout under test): one update's rollouts."""
    import time

    from student import load_student
    import torch
    from agent import build_indexes
    from config import Config, load_tasks_for, phase_config, resolve
    from rl import build_row, rollout_groups, select_start_states
    from runs import read_jsonl
    from score import make_sandbox, rollout_config
    from training import rows_logprobs

    config = resolve(Config())
    rl_config = phase_config(config, "rl")
    tasks_by_id = {t.id: t for t in load_tasks_for(config, "train")}
    starts = select_start_states(read_jsonl(run_dir / "keysteps.jsonl"), tasks_by_id, rl_config,
                                 read_jsonl(run_dir / "mps.jsonl"))[:rl_config.prompts_per_update]
    student = load_student(str(run_dir / "checkpoints" / "sft"), "cpu", "float32", config.threads)
    student.model.eval()
    began = time.perf_counter()
    groups = rollout_groups(student, starts, 0, rl_config, rollout_config(config, 1.0),
                            build_indexes([s.task for s in starts]), make_sandbox(config))
    wall = time.perf_counter() - began
    rows = [build_row(student.tokenizer, t, s.k, 1.0) for s, g in zip(starts, groups) for t in g]
    rows = [r for r in rows if sum(r.mask)]  # a continuation of empty turns has nothing to score
    with torch.no_grad():
        trained = rows_logprobs(student, rows, rl_config)
    sampled = torch.tensor([lp for r in rows for lp in r.sampled_logprobs])
    tokens = len(sampled)
    return {"wall_s": wall, "tokens": tokens, "tok_s": tokens / wall, "gap": float((sampled - trained).abs().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished default run's directory (runs/NAME)")
    parser.add_argument("--code", default=".", help="comma-separated checkouts to time, first = before")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    run_dir = Path(args.run).resolve()
    if args.child:  # a child: import the checkout under test, roll out, print one JSON line
        sys.path.insert(0, args.child)
        os.chdir(args.child)
        print("JSON " + json.dumps(one_rollout(run_dir)), flush=True)
        return
    codes = [str(Path(c).resolve()) for c in args.code.split(",")]
    if not (run_dir / "checkpoints" / "sft").is_dir():
        raise SystemExit(f"{run_dir}: no checkpoints/sft: give the directory of a finished default run")
    results: dict[str, list[dict]] = {c: [] for c in codes}
    for repeat in range(args.repeats):
        for code in codes:
            out = subprocess.run([sys.executable, __file__, "--run", str(run_dir), "--child", code],
                                 capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("JSON ")), None)
            if line is None:
                raise SystemExit(f"{code}: the rollout failed:\n{out.stderr[-2000:]}")
            r = json.loads(line[5:])
            results[code].append(r)
            print(f"repeat {repeat + 1} {code}: {r['wall_s']:.1f} s, {r['tokens']} tokens, {r['tok_s']:.1f} tok/s, "
                  f"gap {r['gap']:.2e}", flush=True)
    medians = {c: statistics.median(r["tok_s"] for r in rs) for c, rs in results.items()}
    for code, value in medians.items():
        print(f"{code}: median {value:.1f} tok/s")
    print(f"RESULT rl_rollout_speedup={medians[codes[-1]] / medians[codes[0]]:.2f}")


if __name__ == "__main__":
    main()
