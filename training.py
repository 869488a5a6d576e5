"""What SFT and RL share: preparing the model for training, autocast, micro-batches, padding, several
processes, the update records, and the standalone command lines of sft.py and rl.py.

sft.py and rl.py hold the method (masks, losses, rewards, advantages and the loops that use them);
this module holds what goes around it, so that each loop reads as its method:
  - the model to train: LoRA or full fine-tuning (prepare_model), RL's policy and KL reference
    (prepare_policy), the compute dtype of RL's forward passes (autocast_dtype);
  - forward passes: SFT's packed row as a module for accelerate (RowLogprobs), RL's micro-batches:
    a group's rows with their shared context run once (context_batches), or left-padded whole
    (micro_batches, pad_left);
  - RL's schedule: which start states each update samples from (start_batches);
  - several processes: RL's data parallel over `accelerate launch` (Processes); SFT leaves it to
    accelerate's Accelerator, whose DDP averages gradients where RL sums them;
  - records: RL's metrics line, console line and samples, and key-step records back into steps;
  - the command lines `python sft.py` and `python rl.py`, their flags from the config dataclasses.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from agent import Step, Trajectory, derive_seed
from config import AUTOCAST_SETTINGS
from student import Student, cpu_has_native_bf16, masked_token_logprobs, shared_context_logprobs

if TYPE_CHECKING:  # annotations only: rl.py imports this module
    from rl import Reward, RLConfig, StartState, TrainRow


# ----------------------------------------------------------------------------------------------
# The model to train


def prepare_model(student, config, fresh_adapter: bool = False) -> bool:
    """LoRA or full fine-tuning, for SFT and RL alike (config: an SFTConfig or an RLConfig; METHOD.md
    phase 2). Returns True when training a LoRA adapter.

    LoRA: config.lora, or by default for a LoRA checkpoint or a student of 1B parameters and more.
    An adapter the student already has goes on training; a fresh one (seeded) is attached otherwise.
    fresh_adapter (RL, its deviation 4) first merges an adapter the student has into its weights,
    so that "adapter disabled" is exactly the policy RL starts from. Full fine-tuning trains every
    weight in fp32: AdamW steps on bf16 weights would lose small updates (SFT casts back at the end,
    RL keeps fp32). Gradient checkpointing (recompute activations in backward) if the config says so.
    """
    forget_gguf_origin(student.model)
    given_lora = hasattr(student.model, "peft_config")
    if given_lora and fresh_adapter:
        student.model = student.model.merge_and_unload()
    num_params = sum(p.numel() for p in student.causal_lm().parameters())
    use_lora = config.lora if config.lora is not None else (given_lora or num_params >= 1e9)
    has_lora = hasattr(student.model, "peft_config")
    if has_lora and not use_lora:
        raise ValueError("this student is a LoRA checkpoint; full fine-tuning needs merged weights")
    if use_lora and not has_lora:
        torch.manual_seed(config.seed)  # the fresh adapter's A matrices are random; B starts at 0
        student.attach_lora(rank=config.lora_rank, alpha=config.lora_alpha)
    if not use_lora:
        cast_parameters(student.model, torch.float32)
        student.model.requires_grad_(True)
    if config.gradient_checkpointing:
        student.causal_lm().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return use_lora


def prepare_policy(student: Student, config: RLConfig) -> tuple[bool, list, Student | None]:
    """(LoRA?, trainable parameters, KL reference) of RL. prepare_model with a fresh adapter (rl.py,
    deviation 4): with LoRA the SFT adapter is merged and a fresh, seeded one attached, so "adapter
    disabled" IS the SFT policy (the reference is None); full fine-tuning trains fp32 weights and
    keeps a frozen copy when KL is on."""
    use_lora = prepare_model(student, config, fresh_adapter=True)
    reference = None
    if not use_lora and config.kl_coef > 0:
        frozen = copy.deepcopy(student.model).eval().requires_grad_(False)
        reference = Student(frozen, student.tokenizer, student.device, name=student.name + "-reference")
    # Sampling and training compute in the same dtype, so the log-probs recorded at sampling are those
    # the update recomputes (rl/logprob_gap measures it): the rollouts of RL run under the same autocast.
    student.autocast_dtype = autocast_dtype(config.autocast, student)
    if reference is not None:
        reference.autocast_dtype = student.autocast_dtype
    student.model.eval()
    return use_lora, [p for p in student.model.parameters() if p.requires_grad], reference


def autocast_dtype(setting: str, student: Student) -> torch.dtype | None:
    """RLConfig.autocast or SFTConfig.autocast -> the compute dtype of forward passes over the (fp32)
    weights, or None.
    On CPU, bf16 pays only with native bf16 instructions (AVX512-BF16, AMX); elsewhere it is emulated."""
    if setting not in AUTOCAST_SETTINGS:
        raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_SETTINGS)}, not {setting!r}")
    fp32_weights = next(student.model.parameters()).dtype == torch.float32
    if setting == "off" or not fp32_weights:
        return None
    if setting == "auto" and not (student.device.type == "cpu" and cpu_has_native_bf16()):
        return None
    return torch.bfloat16


def forget_gguf_origin(model) -> None:
    """The offline student is converted from GGUF (student.convert_gguf); it holds ordinary float
    tensors, but its config still names the GGUF quantizer, and transformers' save_pretrained
    refuses to save a "quantized" model. Nothing is quantized, so the stale marker is dropped."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    quant = getattr(core.config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if str(getattr(method, "value", method)) == "gguf":
        core.hf_quantizer, core.is_quantized = None, False
        del core.config.quantization_config


def cast_parameters(model, dtype: torch.dtype) -> None:
    """Cast the weights only. `model.to(dtype)` would also cast buffers such as RoPE's inv_freq,
    which transformers keeps in fp32: a bf16 round trip would leave the model slightly different."""
    for p in model.parameters():
        p.data = p.data.to(dtype)


# ----------------------------------------------------------------------------------------------
# Forward passes: SFT's packed rows, RL's padded micro-batches


class RowLogprobs(torch.nn.Module):
    """The SFT forward as a module: log pi of a packed row's supervised tokens (masked_token_logprobs).

    accelerate wraps the module it prepares (DDP under `accelerate launch`), and DDP synchronises
    the gradients of what runs inside that module's forward, so the forward it wraps must be the
    whole of it: decoder and head. It holds the model; it copies nothing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_token_logprobs(self.model, ids, mask, attention_mask=None, position_ids=positions)  # (N,)


def micro_batches(rows: Sequence[TrainRow], max_tokens: int) -> list[list[TrainRow]]:
    """Rows sorted by length (less padding), grouped while rows x longest <= max_tokens; a row longer
    than max_tokens goes alone."""
    batches: list[list[TrainRow]] = []
    for row in sorted(rows, key=lambda r: len(r.ids), reverse=True):
        if batches and (len(batches[-1]) + 1) * len(batches[-1][0].ids) <= max_tokens:
            batches[-1].append(row)
        else:
            batches.append([row])
    return batches


def update_batches(rows: Sequence[TrainRow], config: RLConfig) -> list[list[TrainRow]]:
    """RL's micro-batches: by shared context (config.share_context; not with gradient checkpointing,
    see shared_context_logprobs) or by length alone; each bounded by config.micro_batch_tokens."""
    if sharing(config):
        return context_batches(rows, config.micro_batch_tokens)
    return micro_batches(rows, config.micro_batch_tokens)


def sharing(config: RLConfig) -> bool:
    """Whether RL's forwards run a shared context once (never with gradient checkpointing)."""
    return config.share_context and not config.gradient_checkpointing


def shared_context(rows: Sequence[TrainRow], config: RLConfig) -> int:
    """Tokens of the context these rows' forward runs once: their common context when sharing is on
    and there are several rows that all begin with it; 0 when the rows are left-padded whole."""
    size = context_length(rows[0])
    if sharing(config) and len(rows) > 1 and all(context_length(r) == size and r.ids[:size] == rows[0].ids[:size]
                                                 for r in rows):
        return size
    return 0


def rows_logprobs(scorer: Student, rows: Sequence[TrainRow], config: RLConfig) -> torch.Tensor:
    """log pi(y_it) under `scorer` of every supervised token of `rows`, row by row, left to right -> (n,).

    Rows that begin with the same context (update_batches puts a group's rows together) run it once
    (shared_context_logprobs); other rows are left-padded whole (masked_token_logprobs). Both give
    the same numbers up to float rounding."""
    size = shared_context(rows, config)
    if size:
        return shared_context_logprobs(scorer.model, rows[0].ids[:size], [r.ids[size:] for r in rows],
                                       [r.mask[size:] for r in rows], config.head_chunk_tokens)
    ids, attention, positions, mask = pad_left(rows, scorer.pad_id, scorer.device)  # (b, T) each
    return masked_token_logprobs(scorer.model, ids, mask, attention, positions, config.head_chunk_tokens)


def context_length(row: TrainRow) -> int:
    """Tokens before the row's first supervised one: its prompt and the verified prefix (RL's context)."""
    return row.mask.index(1)


def context_batches(rows: Sequence[TrainRow], max_tokens: int) -> list[list[TrainRow]]:
    """Micro-batches of rows that begin with the same context (a group's continuations of one start
    state), for shared_context_logprobs: within a context, rows sorted by length and grouped while
    context + rows x longest tail <= max_tokens (the tokens one forward runs), and only while the
    padding a row adds (longest tail - its tail) is less than the context it would otherwise run
    again: a short continuation beside a long one costs more padded than alone. A row that does
    not join starts the next micro-batch. Contexts keep the order they first appear in."""
    by_context: dict[tuple[int, ...], list[TrainRow]] = {}
    for row in rows:
        by_context.setdefault(tuple(row.ids[:context_length(row)]), []).append(row)
    batches: list[list[TrainRow]] = []
    for context, members in by_context.items():
        batch: list[TrainRow] = []
        for row in sorted(members, key=lambda r: len(r.ids), reverse=True):
            longest_tail = len(batch[0].ids) - len(context) if batch else 0
            padding = longest_tail - (len(row.ids) - len(context))
            if batch and len(context) + (len(batch) + 1) * longest_tail <= max_tokens and padding < len(context):
                batch.append(row)
            else:
                batch = [row]
                batches.append(batch)
    return batches


def pad_left(rows: Sequence[TrainRow], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """(ids, attention, positions, mask), each (B, T), left-padded as the sampler pads; positions
    count real tokens only, so a padded row sees the positions it would see alone."""
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


# ----------------------------------------------------------------------------------------------
# Several processes: RL's data parallel over the processes of `accelerate launch` (rl.py, deviation 7)


class Processes:
    """The processes sharing each RL update. Alone (no launcher), every method is the identity.

    Under `accelerate launch --num_processes N` / torchrun, process r samples start states r, r + N, ...
    of each update (their rollout seeds depend on the start state, not on r, so the episodes are those
    one process would sample). Then `merge` gives every process the whole update in one process's
    order, every process cuts the same micro-batches, and process r runs micro-batches r, r + N, ...:
    each forward is the one a single process runs, with the same rows and padding, so its float
    rounding is the same too. Each loss term is already divided by the update's N, so the summed
    gradients are dL."""

    def __init__(self, student: Student):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0
        if self.world > 1:
            from accelerate import PartialState
            state = PartialState(cpu=student.device.type == "cpu")  # sets up the process group (gloo on CPU)
            if student.device.type == "cuda" and student.device != state.device:  # one GPU per process
                student.model.to(state.device)
                student.device = state.device

    def shard(self, items: list) -> list:
        return items[self.rank::self.world]

    def merge(self, *fields: list) -> tuple[list, ...]:
        """Per-start-state lists of this process's shard (`shard`) -> the same lists over the whole
        update, in the order of one process, on every process."""
        if self.world == 1:
            return fields
        pieces = [None] * self.world
        torch.distributed.all_gather_object(pieces, list(zip(*fields)))  # each: this process's starts
        longest = max(len(p) for p in pieces)  # start i of process j was start i * N + j of the update
        starts = [p[i] for i in range(longest) for p in pieces if i < len(p)]
        return tuple(list(field) for field in zip(*starts)) if starts else tuple([] for _ in fields)

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        for p in params:  # a process with no micro-batch still joins, with zeros
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)

    def sum_counts(self, sums: Counter) -> Counter:
        """Every process's sums of the update's metrics, added up."""
        if self.world == 1:
            return sums
        pieces = [None] * self.world
        torch.distributed.all_gather_object(pieces, sums)
        total = Counter()
        for p in pieces:
            total.update(p)  # update adds (a loss may be negative; Counter's + would drop it)
        return total

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


# ----------------------------------------------------------------------------------------------
# RL's schedule


def start_batches(num_starts: int, config: RLConfig) -> list[list[int]]:
    """Every RL update's start states, fixed in advance from the seed (so resuming is exact): each
    epoch shuffles the starts and cuts them into batches of prompts_per_update (the last may be
    smaller). With num_updates set, epochs repeat until there are that many updates."""
    per_epoch = math.ceil(num_starts / config.prompts_per_update)
    epochs = math.ceil(config.num_updates / per_epoch) if config.num_updates and per_epoch else config.epochs
    updates = []
    for epoch in range(epochs if num_starts else 0):
        order = list(range(num_starts))
        random.Random(derive_seed(config.seed, "rl", "epoch", epoch)).shuffle(order)
        updates += [order[i:i + config.prompts_per_update] for i in range(0, num_starts, config.prompts_per_update)]
    return updates[:config.num_updates] if config.num_updates else updates


# ----------------------------------------------------------------------------------------------
# Records: RL's metrics line, console line and samples; key-step records back into steps


def update_record(update_idx: int, per_epoch: int, batch: Sequence[StartState], groups, rewards, advantages,
                  rows: Sequence[TrainRow], sums: dict, grad_norm: float | None, timings: dict,
                  config: RLConfig) -> dict:
    """The metrics line of one RL update: true means over its episodes or tokens. sums: what
    micro_batch_loss returned, added up; grad_norm is None when every group was skipped (no step)."""
    from rl import KEY_STEP_REWARDS  # one share per verdict on a_k (imported here: rl.py imports this module)
    flat = [r for group in rewards for r in group]
    used_advantages = [a for group in advantages if group is not None for a in group]
    sampled = [lp for g, s in zip(groups, batch) for t in g for step in t.steps[s.k - 1:] for lp in step.logprobs]
    num_tokens, stepped = sum(sum(r.mask) for r in rows), grad_norm is not None

    def share(test) -> float:
        return sum(map(test, flat)) / len(flat)

    record = {
        "rl/update": update_idx + 1,  # updates done, 1-based
        "rl/epoch": (update_idx + 1) / per_epoch,  # passes over the start states (fractional)
        "rl/reward_mean": sum(r.reward for r in flat) / len(flat),  # mean reward over the update's episodes
        "rl/share_correct": share(lambda r: r.correct),  # episodes whose final answer is correct (reward 1)
        "rl/share_unfinished": share(lambda r: not r.finished),  # episodes that never called final_answer
        # episodes not correct (answered or unfinished), by the verdict on a_k (a key of KEY_STEP_REWARDS)
        **{f"rl/share_key_{v}": share(lambda r, v=v: r.key_step == v) for v in KEY_STEP_REWARDS},
        "rl/groups": len(batch),  # start states in this update
        "rl/skipped_groups": sum(a is None for a in advantages),  # all rewards equal: no signal, not trained on
        # root mean square of the advantages trained on (= their std: every group's advantages sum to 0)
        "rl/advantage_std": math.sqrt(sum(a * a for a in used_advantages) / max(1, len(used_advantages))),
        "rl/generated_tokens": len(sampled),  # tokens sampled in all continuations, skipped groups included
        "rl/entropy": -sum(sampled) / max(1, len(sampled)),  # mean -log pi of the sampled tokens: an entropy estimate
        "rl/supervised_tokens": num_tokens,  # N, the loss normaliser
        "rl/loss": sums["loss"] if stepped else None,  # L of the update
        "rl/grad_norm": grad_norm,  # global gradient norm before clipping
        # mean |log pi at sampling - log pi in training|: ~0 on-policy
        "rl/logprob_gap": sums["logprob_gap"] / num_tokens if stepped else None,
        "rl/lr": config.lr,  # learning rate (constant)
        "rl/rollout_s": timings["rollout_s"],  # wall time of sampling and running the episodes
        "rl/reward_s": timings["reward_s"],  # wall time of rewards, advantages and rendering the rows
        "rl/update_s": timings["update_s"],  # wall time of forward, backward and step
        # the rows' tokens / update_s
        "rl/update_tok_per_s": sum(len(r.ids) for r in rows) / timings["update_s"] if stepped else None,
    }
    if config.kl_coef > 0:
        record["rl/kl"] = sums["kl"] / num_tokens if stepped else None  # mean k3 estimate of KL(pi || pi_ref) per token
    return record


def human_line(record: dict, num_updates: int) -> str:
    """The console line of one RL update, from its metrics line ("-" for a number it lacks)."""
    def number(key: str, spec: str) -> str:
        return "-" if record.get(key) is None else format(record[key], spec)
    return (f"rl update {record['rl/update']}/{num_updates} reward {record['rl/reward_mean']:.3f} "
            f"(correct {record['rl/share_correct']:.0%}, key step = teacher {record['rl/share_key_teacher']:.0%}) "
            f"skipped {record['rl/skipped_groups']}/{record['rl/groups']} loss {number('rl/loss', '.4f')} "
            f"grad {number('rl/grad_norm', '.2f')}" + (f" kl {number('rl/kl', '.4f')}" if "rl/kl" in record else "")
            + f" tokens {record['rl/supervised_tokens']}/{record['rl/generated_tokens']} rollout "
            f"{record['rl/rollout_s']:.1f}s reward {record['rl/reward_s']:.1f}s update {record['rl/update_s']:.1f}s"
            + f" gap {number('rl/logprob_gap', '.1e')}" + off_policy_warning(record.get("rl/logprob_gap")))


# rl/logprob_gap above this says the update no longer trains the policy that sampled its rows (REINFORCE
# here has no importance ratio to correct for it). fp32 stays near 1e-6; bf16 autocast on a trained
# 135M student 2-4e-3, on the untrained one 1-2e-2 (bench/RESULTS.md).
OFF_POLICY_GAP = 1e-2


def off_policy_warning(gap: float | None) -> str:
    """What the console line adds when an update's log-prob gap is over OFF_POLICY_GAP."""
    if gap is None or gap <= OFF_POLICY_GAP:
        return ""
    return f" (over {OFF_POLICY_GAP:g}: off-policy; --rl-autocast off samples and trains in fp32)"


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


def step_from_dict(record: dict) -> Step:
    """A step of a key-step record (a JSON object) back as an agent.Step; unknown fields are ignored."""
    return Step(**{f.name: record[f.name] for f in dataclasses.fields(Step) if f.name in record})


# ----------------------------------------------------------------------------------------------
# The standalone command lines (score.py normally calls train_sft and train_rl), flags from the config


def check_standalone_flags(parser, args, config_class, records: str, flag: str) -> None:
    """What sft.py and rl.py would otherwise find out late, with a traceback: the records file is
    missing (it would read as no records), or a field with allowed values (its "choices") got another.
    argparse's one line."""
    if not Path(records).is_file():
        parser.error(f"{flag} {records}: no such file")
    for f in dataclasses.fields(config_class):
        choices = f.metadata.get("choices", ())
        if choices and getattr(args, f.name) not in choices:
            parser.error(f"--{f.name.replace('_', '-')} {getattr(args, f.name)!r}: use {', '.join(choices)}")


def sft_main(argv: list[str] | None = None) -> int:
    """`python sft.py`: SFT on a JSONL file of trajectories."""
    from runs import add_flags, flag_values, read_jsonl
    from sft import SFTConfig, train_sft
    from student import load_student
    parser = argparse.ArgumentParser(description="Hand-written SFT on agent trajectories (one JSON record per line).")
    parser.add_argument("--trajectories", required=True, help="a JSONL file of Trajectory records")
    parser.add_argument("--student", default="smol-135m", help="a preset, hub id, local dir or checkpoint")
    parser.add_argument("--out", required=True, help="output directory (resumable; the final model in HF format)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    add_flags(parser, SFTConfig)  # --help from the config: each field's text and default
    args = parser.parse_args(argv)
    check_standalone_flags(parser, args, SFTConfig, args.trajectories, "--trajectories")
    config = SFTConfig(**flag_values(args, SFTConfig))
    trajectories = [Trajectory.from_dict(r) for r in read_jsonl(Path(args.trajectories))]
    student = load_student(args.student, device=args.device, threads=args.threads)
    out = Path(args.out)
    print(json.dumps(train_sft(student, trajectories, config, out, out / "metrics.jsonl"), indent=2))
    return 0


def rl_main(argv: list[str] | None = None) -> int:
    """`python rl.py`: SCoRe-RL from the key-step records of an MPS phase."""
    from agent import RolloutConfig
    from environment.tasks import load_tasks
    from rl import RLConfig, train_rl
    from runs import add_flags, flag_values, read_jsonl
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
    add_flags(parser, RLConfig)  # --help from the config: each field's text and default
    args = parser.parse_args(argv)
    check_standalone_flags(parser, args, RLConfig, args.keysteps, "--keysteps")
    config = RLConfig(**flag_values(args, RLConfig))
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
