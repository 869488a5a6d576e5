"""Supervised fine-tuning on agent trajectories: phase 0 (BC warm start) and phase 2 (SCoRe-SFT).

What it does (METHOD.md, phases 0 and 2): every trajectory is rendered token-exactly in the student's
chat template (`agent.render_ids`: student steps bring the ids they sampled, teacher steps are
tokenised), a loss mask marks the assistant tokens (plan, thought, code, and the end-of-turn token
that closes each assistant turn), and the student minimises the cross-entropy of exactly those
tokens. System, task and observation tokens are context only.

The loop is written out: zero_grad -> forward -> loss -> backward -> clip -> step, with AdamW, a
cosine schedule with linear warmup, gradient accumulation and clipping. `accelerate.Accelerator`
only places tensors and, under `accelerate launch`, averages gradients across GPUs (DDP). The
log-probs come from `student.masked_token_logprobs`, the function RL's loss uses too, the resume /
metrics / final-save bookkeeping from `runs.TrainingRun`, and the model's preparation (LoRA or full
fine-tuning) and the command line from `training`: the plumbing RL shares.

Deviations from the paper (and from common SFT recipes), each with its reason:
1. Learning rate and epochs: the paper fine-tunes a 7B model fully at lr 7e-6 for 3 epochs. The CPU
   default (SmolLM2-135M, full fine-tuning) uses lr 3e-4 for 3 epochs, the best of 3e-5 / 1e-4 /
   3e-4 by held-out loss on reference trajectories (bench/RESULTS.md, "SFT learning rate"); GPU
   students of 1B and more train a LoRA adapter (r = 64) at lr 1e-4, the usual LoRA range
   (not measured here), since a 7B full fine-tune needs 8 GPUs.
2. Batches are *packed rows*, not padded batches: documents are laid end to end in rows of at most
   `micro_batch_tokens` tokens, positions restart at 0 for each document and attention never
   crosses a document boundary. Why packing rather than length-grouped padding: a packed row has no
   padding at all whatever the length spread, one row is one micro-batch (so its memory is bounded
   by one number), and the loss normaliser is exact by construction. The cost: attention inside a
   row is computed over the full row and masked (a block-diagonal mask), which for the short
   agent trajectories here is a small part of the FLOPs (bench/RESULTS.md, "SFT speed").
3. The loss is normalised by the supervised tokens of the whole optimiser update, not averaged per
   micro-batch or per sequence, so every assistant token weighs the same whatever row it landed in
   (common recipes average per micro-batch or per sequence, which weighs tokens unequally).
4. Trajectories longer than `max_length` are cut at the right (the paper's cutoff, 4096 / 15000);
   the count is printed and returned. The CPU default caps at 1024 tokens to keep fp32 full
   fine-tuning under 6 GB of RAM; reference trajectories are ~500 tokens.
5. Full fine-tuning of a bf16 model keeps fp32 master weights during training (AdamW steps on bf16
   weights lose small updates) and casts back at the end. The matmuls may still run in bf16: on CUDA
   through accelerate (`bf16`), on a CPU with native bf16 through torch.autocast (`autocast`, the CPU
   preset's "auto"); the LM head and the loss stay in fp32 either way.

Run it (the CLI normally calls `train_sft` for `python score.py bc` and `python score.py sft`):
    python sft.py --trajectories runs/NAME/sft.jsonl --student runs/NAME/checkpoints/bc --out /tmp/sft
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from agent import Trajectory, derive_seed, render_ids
from config import SFTConfig  # this phase's settings (config.py: every option's one home)
from runs import TrainingRun, git_commit, learned_settings, make_console
from training import RowLogprobs, autocast_dtype, cast_parameters, prepare_model


# ----------------------------------------------------------------------------------------------
# METHOD: the data, trajectory -> token ids and loss mask (the one mask function)


def end_of_turn_ids(tokenizer) -> set[int]:
    """Ids that close a chat turn in the templates this project supports (ChatML, Llama 3)."""
    ids = {tokenizer.eos_token_id}
    for name in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(name)
        if isinstance(token_id, int) and token_id >= 0 and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return {i for i in ids if i is not None}


def loss_mask(ids: Sequence[int], segments, eot_ids: set[int]) -> list[int]:
    """METHOD: which tokens the student learns to produce. 1 = supervised target, 0 = context.

    1 on every assistant segment (plan, thought, code; student or teacher alike) and on the first
    token of the glue that follows it when that token is the end-of-turn token (`<|im_end|>`):
    the model must learn to end its turn, and that token comes from the template, not from the
    sampled ids (METHOD.md section 2). 0 on glue, system prompt, task and observations.
    """
    mask = [0] * len(ids)
    for i, segment in enumerate(segments):
        if segment.kind != "assistant":
            continue
        mask[segment.start:segment.end] = [1] * (segment.end - segment.start)
        after = segments[i + 1] if i + 1 < len(segments) else None
        if after is not None and after.kind == "glue" and after.end > after.start and ids[after.start] in eot_ids:
            mask[after.start] = 1
    return mask


@dataclass
class Example:
    ids: list[int]  # the rendered conversation, cut to max_length
    mask: list[int]  # loss_mask(...) of the same tokens
    truncated: bool  # the conversation was longer than max_length


def build_example(tokenizer, trajectory: Trajectory, max_length: int, eot_ids: set[int]) -> Example:
    """Render one trajectory token-exactly (agent.render_ids) and mask it (loss_mask)."""
    rendered = render_ids(tokenizer, trajectory.question, trajectory.steps)
    mask = loss_mask(rendered.ids, rendered.segments, eot_ids)
    cut = len(rendered.ids) > max_length
    return Example(rendered.ids[:max_length], mask[:max_length], cut)


# ----------------------------------------------------------------------------------------------
# PLUMBING: packing, documents -> rows -> updates (deviation 2)


@dataclass
class Row:
    """Documents laid end to end: one micro-batch, no padding."""
    ids: list[int]  # (T,)
    positions: list[int]  # (T,) restart at 0 for each document: that is what isolates them
    mask: list[int]  # (T,) 1 = supervised target token
    num_docs: int


def pack_row(examples: Sequence[Example]) -> Row:
    ids, positions, mask = [], [], []
    for example in examples:
        ids += example.ids
        positions += list(range(len(example.ids)))
        # A document's first token is never a target: it would be predicted from the previous
        # document (loss_mask already gives 0 there, since a conversation starts with glue).
        mask += [0] + example.mask[1:]
    return Row(ids, positions, mask, len(examples))


def first_fit(order: Sequence[int], lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Put each document (in the given order) into the first row with room for it."""
    rows: list[list[int]] = []
    room: list[int] = []
    for doc in order:
        for r, free in enumerate(room):
            if lengths[doc] <= free:
                rows[r].append(doc)
                room[r] -= lengths[doc]
                break
        else:
            rows.append([doc])
            room.append(capacity - lengths[doc])
    return rows


def plan_updates(lengths: Sequence[int], config: SFTConfig, world_size: int) -> list[list[list[int]]]:
    """Every update of the run, fixed in advance from the seed: update -> rows -> document indices.

    Each epoch shuffles the documents, packs them first-fit, shuffles the rows and cuts them into
    updates of grad_accum * world_size rows (the last update of an epoch may hold fewer). Knowing
    the plan up front gives the cosine schedule its length and makes resuming exact.
    """
    updates = []
    rows_per_update = config.grad_accum * world_size
    for epoch in range(config.epochs):
        rng = random.Random(derive_seed(config.seed, "sft", epoch))
        order = list(range(len(lengths)))
        rng.shuffle(order)
        rows = first_fit(order, lengths, config.micro_batch_tokens)
        rng.shuffle(rows)
        updates += [rows[i:i + rows_per_update] for i in range(0, len(rows), rows_per_update)]
    return updates


# ----------------------------------------------------------------------------------------------
# METHOD: the loss and the schedule


def masked_nll_sum(model, row: Row, device) -> tuple[torch.Tensor, int]:
    """Sum of -log pi(y_t | y_<t) over the row's supervised tokens, and their count.

    The log-probs come from student.masked_token_logprobs, as RL's do: the LM head runs only at the
    positions whose next token has mask 1. attention_mask None with positions restarting at 0 for
    each document makes transformers build a block-diagonal causal mask (one block per document).
    `model` is a causal LM, or the loop's accelerate-prepared RowLogprobs around one (the same call).
    """
    ids = torch.tensor([row.ids], device=device)  # (1, T)
    positions = torch.tensor([row.positions], device=device)  # (1, T)
    mask = torch.tensor([row.mask], device=device)  # (1, T)
    scorer = model if isinstance(getattr(model, "module", model), RowLogprobs) else RowLogprobs(model)
    logprobs = scorer(ids, positions, mask)  # (N,)
    return -logprobs.sum(), int(logprobs.numel())


def micro_batch_loss(model, row: Row, device, num_update_tokens: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """METHOD: this micro-batch's share of the update's loss.

    L = (1/N) sum_r sum_t m_rt * -log pi(y_rt | y_r,<t)   N = sum_r sum_t m_rt over every row r of the
    update, on every process. Each micro-batch adds its own term with the global N, so gradient
    accumulation sums exactly to dL. DDP *averages* gradients over the world_size processes, hence
    the factor world_size. Returns (the loss to backpropagate, the plain nll sum for logging).
    """
    nll_sum, _ = masked_nll_sum(model, row, device)
    return nll_sum * (world_size / num_update_tokens), nll_sum.detach()


def lr_factor(update_idx: int, num_updates: int, warmup: int) -> float:
    """Multiplier of the peak lr for update `update_idx` (0-based): linear warmup, then cosine to 0.

    warmup: (u + 1) / W for u < W, so the first update already moves; then
    0.5 * (1 + cos(pi * (u - W) / (U - W))): the peak at u = W, approaching 0 at the last update.
    """
    if update_idx < warmup:
        return (update_idx + 1) / warmup
    progress = (update_idx - warmup) / max(1, num_updates - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------
# METHOD: the loop


def train_sft(student, trajectories: Sequence[Trajectory], config: SFTConfig, out_dir: Path,
              metrics_path: Path, label: str = "sft", stop_after: int | None = None,
              on_update: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune `student` in place on `trajectories` and save it to out_dir in Hugging Face format.

    out_dir/checkpoint/ holds the resumable state; calling again with the same arguments resumes
    from it (or, once finished, just restores the trained weights). `stop_after` ends the call after
    that many updates in total (tests, time-boxed runs); `on_update` sees each metrics record.
    Returns a summary dict (also written to out_dir/summary.json when training is complete).
    """
    from accelerate import Accelerator
    out_dir = Path(out_dir)
    if config.max_length > config.micro_batch_tokens:
        raise ValueError(f"max_length {config.max_length} must fit one row of micro_batch_tokens {config.micro_batch_tokens}")
    accelerator = Accelerator(cpu=student.device.type == "cpu",
                              mixed_precision="bf16" if config.bf16 and student.device.type == "cuda" else "no")
    console = make_console(quiet=not accelerator.is_main_process)

    # 1. Data: token ids + loss mask per trajectory, then the whole plan of updates.
    eot = end_of_turn_ids(student.tokenizer)
    examples = [build_example(student.tokenizer, t, config.max_length, eot) for t in trajectories]
    examples = [e for e in examples if sum(e.mask) > 0]  # nothing to learn from (all cut away)
    if not examples:
        raise ValueError("no trajectory has an assistant token to train on")
    plan = plan_updates([len(e.ids) for e in examples], config, accelerator.num_processes)
    num_updates, warmup = len(plan), math.ceil(config.warmup_ratio * len(plan))
    total_tokens = sum(len(e.ids) for e in examples)
    supervised = sum(sum(e.mask) for e in examples)
    rows_per_epoch = len(first_fit(range(len(examples)), [len(e.ids) for e in examples], config.micro_batch_tokens))
    console.print(f"{label}: {len(examples)} trajectories ({sum(e.truncated for e in examples)} cut at {config.max_length}),"
                  f" {total_tokens} tokens, {supervised} supervised; ~{rows_per_epoch} rows of <= {config.micro_batch_tokens}"
                  f" tokens per epoch x {config.epochs} epochs / ({config.grad_accum} rows x {accelerator.num_processes}"
                  f" processes per update) = {num_updates} updates, warmup ceil({config.warmup_ratio} x {num_updates}) = {warmup}")

    # 2. Model, optimiser, schedule. The seed makes a fresh LoRA adapter identical on every process.
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    original_dtype = next(student.model.parameters()).dtype  # handed back in it (deviation 5)
    use_lora = prepare_model(student, config)  # LoRA, or every weight in fp32; gradient checkpointing
    model = student.model
    params = [p for p in model.parameters() if p.requires_grad]
    # bf16 matmuls over the fp32 weights in the forward (the backward follows the forward's dtypes):
    # on CUDA accelerate's mixed precision does it, on CPU this autocast (None: fp32 throughout).
    cpu_autocast = autocast_dtype(config.autocast, student) if student.device.type == "cpu" else None
    forward_context = (lambda: torch.autocast("cpu", dtype=cpu_autocast)) if cpu_autocast else contextlib.nullcontext
    console.print(f"{label}: {'LoRA r=' + str(config.lora_rank) if use_lora else 'full fine-tuning'}, "
                  f"{sum(p.numel() for p in params) / 1e6:.1f}M trainable parameters, lr {config.lr:g}"
                  + (", bf16 autocast" if cpu_autocast else ""))
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_factor(u, num_updates, warmup))
    # The scheduler is not prepared: accelerate would step it once per process, and our update
    # count is already global. What is prepared is the forward (RowLogprobs): DDP averages the
    # gradients of what runs inside the forward of the module it wraps.
    scorer, optimizer = accelerator.prepare(RowLogprobs(model), optimizer)
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index

    # 3. Resume: the last checkpoint of the same data and settings, if there is one.
    run = TrainingRun(label, out_dir, metrics_path, num_updates, checkpoint_every=config.checkpoint_every,
                      console=console, progress=config.progress, stop_after=stop_after, on_update=on_update,
                      identity={"config": learned_settings(config),
                                "fingerprint": derive_seed([e.ids for e in examples], [e.mask for e in examples]),
                                "world_size": world},
                      record={"label": label}, main_process=accelerator.is_main_process,
                      barrier=accelerator.wait_for_everyone)
    run.resume(model, optimizer, scheduler)

    # 4. The loop: zero_grad -> (forward -> loss -> backward) per row -> clip -> step.
    wall_s, last_loss = 0.0, float("nan")
    model.train()
    with run:
        for update_idx in run.updates():
            update_began = time.perf_counter()
            rows = [pack_row([examples[d] for d in docs]) for docs in plan[update_idx]]
            num_update_tokens = sum(sum(r.mask) for r in rows)  # N: supervised tokens, all processes
            mine = rows[rank::world]  # this process's rows; the others take the rest
            weights = [1.0] * len(mine)
            if not mine:  # fewer rows than processes: join the gradient all-reduce with a zero loss
                mine, weights = rows[:1], [0.0]
            optimizer.zero_grad(set_to_none=True)
            nll_total = torch.zeros((), device=device)
            for i, (row, weight) in enumerate(zip(mine, weights)):
                last = i == len(mine) - 1  # DDP all-reduces gradients on the last micro-batch only
                with contextlib.nullcontext() if last else accelerator.no_sync(scorer):
                    # forward, and this row's share of L = (1/N) sum_r sum_t m_rt * -log pi(y_rt | y_r,<t)
                    with forward_context():
                        loss, nll_sum = micro_batch_loss(scorer, row, device, num_update_tokens, world)
                    accelerator.backward(loss * weight)  # backward: the rows' gradients add up to dL
                nll_total += nll_sum * weight
            grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)  # clip (returns the norm before)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()  # step
            scheduler.step()

            # Metrics of this update, true means over all its rows on all processes.
            nll_total = accelerator.reduce(nll_total, reduction="sum")
            update_s = time.perf_counter() - update_began
            wall_s += update_s
            row_tokens = sum(len(r.ids) for r in rows)
            last_loss = float(nll_total) / num_update_tokens
            record = {
                "label": label,
                "sft/update": update_idx + 1,  # optimiser updates done, 1-based
                "sft/epoch": (update_idx + 1) / num_updates * config.epochs,  # epochs done (fractional)
                "sft/loss": last_loss,  # mean -log pi over the update's supervised tokens
                "sft/tokens": num_update_tokens,  # supervised tokens in this update
                "sft/row_tokens": row_tokens,  # tokens forwarded (all real, none are padding)
                "sft/tok_per_s": row_tokens / update_s,  # forwarded tokens per second of this update
                "sft/lr": lr,  # learning rate this update used
                "sft/grad_norm": float(grad_norm),  # global gradient norm before clipping
            }
            run.end_update(record, f"{label} update {update_idx + 1}/{num_updates} loss {last_loss:.4f} lr {lr:.2e} "
                                   f"grad_norm {float(grad_norm):.2f} tokens {num_update_tokens}/{row_tokens} "
                                   f"{record['sft/tok_per_s']:.0f} tok/s", info=f"loss {last_loss:.3f}")

    # 5. Hand the student back ready to sample; save the final model once all updates are done.
    model.eval()
    if config.gradient_checkpointing:
        student.causal_lm().gradient_checkpointing_disable()
    if not use_lora and original_dtype != torch.float32:
        cast_parameters(student.model, original_dtype)
    summary = run.finish(student.model, student.tokenizer, {
        "label": label, "examples": len(examples), "truncated": sum(e.truncated for e in examples),
        "tokens": total_tokens, "supervised_tokens": supervised, "updates_done": run.done,
        "num_updates": num_updates, "final_loss": last_loss, "train_wall_s": wall_s, "lora": use_lora,
        "out_dir": str(out_dir), "finished": run.finished, "commit": git_commit(),
        "config": dataclasses.asdict(config)})
    console.print(f"{label}: {run.done}/{num_updates} updates, final loss {summary['final_loss']:.4f}, {wall_s:.0f} s"
                  + run.outcome())
    return summary


if __name__ == "__main__":  # python sft.py --help: the standalone command line, training.sft_main
    from training import sft_main
    raise SystemExit(sft_main())
