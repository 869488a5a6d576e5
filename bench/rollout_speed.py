"""Rollout throughput of the offline student versus the number of concurrent episodes.

One code path (agent.rollout) for every row; only the number of episodes generated together differs.
tok/s = tokens sampled up to each row's stop / wall time of the whole rollout, prefill and tools
included. Each concurrency level runs `repeats` times on its own fresh tasks; the median is reported.

    python bench/rollout_speed.py                  # 1, 8, 16, 32 concurrent episodes
    python bench/rollout_speed.py --levels 1,16 --repeats 3

Prints `RESULT name=value` lines last; figures go to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent import RolloutConfig, Start, build_indexes, derive_seed, rollout  # noqa: E402
from bench.tasks import load_tasks  # noqa: E402
from student import load_student  # noqa: E402


def measure(student, tasks, config) -> tuple[float, int, float]:
    """(tok/s, sampled tokens, wall seconds) of one batched rollout over `tasks`."""
    indexes = build_indexes(tasks)
    starts = [Start(task=t, seed=derive_seed(0, "bench", t.id)) for t in tasks]
    began = time.perf_counter()
    trajectories = rollout(student, starts, config, indexes=indexes)
    wall = time.perf_counter() - began
    tokens = sum(len(s.token_ids or []) for t in trajectories for s in t.steps)
    return tokens / wall, tokens, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,8,16,32", help="concurrent episodes to compare")
    parser.add_argument("--repeats", type=int, default=1, help="runs per level (median reported)")
    parser.add_argument("--max-steps", type=int, default=3, help="steps per episode (short keeps it quick)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", help="bfloat16 is what eval and MPS use on CPUs with native bf16")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    student = load_student("smol-135m", device="cpu", dtype=args.dtype, threads=args.threads)
    # Sampling at temperature 1 makes turns of realistic, varied length (greedy on the untrained
    # student often ends a turn after a few tokens, which would measure mostly prefill).
    config = RolloutConfig(max_steps=args.max_steps, max_new_tokens=96, max_context_tokens=2048,
                           temperature=1.0, top_p=1.0, max_output_chars=400)
    pool = load_tasks("arith", "test", None, seed=0) + load_tasks("lookup", "test", None, seed=0)
    medians = {}
    cursor = 0
    for level in levels:
        rates = []
        for _ in range(args.repeats):
            tasks = pool[cursor:cursor + level]
            cursor = (cursor + level) % max(1, len(pool) - max(levels))
            rate, tokens, wall = measure(student, tasks, config)
            rates.append(rate)
            print(f"concurrency {level:3d}: {tokens:6d} tokens in {wall:7.1f} s = {rate:6.1f} tok/s", flush=True)
        medians[level] = statistics.median(rates)
    for level in levels:
        print(f"RESULT rollout_tok_per_s_{level}={medians[level]:.1f}")
    for level in levels:
        if level != 1 and 1 in medians:
            print(f"RESULT rollout_speedup_{level}={medians[level] / medians[1]:.2f}")


if __name__ == "__main__":
    main()
