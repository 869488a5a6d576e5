"""Phase 3, SCoRe-RL: prefix-restart REINFORCE with key-step rewards (METHOD.md section 3, phase 3).

    python rl.py --keysteps runs/NAME/keysteps.jsonl --student runs/NAME/checkpoints/sft --out /tmp/rl --num-updates 10

(`python score.py rl` calls `train_rl`.) For each key-step record of the RL half (the LAST valid
correction of an MPS episode):
  1. start state = the task + the verified prefix, steps 1..k-1, each keeping its author; the
     interpreter is rebuilt by replaying the prefix's code. The teacher's step k is NOT shown: the
     student must find a step like it by itself;
  2. a group of G continuations is sampled (temperature 1, top-p 1), each run until it answers or
     its step budget ends, at step max(H, k + 3) (deviation 3);
  3. reward (KEY_STEP_REWARDS, below the start states): 1 if the final answer is correct;
     otherwise by the verdict on the first generated step a_k, judged against the teacher's step k
     and the student's original wrong step k: 0.5 if equivalent to the teacher's, 0.1 if neither
     and the continuation answered, 0 for the rest (deviation 2);
  4. advantage A_i = r_i - mean of the group (GRPO's division by the std and RLOO's leave-one-out
     mean are options); a group whose rewards are all equal carries no signal and is skipped;
  5. one gradient step on L = -(1/N) sum_i sum_t m_it A_i log pi(y_it) over the exact sampled ids,
     m = 1 on the continuation's generated tokens only.
`train_rl` writes the loop out: rollouts -> rewards -> advantages -> zero_grad -> forward -> loss ->
backward -> clip -> step. Every update uses fresh rollouts of the current policy (on-policy), so no
importance ratio and no PPO clipping are needed: those exist to reuse stale samples.

Deviations from the paper, each with its reason:
  1. Key-step equivalence is judged by default from step SIGNATURES (exception type, normalised
     stdout, graded final answer) compared with the stored observations of the teacher step and the
     wrong step, not by an LLM call per sample: it is free, deterministic and offline, and the
     teacher is freed before training on one GPU. `key_step_judge="teacher"` asks the teacher.
  2. Three cells of the reward table differ from METHOD.md's plain one (KEY_STEP_REWARDS gives each
     reason): a wrong final answer at a_k earns 0, not "neither"'s 0.1; a_k equivalent to the
     teacher's step earns 0.5 even when the episode then runs out of steps; an unparseable a_k
     earns 0. k = 1, question starts and reward="outcome" are outcome-only: 1 if correct, else 0.
  3. Horizon max(H, k + steps_after_key), 3 steps after a_k by default, not the paper's H - k + 1
     remaining steps: MPS gives a fresh budget after each teacher step, so key steps fall at k >= H,
     where no continuation could answer. 3 is the most steps an offline reference solution takes
     after its first action (lookup's hops), so finding the teacher's path leaves room to finish it.
  4. Scale (DESIGN.md, Presets): lr 1e-5, G = 4 (CPU) / 8 (GPU), 4 / 16 start states per update;
     the paper used lr 7e-7 (full fine-tuning of 7B), G = 16 and 128 prompts per update on 8 GPUs.
     With LoRA, the SFT adapter is merged first and a fresh adapter is trained, so that "adapter
     disabled" is exactly the SFT policy (the KL reference); the final model is saved merged.
  5. The KL penalty (off by default, as in the paper) uses the k3 estimator
     exp(q - p) - (q - p) - 1 per sampled token: non-negative, unbiased, zero when pi = pi_ref.
  6. The template's end-of-turn token is not trained (SFT trains it): it was never sampled, so it
     is not an action of this policy and has no sampling log-prob (METHOD.md section 2).
  7. Data parallel, not the paper's 8-GPU PPO setup: under `accelerate launch --num_processes N`
     (or torchrun) each process samples and scores its share of an update's start states; then every
     process holds the whole update's rows, cuts them into the micro-batches one process would, and
     runs its share of those; the gradients are summed (not averaged) before the one clipped step. So
     N processes take the step of one, each micro-batch's forward exactly as one process runs it
     (training.Processes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch

from agent import Rendered, RolloutConfig, Start, Step, Trajectory, build_indexes, derive_seed, render_ids, rollout
from config import RLConfig  # this phase's settings (config.py: every option's one home)
from environment.graders import is_correct, step_signature
from runs import TrainingRun, git_commit, learned_settings, make_console, write_json_atomic
from student import Student
from training import (Processes, human_line, prepare_policy, rows_logprobs, sample_record, start_batches,
                      step_from_dict, update_batches, update_record)


@dataclass
class StartState:
    """Where one group of continuations starts (METHOD.md phase 3, items 1 and 6)."""
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


# ----------------------------------------------------------------------------------------------
# METHOD: rewards (METHOD.md phase 3, item 3)


class KeyStepReward(NamedTuple):
    """The reward of a continuation that did NOT end correct (a correct one gets 1), by how it ended."""
    answered: float  # it called final_answer, with a wrong answer
    unfinished: float  # it never called final_answer: its step budget or the context ran out


# METHOD: the reward table, by the verdict on the first generated step a_k (deviation 2).
KEY_STEP_REWARDS = {  # (answered wrong, unfinished)
    # a_k equivalent to the teacher's step k. 0.5 even if the episode then runs out of steps
    # (METHOD.md's plain table: 0): the key step was found, and the work after it is honest.
    "teacher": KeyStepReward(0.5, 0.5),
    # "a different but sensible step": 0.1 only if the continuation answered; as in the paper, no
    # answer shows that the different step led anywhere.
    "neither": KeyStepReward(0.1, 0.0),
    # a_k equivalent to the student's original wrong step k.
    "wrong": KeyStepReward(0.0, 0.0),
    # a_k itself called final_answer, wrongly: the outcome only, as the paper's code gives no
    # key-step credit to a first step that is the final answer ("neither" would pay 0.1, and a wrong
    # blurt must not outscore honest work). It ends the episode: its unfinished entry never applies.
    "answer": KeyStepReward(0.0, 0.0),
    # a_k could not be parsed: the paper's judge would give 0.1, but a format failure is not a sensible step.
    "unparseable": KeyStepReward(0.0, 0.0),
}


@dataclass
class Reward:
    """A continuation's reward and the parts it was made from (stored per sample, logged as shares)."""
    reward: float  # r_i: what the advantage is computed from
    correct: bool  # its final answer grades correct (the outcome part)
    finished: bool  # it called final_answer within its step budget
    key_step: str  # the verdict on a_k, a key of KEY_STEP_REWARDS; "" = not judged (correct, outcome-only, no a_k)


def continuation_reward(trajectory: Trajectory, start: StartState, judge_key_step: bool,
                        equivalent: Callable[[Step, Step], bool]) -> Reward:
    """METHOD: r_i, in this order:
         final answer correct                   -> 1
         outcome only (k = 1, question start,
           reward="outcome")                    -> 0
         no a_k (the context overflowed first)  -> 0
         otherwise, by the verdict v on a_k     -> KEY_STEP_REWARDS[v].answered     if it answered (wrongly)
                                                   KEY_STEP_REWARDS[v].unfinished   if it never answered"""
    if trajectory.correct:
        return Reward(1.0, True, True, "")
    finished = trajectory.finished
    if not judge_key_step or len(trajectory.steps) < start.k:
        return Reward(0.0, False, finished, "")
    verdict = judge_first_step(trajectory.steps[start.k - 1], start, equivalent)  # a_k: the first generated step
    table = KEY_STEP_REWARDS[verdict]
    return Reward(table.answered if finished else table.unfinished, False, finished, verdict)


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


def same_signature(a: Step, b: Step, grader: str) -> bool:
    """METHOD: key-step equivalence (deviation 1), over the steps' signatures (environment/graders.py:
    what the observation shows). Errors match on exception type, printed output after normalise_output
    (numbers written one way, whitespace collapsed), final answers by the task's grader (b's answer as
    the reference). An empty signature (nothing printed, no error, no answer) matches nothing: two
    silent steps prove nothing alike."""
    sa, sb = step_signature(a), step_signature(b)
    if sa.empty() or sb.empty() or (sa.answer is None) != (sb.answer is None):
        return False
    answers_match = sa.answer is None or is_correct(grader, sa.answer, sb.answer)
    return sa.error_type == sb.error_type and sa.output == sb.output and answers_match


# ----------------------------------------------------------------------------------------------
# METHOD: advantages (METHOD.md phase 3, item 4)


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
# METHOD: start states and rollouts (METHOD.md phase 3, items 1, 2 and 6)


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


def micro_batch_loss(student: Student, rows: Sequence[TrainRow], num_tokens: int, config: RLConfig,
                     reference: Student | None = None) -> tuple[torch.Tensor, dict]:
    """METHOD: the forward pass and this micro-batch's share of the update's loss, over its n supervised tokens:

        L = -(1/N) sum_i sum_t m_it * A_i * log pi(y_it)   N = tokens with m = 1 in the whole update
        with KL: L += beta * (1/N) sum_i sum_t m_it * k3_it,  k3 = exp(q - p) - (q - p) - 1,  p = log pi, q = log pi_ref

    Summing the micro-batches' terms gives exactly L (gradient accumulation). The KL reference is
    `reference` (a frozen copy, full fine-tuning) or, when None, this model with its LoRA adapter
    disabled. Returns (the loss term, {"loss": its value, "kl": its sum of k3, "logprob_gap": its sum of
    |log pi at sampling - log pi here|}), numbers the update adds up over its micro-batches."""
    with student.compute():  # the sampler's compute dtype: the log-probs it recorded are these
        logprobs = rows_logprobs(student, rows, config)  # (n,) log pi(y_it)
    advantages = torch.tensor([r.advantage for r in rows for _ in range(sum(r.mask))],
                              device=logprobs.device)  # (n,) A_i repeated over its tokens
    loss = -(advantages * logprobs).sum() / num_tokens  # the policy-gradient term, over the update's N
    kl_sum = 0.0
    if config.kl_coef > 0:  # log pi_ref of the same tokens: a frozen copy, or this model without its adapter
        scorer = reference or student
        adapter_off = student.model.disable_adapter() if reference is None else contextlib.nullcontext()
        with torch.no_grad(), adapter_off, scorer.compute():
            ref_logprobs = rows_logprobs(scorer, rows, config)  # (n,) log pi_ref(y_it)
        delta = ref_logprobs - logprobs  # q - p
        k3 = torch.exp(delta) - delta - 1  # (n,) >= 0, and 0 where pi = pi_ref
        loss = loss + config.kl_coef * k3.sum() / num_tokens
        kl_sum = float(k3.detach().sum())
    # On-policy check: the sampler's log-probs against this forward pass (0 up to float rounding).
    sampled = torch.tensor([lp for r in rows for lp in r.sampled_logprobs], device=logprobs.device)
    gap_sum = float((sampled - logprobs.detach()).abs().sum())
    return loss, {"loss": float(loss.detach()), "kl": kl_sum, "logprob_gap": gap_sum}


# ----------------------------------------------------------------------------------------------
# METHOD: the loop


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
    out_dir, samples_dir = Path(out_dir), Path(samples_dir)
    processes = Processes(student)  # one, or those of `accelerate launch` (deviation 7)
    console = make_console(quiet=not processes.main)
    judge = config.key_step_judge
    if judge not in ("signature", "teacher") or (judge == "teacher" and teacher is None):
        raise ValueError("key_step_judge must be 'signature', or 'teacher' with a teacher object")
    if config.temperature != 1.0 or config.top_p != 1.0:
        console.print("rl: warning: temperature/top-p other than 1 sample off-policy; the loss assumes pi itself")

    # Start states and the whole plan of updates (derived numbers printed with their arithmetic).
    starts = select_start_states(keysteps, tasks_by_id, config, episodes)
    plan = start_batches(len(starts), config)  # (updates, <= prompts_per_update) indexes into starts
    per_epoch = math.ceil(len(starts) / config.prompts_per_update) if starts else 0
    sources = {s: sum(x.source == s for x in starts) for s in ("keystep", "question", "question_only")}
    console.print(f"rl: {len(starts)} start states {sources}; ceil({len(starts)} / {config.prompts_per_update}) = "
                  f"{per_epoch} updates per epoch -> {len(plan)} updates of {config.prompts_per_update} x "
                  f"{config.group_size} = {config.prompts_per_update * config.group_size} episodes")
    if not plan:
        console.print("rl: skipped: 0 start states (no key-step record with last=True in this split)")
        return {"label": "rl", "updates_done": 0, "num_updates": 0, "finished": True, "start_states": 0}

    # The policy (a fresh LoRA adapter, or every weight), its optimiser, the KL reference; then resume
    # from the checkpoint of the same start states and settings, if there is one.
    use_lora, params, reference = prepare_policy(student, config)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    console.print(f"rl: {'LoRA r=' + str(config.lora_rank) if use_lora else 'full fine-tuning'}, "
                  f"{sum(p.numel() for p in params) / 1e6:.1f}M trainable parameters, lr {config.lr:g}, "
                  f"advantage {config.advantage}, reward {config.reward}, kl {config.kl_coef:g}")
    run = TrainingRun("rl", out_dir, metrics_path, len(plan), checkpoint_every=config.checkpoint_every,
                      console=console, progress=config.progress and processes.main, stop_after=stop_after,
                      on_update=on_update, main_process=processes.main, barrier=processes.barrier,
                      identity={"config": learned_settings(config),
                                "fingerprint": derive_seed([s.key for s in starts], rollout_config.max_steps,
                                                           rollout_config.max_new_tokens,
                                                           rollout_config.max_context_tokens)})
    run.resume(student.model, optimizer)

    indexes = build_indexes([s.task for s in starts])
    began, record = time.perf_counter(), {}
    with run:
        for update_idx in run.updates():
            batch = processes.shard([starts[i] for i in plan[update_idx]])  # this process's start states (all, alone)
            # 1. Rollouts: G continuations of each start state by the current policy, all batched.
            t0 = time.perf_counter()
            groups = rollout_groups(student, batch, update_idx, config, rollout_config, indexes,
                                    sandbox_factory)  # (P, G) trajectories
            rollout_s, t0 = time.perf_counter() - t0, time.perf_counter()
            # 2. Rewards r_i: 1 if correct, else KEY_STEP_REWARDS by the verdict on a_k (continuation_reward).
            rewards = [group_rewards(g, s, config, teacher) for s, g in zip(batch, groups)]  # (P, G)
            # 3. Advantages, A_i = r_i - mean(r) per group; None where all rewards are equal: no signal, skipped.
            advantages = [group_advantages([r.reward for r in g], config.advantage) for g in rewards]
            # The rows the loss sees: the exact sampled ids of each continuation, m = 1 on what it generated.
            row_lists = [[build_row(student.tokenizer, t, s.k, a) for t, a in zip(g, adv)] if adv is not None else []
                         for s, g, adv in zip(batch, groups, advantages)]  # (P, G), (P, 0) where skipped
            # From here on every process holds the whole update, in one process's order of start states.
            batch, groups, rewards, advantages, row_lists = processes.merge(batch, groups, rewards, advantages,
                                                                            row_lists)
            # (a continuation of empty turns has nothing to train)
            rows = [row for row_list in row_lists for row in row_list if sum(row.mask)]
            reward_s, t0 = time.perf_counter() - t0, time.perf_counter()
            # 4. One update (none if every group was skipped): zero_grad -> forward -> loss -> backward -> clip -> step.
            #    L = -(1/N) sum_i sum_t A_i log pi(a_it | s_it), N = supervised tokens of the non-skipped
            #    groups: every sampled token weighs the same, whichever micro-batch it lands in.
            num_tokens = sum(sum(r.mask) for r in rows)  # N
            sums, grad_norm = Counter(), None  # the update's L, sum of k3, sum of |log-prob gap|
            if num_tokens:
                student.model.train()
                optimizer.zero_grad(set_to_none=True)
                # bounded tokens per forward; this process's share of the micro-batches one process would run
                for micro in processes.shard(update_batches(rows, config)):
                    # forward, and this micro-batch's share of L (with the update's N)
                    loss, numbers = micro_batch_loss(student, micro, num_tokens, config, reference)
                    loss.backward()  # the shares' gradients add up to dL
                    sums.update(numbers)
                processes.sum_gradients(params)  # every process's shares, added up: all now hold dL
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))  # norm before clipping
                optimizer.step()
                student.model.eval()  # the next rollouts sample
            update_s = time.perf_counter() - t0
            # 5. Log, dump one group's continuations, checkpoint when due (rank 0, over the whole batch).
            sums = processes.sum_counts(sums)
            record = update_record(update_idx, per_epoch, batch, groups, rewards, advantages, rows, sums, grad_norm,
                                   {"rollout_s": rollout_s, "reward_s": reward_s, "update_s": update_s}, config)
            if update_idx % config.samples_every == 0 and processes.main:
                write_json_atomic(samples_dir / f"rl-update-{update_idx + 1:04d}.json",
                                  sample_record(update_idx + 1, batch[0], groups[0], rewards[0], advantages[0]))
            run.end_update(record, human_line(record, len(plan)), info=f"reward {record['rl/reward_mean']:.2f}")

    # Finished: merge a LoRA adapter into the weights and save the final model once.
    if run.finished and use_lora:
        student.model = student.model.merge_and_unload()
    summary = run.finish(student.model, student.tokenizer, {
        "label": "rl", "start_states": len(starts), "sources": sources, "updates_done": run.done,
        "num_updates": len(plan), "finished": run.finished, "lora": use_lora, "last": record,
        "train_wall_s": time.perf_counter() - began, "commit": git_commit(), "config": dataclasses.asdict(config)})
    console.print(f"rl: {run.done}/{len(plan)} updates, {summary['train_wall_s']:.0f} s" + run.outcome())
    return summary


if __name__ == "__main__":  # python rl.py --help: the standalone command line, training.rl_main
    from training import rl_main
    raise SystemExit(rl_main())
