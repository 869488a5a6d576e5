"""SFT speed and fidelity against TRL, and the learning-rate sweep behind the CPU default.

    python bench/sft_speed.py speed   # sft.py vs TRL's SFTTrainer: padding, padding-free, packing
    python bench/sft_speed.py lr      # held-out loss of the CPU default for a few learning rates
    python bench/sft_speed.py autocast  # the CPU preset's bf16 autocast against fp32: tok/s, held-out loss

Data: reference solutions of the default task sets (arith, lookup; train split) rendered as agent
trajectories (plan, thought/code steps, observations from running the code in the sandbox).

`speed` runs every trainer in its own process (so peak RSS is its own) on the same model
(SmolLM2-135M-Instruct, fp32, CPU), the same trajectories, maximum length, threads and loss
(assistant tokens only). TRL lives in its own virtual environment, never in requirements.txt:
    python -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install -r bench/requirements-bench.txt
Before timing, it checks fidelity: TRL's chat template with generation markers renders exactly as the
model's own template, TRL's first batch holds the same token ids and loss mask as sft.py builds, and
both compute the same loss on it. tok/s = real (non-padding) tokens forwarded per second of training,
over the updates after the first (warm-up). Prints `RESULT name=value` lines last; figures go to
bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# SmolLM2's own chat template, with {% generation %} around what an assistant turn produces (its
# content and the closing <|im_end|>), so TRL's assistant_only_loss masks what sft.loss_mask masks.
MARKED_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant "
    "named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux reports KiB


# ----------------------------------------------------------------------------------------------
# Reference trajectories


def reference_trajectory(task):
    """A task's verified reference solution as a teacher-authored Trajectory. Observations come from
    running each step in tools.Sandbox; without tools.py, the step's checkpoints stand in."""
    from agent import Step, Trajectory, format_step
    try:
        from tools import Sandbox
    except ImportError:
        Sandbox = None
    steps = []
    sandbox = Sandbox(corpus=task.corpus, max_output_chars=400) if Sandbox is not None else None  # CPU preset budget
    try:
        for index, ref in enumerate(task.solution, start=1):
            kind = "plan" if index == 1 else "action"
            step = Step(index=index, kind=kind, author="teacher", content=format_step(kind, ref.thought, ref.code),
                        thought=ref.thought, code=ref.code)
            if kind == "plan":
                step.observation = "None"
            elif sandbox is not None:
                result = sandbox.run(ref.code)
                step.observation, step.error, step.final_answer = result.text, result.error, result.answer
            else:
                step.observation = " ".join(ref.checkpoints)
            steps.append(step)
    finally:
        if sandbox is not None:
            sandbox.close()
    steps[-1].final_answer = steps[-1].final_answer or task.answer
    return Trajectory(task_id=task.id, task_set=task.task_set, question=task.question, reference_answer=task.answer,
                      steps=steps, final_answer=task.answer, finished=True, correct=True, split="bc")


def reference_trajectories(n_per_set: int, seed: int, split: str = "train", skip: set | None = None) -> list:
    from environment.tasks import load_tasks
    out = []
    for name in ("arith", "lookup"):
        tasks = [t for t in load_tasks(name, split, n_per_set + len(skip or ()), seed) if t.id not in (skip or set())]
        out += [reference_trajectory(t) for t in tasks[:n_per_set]]
    return out


# ----------------------------------------------------------------------------------------------
# Workers (each in its own process)


def worker_ours(args) -> dict:
    """sft.train_sft on the CPU default config for `steps` updates."""
    import torch
    from agent import Trajectory
    from sft import SFTConfig, train_sft
    from student import load_student
    data = json.loads(Path(args.data).read_text())
    trajectories = [Trajectory.from_dict(t) for t in data["trajectories"]]
    student = load_student("smol-135m", device="cpu", dtype="float32", threads=args.threads)
    config = SFTConfig(epochs=1, max_length=args.max_length, micro_batch_tokens=args.max_length,
                       grad_accum=args.grad_accum, progress=False, checkpoint_every=10_000, autocast=args.autocast)
    out = Path(tempfile.mkdtemp(prefix="sft_speed_"))
    records = []
    summary = train_sft(student, trajectories, config, out / "run", out / "metrics.jsonl", stop_after=args.steps,
                        on_update=records.append)
    timed = records[1:]  # the first update warms up allocators and kernels
    tokens = sum(r["sft/row_tokens"] for r in timed)
    seconds = sum(r["sft/row_tokens"] / r["sft/tok_per_s"] for r in timed)
    return {"tok_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds, "updates": len(records),
            "peak_rss_gb": peak_rss_gb(), "losses": [r["sft/loss"] for r in records], "threads": torch.get_num_threads(),
            "lora": summary["lora"]}


def worker_check(args) -> dict:
    """sft.py's loss on TRL's first batch, at the initial weights (same documents, same model)."""
    import torch
    from sft import Row, masked_nll_sum
    from student import load_student
    batch = json.loads(Path(args.batch).read_text())
    student = load_student("smol-135m", device="cpu", dtype="float32", threads=args.threads)
    total, count = 0.0, 0
    with torch.no_grad():
        for doc in batch["docs"]:
            row = Row(doc["ids"], list(range(len(doc["ids"]))), doc["mask"], 1)
            nll_sum, n = masked_nll_sum(student.model, row, "cpu")
            total, count = total + float(nll_sum), count + n
    return {"loss": total / count, "tokens": count}


def worker_trl(args) -> dict:
    """TRL's SFTTrainer, assistant-only loss, in one of three batch layouts. Runs in the TRL venv."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    torch.set_num_threads(args.threads)
    data = json.loads(Path(args.data).read_text())
    tokenizer = AutoTokenizer.from_pretrained(data["model_path"])
    tokenizer.chat_template = MARKED_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(data["model_path"], dtype=torch.float32)
    from training import forget_gguf_origin  # the converted model's stale GGUF marker blocks Trainer too
    forget_gguf_origin(model)
    dataset = Dataset.from_list([{"messages": m} for m in data["messages"]])
    layout = {"padding": dict(per_device_train_batch_size=2),
              # TRL does not truncate padding-free batches; every trajectory here is shorter than max_length.
              "padding_free": dict(per_device_train_batch_size=2, padding_free=True, max_length=None),
              "packing": dict(per_device_train_batch_size=1, packing=True, packing_strategy="bfd")}[args.layout]
    out = tempfile.mkdtemp(prefix="trl_speed_")
    config = trl.SFTConfig(output_dir=out, gradient_accumulation_steps=args.grad_accum, learning_rate=1e-4,
                           lr_scheduler_type="cosine", warmup_steps=1, max_steps=args.steps, weight_decay=0.0,
                           max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                           bf16=False, fp16=False, assistant_only_loss=True, seed=0, dataloader_num_workers=0,
                           disable_tqdm=True, gradient_checkpointing=False,  # TRL's default is on; sft.py's is off
                           **{"max_length": args.max_length, **layout})

    class Clock(TrainerCallback):
        """Wall time and real tokens of each optimiser update."""
        def __init__(self):
            self.marks, self.tokens, self.pending = [], [], 0

        def on_step_end(self, *_, **__):
            self.marks.append(time.perf_counter())
            self.tokens.append(self.pending)
            self.pending = 0

    clock = Clock()

    class CountingTrainer(trl.SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            real = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["input_ids"].numel()
            clock.pending += int(real)
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = CountingTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[clock])
    # Fidelity: the first batch, as documents (ids, mask[t] = 1 where token t is a target), and its loss.
    batch = next(iter(trainer.get_train_dataloader()))
    docs = []
    for r in range(batch["input_ids"].shape[0]):
        ids, labels = batch["input_ids"][r], batch["labels"][r]
        if "position_ids" in batch:
            starts = (batch["position_ids"][r] == 0).nonzero().flatten().tolist() + [len(ids)]
        else:
            starts = [0, int(batch["attention_mask"][r].sum())]
        for a, b in zip(starts, starts[1:]):
            docs.append({"ids": ids[a:b].tolist(), "mask": (labels[a:b] != -100).long().tolist()})
    model.train()
    with torch.no_grad():
        first_loss = float(trainer.compute_loss(model, {k: v for k, v in batch.items()}))
    began = time.perf_counter()
    trainer.train()
    marks = [began] + clock.marks
    seconds = marks[-1] - marks[1]  # updates 2..K; the first warms up
    tokens = sum(clock.tokens[1:])
    return {"tok_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds, "updates": len(clock.marks),
            "peak_rss_gb": peak_rss_gb(), "first_loss": first_loss, "first_batch": {"docs": docs},
            "trl": trl.__version__, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------
# Orchestration


def run_worker(python: str, name: str, extra: list[str]) -> dict:
    """Run one worker in a fresh process; it prints one line `WORKER_RESULT {json}`."""
    cmd = [python, str(Path(__file__).resolve()), name, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("WORKER_RESULT "):
            return json.loads(line[len("WORKER_RESULT "):])
    raise RuntimeError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def cmd_speed(args) -> None:
    from transformers import AutoTokenizer
    from agent import to_messages
    from sft import build_example, end_of_turn_ids
    from student import resolve_model_path
    trl_python = args.trl_python
    if not Path(trl_python).exists():
        raise SystemExit(f"no TRL environment at {trl_python}: python -m venv /tmp/trlvenv && "
                         "/tmp/trlvenv/bin/pip install -r bench/requirements-bench.txt")
    model_path = resolve_model_path("smol-135m")
    trajectories = reference_trajectories(args.n // 2, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    messages = [to_messages(t.question, t.steps) for t in trajectories]
    # Fidelity 1: the marked template renders every conversation exactly as the model's own.
    for m in messages:
        assert tokenizer.apply_chat_template(m, tokenize=False, chat_template=MARKED_TEMPLATE) == \
            tokenizer.apply_chat_template(m, tokenize=False), "the marked template renders differently"
    eot = end_of_turn_ids(tokenizer)
    ours = {tuple(e.ids): e.mask for e in (build_example(tokenizer, t, args.max_length, eot) for t in trajectories)}
    tmp = Path(tempfile.mkdtemp(prefix="sft_bench_"))
    data = tmp / "data.json"
    data.write_text(json.dumps({"model_path": model_path, "messages": messages,
                                "trajectories": [t.to_dict() for t in trajectories]}))
    common = ["--data", str(data), "--threads", str(args.threads), "--max-length", str(args.max_length),
              "--steps", str(args.steps), "--grad-accum", str(args.grad_accum)]
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):  # interleaved, so slow spells of a shared machine hit all alike
        for layout in ("padding", "padding_free", "packing"):
            result = run_worker(trl_python, "worker-trl", common + ["--layout", layout])
            if repeat == 0:
                # Fidelity 2: TRL's first batch = sft.py's documents (ids and mask), and the same loss.
                batch_docs = result["first_batch"]["docs"]
                for doc in batch_docs:
                    assert ours.get(tuple(doc["ids"])) is not None, f"{layout}: TRL tokenised a conversation differently"
                    expected = ours[tuple(doc["ids"])]
                    assert doc["mask"][1:] == expected[1:], f"{layout}: TRL's assistant mask differs from sft.loss_mask"
                batch_file = tmp / f"batch_{layout}.json"
                batch_file.write_text(json.dumps(result["first_batch"]))
                check = run_worker(sys.executable, "worker-check", ["--batch", str(batch_file), "--threads", str(args.threads)])
                print(f"fidelity {layout}: {len(batch_docs)} documents identical; first-batch loss TRL "
                      f"{result['first_loss']:.5f} vs sft.py {check['loss']:.5f}", flush=True)
                assert abs(check["loss"] - result["first_loss"]) < 1e-3 * abs(result["first_loss"]), "first-batch losses differ"
            result.pop("first_batch")
            runs.setdefault(f"trl_{layout}", []).append(result)
            print(f"trl_{layout}: {result['tok_per_s']:.1f} tok/s, peak RSS {result['peak_rss_gb']:.2f} GB", flush=True)
        result = run_worker(sys.executable, "worker-ours", common)
        runs.setdefault("sft_py", []).append(result)
        print(f"sft_py: {result['tok_per_s']:.1f} tok/s, peak RSS {result['peak_rss_gb']:.2f} GB", flush=True)

    med = {k: statistics.median(r["tok_per_s"] for r in v) for k, v in runs.items()}
    rss = {k: max(r["peak_rss_gb"] for r in v) for k, v in runs.items()}
    print(f"\n{'trainer':<18}{'tok/s (median)':>16}{'runs':>28}{'peak RSS GB':>14}")
    for k in runs:
        print(f"{k:<18}{med[k]:>16.1f}{', '.join(str(round(r['tok_per_s'])) for r in runs[k]):>28}{rss[k]:>14.2f}")
    best_free = max(med["trl_padding_free"], med["trl_packing"])
    print(f"load average during the run: {os.getloadavg()}")
    print(f"RESULT sft_tok_per_s={med['sft_py']:.1f}")
    print(f"RESULT trl_padding_tok_per_s={med['trl_padding']:.1f}")
    print(f"RESULT trl_padding_free_tok_per_s={med['trl_padding_free']:.1f}")
    print(f"RESULT trl_packing_tok_per_s={med['trl_packing']:.1f}")
    print(f"RESULT trl_gain_from_packing={best_free / med['trl_padding']:.2f}")
    print(f"RESULT sft_gain_from_loop={med['sft_py'] / best_free:.2f}")
    print(f"RESULT sft_tok_per_s_vs_trl={med['sft_py'] / med['trl_padding']:.2f}")
    print(f"RESULT sft_tok_per_s_vs_trl_packed={med['sft_py'] / best_free:.2f}")
    print(f"RESULT sft_peak_rss_gb={rss['sft_py']:.2f}")
    print(f"RESULT trl_padding_peak_rss_gb={rss['trl_padding']:.2f}")


def train_with_held_out(lr: float, autocast: str, train: list, held_out: list, args) -> dict:
    """Train the CPU default (at this lr and autocast) on `train`; the held-out loss (in fp32) before
    and after each epoch, the final train loss, wall time and the median tok/s of the updates."""
    import dataclasses
    import torch
    from sft import SFTConfig, build_example, end_of_turn_ids, masked_nll_sum, pack_row, plan_updates, train_sft
    from student import load_student
    student = load_student("smol-135m", device=args.device, dtype="float32", threads=args.threads)
    config = dataclasses.replace(SFTConfig(), lr=lr, epochs=args.epochs, progress=False, checkpoint_every=10_000,
                                 autocast=autocast)
    eot = end_of_turn_ids(student.tokenizer)
    held = [build_example(student.tokenizer, t, config.max_length, eot) for t in held_out]
    lengths = [len(build_example(student.tokenizer, t, config.max_length, eot).ids) for t in train]
    plan = plan_updates(lengths, config, world_size=1)
    per_epoch = [sum(1 for _ in plan_updates(lengths, dataclasses.replace(config, epochs=e + 1), 1)) for e in range(args.epochs)]

    def held_out_loss() -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for example in held:
                nll, n = masked_nll_sum(student.model, pack_row([example]), student.device)
                total, count = total + float(nll), count + n
        return total / count

    losses, speeds = [held_out_loss()], []

    def on_update(record):
        speeds.append(record["sft/tok_per_s"])
        if record["sft/update"] in per_epoch:
            losses.append(held_out_loss())
            print(f"lr {lr:g} autocast {autocast} epoch {per_epoch.index(record['sft/update']) + 1}: held-out loss "
                  f"{losses[-1]:.4f} (train loss of the last update {record['sft/loss']:.4f})", flush=True)
    began = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix="sft_lr_"))
    summary = train_sft(student, train, config, out / "run", out / "metrics.jsonl", on_update=on_update)
    return {"held_out": losses, "train_final": summary["final_loss"], "wall_s": time.perf_counter() - began,
            "updates": len(plan), "tok_per_s": statistics.median(speeds[1:] or speeds)}


def cmd_lr(args) -> None:
    """Train the CPU default on reference trajectories at several lrs; held-out loss after each epoch."""
    train = reference_trajectories(args.n // 2, seed=0)
    held_out = reference_trajectories(args.held_out // 2, seed=1, skip={t.task_id for t in train})
    table = {lr: train_with_held_out(lr, "off", train, held_out, args) for lr in map(float, args.lrs.split(","))}
    print(f"\ntrain: {len(train)} reference trajectories (seed 0); held-out: {len(held_out)} (seed 1)")
    print(f"{'lr':>8}  held-out loss after epoch 0..{args.epochs}        final train-update loss")
    for lr, row in table.items():
        print(f"{lr:>8g}  {'  '.join(f'{x:.4f}' for x in row['held_out'])}   {row['train_final']:.4f}")
    best = min(table, key=lambda lr: min(table[lr]["held_out"]))
    best_epoch = table[best]["held_out"].index(min(table[best]["held_out"]))
    print(f"RESULT sft_best_lr={best:g}")
    print(f"RESULT sft_best_epoch={best_epoch}")
    print(f"RESULT sft_best_held_out_loss={min(table[best]['held_out']):.4f}")


def cmd_autocast(args) -> None:
    """The CPU preset's SFT in fp32 and under bf16 autocast: tok/s of `steps` updates in fresh processes,
    interleaved `repeats` times (sft_py's worker, as `speed` runs it), then one full training of each on
    the same trajectories with the held-out loss after every epoch (the same lr, data and order)."""
    from student import cpu_has_native_bf16
    if not cpu_has_native_bf16():
        print("this CPU has no native bf16 (AVX512-BF16 / AMX): autocast 'auto' is fp32 here, 'bfloat16' emulated")
    train = reference_trajectories(args.n // 2, seed=0)
    held_out = reference_trajectories(args.held_out // 2, seed=1, skip={t.task_id for t in train})
    tmp = Path(tempfile.mkdtemp(prefix="sft_autocast_"))
    data = tmp / "data.json"
    data.write_text(json.dumps({"trajectories": [t.to_dict() for t in train]}))
    common = ["--data", str(data), "--threads", str(args.threads), "--max-length", str(args.max_length),
              "--steps", str(args.steps), "--grad-accum", str(args.grad_accum)]
    speed: dict[str, list[float]] = {"off": [], "bfloat16": []}
    for _ in range(args.repeats):
        for setting in speed:
            result = run_worker(sys.executable, "worker-ours", common + ["--autocast", setting])
            speed[setting].append(result["tok_per_s"])
            print(f"autocast {setting}: {result['tok_per_s']:.1f} tok/s, peak RSS {result['peak_rss_gb']:.2f} GB",
                  flush=True)
    lr = args.lr
    trained = {setting: train_with_held_out(lr, setting, train, held_out, args) for setting in speed}
    med = {k: statistics.median(v) for k, v in speed.items()}
    print(f"\ntrain: {len(train)} reference trajectories (seed 0); held-out: {len(held_out)} (seed 1); lr {lr:g}")
    print(f"{'autocast':>9}  {'tok/s (workers)':>16}  {'tok/s (training)':>17}  {'wall s':>7}  held-out loss after epoch 0..{args.epochs}")
    for k, row in trained.items():
        print(f"{k:>9}  {med[k]:>16.1f}  {row['tok_per_s']:>17.1f}  {row['wall_s']:>7.0f}  "
              + "  ".join(f"{x:.4f}" for x in row["held_out"]))
    print(f"load average during the run: {os.getloadavg()}")
    print(f"RESULT sft_autocast_speedup={med['bfloat16'] / med['off']:.2f}")
    print(f"RESULT sft_autocast_training_speedup={trained['off']['wall_s'] / trained['bfloat16']['wall_s']:.2f}")
    print(f"RESULT sft_autocast_held_out_loss_delta={trained['bfloat16']['held_out'][-1] - trained['off']['held_out'][-1]:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["speed", "lr", "autocast", "worker-ours", "worker-trl", "worker-check"])
    parser.add_argument("--n", type=int, default=48, help="training trajectories (half arith, half lookup)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=1024, help="max tokens a sequence (and a packed row)")
    parser.add_argument("--steps", type=int, default=6, help="speed: optimiser updates per run (the first is not timed)")
    parser.add_argument("--grad-accum", type=int, default=2, help="speed: micro-batches per update")
    parser.add_argument("--repeats", type=int, default=2, help="speed: interleaved repeats of every trainer")
    parser.add_argument("--trl-python", default="/tmp/trlvenv/bin/python", help="python of the TRL virtual env")
    parser.add_argument("--layout", default="padding", help="worker-trl: padding | padding_free | packing")
    parser.add_argument("--data", default="")
    parser.add_argument("--batch", default="")
    parser.add_argument("--lrs", default="1e-5,3e-5,1e-4,3e-4", help="lr: learning rates to compare")
    parser.add_argument("--lr", type=float, default=3e-4, help="autocast: the learning rate of both trainings")
    parser.add_argument("--autocast", default="off", help="worker-ours: SFTConfig.autocast (off | auto | bfloat16)")
    parser.add_argument("--epochs", type=int, default=3, help="lr: epochs of each run")
    parser.add_argument("--held-out", type=int, default=32, help="lr: held-out trajectories")
    parser.add_argument("--device", default="cpu", help="lr: where to train (the numbers do not depend on it)")
    args = parser.parse_args()
    if args.command.startswith("worker-"):
        worker = {"worker-ours": worker_ours, "worker-trl": worker_trl, "worker-check": worker_check}[args.command]
        print("WORKER_RESULT " + json.dumps(worker(args)), flush=True)
    else:
        {"speed": cmd_speed, "lr": cmd_lr, "autocast": cmd_autocast}[args.command](args)


if __name__ == "__main__":
    main()
