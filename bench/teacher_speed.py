"""Speed of an LLM teacher through llama.cpp: seconds per verdict and per replacement step, tokens/s,
and what reusing the KV cache of a shared prompt prefix saves.

Why prefix reuse matters: MPS asks for a verdict on a trajectory and then, right away, for a
replacement of step k. Both prompts start with the same system turn, task and steps 1..k-1
(teacher_prompts.render_steps renders each step on its own), and llama.cpp keeps the previous prompt's KV
cache and evaluates only what follows the longest common prefix. Here each replacement is timed
twice with the same prompt and seed (so the same tokens come out): right after its verdict ("warm"),
and after `Llama.reset()` has dropped the KV cache ("cold"). Calls bypass the teacher cache.

Per case, in order:  reset -> prompt only (1 token)      prompt tokens/s
                     the same prompt again, full reply     generation tokens/s (grammar on; prompt cached)
                     reset -> verdict                      seconds per verdict, cold
                     replacement step                      seconds per step, warm (prefix reused)
                     reset -> the same replacement step    seconds per step, cold

    python bench/teacher_speed.py                       # smol-135m-q4 on this CPU, 4 cases
    python bench/teacher_speed.py --teacher qwen-7b-q4 --cases 8
    python bench/teacher_speed.py --rerun-student runs/R/checkpoints/bc --n 8   # the teacher cache, end to end

With --rerun-student it measures the persistent teacher cache instead: `score.py mps` runs twice, each
in a fresh run directory, sharing one --teacher-cache file; the second run must make no teacher call
(its student rollouts are seeded the same, so every prompt is one the first run already asked).

Prints `RESULT name=value` lines last; figures go to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent import ACTION_STOP, RolloutConfig  # noqa: E402
from environment.tasks import load_tasks  # noqa: E402
from bench.teacher_verdicts import plants, run_case  # noqa: E402
from teacher import Verdict, make_teacher  # noqa: E402
from teacher_backends import GGUFTeacher  # noqa: E402
from teacher_prompts import verdict_schema  # noqa: E402


def timed(teacher: GGUFTeacher, messages, max_tokens: int, schema=None, stop=None, seed: int = 0):
    """(seconds, reply) of one model call, the teacher cache bypassed."""
    params = {"temperature": teacher.config.temperature, "top_p": teacher.config.top_p, "max_tokens": max_tokens,
              "stop": stop or [], "seed": seed}
    began = time.perf_counter()
    reply = teacher.complete(messages, params, schema)
    return time.perf_counter() - began, reply


def rerun(args) -> None:
    """Two MPS runs in fresh run directories sharing one teacher cache: teacher calls of each."""
    root = Path(tempfile.mkdtemp(prefix="teacher-cache-"))
    cache = root / "teacher_cache.jsonl"
    calls = []
    for attempt in ("first", "rerun"):
        command = [sys.executable, "score.py", "mps", "--student", args.rerun_student, "--teacher", args.teacher,
                   "--n", str(args.n), "--teacher-cache", str(cache), "--runs-dir", str(root / attempt),
                   "--run", "r"] + (["--threads", str(args.threads)] if args.threads else [])
        began = time.perf_counter()
        subprocess.run(command, check=True, cwd=Path(__file__).resolve().parent.parent)
        phases = json.loads((root / attempt / "r" / "phases.json").read_text())
        calls.append(phases["mps"]["teacher_calls"])
        print(f"{attempt}: {calls[-1]} teacher calls, {time.perf_counter() - began:.0f} s", flush=True)
    print(f"RESULT teacher={args.teacher}")
    print(f"RESULT teacher_calls_first={calls[0]}")
    print(f"RESULT teacher_calls_on_rerun={calls[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="smol-135m-q4", help="a preset or a .gguf path")
    parser.add_argument("--cases", type=int, default=4, help="planted trajectories to time (half arith, half lookup)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: its own choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerun-student", default="", help="measure the teacher cache with two MPS runs of this student")
    parser.add_argument("--n", type=int, default=8, help="training tasks per task set for --rerun-student")
    args = parser.parse_args()
    if args.rerun_student:
        return rerun(args)
    half = (args.cases + 1) // 2
    tasks = load_tasks("arith", "test", half, seed=args.seed) + load_tasks("lookup", "test", half, seed=args.seed)
    teacher = make_teacher(args.teacher, tasks, threads=args.threads, seed=args.seed)
    print(f"llama.cpp threads: {teacher.llm.n_threads}")
    llm, config = teacher.llm, teacher.config
    rows = []
    for task in tasks[:args.cases]:
        plant, codes, expected = plants(task, random.Random(task.id))[0]
        trajectory = run_case(teacher, task, codes, RolloutConfig())
        n = len(trajectory.steps)
        verdict_messages = teacher.verdict_messages(trajectory, task.answer)
        # 1-2. Prompt rate, then generation rate with the prompt already in the KV cache.
        llm.reset()
        prefill_s, first = timed(teacher, verdict_messages, 1)
        generate_s, _ = timed(teacher, verdict_messages, config.verdict_max_tokens, verdict_schema(n))
        # 3. A verdict from a cold cache.
        llm.reset()
        verdict_s, verdict_reply = timed(teacher, verdict_messages, config.verdict_max_tokens, verdict_schema(n))
        # 4-5. The replacement of step k (the planted one), warm then cold, same prompt and seed.
        prefix = trajectory.steps[:expected - 1]
        step_messages = teacher.step_messages(task, prefix, trajectory.steps[expected - 1],
                                              Verdict(expected, "This step goes wrong.", "Redo this step."))
        warm_s, warm = timed(teacher, step_messages, config.step_max_tokens, stop=[ACTION_STOP], seed=1)
        llm.reset()
        cold_s, cold = timed(teacher, step_messages, config.step_max_tokens, stop=[ACTION_STOP], seed=1)
        rows.append(dict(prompt_tokens=first.prompt_tokens, prefill_s=prefill_s,
                         generated=verdict_reply.completion_tokens, generate_s=generate_s, verdict_s=verdict_s,
                         step_prompt_tokens=warm.prompt_tokens, step_tokens=warm.completion_tokens,
                         warm_s=warm_s, cold_s=cold_s, same=warm.text == cold.text))
        print(f"{task.id:18s} {plant:14s} verdict prompt {first.prompt_tokens} tok, {verdict_s:.1f} s cold; "
              f"step prompt {warm.prompt_tokens} tok + {warm.completion_tokens} out: {warm_s:.1f} s warm, "
              f"{cold_s:.1f} s cold", flush=True)

    def mean(key):
        return statistics.mean(r[key] for r in rows)

    prompt_tok_s = sum(r["prompt_tokens"] for r in rows) / sum(r["prefill_s"] for r in rows)
    gen_tok_s = sum(r["generated"] for r in rows) / sum(r["generate_s"] for r in rows)
    saved = mean("cold_s") - mean("warm_s")
    print(f"RESULT teacher={teacher.name}")
    print(f"RESULT cases={len(rows)}")
    print(f"RESULT threads={llm.n_threads}")
    print(f"RESULT prompt_tok_per_s={prompt_tok_s:.1f}")
    print(f"RESULT generate_tok_per_s={gen_tok_s:.1f}")
    print(f"RESULT verdict_prompt_tokens={mean('prompt_tokens'):.0f}")
    print(f"RESULT verdict_s={mean('verdict_s'):.2f}")
    print(f"RESULT step_prompt_tokens={mean('step_prompt_tokens'):.0f}")
    print(f"RESULT step_s_prefix_reused={mean('warm_s'):.2f}")
    print(f"RESULT step_s_cold={mean('cold_s'):.2f}")
    print(f"RESULT prefix_reuse_saves_s={saved:.2f}")
    print(f"RESULT prefix_reuse_saves_pct={100 * saved / mean('cold_s'):.0f}")
    # Warm and cold see the same prompt and seed; float differences between a reused and a recomputed
    # KV cache may still change a sampled token, so the replies are compared, not assumed equal.
    print(f"RESULT warm_equals_cold_replies={sum(r['same'] for r in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
