"""Phase 3, SCoRe-RL: prefix-restart REINFORCE with key-step rewards (METHOD.md section 3, phase 3).

    python rl.py --keysteps runs/NAME/keysteps.jsonl --student runs/NAME/checkpoints/sft --out /tmp/rl --num-updates 10

(`python score.py rl` calls `train_rl`.) For each key-step record of the RL half (the LAST valid
correction of an MPS episode):
  1. start state = the task + the verified prefix, steps 1..k-1, each keeping its author; the
     interpreter is rebuilt by replaying the prefix's code. The teacher's step k is NOT shown: the
     student must find a step like it by itself;
  2. a group of G continuations is sampled (temperature 1, top-p 1), each run until it answers or
     its step budget ends, at step max(H, k + 3) (deviation 3);
  3. reward: 1 if the final answer is correct; otherwise the first generated step a_k is judged
     against the teacher's step k and the student's original wrong step k: 0.5 if equivalent to
     the teacher's (even if the episode then runs out of steps), 0.1 if neither and the
     continuation answered, and 0 for the rest: equivalent to the wrong step, unparseable, itself
     a wrong final answer, or neither without an answer (the table: KEY_STEP_REWARDS, deviation 2);
  4. advantage A_i = r_i - mean of the group (GRPO's division by the std and RLOO's leave-one-out
     mean are options); a group whose rewards are all equal carries no signal and is skipped;
  5. one gradient step on L = -(1/N) sum_i sum_t m_it A_i log pi(y_it) over the exact sampled ids,
     m = 1 on the continuation's generated tokens only.
The loop is written out: rollouts -> rewards -> advantages -> zero_grad -> forward -> loss ->
backward -> clip -> step. Every update uses fresh rollouts of the current policy (on-policy), so no
importance ratio and no PPO clipping are needed: those exist to reuse stale samples.

Deviations from the paper, each with its reason:
  1. Key-step equivalence is judged by default from step SIGNATURES (exception type, normalised
     stdout, graded final answer) compared with the stored observations of the teacher step and the
     wrong step, not by an LLM call per sample: it is free, deterministic and offline, and the
     teacher is freed before training on one GPU. `key_step_judge="teacher"` asks the teacher.
  2. The reward of every case, with the reason where it is not METHOD.md's plain table (0.5 / 0 /
     0.1 by a_k, 0 for a continuation that never answers):
       final answer correct, whatever a_k was       1
       a_k is itself a wrong final answer           0    the outcome only, as the paper's code gives no
                                                         key-step credit to a first step that is the
                                                         final answer (the plain table would call it
                                                         "neither", 0.1): a wrong blurt must not
                                                         outscore honest work
       a_k equivalent to the teacher's step         0.5  also when the episode then runs out of steps
                                                         (the plain table: 0): the key step was found,
                                                         and the work after it is honest
       a_k equivalent to the wrong step             0
       a_k neither, and the continuation answered   0.1  "a different but sensible step"
       a_k neither, and it never answered           0    as the paper: no answer shows that the
                                                         different step led anywhere
       a_k unparseable                              0    the paper's judge would give 0.1, but a format
                                                         failure is not a sensible step
       no a_k (the context overflowed first)        0    nothing was done to credit
     k = 1, question starts and reward="outcome" are outcome-only: 1 if correct, else 0.
  3. Horizon: a key-step continuation may run to step max(H, k + steps_after_key), 3 steps after
     a_k by default. The paper leaves the episode's H - k + 1 remaining steps, but MPS here gives a
     fresh budget after each teacher step, so key steps fall at k >= H, where that rule leaves a_k
     alone and no continuation could ever answer. 3 is the most steps any offline reference
     solution takes after its first action (lookup's three hops: two more searches and the answer),
     so a continuation that finds the teacher's path can always finish it; with H = 6, key steps at
     k <= 3 keep the paper's horizon exactly.
  4. Scale (DESIGN.md, Presets): lr 1e-5, G = 4 (CPU) / 8 (GPU), 4 / 16 start states per update;
     the paper used lr 7e-7 (full fine-tuning of 7B), G = 16 and 128 prompts per update on 8 GPUs.
     With LoRA, the SFT adapter is merged first and a fresh adapter is trained, so that "adapter
     disabled" is exactly the SFT policy (the KL reference); the final model is saved merged.
  5. The KL penalty (off by default, as in the paper) uses the k3 estimator
     exp(q - p) - (q - p) - 1 per sampled token: non-negative, unbiased, zero when pi = pi_ref.
  6. The template's end-of-turn token is not trained (SFT trains it): it was never sampled, so it
     is not an action of this policy and has no sampling log-prob (METHOD.md section 2).
  7. One process, one device: `accelerate launch` data parallelism is not wired in for RL (rollouts
     would need sharding across processes too).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import inspect
import json
import math
import random
import re
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from agent import Rendered, RolloutConfig, Start, Step, Trajectory, build_indexes, derive_seed, render_ids, rollout
from environment.graders import is_correct
from runs import (append_jsonl, find_training_state, finish_training_state, git_commit, load_training_state,
                  make_console, remove_temporaries, save_training_state, write_json_atomic)
from student import Student, token_logprobs


@dataclass(frozen=True)
class RLConfig:
    """One RL run. Defaults are the CPU preset (SmolLM2-135M, full fine-tuning, fp32)."""
    lr: float = 1e-5  # AdamW learning rate, constant (DESIGN.md presets; paper: 7e-7, full fine-tuning of 7B)
    group_size: int = 4  # G: continuations sampled per start state (paper: 16; GPU preset: 8)
    prompts_per_update: int = 4  # start states per update: an update runs G x this many episodes (paper: 128)
    epochs: int = 3  # passes over the start states (paper: 3); ignored when num_updates is set
    num_updates: int | None = None  # total updates; None = epochs x ceil(start states / prompts_per_update)
    advantage: str = "mean"  # "mean": r - group mean | "grpo": (r - mean) / std | "rloo": r - mean of the others
    kl_coef: float = 0.0  # beta of the KL penalty to the starting (SFT) policy; 0 = off (paper: 0)
    max_grad_norm: float = 1.0  # the global gradient norm is clipped to this before each step
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    rl_start: str = "prefix"  # "prefix": restart before the key step | "question": bare task (Table 3 ablation)
    reward: str = "keystep"  # "keystep": METHOD.md's table | "outcome": 1 if correct, else 0 (Table 3 ablation)
    key_step_judge: str = "signature"  # "signature": compare stored observations | "teacher": teacher.equivalent
    steps_after_key: int = 3  # steps a continuation may take after a_k, at least: step limit max(H, k + this)
    question_only_rate_hard: float = 0.5  # chance that a hard episode without key step joins as a question start
    question_only_rate_other: float = 0.1  # the same for every other episode without a key step (paper: 0.1)
    split: str = "rl"  # the MPS split RL trains on ("" = every record passed in)
    temperature: float = 1.0  # sampling temperature; log-probs are recorded at 1, so only 1 is on-policy
    top_p: float = 1.0  # nucleus mass; only 1 samples from pi itself (on-policy)
    lora: bool | None = None  # None = auto: LoRA for a LoRA checkpoint or a student of >= 1B parameters
    lora_rank: int = 64  # LoRA r of the fresh RL adapter
    lora_alpha: int = 128  # LoRA scale alpha (the update is multiplied by alpha / r)
    micro_batch_tokens: int = 1024  # padded tokens (rows x longest row) per forward: bounds memory (bench/RESULTS.md)
    head_chunk_tokens: int = 1024  # supervised positions per LM-head chunk: bounds the (n, V) logits
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    # matmuls of every forward pass (sampling and training) in bf16 over fp32 weights: "auto" = where the
    # CPU has native bf16 and the weights are fp32 | "bfloat16" | "off". Off by default: on the untrained
    # 135M student the update ran 1.45x faster but rl/logprob_gap rose from 3e-6 to 1.3-1.6e-2, over
    # the 1e-2 an on-policy check allows (bench/RESULTS.md, "RL updates: bf16 autocast")
    autocast: str = "off"
    seed: int = 0  # orders the start states, seeds every rollout and a fresh LoRA adapter
    checkpoint_every: int = 5  # updates between resumable checkpoints (metrics lines are written with them)
    samples_every: int = 1  # write one group's continuations to samples/ every this many updates
    progress: bool = True  # rich progress bar


# Fields that do not change what is learned; they may differ when a run resumes.
OPERATIONAL = {"checkpoint_every", "samples_every", "progress"}

# DESIGN.md, Presets. `cpu` is the dataclass default; `gpu` is for one 80 GB card (LoRA, bf16): a 7B update
# with these settings peaked at 37 GiB on an H100 (bench/RESULTS.md).
RL_PRESETS = {
    "cpu": RLConfig(),  # 16 episodes an update: about a minute on the 2-core CPU (bench/RESULTS.md)
    "gpu": RLConfig(group_size=8, prompts_per_update=16, micro_batch_tokens=32768, gradient_checkpointing=True),
}


# ----------------------------------------------------------------------------------------------
# Start states (METHOD.md phase 3, items 1 and 6)


@dataclass
class StartState:
    """Where one group of continuations starts."""
    task: object  # environment.tasks.Task
    prefix: list[Step]  # the verified steps 1..k-1, authors kept ([] for a question start)
    k: int  # index of the first step the student generates (1 for a question start)
    teacher_step: Step | None  # the teacher's step k with its observation (key-step starts only)
    wrong_step: Step | None  # the student's original step k with its observation (key-step starts only)
    source: str  # "keystep" | "question" (rl_start="question") | "question_only" (an episode without key step)

    @property
    def key(self) -> str:
        """A stable name, so a start's rollout seeds do not depend on how batches are composed."""
        return f"{self.source}:{self.task.id}:{self.k}"


def step_from_dict(record: dict) -> Step:
    return Step(**{f.name: record[f.name] for f in dataclasses.fields(Step) if f.name in record})


def select_start_states(keysteps: Sequence[dict], tasks_by_id: dict, config: RLConfig,
                        episodes: Sequence[dict] | None = None) -> list[StartState]:
    """METHOD: one start per key-step record with `last` (as the paper's code), then, from the MPS
    episodes that gave no key step, question-only starts with probability rate_hard / rate_other."""
    def task_of(task_id: str):
        if task_id not in tasks_by_id:
            raise ValueError(f"task {task_id!r} of an RL record is not among the tasks given to RL")
        return tasks_by_id[task_id]

    def in_split(record: dict) -> bool:
        return not config.split or record.get("split") == config.split

    records = sorted((r for r in keysteps if r.get("last") and in_split(r)), key=lambda r: r["task_id"])
    starts = []
    for r in records:
        if config.rl_start == "question":  # ablation: the same tasks, from the bare question
            starts.append(StartState(task_of(r["task_id"]), [], 1, None, None, "question"))
        else:  # the teacher step is kept for the reward only: it is NOT part of the prefix
            starts.append(StartState(task_of(r["task_id"]), [step_from_dict(s) for s in r["prefix"]], r["k"],
                                     step_from_dict(r["teacher_step"]), step_from_dict(r["wrong_step"]), "keystep"))
    seen = {r["task_id"] for r in records}
    for episode in sorted(episodes or [], key=lambda e: e["task_id"]):
        if episode["task_id"] in seen or not in_split(episode):
            continue
        seen.add(episode["task_id"])
        rate = config.question_only_rate_hard if episode.get("hard") else config.question_only_rate_other
        if random.Random(derive_seed(config.seed, "rl", "question_only", episode["task_id"])).random() < rate:
            starts.append(StartState(task_of(episode["task_id"]), [], 1, None, None, "question_only"))
    return starts


def plan_updates(num_starts: int, config: RLConfig) -> list[list[int]]:
    """Every update's start states, fixed in advance from the seed (so resuming is exact): each epoch
    shuffles the starts and cuts them into batches of prompts_per_update (the last may be smaller).
    With num_updates set, epochs repeat until there are that many updates."""
    per_epoch = math.ceil(num_starts / config.prompts_per_update)
    epochs = math.ceil(config.num_updates / per_epoch) if config.num_updates and per_epoch else config.epochs
    updates = []
    for epoch in range(epochs if num_starts else 0):
        order = list(range(num_starts))
        random.Random(derive_seed(config.seed, "rl", "epoch", epoch)).shuffle(order)
        updates += [order[i:i + config.prompts_per_update] for i in range(0, num_starts, config.prompts_per_update)]
    return updates[:config.num_updates] if config.num_updates else updates


def step_limit(k: int, max_steps: int, steps_after_key: int) -> int:
    """METHOD: the last step a continuation from step k may take (deviation 3):
        limit = max(H, k + steps_after_key)    H = max_steps
    The paper's H keeps its short horizon where it leaves room; a late key step (MPS gives a fresh
    budget after each correction, so k >= H happens) still leaves a_k and steps_after_key more to
    reach an answer."""
    return max(max_steps, k + steps_after_key)


def rollout_groups(student, starts: Sequence[StartState], update_idx: int, config: RLConfig,
                   rollout_config: RolloutConfig, indexes: dict, sandbox_factory) -> list[list[Trajectory]]:
    """G continuations of each start, all episodes batched together. Returns (P, G) trajectories."""
    episode_starts = [Start(task=s.task, seed=derive_seed(config.seed, "rl", update_idx, s.key, i), prefix=s.prefix,
                            step_limit=step_limit(s.k, rollout_config.max_steps, config.steps_after_key))
                      for s in starts for i in range(config.group_size)]
    sampling = dataclasses.replace(rollout_config, temperature=config.temperature, top_p=config.top_p)
    flat = rollout(student, episode_starts, sampling, indexes=indexes, sandbox_factory=sandbox_factory)
    return [flat[i * config.group_size:(i + 1) * config.group_size] for i in range(len(starts))]


# ----------------------------------------------------------------------------------------------
# METHOD: rewards (METHOD.md phase 3, item 3)

# A number as Python prints it, not glued to a word or another number ("x1", "1.2.3" are left alone).
NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
# The line the sandbox appends when a step raises: "Error: <Type>: <message> (at line ...)".
ERROR_LINE = re.compile(r"^Error: ([A-Za-z_][\w.]*)", re.MULTILINE)


def _canonical_number(match: re.Match) -> str:
    value = Fraction(match.group().replace(",", ""))  # exact: "378.0" is 378, "1e+16" an integer
    return str(value.numerator) if value.denominator == 1 else format(float(value), ".10g")


def normalise_output(text: str) -> str:
    """The one normalisation of printed output before two steps are compared.

    Numbers are rewritten one way: thousands commas dropped, integral values without decimals
    ("378.0" -> "378"), others to 10 significant digits (so 0.1 + 0.2 prints like 0.3). Then every
    run of whitespace becomes one space and the ends are stripped."""
    return " ".join(NUMBER.sub(_canonical_number, text).split())


@dataclass(frozen=True)
class Signature:
    """What a step did, from its stored record: enough to compare two steps run from the same state."""
    error_type: str | None  # exception type, e.g. "ZeroDivisionError"; None when the step ran cleanly
    output: str  # normalise_output of what it printed (the error line excluded)
    answer: str | None  # the argument of final_answer, when it called it

    def empty(self) -> bool:
        return self.error_type is None and not self.output and self.answer is None


def step_signature(step: Step) -> Signature:
    text, error_type = step.observation, None
    errors = list(ERROR_LINE.finditer(text)) if step.error else []
    if errors:  # the sandbox's error line is the last "Error: ..." line; what precedes it was printed
        error_type, text = errors[-1].group(1), text[:errors[-1].start()]
    elif step.error:
        error_type = "Error"  # an error without the sandbox's line (a parse error is judged before this)
    return Signature(error_type, normalise_output(text), step.final_answer)


def same_signature(a: Step, b: Step, grader: str) -> bool:
    """METHOD: key-step equivalence. Errors match on exception type, output after normalisation,
    final answers by the task's grader (b's answer as the reference). An empty signature (nothing
    printed, no error, no answer) matches nothing: two silent steps prove nothing alike."""
    sa, sb = step_signature(a), step_signature(b)
    if sa.empty() or sb.empty() or (sa.answer is None) != (sb.answer is None):
        return False
    answers_match = sa.answer is None or is_correct(grader, sa.answer, sb.answer)
    return sa.error_type == sb.error_type and sa.output == sb.output and answers_match


class KeyStepReward(NamedTuple):
    """The reward of a continuation that did NOT end correct, by how it ended."""
    answered: float  # it called final_answer, with a wrong answer
    unfinished: float  # it never called final_answer: its step budget or the context ran out


# METHOD: the key-step part of the reward table (deviation 2 says why each entry is what it is), by the
# verdict on the first generated step a_k. A correct final answer gets 1 whatever a_k was.
KEY_STEP_REWARDS = {                         # answered wrong, unfinished
    "teacher": KeyStepReward(0.5, 0.5),      # a_k equivalent to the teacher's step k: honest work, even if unfinished
    "neither": KeyStepReward(0.1, 0.0),      # a different step: credited only if the continuation answered
    "wrong": KeyStepReward(0.0, 0.0),        # a_k equivalent to the student's original wrong step k
    "answer": KeyStepReward(0.0, 0.0),       # a_k itself called final_answer, wrongly: the outcome only
    "unparseable": KeyStepReward(0.0, 0.0),  # a_k could not be parsed: a format failure
}
# (An "answer" a_k ends the episode, so its unfinished entry never applies.)


@dataclass
class Reward:
    """A continuation's reward and the parts it was made from (stored per sample, logged as shares)."""
    reward: float  # r_i: what the advantage is computed from
    correct: bool  # its final answer grades correct (the outcome part)
    finished: bool  # it called final_answer within its step budget
    key_step: str  # the verdict on a_k, a key of KEY_STEP_REWARDS; "" = not judged (correct, outcome-only, no a_k)


def judge_first_step(first: Step, start: StartState, equivalent: Callable[[Step, Step], bool]) -> str:
    """METHOD: the verdict on a_k, in this order: unparseable, a final answer (never credited as a key
    step, whatever it matches), equivalent to the teacher's step, to the wrong step, neither."""
    if first.parse_error:
        return "unparseable"
    if first.final_answer is not None:
        return "answer"
    if equivalent(first, start.teacher_step):
        return "teacher"
    if equivalent(first, start.wrong_step):
        return "wrong"
    return "neither"


def continuation_reward(trajectory: Trajectory, start: StartState, judge_key_step: bool,
                        equivalent: Callable[[Step, Step], bool]) -> Reward:
    """METHOD: the reward table of METHOD.md phase 3 with deviation 2, in order:
         final answer correct                   -> 1
         outcome only (k = 1, question start,
           reward="outcome")                    -> 0
         no a_k (the context overflowed first)  -> 0
         otherwise, by the verdict v on a_k     -> KEY_STEP_REWARDS[v].answered     if it answered (wrongly)
                                                   KEY_STEP_REWARDS[v].unfinished   if it never answered
       so: teacher 0.5 (answered or not); neither 0.1 if answered, else 0; wrong, unparseable and
       a wrong final answer at a_k 0."""
    if trajectory.correct:
        return Reward(1.0, True, True, "")
    finished = trajectory.finished
    if not judge_key_step or len(trajectory.steps) < start.k:
        return Reward(0.0, False, finished, "")
    verdict = judge_first_step(trajectory.steps[start.k - 1], start, equivalent)  # a_k: the first generated step
    table = KEY_STEP_REWARDS[verdict]
    return Reward(table.answered if finished else table.unfinished, False, finished, verdict)


def group_rewards(group: Sequence[Trajectory], start: StartState, config: RLConfig, teacher=None) -> list[Reward]:
    """The rewards of one group. The key step is judged only for key-step starts with k > 1 under
    reward="keystep" (k = 1: the teacher step is a plan, so the reward is outcome-only, as the paper's code)."""
    judge_key_step = config.reward == "keystep" and start.source == "keystep" and start.k > 1
    if config.key_step_judge == "teacher":
        def equivalent(a: Step, b: Step) -> bool:
            return teacher.equivalent(start.task, start.prefix, a, b)
    else:
        def equivalent(a: Step, b: Step) -> bool:
            return same_signature(a, b, start.task.grader)
    return [continuation_reward(t, start, judge_key_step, equivalent) for t in group]


def group_advantages(rewards: Sequence[float], kind: str) -> list[float] | None:
    """METHOD: advantages of one group (METHOD.md phase 3, item 4). None when every reward is equal:
    such a group has no signal (all its advantages would be 0) and is skipped.
        mean:  A_i = r_i - mean(r)
        grpo:  A_i = (r_i - mean(r)) / std(r)           std over the group, ddof 0
        rloo:  A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean(r))"""
    num = len(rewards)
    if max(rewards) - min(rewards) < 1e-12:
        return None
    mean = sum(rewards) / num
    if kind == "mean":
        return [r - mean for r in rewards]
    if kind == "grpo":
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / num)
        return [(r - mean) / std for r in rewards]
    if kind == "rloo":
        return [r - (sum(rewards) - r) / (num - 1) for r in rewards]
    raise ValueError(f"unknown advantage {kind!r}: use mean, grpo or rloo")


# ----------------------------------------------------------------------------------------------
# METHOD: the loss (METHOD.md phase 3, item 5)


def continuation_mask(rendered: Rendered, first_generated_step: int) -> list[int]:
    """Which tokens RL trains on: 1 = a token the student sampled in this rollout, 0 = context.

    1 on every assistant segment of step index >= first_generated_step (the continuation); 0 on glue
    (the end-of-turn token included: the template adds it, it was not sampled), system prompt, task,
    observations and the prefix's steps, whoever wrote them."""
    mask = [0] * len(rendered.ids)
    for segment in rendered.segments:
        if segment.kind == "assistant" and segment.step_index >= first_generated_step:
            if segment.author != "student":
                raise ValueError(f"step {segment.step_index} of a continuation was not written by the student")
            mask[segment.start:segment.end] = [1] * (segment.end - segment.start)
    return mask


@dataclass
class TrainRow:
    """One continuation, ready for the loss."""
    ids: list[int]  # (T,) the rendered episode: prompt, prefix, continuation and its observations
    mask: list[int]  # (T,) continuation_mask of the same tokens
    advantage: float  # A_i of the continuation, shared by all its tokens
    sampled_logprobs: list[float]  # log pi of each mask-1 token when it was sampled, in order


def build_row(tokenizer, trajectory: Trajectory, first_generated_step: int, advantage: float) -> TrainRow:
    """METHOD: token exactness. render_ids splices each student step's stored sampled ids into the
    template, so the loss sees exactly the ids that were sampled, never a re-tokenisation."""
    rendered = render_ids(tokenizer, trajectory.question, trajectory.steps)
    mask = continuation_mask(rendered, first_generated_step)
    sampled = [lp for step in trajectory.steps[first_generated_step - 1:] for lp in step.logprobs]
    if sum(mask) != len(sampled) or mask[0]:
        raise ValueError("the rendered continuation does not match its sampled ids")
    return TrainRow(rendered.ids, mask, advantage, sampled)


def micro_batches(rows: Sequence[TrainRow], max_tokens: int) -> list[list[TrainRow]]:
    """PLUMBING: rows sorted by length (less padding), grouped while rows x longest <= max_tokens;
    a row longer than max_tokens goes alone."""
    batches: list[list[TrainRow]] = []
    for row in sorted(rows, key=lambda r: len(r.ids), reverse=True):
        if batches and (len(batches[-1]) + 1) * len(batches[-1][0].ids) <= max_tokens:
            batches[-1].append(row)
        else:
            batches.append([row])
    return batches


def pad_left(rows: Sequence[TrainRow], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """PLUMBING: (ids, attention, positions, mask), each (B, T), left-padded as the sampler pads;
    positions count real tokens only, so a padded row sees the positions it would see alone."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row.ids):] = torch.tensor(row.ids)
        attention[i, width - len(row.ids):] = 1
        mask[i, width - len(row.ids):] = torch.tensor(row.mask)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), attention.to(device), positions.to(device), mask.to(device)


def supervised_logprobs(student: Student, ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor,
                        mask: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """log pi(y_t | y_<t) of every mask-1 token, row by row, left to right. -> (n,) fp32.

    The LM head runs only at the n positions whose NEXT token is supervised, in chunks; with
    gradients on, each chunk is checkpointed (its (chunk, V) logits are recomputed in backward
    instead of stored), so peak memory holds one chunk of logits, never (B, T, V)."""
    hidden = student.hidden_states(ids, attention, positions)  # (B, T, H)
    predicts = mask[:, 1:].bool()  # (B, T-1): position t predicts token t+1, which is supervised
    hidden, targets = hidden[:, :-1][predicts], ids[:, 1:][predicts]  # (n, H), (n,)
    head, pieces = student.lm_head(), []
    for s in range(0, targets.shape[0], chunk_tokens):
        h, y = hidden[s:s + chunk_tokens], targets[s:s + chunk_tokens]
        pieces.append(checkpoint(token_logprobs, head, h, y, use_reentrant=False) if torch.is_grad_enabled()
                      else token_logprobs(head, h, y))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def policy_loss(logprobs: torch.Tensor, advantages: torch.Tensor, num_tokens: int,
                ref_logprobs: torch.Tensor | None = None, kl_coef: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch's share of the batch loss; logprobs, advantages (per token), ref: (n,).

    # L = -(1/N) sum_i sum_t m_it * A_i * log pi(y_it)   N = tokens with m = 1 in the batch (all micro-batches)
    # with KL: L += beta * (1/N) sum_i sum_t m_it * k3_it,   k3 = exp(q - p) - (q - p) - 1,  p = log pi, q = log pi_ref
    Summing the micro-batches' terms gives exactly L (gradient accumulation). Returns (loss, sum of k3)."""
    loss = -(advantages * logprobs).sum() / num_tokens
    kl_sum = logprobs.new_zeros(())
    if ref_logprobs is not None:
        delta = ref_logprobs - logprobs  # q - p
        k3 = torch.exp(delta) - delta - 1  # (n,) >= 0, and 0 where pi = pi_ref
        loss = loss + kl_coef * k3.sum() / num_tokens
        kl_sum = k3.detach().sum()
    return loss, kl_sum


def rl_update(student: Student, optimizer, params: list, rows: Sequence[TrainRow], config: RLConfig,
              reference: Student | None = None) -> dict:
    """METHOD: one on-policy update on fresh rollouts: zero_grad -> forward -> loss -> backward -> clip -> step.

    The KL reference is `reference` (a frozen copy, full fine-tuning) or, when None, the same model
    with its LoRA adapter disabled. Returns the update's numbers (true means over its tokens)."""
    num_tokens = sum(sum(r.mask) for r in rows)  # N: supervised tokens of the whole batch
    student.model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_total, kl_total, gap_total = 0.0, 0.0, 0.0
    for batch in micro_batches(rows, config.micro_batch_tokens):
        ids, attention, positions, mask = pad_left(batch, student.pad_id, student.device)  # (b, T) each
        logprobs = supervised_logprobs(student, ids, attention, positions, mask, config.head_chunk_tokens)  # forward
        advantages = torch.tensor([r.advantage for r in batch for _ in range(sum(r.mask))],
                                  device=logprobs.device)  # (n,) A_i repeated over its tokens
        ref_logprobs = None
        if config.kl_coef > 0:  # log pi_ref of the same tokens: a frozen copy, or this model without its adapter
            with torch.no_grad(), (student.model.disable_adapter() if reference is None else contextlib.nullcontext()):
                ref_logprobs = supervised_logprobs(reference or student, ids, attention, positions, mask,
                                                   config.head_chunk_tokens)
        loss, kl_sum = policy_loss(logprobs, advantages, num_tokens, ref_logprobs, config.kl_coef)  # loss
        loss.backward()  # backward: accumulates into .grad
        loss_total, kl_total = loss_total + float(loss.detach()), kl_total + float(kl_sum)
        # On-policy check: the sampler's log-probs against this forward pass (0 up to float rounding).
        sampled = torch.tensor([lp for r in batch for lp in r.sampled_logprobs], device=logprobs.device)
        gap_total += float((sampled - logprobs.detach()).abs().sum())
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)  # clip (returns the norm before)
    optimizer.step()  # step
    student.model.eval()
    return {"loss": loss_total, "kl": kl_total / num_tokens, "logprob_gap": gap_total / num_tokens,
            "grad_norm": float(grad_norm), "supervised_tokens": num_tokens, "row_tokens": sum(len(r.ids) for r in rows)}


# ----------------------------------------------------------------------------------------------
# PLUMBING: the model to train, checkpoints, samples


def prepare_model(student: Student, config: RLConfig) -> tuple[bool, list, Student | None]:
    """(LoRA?, trainable parameters, KL reference). METHOD: with LoRA, the SFT adapter is merged into
    the weights and a fresh, seeded adapter is attached, so "adapter disabled" IS the SFT policy (the
    reference is None). Full fine-tuning trains fp32 weights and keeps a frozen copy when KL is on."""
    from sft import forget_gguf_origin
    forget_gguf_origin(student.model)
    was_lora = hasattr(student.model, "peft_config")
    if was_lora:
        student.model = student.model.merge_and_unload()
    num_params = sum(p.numel() for p in student.model.parameters())
    use_lora = config.lora if config.lora is not None else (was_lora or num_params >= 1e9)
    reference = None
    if use_lora:
        torch.manual_seed(config.seed)  # the fresh adapter's A matrices are random; B starts at 0
        student.attach_lora(rank=config.lora_rank, alpha=config.lora_alpha)
    else:
        student.model.float()  # AdamW steps on bf16 weights would lose small updates
        student.model.requires_grad_(True)
        if config.kl_coef > 0:
            frozen = copy.deepcopy(student.model).eval().requires_grad_(False)
            reference = Student(frozen, student.tokenizer, student.device, name=student.name + "-reference")
    if config.gradient_checkpointing:
        student.causal_lm().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # Sampling and training compute in the same dtype, so the log-probs recorded at sampling are those
    # the update recomputes (rl/logprob_gap measures it): the rollouts of RL run under the same autocast.
    student.autocast_dtype = autocast_dtype(config.autocast, student)
    if reference is not None:
        reference.autocast_dtype = student.autocast_dtype
    student.model.eval()
    return use_lora, [p for p in student.model.parameters() if p.requires_grad], reference


def autocast_dtype(setting: str, student: Student) -> torch.dtype | None:
    """RLConfig.autocast -> the compute dtype of forward passes over the (fp32) weights, or None.
    On CPU, bf16 pays only with native bf16 instructions (AVX512-BF16, AMX); elsewhere it is emulated."""
    from student import cpu_has_native_bf16
    if setting not in ("auto", "bfloat16", "off"):
        raise ValueError(f"RLConfig.autocast must be auto, bfloat16 or off, not {setting!r}")
    fp32_weights = next(student.model.parameters()).dtype == torch.float32
    if setting == "off" or not fp32_weights:
        return None
    if setting == "auto" and not (student.device.type == "cpu" and cpu_has_native_bf16()):
        return None
    return torch.bfloat16


def sample_record(update: int, start: StartState, group: Sequence[Trajectory], rewards: Sequence[Reward],
                  advantages: Sequence[float] | None) -> dict:
    """One group's continuations with their rewards, for samples/ (read by people, not by code)."""
    return {"update": update, "task_id": start.task.id, "question": start.task.question, "k": start.k,
            "source": start.source, "reference_answer": start.task.answer,
            "teacher_step": start.teacher_step.content if start.teacher_step else None,
            "wrong_step": start.wrong_step.content if start.wrong_step else None,
            "continuations": [{**dataclasses.asdict(r), "advantage": None if advantages is None else advantages[i],
                               "final_answer": t.final_answer, "end_reason": t.end_reason,
                               "steps": [{"index": s.index, "content": s.content, "observation": s.observation}
                                         for s in t.steps[start.k - 1:]]}
                              for i, (t, r) in enumerate(zip(group, rewards))]}


def score_groups(tokenizer, batch: Sequence[StartState], groups: Sequence[Sequence[Trajectory]], config: RLConfig,
                 teacher=None) -> tuple[list[list[Reward]], list[TrainRow], list[float], int]:
    """METHOD: rewards -> advantages -> rows, group by group. Returns (rewards (P, G), rows to train,
    the advantages trained on, number of skipped groups). A group whose rewards are all equal gives
    no row: its advantages would all be 0."""
    rewards, rows, used, skipped = [], [], [], 0
    for start, group in zip(batch, groups):
        rewards.append(group_rewards(group, start, config, teacher))
        advantages = group_advantages([r.reward for r in rewards[-1]], config.advantage)
        if advantages is None:
            skipped += 1
            continue
        used += advantages
        rows += [build_row(tokenizer, t, start.k, a) for t, a in zip(group, advantages)]
    return rewards, [r for r in rows if sum(r.mask)], used, skipped  # empty turns only: nothing to train


def update_record(update_idx: int, per_epoch: int, batch: Sequence[StartState], groups, rewards, used_advantages,
                  skipped: int, stats: dict | None, timings: dict, config: RLConfig) -> dict:
    """The metrics line of one update: true means over its episodes or tokens. stats is None when
    every group was skipped (no step was taken)."""
    flat = [r for group in rewards for r in group]
    sampled = [lp for g, s in zip(groups, batch) for t in g for step in t.steps[s.k - 1:] for lp in step.logprobs]

    def share(test) -> float:
        return sum(map(test, flat)) / len(flat)

    def from_stats(name: str):
        return stats[name] if stats else None

    record = {
        "rl/update": update_idx + 1,  # updates done, 1-based
        "rl/epoch": (update_idx + 1) / per_epoch,  # passes over the start states (fractional)
        "rl/reward_mean": sum(r.reward for r in flat) / len(flat),  # mean reward over the update's episodes
        "rl/share_correct": share(lambda r: r.correct),  # episodes whose final answer is correct (reward 1)
        "rl/share_unfinished": share(lambda r: not r.finished),  # episodes that never called final_answer
        # episodes not correct (answered or unfinished), by the verdict on a_k (a key of KEY_STEP_REWARDS)
        **{f"rl/share_key_{v}": share(lambda r, v=v: r.key_step == v) for v in KEY_STEP_REWARDS},
        "rl/groups": len(batch),  # start states in this update
        "rl/skipped_groups": skipped,  # groups whose rewards were all equal: no signal, not trained on
        # root mean square of the advantages trained on (= their std: every group's advantages sum to 0)
        "rl/advantage_std": math.sqrt(sum(a * a for a in used_advantages) / max(1, len(used_advantages))),
        "rl/generated_tokens": len(sampled),  # tokens sampled in all continuations, skipped groups included
        "rl/entropy": -sum(sampled) / max(1, len(sampled)),  # mean -log pi of the sampled tokens: an entropy estimate
        "rl/supervised_tokens": stats["supervised_tokens"] if stats else 0,  # N, the loss normaliser
        "rl/loss": from_stats("loss"),  # L of the update
        "rl/grad_norm": from_stats("grad_norm"),  # global gradient norm before clipping
        "rl/logprob_gap": from_stats("logprob_gap"),  # mean |log pi at sampling - log pi in training|: ~0 on-policy
        "rl/lr": config.lr,  # learning rate (constant)
        "rl/rollout_s": timings["rollout_s"],  # wall time of sampling and running the episodes
        "rl/reward_s": timings["reward_s"],  # wall time of rewards, advantages and rendering the rows
        "rl/update_s": timings["update_s"],  # wall time of forward, backward and step
        "rl/update_tok_per_s": stats["row_tokens"] / timings["update_s"] if stats else None,  # rows' tokens / update_s
    }
    if config.kl_coef > 0:
        record["rl/kl"] = from_stats("kl")  # mean k3 estimate of KL(pi || pi_ref) per supervised token
    return record


def human_line(record: dict, num_updates: int) -> str:
    def number(key: str, spec: str) -> str:
        return "-" if record.get(key) is None else format(record[key], spec)
    return (f"rl update {record['rl/update']}/{num_updates} reward {record['rl/reward_mean']:.3f} "
            f"(correct {record['rl/share_correct']:.0%}, key step = teacher {record['rl/share_key_teacher']:.0%}) "
            f"skipped {record['rl/skipped_groups']}/{record['rl/groups']} loss {number('rl/loss', '.4f')} "
            f"grad {number('rl/grad_norm', '.2f')}" + (f" kl {number('rl/kl', '.4f')}" if "rl/kl" in record else "")
            + f" tokens {record['rl/supervised_tokens']}/{record['rl/generated_tokens']} rollout "
            f"{record['rl/rollout_s']:.1f}s reward {record['rl/reward_s']:.1f}s update {record['rl/update_s']:.1f}s")


# ----------------------------------------------------------------------------------------------
# The loop


def train_rl(student: Student, keysteps: Sequence[dict], tasks_by_id: dict, config: RLConfig, out_dir: Path,
             metrics_path: Path, samples_dir: Path, episodes: Sequence[dict] | None = None, teacher=None,
             rollout_config: RolloutConfig = RolloutConfig(), sandbox_factory: Callable | None = None,
             stop_after: int | None = None, on_update: Callable[[dict], None] | None = None) -> dict:
    """Train `student` in place with SCoRe-RL and save the final model to out_dir (Hugging Face format).

    keysteps: key-step records (mps.keystep_records); only `last` ones of `config.split` are used.
    episodes: MPS episode records (mps.jsonl lines), for question-only starts; None = none.
    teacher: needed only with key_step_judge="teacher". out_dir/checkpoint/ holds the resumable
    state: calling again with the same arguments resumes (or, once finished, restores the weights).
    `stop_after` ends the call after that many updates in total; `on_update` sees each metrics record.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    out_dir, metrics_path, samples_dir = Path(out_dir), Path(metrics_path), Path(samples_dir)
    console = make_console()
    judge = config.key_step_judge
    if judge not in ("signature", "teacher") or (judge == "teacher" and teacher is None):
        raise ValueError("key_step_judge must be 'signature', or 'teacher' with a teacher object")
    if config.temperature != 1.0 or config.top_p != 1.0:
        console.print("rl: warning: temperature/top-p other than 1 sample off-policy; the loss assumes pi itself")

    # 1. Start states and the whole plan of updates (derived numbers printed with their arithmetic).
    starts = select_start_states(keysteps, tasks_by_id, config, episodes)
    plan = plan_updates(len(starts), config)
    per_epoch = math.ceil(len(starts) / config.prompts_per_update) if starts else 0
    sources = {s: sum(x.source == s for x in starts) for s in ("keystep", "question", "question_only")}
    console.print(f"rl: {len(starts)} start states {sources}; ceil({len(starts)} / {config.prompts_per_update}) = "
                  f"{per_epoch} updates per epoch -> {len(plan)} updates of {config.prompts_per_update} x "
                  f"{config.group_size} = {config.prompts_per_update * config.group_size} episodes")
    if not plan:
        console.print("rl: skipped: 0 start states (no key-step record with last=True in this split)")
        return {"label": "rl", "updates_done": 0, "num_updates": 0, "finished": True, "start_states": 0}

    # 2. Model, optimiser, KL reference.
    use_lora, params, reference = prepare_model(student, config)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    console.print(f"rl: {'LoRA r=' + str(config.lora_rank) if use_lora else 'full fine-tuning'}, "
                  f"{sum(p.numel() for p in params) / 1e6:.1f}M trainable parameters, lr {config.lr:g}, "
                  f"advantage {config.advantage}, reward {config.reward}, kl {config.kl_coef:g}")

    # 3. Resume: same start states and settings, or refuse.
    config_dict = {k: v for k, v in dataclasses.asdict(config).items() if k not in OPERATIONAL}
    fingerprint = derive_seed([s.key for s in starts], rollout_config.max_steps, rollout_config.max_new_tokens,
                              rollout_config.max_context_tokens)
    ckpt_path, start_update, finished_before = out_dir / "checkpoint", 0, False
    for directory in (out_dir, ckpt_path):  # what a save killed half way left (checkpoint.tmp*, final.tmp*, ...)
        remove_temporaries(directory)
    found = find_training_state(ckpt_path)
    if found is not None:
        saved = json.loads((found / "state.json").read_text())
        if saved["config"] != config_dict or saved["fingerprint"] != fingerprint:
            raise ValueError(f"{found} was written by a run with other data or settings; use another out_dir")
        finished_before = saved.get("finished", False)
        start_update = load_training_state(found, student.model, None if finished_before else optimizer)["update"]
        console.print(f"rl: resumed from {found} after update {start_update}/{len(plan)}")

    # 4. The loop: rollouts -> rewards -> advantages -> update.
    indexes = build_indexes([s.task for s in starts])
    pending: list[dict] = []  # metrics lines, appended with the next checkpoint (a redone update never repeats one)
    began, last = time.perf_counter(), {}
    progress = Progress(TextColumn("[bold]rl"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeRemainingColumn(), console=console, disable=not config.progress)
    with progress:
        bar = progress.add_task("rl", total=len(plan), completed=start_update, info="")
        for update_idx in range(start_update, len(plan)):
            if stop_after is not None and update_idx >= stop_after:
                break
            batch = [starts[i] for i in plan[update_idx]]
            # 4a. Rollouts: G continuations of each start state, all batched.
            t0 = time.perf_counter()
            groups = rollout_groups(student, batch, update_idx, config, rollout_config, indexes, sandbox_factory)
            rollout_s = time.perf_counter() - t0
            # 4b. Rewards, then advantages per group; groups without signal are skipped.
            t0 = time.perf_counter()
            rewards, rows, used_advantages, skipped = score_groups(student.tokenizer, batch, groups, config, teacher)
            reward_s = time.perf_counter() - t0
            # 4c. One update: zero_grad -> forward -> loss -> backward -> clip -> step (none if all groups skipped).
            t0 = time.perf_counter()
            stats = rl_update(student, optimizer, params, rows, config, reference) if rows else None
            update_s = time.perf_counter() - t0

            # 4d. Log, dump samples, checkpoint.
            record = update_record(update_idx, per_epoch, batch, groups, rewards, used_advantages, skipped, stats,
                                   {"rollout_s": rollout_s, "reward_s": reward_s, "update_s": update_s}, config)
            pending.append(record)
            last = record
            console.print(human_line(record, len(plan)), highlight=False)
            progress.update(bar, advance=1, info=f"reward {record['rl/reward_mean']:.2f}")
            if on_update is not None:
                on_update(record)
            if update_idx % config.samples_every == 0:
                write_json_atomic(samples_dir / f"rl-update-{update_idx + 1:04d}.json",
                                  sample_record(update_idx + 1, batch[0], groups[0], rewards[0],
                                                group_advantages([r.reward for r in rewards[0]], config.advantage)))
            done = update_idx + 1
            if done % config.checkpoint_every == 0 or done == len(plan) or done == stop_after:
                save_training_state(ckpt_path, student.model, optimizer,
                                {"update": done, "num_updates": len(plan), "config": config_dict,
                                 "fingerprint": fingerprint, "commit": git_commit()})
                for line in pending:
                    append_jsonl(metrics_path, line)
                pending = []
            start_update = done

    # 5. Finished: merge a LoRA adapter into the weights and save the final model once.
    finished = start_update == len(plan)
    summary = {"label": "rl", "start_states": len(starts), "sources": sources, "updates_done": start_update,
               "num_updates": len(plan), "finished": finished, "lora": use_lora, "last": last,
               "train_wall_s": time.perf_counter() - began, "commit": git_commit(),
               "config": dataclasses.asdict(config)}
    if finished:
        if use_lora:
            student.model = student.model.merge_and_unload()
        if finished_before:
            return {**json.loads((out_dir / "summary.json").read_text()), "restored": True}
        from runs import save_final
        save_final(out_dir, student.model, student.tokenizer)
        write_json_atomic(out_dir / "summary.json", summary)
        finish_training_state(ckpt_path)  # keep the trained weights once, drop the optimiser state
    console.print(f"rl: {start_update}/{len(plan)} updates, {summary['train_wall_s']:.0f} s"
                  + (f" -> {out_dir}" if finished else " (stopped early; re-run to resume)"))
    return summary


# ----------------------------------------------------------------------------------------------
# PLUMBING: a standalone command line (score.py normally calls train_rl)


def main(argv: list[str] | None = None) -> int:
    from environment.tasks import load_tasks
    from runs import read_jsonl
    from student import load_student
    parser = argparse.ArgumentParser(description="SCoRe-RL: prefix-restart REINFORCE from key-step records.")
    parser.add_argument("--keysteps", required=True, help="keysteps.jsonl written by the MPS phase")
    parser.add_argument("--episodes", default=None, help="mps.jsonl, for question-only starts (optional)")
    parser.add_argument("--tasks", default="arith,lookup", help="task sets the records come from (train split)")
    parser.add_argument("--task-seed", type=int, default=0, help="seed the task sets were generated with")
    parser.add_argument("--student", default="smol-135m", help="a preset, hub id, local dir or checkpoint")
    parser.add_argument("--teacher", default="reference", help="teacher for --key-step-judge teacher")
    parser.add_argument("--out", required=True, help="output directory (resumable; the final model in HF format)")
    parser.add_argument("--max-steps", type=int, default=RolloutConfig.max_steps, help="H, steps per episode")
    parser.add_argument("--max-new-tokens", type=int, default=RolloutConfig.max_new_tokens)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    # --help from the config: each field's one-line comment in RLConfig's source, and its default.
    comments = dict(re.findall(r"^\s+(\w+): [^#\n]*#\s*(.+)$", inspect.getsource(RLConfig), re.MULTILINE))
    for f in dataclasses.fields(RLConfig):
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                            help=f"{comments.get(f.name, '')} (default: {f.default})".replace("%", "%%"))
    args = parser.parse_args(argv)

    def parse(name: str, value):
        field_type = str(next(f.type for f in dataclasses.fields(RLConfig) if f.name == name))
        if name == "lora":
            return {"auto": None, "true": True, "false": False}[value.lower()]
        return value.lower() == "true" if field_type == "bool" else value
    overrides = {f.name: parse(f.name, getattr(args, f.name)) for f in dataclasses.fields(RLConfig)
                 if getattr(args, f.name) is not None}
    config = dataclasses.replace(RLConfig(), **overrides)
    tasks = {t.id: t for name in args.tasks.split(",") for t in load_tasks(name.strip(), "train", None, args.task_seed)}
    teacher = None
    if config.key_step_judge == "teacher":
        from teacher import make_teacher
        teacher = make_teacher(args.teacher, list(tasks.values()))
    student = load_student(args.student, device=args.device, threads=args.threads)
    out = Path(args.out)
    summary = train_rl(student, read_jsonl(Path(args.keysteps)), tasks, config, out, out / "metrics.jsonl",
                       out / "samples", episodes=read_jsonl(Path(args.episodes)) if args.episodes else None,
                       teacher=teacher, rollout_config=RolloutConfig(max_steps=args.max_steps,
                                                                     max_new_tokens=args.max_new_tokens))
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
