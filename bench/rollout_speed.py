"""Rollout throughput of the offline student: our sampler against Hugging Face `generate`.

Two figures per number of concurrent episodes, each measured side by side in one run (the
contenders take turns, repeat by repeat, so a change in the machine's load falls on all of them):

- decode: one turn of B rows from the same B prompts (each task's first prompt), temperature 1,
  96 new tokens at most, only the end-of-turn token stops a row. Ours is `Student.sample`; HF is
  `model.generate(do_sample=True)` on the same left-padded batch, the same weights and dtype.
  tok/s = sampled tokens up to each row's end of turn / wall time.
- rollout: the whole agent loop (`agent.rollout`, 3 steps, stop strings, tools, prefill included)
  over the same B tasks, once with our sampler and once with a sampler that calls `generate` for
  each batched turn (its stop strings through `stop_strings`; it re-reads each prompt, as `generate`
  keeps no cache between calls). tok/s = sampled tokens / wall time of the rollout.
- the same rollout with our sampler but without keeping each episode's keys/values between turns
  (`RolloutConfig.reuse_kv=False`): what that lever is worth.

    python bench/rollout_speed.py                        # 16 and 32 concurrent episodes, bf16
    python bench/rollout_speed.py --levels 16 --repeats 3 --dtype float32

Prints `RESULT name=value` lines last (ours / HF, medians); figures go to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from student import Sample, configure_threads, load_student  # noqa: E402  (first: OpenMP waiting, see student.py)
import torch  # noqa: E402

from agent import RolloutConfig, Start, build_indexes, derive_seed, render_ids, rollout  # noqa: E402
from environment.tasks import load_tasks  # noqa: E402


class GenerateSampler:
    """`Student.sample`'s interface on top of Hugging Face `generate`: the baseline. One `generate` call
    per batched turn over the left-padded prompts; rows stop at the end-of-turn token or at the
    turn's stop string (all rows of a turn share it here); log-probs are not recorded."""

    def __init__(self, student):
        self.student, self.tokenizer = student, student.tokenizer

    def sample(self, prompts, stops, max_new_tokens, temperature, top_p, seeds, keys=None) -> list[Sample]:
        student = self.student
        assert all(list(s) == list(stops[0]) for s in stops), "this baseline needs one stop list per turn"
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), student.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(list(p)), 1
        torch.manual_seed(int(seeds[0]))  # generate draws from the global generator
        with torch.no_grad():
            out = student.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                         do_sample=temperature > 0, temperature=temperature or None,
                                         top_p=top_p if temperature > 0 else None, top_k=0,
                                         eos_token_id=sorted(student.eos_ids), pad_token_id=student.pad_id,
                                         stop_strings=list(stops[0]) or None, tokenizer=self.tokenizer)
        samples = []
        for row in out[:, width:].tolist():
            # A finished row is padded to the batch's length: cut it at its end-of-turn token, or at
            # the token that completed the stop string (the same check as Student.sample's).
            cut = next((i for i, t in enumerate(row) if t in student.eos_ids), len(row))
            reason = "eos" if cut < len(row) else "length"
            for n in range(1, cut + 1):
                if student._hit_stop(row[:n], stops[0]):
                    cut, reason = n, "stop"
                    break
            token_ids = row[:cut]
            samples.append(Sample(token_ids=token_ids, logprobs=[0.0] * len(token_ids),
                                  text=student.decode(token_ids), stop_reason=reason))
        return samples

    def forget(self, key):
        pass


def decode_ours(student, prompts, seeds) -> tuple[int, float]:
    began = time.perf_counter()
    samples = student.sample(prompts, [[]] * len(prompts), 96, 1.0, 1.0, seeds)
    return sum(len(s.token_ids) for s in samples), time.perf_counter() - began


def decode_hf(student, prompts, seeds) -> tuple[int, float]:
    began = time.perf_counter()
    samples = GenerateSampler(student).sample(prompts, [[]] * len(prompts), 96, 1.0, 1.0, seeds)
    return sum(len(s.token_ids) for s in samples), time.perf_counter() - began


def rollout_tokens(sampler, tasks, config) -> tuple[int, float]:
    """(sampled tokens, wall seconds) of one batched rollout over `tasks`."""
    indexes = build_indexes(tasks)
    starts = [Start(task=t, seed=derive_seed(0, "bench", t.id)) for t in tasks]
    began = time.perf_counter()
    trajectories = rollout(sampler, starts, config, indexes=indexes)
    return sum(len(s.token_ids or []) for t in trajectories for s in t.steps), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="16,32", help="concurrent episodes to compare")
    parser.add_argument("--repeats", type=int, default=2, help="runs per contender and level (median reported)")
    parser.add_argument("--max-steps", type=int, default=3, help="steps per episode (short keeps it quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--dtype", default="bfloat16", help="bfloat16 is what eval and MPS use on CPUs with native bf16")
    parser.add_argument("--skip", default="", help="comma-separated contenders to leave out, e.g. no_reuse")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    student = load_student("smol-135m", device="cpu", dtype=args.dtype, threads=args.threads)
    print(configure_threads(args.threads), f"- load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    # Sampling at temperature 1 makes turns of realistic, varied length (greedy on the untrained
    # student often ends a turn after a few tokens, which would measure mostly prefill).
    config = RolloutConfig(max_steps=args.max_steps, max_new_tokens=96, max_context_tokens=2048,
                           temperature=1.0, top_p=1.0, max_output_chars=400)
    pool = load_tasks("arith", "test", None, seed=0) + load_tasks("lookup", "test", None, seed=0)
    contenders = {
        "decode_ours": lambda tasks, prompts, seeds: decode_ours(student, prompts, seeds),
        "decode_hf": lambda tasks, prompts, seeds: decode_hf(student, prompts, seeds),
        "rollout_ours": lambda tasks, prompts, seeds: rollout_tokens(student, tasks, config),
        "rollout_hf": lambda tasks, prompts, seeds: rollout_tokens(GenerateSampler(student), tasks, config),
        "rollout_no_reuse": lambda tasks, prompts, seeds: rollout_tokens(
            student, tasks, dataclasses.replace(config, reuse_kv=False)),
    }
    contenders = {k: v for k, v in contenders.items() if k not in args.skip.split(",")}
    rates: dict[tuple[str, int], list[float]] = {}
    for level in levels:
        for repeat in range(args.repeats):
            # Every contender gets the same tasks in a repeat; each repeat takes fresh ones.
            first = (repeat * level) % max(1, len(pool) - level)
            tasks = pool[first:first + level]
            prompts = [render_ids(student.tokenizer, t.question, [], add_generation_prompt=True).ids for t in tasks]
            seeds = [derive_seed(0, "bench", t.id) for t in tasks]
            for name, run in contenders.items():
                tokens, wall = run(tasks, prompts, seeds)
                rates.setdefault((name, level), []).append(tokens / wall)
                print(f"{level:3d} episodes, repeat {repeat + 1}, {name:17s}: {tokens:6d} tokens in {wall:6.1f} s "
                      f"= {tokens / wall:6.1f} tok/s   load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    median = {key: statistics.median(values) for key, values in rates.items()}
    for level in levels:
        for name in contenders:
            print(f"RESULT {name}_tok_per_s_{level}={median[(name, level)]:.1f}")
        if "decode_hf" in contenders:
            print(f"RESULT decode_vs_hf_generate_{level}={median[('decode_ours', level)] / median[('decode_hf', level)]:.2f}")
        if "rollout_no_reuse" in contenders:
            print(f"RESULT rollout_kv_reuse_gain_{level}="
                  f"{median[('rollout_ours', level)] / median[('rollout_no_reuse', level)]:.2f}")
        if "rollout_hf" in contenders:
            print(f"RESULT rollout_vs_hf_generate_{level}="
                  f"{median[('rollout_ours', level)] / median[('rollout_hf', level)]:.2f}")


if __name__ == "__main__":
    main()
