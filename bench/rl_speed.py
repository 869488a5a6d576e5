"""Seconds per RL update, split into rollout, reward and update, and tokens/s of the update.

The CPU default: SmolLM2-135M (full fine-tuning, fp32), RLConfig() (4 start states x G = 4 episodes
per update) and the CPU rollout budget (6 steps, 96 new tokens a turn). Start states are key-step
records built from reference solutions of `arith` tasks with a planted wrong step, as MPS would
write them: prefix = plan + reference steps before k, teacher step = reference step k, wrong step =
step k with its first literal off by 3, both run in a sandbox after replaying the prefix.

The untrained student rarely finishes, so most groups would have equal rewards and be skipped;
to time a full update anyway, every row is trained with a synthetic advantage of +1 / -1
(alternating), which costs exactly what a real update of the same rows costs.

    python bench/rl_speed.py                       # 2 updates of the CPU default
    python bench/rl_speed.py --updates 3 --threads 2

Prints `RESULT name=value` lines last; figures go to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from agent import RolloutConfig, Step, format_step, replay_codes, run_step  # noqa: E402
from bench.tasks import load_tasks  # noqa: E402
from rl import (RLConfig, build_row, prepare_model, rl_update, rollout_groups, score_groups,  # noqa: E402
                select_start_states)
from student import load_student  # noqa: E402
from tools import Sandbox  # noqa: E402

LITERAL = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def planted_record(task, config: RolloutConfig) -> dict:
    """A key-step record for `task`: k = 3 when the solution has two actions or more, else 2."""
    k = 3 if len(task.solution) >= 3 else 2

    def reference_step(index: int, author: str, code: str | None = None) -> Step:
        ref = task.solution[index - 1]
        kind = "plan" if index == 1 else "action"
        code = ref.code if code is None else code
        return Step(index=index, kind=kind, author=author, content=format_step(kind, ref.thought, code),
                    thought=ref.thought, code=code)

    def run_after_prefix(prefix: list[Step], step: Step) -> Step:
        with Sandbox(timeout_s=config.timeout_s, max_output_chars=config.max_output_chars) as sandbox:
            sandbox.replay(replay_codes(prefix))
            return run_step(sandbox, step)

    prefix = []
    for index in range(1, k):
        prefix.append(run_after_prefix(prefix, reference_step(index, "student")))
    teacher = run_after_prefix(prefix, reference_step(k, "teacher"))
    # The planted error: the first literal on the right of the step's first assignment, plus 3.
    first_line, newline, rest = task.solution[k - 1].code.partition("\n")
    target, equals, expression = first_line.partition("=")
    expression = LITERAL.sub(lambda m: str(float(m.group()) + 3) if "." in m.group() else str(int(m.group()) + 3),
                             expression, count=1)
    wrong = run_after_prefix(prefix, reference_step(k, "student", target + equals + expression + newline + rest))
    return {"task_id": task.id, "task_set": task.task_set, "question": task.question, "reference_answer": task.answer,
            "split": "rl", "k": k, "prefix": [dataclasses.asdict(s) for s in prefix],
            "teacher_step": dataclasses.asdict(teacher), "wrong_step": dataclasses.asdict(wrong), "last": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=2, help="timed updates (each on fresh start states)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--student", default="smol-135m")
    args = parser.parse_args()
    config = RLConfig()  # the CPU default
    rollout_config = RolloutConfig()  # the CPU preset: 6 steps, 96 new tokens a turn, 2048-token context
    student = load_student(args.student, device=args.device, threads=args.threads)
    tasks = load_tasks("arith", "test", config.prompts_per_update * args.updates, seed=0)
    records = [planted_record(t, rollout_config) for t in tasks]
    starts = select_start_states(records, {t.id: t for t in tasks}, config)
    _, params, reference = prepare_model(student, config)
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    timings = {"rollout_s": [], "reward_s": [], "update_s": [], "tok_per_s": [], "supervised_tok_per_s": [],
               "generated": [], "row_tokens": []}
    for update_idx in range(args.updates):
        batch = starts[update_idx * config.prompts_per_update:(update_idx + 1) * config.prompts_per_update]
        began = time.perf_counter()
        groups = rollout_groups(student, batch, update_idx, config, rollout_config, {}, None)
        rollout_s = time.perf_counter() - began
        began = time.perf_counter()
        rewards, _, _, skipped = score_groups(student.tokenizer, batch, groups, config)
        reward_s = time.perf_counter() - began
        # Synthetic advantages on every row (see the docstring): the cost of a full update.
        rows = [build_row(student.tokenizer, t, s.k, 1.0 if i % 2 else -1.0)
                for s, g in zip(batch, groups) for i, t in enumerate(g)]
        rows = [r for r in rows if sum(r.mask)]
        began = time.perf_counter()
        stats = rl_update(student, optimizer, params, rows, config, reference)
        update_s = time.perf_counter() - began
        generated = sum(len(s.token_ids or []) for g, st in zip(groups, batch) for t in g for s in t.steps[st.k - 1:])
        for key, value in (("rollout_s", rollout_s), ("reward_s", reward_s), ("update_s", update_s),
                           ("tok_per_s", stats["row_tokens"] / update_s),
                           ("supervised_tok_per_s", stats["supervised_tokens"] / update_s),
                           ("generated", generated), ("row_tokens", stats["row_tokens"])):
            timings[key].append(value)
        mean_reward = sum(r.reward for g in rewards for r in g) / sum(len(g) for g in rewards)
        print(f"update {update_idx + 1}: rollout {rollout_s:.1f} s ({generated} tokens sampled), reward {reward_s:.2f} s, "
              f"update {update_s:.1f} s ({stats['row_tokens']} tokens, {stats['supervised_tokens']} supervised, "
              f"{stats['row_tokens'] / update_s:.0f} tok/s); mean reward {mean_reward:.3f}, skipped groups {skipped}",
              flush=True)
    median = {k: statistics.median(v) for k, v in timings.items()}
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"RESULT rl_rollout_s_per_update={median['rollout_s']:.1f}")
    print(f"RESULT rl_reward_s_per_update={median['reward_s']:.2f}")
    print(f"RESULT rl_update_s_per_update={median['update_s']:.1f}")
    print(f"RESULT rl_update_tok_per_s={median['tok_per_s']:.0f}")
    print(f"RESULT rl_update_supervised_tok_per_s={median['supervised_tok_per_s']:.0f}")
    print(f"RESULT rl_generated_tokens_per_update={median['generated']:.0f}")
    print(f"RESULT rl_row_tokens_per_update={median['row_tokens']:.0f}")
    print(f"RESULT rl_peak_rss_gb={peak_rss_gb:.2f}")


if __name__ == "__main__":
    main()
