"""Seconds per RL update, split into rollout, reward and update; tokens/s of the update; the on-policy gap.

The CPU default: SmolLM2-135M (full fine-tuning, fp32 weights), RLConfig() (4 start states x G = 4
episodes per update) and the CPU rollout budget (6 steps, 96 new tokens a turn). Start states are
key-step records built from reference solutions of `arith` tasks with a planted wrong step, as MPS
would write them: prefix = plan + reference steps before k, teacher step = reference step k, wrong
step = step k with its first literal off by 3, both run in a sandbox after replaying the prefix.

The untrained student rarely finishes, so most groups would have equal rewards and be skipped;
to time a full update anyway, every row is trained with a synthetic advantage of +1 / -1
(alternating), which costs exactly what a real update of the same rows costs.

Before and after in one run (the default): the RLConfig settings named by `--before` (the loop as it
was: fp32 sampling and update, every row padded whole: `autocast=off,share_context=false`) and
`--after` (RLConfig() with `share_context=true`: a group's shared context run once) take turns update by update on
one model, so a change in the machine's load falls on both. Either names any RLConfig fields, e.g.
`--after autocast=auto` adds bf16 matmuls over fp32 weights where the CPU has native bf16. Each update's rows are also trained under the other setting (its
timing is kept; the first setting's step is what the model keeps), so the update tok/s of the two
settings are measured on the same rows. rl/logprob_gap is the mean |log pi at sampling - log pi in
training| of rows sampled and trained under the same setting.

How close an update is to what this CPU can do: each update's FLOPs (update_flops: the matmuls
and the causal attention the rows need, no padding) per second, beside the rate of a plain fp32
matmul of the model's shapes timed at start. An update near that rate can be made faster only by
running fewer FLOPs (e.g. a shared context run once) or cheaper ones (bf16 where the CPU has it),
not by less overhead.

    python bench/rl_speed.py                       # 2 updates per setting, before and after
    python bench/rl_speed.py --after share_context=true,autocast=auto --student runs/NAME/checkpoints/sft
    python bench/rl_speed.py --only after --updates 2

Prints `RESULT name=value` lines last; figures go to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import re
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from student import configure_threads, load_student  # noqa: E402  (first: it sets OpenMP's waiting before torch loads)
import torch  # noqa: E402

from agent import RolloutConfig, Step, format_step, replay_codes, run_step  # noqa: E402
from environment.tasks import load_tasks  # noqa: E402
from rl import (RLConfig, build_row, group_advantages, group_rewards, micro_batch_loss, rollout_groups,  # noqa: E402
                select_start_states)
from tools import Sandbox  # noqa: E402
from training import autocast_dtype, prepare_policy, shared_context, update_batches  # noqa: E402

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


SETTINGS = ("before", "after")


def overrides(config: RLConfig, text: str) -> RLConfig:
    """config with the fields named in `text` ("autocast=off,share_context=false") changed."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"error: {name!r} is not an RLConfig field (one of: {', '.join(fields)})")
        default = getattr(config, name)
        if isinstance(default, bool):
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"error: {name} takes true or false, not {value!r}")
            changes[name] = value.lower() == "true"
        else:
            changes[name] = type(default)(value) if default is not None else value
    return dataclasses.replace(config, **changes)


def matmul_gflops(hidden: int, seconds: float = 2.0) -> float:
    """What this CPU's dense matmuls reach at the model's shapes, GFLOP/s: (1024, d) @ (d, 4d) in fp32 (the
    CPU default's weights), repeated for `seconds` (a (M, K) @ (K, N) product is 2 M K N FLOPs)."""
    x, w = torch.randn(1024, hidden), torch.randn(hidden, 4 * hidden)
    torch.mm(x, w)  # warm-up
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        torch.mm(x, w)
        count += 1
    return 2 * 1024 * hidden * 4 * hidden * count / (time.perf_counter() - began) / 1e9


def attention_pairs(micro: list, context: int) -> int:
    """(query, key) pairs a micro-batch's causal attention needs: t + 1 for a row's token t; a shared
    context of `context` tokens counts once, and each tail token also sees the whole context."""
    if not context:
        return sum(len(r.ids) * (len(r.ids) + 1) // 2 for r in micro)
    tails = [len(r.ids) - context for r in micro]
    return context * (context + 1) // 2 + sum(w * context + w * (w + 1) // 2 for w in tails)


def update_flops(model, run_tokens: int, pairs: int, supervised_tokens: int) -> float:
    """FLOPs of one update that the method needs (padding and masked attention not counted).

    Weights: a token's forward is 2 FLOPs a weight, its backward 4 (input and weight gradients):
    6 x (weight matrices outside the embedding) x tokens run. The LM head (V x d, tied to the embedding) runs
    at supervised positions only, 8 a weight there: forward, its chunk recomputed in backward, backward.
    Attention: a (query, key) pair costs 2 d FLOPs in Q K^T and 2 d in P V forward, twice that
    backward: 12 d a pair a layer, d = heads x head size."""
    config = model.config
    embedding = model.get_input_embeddings().weight
    # matrices outside the embedding (norm scales are not matmul weights); a tied head is counted once
    body = sum(p.numel() for p in model.parameters() if p.dim() >= 2) - embedding.numel()
    head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_attention_heads * head_size * config.num_hidden_layers * pairs
    return 6 * body * run_tokens + 8 * embedding.numel() * supervised_tokens + attention


def update(student, optimizer, params, rows, config, reference) -> dict:
    """One RL update on fixed rows, the steps of rl.train_rl's update (zero_grad -> micro-batches of
    forward + loss -> backward -> clip -> step), with the numbers this bench prints."""
    num_tokens = sum(sum(r.mask) for r in rows)
    student.model.train()
    optimizer.zero_grad(set_to_none=True)
    gap = 0.0
    batches = update_batches(rows, config)
    for micro in batches:
        loss, numbers = micro_batch_loss(student, micro, num_tokens, config, reference)
        loss.backward()
        gap += numbers["logprob_gap"]
    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    student.model.eval()
    # tokens the forward passes ran: a shared context counts once per micro-batch
    shared = [shared_context(micro, config) for micro in batches]
    run = sum(sum(len(r.ids) for r in micro) - (len(micro) - 1) * size for micro, size in zip(batches, shared))
    pairs = sum(attention_pairs(micro, size) for micro, size in zip(batches, shared))
    return {"logprob_gap": gap / num_tokens, "supervised_tokens": num_tokens, "row_tokens": sum(len(r.ids) for r in rows),
            "run_tokens": run, "pairs": pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=2, help="timed updates per setting (each on fresh start states)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--student", default="smol-135m")
    parser.add_argument("--before", default="autocast=off,share_context=false",
                        help="RLConfig fields of the 'before' setting, NAME=VALUE,... (default: the loop as it was)")
    parser.add_argument("--after", default="share_context=true",
                        help="RLConfig fields of the 'after' setting, changed from RLConfig() (default: share_context=true)")
    parser.add_argument("--only", choices=SETTINGS, default=None, help="run one setting only")
    parser.add_argument("--max-steps", type=int, default=6, help="rollout steps (the CPU preset: 6)")
    args = parser.parse_args()
    named = {"before": args.before, "after": args.after}
    settings = [args.only] if args.only else list(SETTINGS)
    configs = {name: overrides(RLConfig(), named[name]) for name in settings}  # the CPU default, changed
    # The CPU preset: 6 steps, 96 new tokens a turn, 2048-token context (fewer steps: a quicker bench).
    rollout_config = RolloutConfig(max_steps=args.max_steps)
    student = load_student(args.student, device=args.device, threads=args.threads)
    print(configure_threads(args.threads), f"- load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    num_updates = args.updates * len(settings)
    config = configs[settings[0]]
    tasks = load_tasks("arith", "test", config.prompts_per_update * num_updates, seed=0)
    records = [planted_record(t, rollout_config) for t in tasks]
    starts = select_start_states(records, {t.id: t for t in tasks}, config)
    _, params, reference = prepare_policy(student, config)
    dtypes = {name: autocast_dtype(configs[name].autocast, student) for name in settings}
    if len(settings) == 2 and (dtypes["before"], configs["before"].share_context) == \
            (dtypes["after"], configs["after"].share_context):  # e.g. autocast=auto on a CPU without native bf16
        raise SystemExit(f"error: --before {args.before!r} and --after {args.after!r} compute the same way here "
                         f"(in {dtypes['after'] or next(student.model.parameters()).dtype}, share_context "
                         f"{configs['after'].share_context}; no native bf16 on this CPU?): nothing to compare; "
                         "run one setting with --only")
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    peak_gflops = matmul_gflops(student.model.config.hidden_size)
    print(f"dense matmul on this CPU: {peak_gflops:.0f} GFLOP/s at the model's shapes", flush=True)
    timings = {name: {"rollout_s": [], "reward_s": [], "update_s": [], "tok_per_s": [], "sampled_tok_per_s": [],
                      "generated": [], "row_tokens": [], "gap": [], "gflops": []} for name in settings}
    for update_idx in range(num_updates):
        name = settings[update_idx % len(settings)]  # the setting that samples this update's rollouts
        student.autocast_dtype = dtypes[name]
        batch = starts[update_idx * config.prompts_per_update:(update_idx + 1) * config.prompts_per_update]
        began = time.perf_counter()
        groups = rollout_groups(student, batch, update_idx, configs[name], rollout_config, {}, None)
        rollout_s = time.perf_counter() - began
        began = time.perf_counter()
        rewards = [group_rewards(g, s, configs[name]) for s, g in zip(batch, groups)]
        skipped = sum(group_advantages([r.reward for r in g], configs[name].advantage) is None for g in rewards)
        reward_s = time.perf_counter() - began
        # Synthetic advantages on every row (see the docstring): the cost of a full update.
        rows = [build_row(student.tokenizer, t, s.k, 1.0 if i % 2 else -1.0)
                for s, g in zip(batch, groups) for i, t in enumerate(g)]
        rows = [r for r in rows if sum(r.mask)]
        generated = sum(len(s.token_ids or []) for g, st in zip(groups, batch) for t in g for s in t.steps[st.k - 1:])
        line = []
        # The other setting first, on a copy of the weights and optimiser state it then throws away,
        # so that the model keeps only the step of the setting that sampled the rows.
        for trainer in [n for n in settings if n != name] + [name]:
            student.autocast_dtype = dtypes[trainer]
            saved = None
            if trainer != name:
                saved = ({k: v.detach().clone() for k, v in student.model.state_dict().items()},
                         copy.deepcopy(optimizer.state_dict()))
            began = time.perf_counter()
            stats = update(student, optimizer, params, rows, configs[trainer], reference)
            update_s = time.perf_counter() - began
            if saved is not None:
                student.model.load_state_dict(saved[0])
                optimizer.load_state_dict(saved[1])
            timings[trainer]["update_s"].append(update_s)
            timings[trainer]["tok_per_s"].append(stats["row_tokens"] / update_s)
            gflops = update_flops(student.model, stats["run_tokens"], stats["pairs"], stats["supervised_tokens"]) / update_s / 1e9
            timings[trainer]["gflops"].append(gflops)
            line.append(f"update as {trainer} {update_s:.1f} s ({stats['row_tokens'] / update_s:.0f} tok/s, "
                        f"{stats['run_tokens']} tokens run, {gflops:.0f} GFLOP/s, gap {stats['logprob_gap']:.2e})")
        student.autocast_dtype = dtypes[name]
        for key, value in (("rollout_s", rollout_s), ("reward_s", reward_s), ("generated", generated),
                           ("sampled_tok_per_s", generated / rollout_s), ("row_tokens", stats["row_tokens"]),
                           ("gap", stats["logprob_gap"])):
            timings[name][key].append(value)
        mean_reward = sum(r.reward for g in rewards for r in g) / sum(len(g) for g in rewards)
        print(f"update {update_idx + 1} sampled as {name}: rollout {rollout_s:.1f} s ({generated} tokens sampled, "
              f"{generated / rollout_s:.1f} tok/s), reward {reward_s:.2f} s, {stats['row_tokens']} row tokens "
              f"({stats['supervised_tokens']} supervised); " + "; ".join(line)
              + f"; mean reward {mean_reward:.3f}, skipped groups {skipped}; load {os.getloadavg()[0]:.2f}", flush=True)
    # With both settings this includes one copy of the weights and the optimiser state (~1.6 GB).
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    median = {name: {k: statistics.median(v) for k, v in timings[name].items()} for name in settings}
    for name in settings:
        m = median[name]
        print(f"{name} (autocast={configs[name].autocast} -> {dtypes[name]}, share_context="
              f"{configs[name].share_context}): rollout {m['rollout_s']:.1f} s "
              f"({m['sampled_tok_per_s']:.1f} sampled tok/s), reward {m['reward_s']:.2f} s, update {m['update_s']:.1f} s "
              f"({m['tok_per_s']:.0f} tok/s, {m['gflops']:.0f} GFLOP/s = {m['gflops'] / peak_gflops:.0%} of the "
              f"matmul rate), logprob gap {m['gap']:.2e}")
    last = settings[-1]
    print(f"RESULT rl_rollout_s_per_update={median[last]['rollout_s']:.1f}")
    print(f"RESULT rl_reward_s_per_update={median[last]['reward_s']:.2f}")
    print(f"RESULT rl_update_s_per_update={median[last]['update_s']:.1f}")
    print(f"RESULT rl_update_tok_per_s={median[last]['tok_per_s']:.0f}")
    print(f"RESULT rl_peak_rss_gb={peak_rss_gb:.2f}")
    print(f"RESULT rl_update_share_of_matmul_rate={median[last]['gflops'] / peak_gflops:.2f}")
    if len(settings) == 2:
        print(f"RESULT rl_rollout_speedup={median['after']['sampled_tok_per_s'] / median['before']['sampled_tok_per_s']:.2f}")
        print(f"RESULT rl_update_speedup={median['after']['tok_per_s'] / median['before']['tok_per_s']:.2f}")
        print(f"RESULT rl_logprob_gap_before={median['before']['gap']:.2e}")
    print(f"RESULT rl_logprob_gap={median[last]['gap']:.2e}")


if __name__ == "__main__":
    main()
