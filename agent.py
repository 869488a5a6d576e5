"""The agent: records, the code-as-action format, and batched rollouts of the student.

A trajectory is a multi-turn chat in the student's own chat template (METHOD.md section 2):

    system     SYSTEM_PROMPT (tools and format rules; one constant for student and teacher prompts)
    user       the task
    assistant  <first_thought> plan </first_thought>            step 1, the plan, no code
    user       Observation: None
    assistant  <thought> why </thought> <code> python </code>   step 2
    user       Observation: <stdout, or Error: ...>
    ...                                                         one step per assistant turn
    assistant  a step whose code calls final_answer(x): the episode ends after it runs

Everything here is plumbing for the method, except two rules that the method depends on and that
are marked `# METHOD:` where they are implemented:
- token exactness: a student step keeps the exact ids it sampled and their log-probs; `render_ids`
  splices those ids, never a re-tokenisation, into the conversation that training will see;
- rollouts can start from a prefix of steps (MPS continues after a teacher step, RL restarts before
  the key step), with the interpreter rebuilt by replaying the prefix's code.

The loop is generate -> parse -> execute, batched: every active episode samples its next turn in one
batched call, then all their tools run (in threads: each sandbox is its own process), then the next
turn. An episode ends at `final_answer`, at its step limit, or when its context would overflow.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

# PLUMBING: the one system prompt. Short on purpose: the CPU student has a 2048-token context.
SYSTEM_PROMPT = """You solve tasks by writing Python code, one step at a time.
First reply with a short plan: <first_thought>your plan</first_thought>
Then each reply is one step: <thought>why this step</thought> <code>python code</code>
The code runs in a Python interpreter that keeps its variables between steps. Print what you need to see.
Tools you can call in the code:
- search(query, k=3): returns the top k passages about the query, as text.
- final_answer(answer): submits the answer and ends the task.
Use exact arithmetic in code, not in your head. Call final_answer once you know the answer."""

PLAN_STOP = "</first_thought>"
ACTION_STOP = "</code>"
PLAN_FORMAT_ERROR = "Error: could not read your plan. Reply with <first_thought>your plan</first_thought>."
ACTION_FORMAT_ERROR = ("Error: could not read your step. Reply with <thought>why this step</thought> "
                       "<code>python code</code>.")


# ----------------------------------------------------------------------------------------------
# Records (DESIGN.md, Data records): plain dataclasses, one JSON line each.


@dataclass
class Step:
    """One assistant turn and what running it produced."""
    index: int  # 1-based; step 1 is the plan
    kind: str  # "plan" | "action"
    author: str  # "student" | "teacher"
    content: str  # the assistant message exactly as the model saw it in later turns
    thought: str = ""  # the plan text for a plan step
    code: str = ""  # "" for a plan or an unparseable step
    observation: str = ""  # tool output shown back to the model ("None" for a plan)
    error: bool = False  # parsing failed, or the code raised / timed out / killed its interpreter
    fatal: bool = False  # timed out or killed the interpreter: replay skips it (METHOD.md section 2)
    parse_error: bool = False  # the turn could not be parsed (it still counts as a step)
    final_answer: str | None = None  # the argument of final_answer, when the code called it
    token_ids: list[int] | None = None  # student steps: the exact sampled ids (no end-of-turn token)
    logprobs: list[float] | None = None  # student steps: log pi at temperature 1, one per id
    stop_reason: str = ""  # student steps: "stop" | "eos" | "length"
    gen_s: float = 0.0  # wall time of the batched generation call that produced this turn
    tool_s: float = 0.0  # wall time of running its code


@dataclass
class Trajectory:
    """One episode of one task."""
    task_id: str
    task_set: str
    question: str
    reference_answer: str
    steps: list[Step] = field(default_factory=list)
    final_answer: str | None = None
    finished: bool = False  # final_answer was called
    end_reason: str = ""  # "final_answer" | "max_steps" | "context"
    score: float | None = None  # the task's grader on final_answer (F1 for multi-hop, else 0/1)
    correct: bool | None = None  # score counts as correct (F1 >= 0.8 for multi-hop)
    corrections: list[dict] = field(default_factory=list)  # MPS: verdicts and teacher steps
    hard: bool = False  # MPS: no usable correction (unfinished, no verdict, ...)
    hard_reason: str = ""
    split: str = ""  # "bc" | "sft" | "rl" | "test"
    seed: int = 0
    run: str = ""  # run name and config hash that produced the record
    config_hash: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(record: dict) -> "Trajectory":
        record = dict(record)
        record["steps"] = [Step(**s) for s in record.get("steps", [])]
        names = {f.name for f in dataclasses.fields(Trajectory)}
        return Trajectory(**{k: v for k, v in record.items() if k in names})


def derive_seed(*parts) -> int:
    """A 63-bit seed from (seed, phase, task, sample, ...): explicit, reproducible randomness."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ----------------------------------------------------------------------------------------------
# The format: rendering steps and parsing turns


def format_step(kind: str, thought: str, code: str = "") -> str:
    """The assistant content for a step written by someone else (the teacher, a reference solution)."""
    if kind == "plan":
        return f"<first_thought>{thought}</first_thought>"
    return f"<thought>{thought}</thought>\n<code>\n{code}\n</code>"


def observation_message(step: Step) -> str:
    """The user turn that follows a step."""
    text = step.observation if step.observation.strip() else "(no output; print() what you need to see)"
    return f"Observation: {text}"


def _between(text: str, open_tag: str, close_tag: str) -> str | None:
    """Text after open_tag up to close_tag, or to the end when the generation stopped before it."""
    start = text.find(open_tag)
    if start < 0:
        return None
    start += len(open_tag)
    end = text.find(close_tag, start)
    return text[start:] if end < 0 else text[start:end]


FENCE = re.compile(r"```(?:python|py)?\s*\n?(.*?)(?:```|$)", re.DOTALL)


def parse_plan(text: str) -> str | None:
    """The plan text of a plan turn, or None when there is none (METHOD.md: that is an error step)."""
    plan = _between(text, "<first_thought>", PLAN_STOP)
    return plan.strip() if plan and plan.strip() else None


def parse_action(text: str) -> tuple[str, str] | None:
    """(thought, code) of an action turn, or None. Tolerates what small models emit: a missing
    <thought>, a ```python fence inside <code>, a missing </code> at the end of a generation."""
    code = _between(text, "<code>", ACTION_STOP)
    if code is None:
        return None
    fenced = FENCE.search(code)
    if "```" in code and fenced:
        code = fenced.group(1)
    code = code.strip("\n").rstrip()
    if not code.strip():
        return None
    thought = _between(text, "<thought>", "</thought>") or ""
    return thought.strip(), code


def to_messages(question: str, steps: Sequence[Step]) -> list[dict]:
    """The chat: system, task, then each step followed by its observation. The observation of a step
    that called final_answer is not shown: the episode ended there."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    for step in steps:
        messages.append({"role": "assistant", "content": step.content})
        if step.final_answer is None:
            messages.append({"role": "user", "content": observation_message(step)})
    return messages


@dataclass
class Segment:
    """A span [start, end) of rendered ids: template glue, or one message's content."""
    kind: str  # "glue" | "system" | "user" (the task) | "observation" | "assistant"
    start: int
    end: int
    step_index: int = 0  # for assistant and observation segments: the step they belong to
    author: str = ""  # for assistant segments: "student" | "teacher"


@dataclass
class Rendered:
    ids: list[int]
    segments: list[Segment]


def render_ids(tokenizer, question: str, steps: Sequence[Step], add_generation_prompt: bool = False) -> Rendered:
    """The conversation as token ids, split into segments (glue / message contents).

    METHOD: token exactness. The chat template is rendered once with placeholder contents, which
    splits it into glue strings; glue, task and observations are tokenised, and each student step
    contributes its stored sampled ids. So the prompt of every turn, and the sequence that SFT and RL
    train on, contain exactly the ids that were sampled, and decode to the template's rendering.
    """
    messages = to_messages(question, steps)
    marks = [f"\x00SCORE{i}\x00" for i in range(len(messages))]
    skeleton = tokenizer.apply_chat_template([{"role": m["role"], "content": mark} for m, mark in zip(messages, marks)],
                                             tokenize=False, add_generation_prompt=add_generation_prompt)
    glue = re.split("\x00SCORE\\d+\x00", skeleton)  # len(messages) + 1 glue strings
    if len(glue) != len(messages) + 1:
        raise ValueError("this chat template does not render each message's content once; it is not supported")
    ids: list[int] = []
    segments: list[Segment] = []

    def add(kind: str, new_ids: list[int], step_index: int = 0, author: str = "") -> None:
        segments.append(Segment(kind, len(ids), len(ids) + len(new_ids), step_index, author))
        ids.extend(new_ids)

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    step_iter = iter(steps)
    current: Step | None = None
    for i, message in enumerate(messages):
        add("glue", encode(glue[i]))
        if i == 0:
            add("system", encode(message["content"]))
        elif i == 1:
            add("user", encode(message["content"]))
        elif message["role"] == "assistant":
            current = next(step_iter)
            step_ids = list(current.token_ids) if current.token_ids is not None else encode(current.content)
            add("assistant", step_ids, current.index, current.author)
        else:
            add("observation", encode(message["content"]), current.index if current else 0)
    add("glue", encode(glue[-1]))
    return Rendered(ids=ids, segments=segments)


def render_text(tokenizer, question: str, steps: Sequence[Step], add_generation_prompt: bool = False) -> str:
    """The chat template's own rendering of the same conversation (what render_ids must decode to)."""
    return tokenizer.apply_chat_template(to_messages(question, steps), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


# ----------------------------------------------------------------------------------------------
# Rollouts


@dataclass(frozen=True)
class RolloutConfig:
    max_steps: int = 6  # steps per episode, the plan included (paper: 8)
    max_new_tokens: int = 96  # per assistant turn
    max_context_tokens: int = 2048  # prompt + turn; an episode that would overflow ends unfinished
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    timeout_s: float = 10.0  # per code step
    max_output_chars: int = 400  # observation budget shown to the model
    tool_threads: int = 4  # sandboxes run in parallel threads (each is its own process)
    reuse_kv: bool = True  # keep each episode's KV cache between turns (memory for speed; student.sample)


@dataclass
class Start:
    """Where an episode starts: a task, optionally after a prefix of finished steps."""
    task: object  # environment.tasks.Task
    seed: int
    prefix: list[Step] = field(default_factory=list)
    step_limit: int | None = None  # last step index allowed (default: RolloutConfig.max_steps)


@dataclass
class _Running:
    """An episode while rollout runs it: its start, the trajectory so far, its sandbox, its last step."""
    start: Start
    trajectory: Trajectory
    sandbox: object
    step_limit: int


def build_indexes(tasks) -> dict:
    """One BM25 index per corpus (not one per episode): corpus_id -> tools.SearchIndex."""
    from tools import SearchIndex
    indexes = {}
    for task in tasks:
        if task.corpus is not None and task.corpus_id not in indexes:
            indexes[task.corpus_id] = SearchIndex(task.corpus)
    return indexes


def replay_codes(steps: Sequence[Step]) -> list[str]:
    """METHOD: replay rule. Every earlier step's code, in order; only fatal steps are skipped."""
    return [s.code for s in steps if s.kind == "action" and s.code and not s.fatal]


def run_step(sandbox, step: Step) -> Step:
    """Execute a parsed step in its episode's sandbox and record what happened."""
    if step.kind == "plan":
        step.observation = "None"
        return step
    if step.parse_error:
        return step
    began = time.perf_counter()
    result = sandbox.run(step.code)
    step.tool_s = time.perf_counter() - began
    step.observation, step.error, step.fatal, step.final_answer = result.text, result.error, result.fatal, result.answer
    return step


def make_student_step(index: int, sample) -> Step:
    """Parse a sampled turn into a Step. An unparseable turn is a step whose observation says what
    format was expected: never an exception."""
    kind = "plan" if index == 1 else "action"
    step = Step(index=index, kind=kind, author="student", content=sample.text, token_ids=list(sample.token_ids),
                logprobs=list(sample.logprobs), stop_reason=sample.stop_reason)
    if kind == "plan":
        plan = parse_plan(sample.text)
        if plan is None:
            step.parse_error, step.error, step.observation = True, True, PLAN_FORMAT_ERROR
        else:
            step.thought = plan
        return step
    parsed = parse_action(sample.text)
    if parsed is None:
        step.parse_error, step.error, step.observation = True, True, ACTION_FORMAT_ERROR
    else:
        step.thought, step.code = parsed
    return step


def grade_trajectory(trajectory: Trajectory, task) -> None:
    from environment.graders import grade, is_correct
    trajectory.score = grade(task.grader, trajectory.final_answer, task.answer)
    trajectory.correct = is_correct(task.grader, trajectory.final_answer, task.answer)


def rollout(student, starts: Sequence[Start], config: RolloutConfig, indexes: dict | None = None,
            on_episode_end: Callable[[Trajectory], None] | None = None,
            sandbox_factory: Callable | None = None, max_active: int | None = None) -> list[Trajectory]:
    """Run every start to the end of its episode, all active episodes batched together.

    Returns the trajectories in the order of `starts`, graded. `on_episode_end` is called as each
    episode ends (progress bars, line-atomic appends).

    `max_active` bounds the episodes in flight (None: all of them). When one ends, the next waiting
    start takes its row at the next turn (continuous batching), so the batch stays full instead of
    draining to a few long episodes, as it would if the starts were cut into chunks run one after
    another. Every episode's seeds come from its own start, so which episodes share a batch does
    not change what each samples (up to float rounding of batched matmuls).
    """
    from tools import Sandbox
    indexes = indexes if indexes is not None else build_indexes([s.task for s in starts])
    make_sandbox = sandbox_factory or (lambda corpus: Sandbox(corpus=corpus, timeout_s=config.timeout_s,
                                                                max_output_chars=config.max_output_chars))
    tokenizer = student.tokenizer
    episodes: list[_Running] = []
    with ThreadPoolExecutor(max_workers=config.tool_threads) as pool:
        def open_episode(start: Start) -> _Running:
            task = start.task
            trajectory = Trajectory(task_id=task.id, task_set=task.task_set, question=task.question,
                                    reference_answer=task.answer, seed=start.seed,
                                    steps=[dataclasses.replace(s) for s in start.prefix])
            sandbox = make_sandbox(indexes.get(task.corpus_id) if task.corpus is not None else None)
            sandbox.replay(replay_codes(trajectory.steps))  # METHOD: rebuild state from the prefix
            return _Running(start, trajectory, sandbox, start.step_limit or config.max_steps)

        limit = max_active or len(starts)
        waiting = list(reversed(range(len(starts))))  # indexes of starts not opened yet, next one last
        by_index: dict[int, _Running] = {}

        def admit(active: list[_Running]) -> list[_Running]:
            """Open waiting starts into the free rows; an episode whose prefix already ended closes at once."""
            while waiting and len(active) < limit:
                picked = [waiting.pop() for _ in range(min(limit - len(active), len(waiting)))]
                opened = list(pool.map(open_episode, [starts[i] for i in picked]))
                by_index.update(zip(picked, opened))
                episodes.extend(opened)
                for e in opened:
                    if _episode_over(e):
                        _close(e, on_episode_end)
                    else:
                        active.append(e)
            return active

        try:
            active = admit([])
            while active:
                # 1. Build every active episode's prompt; end those whose context would overflow.
                prompts, ready = [], []
                for e in active:
                    prompt = render_ids(tokenizer, e.trajectory.question, e.trajectory.steps, add_generation_prompt=True).ids
                    if len(prompt) + config.max_new_tokens > config.max_context_tokens:
                        e.trajectory.end_reason = "context"
                        _close(e, on_episode_end)
                        continue
                    prompts.append(prompt)
                    ready.append(e)
                if not ready:  # every active episode overflowed its context: refill, or stop
                    active = admit([])
                    continue
                # 2. One batched generation call for all of them.
                indexes_next = [len(e.trajectory.steps) + 1 for e in ready]
                stops = [[PLAN_STOP] if i == 1 else [ACTION_STOP] for i in indexes_next]
                seeds = [derive_seed(e.start.seed, "turn", i) for e, i in zip(ready, indexes_next)]
                keys = [f"{id(e)}" for e in ready] if config.reuse_kv else None
                began = time.perf_counter()
                samples = student.sample(prompts, stops, config.max_new_tokens, config.temperature, config.top_p,
                                         seeds, keys=keys)
                gen_s = time.perf_counter() - began
                # 3. Parse each turn and run its code, sandboxes in parallel.
                steps = [make_student_step(i, s) for i, s in zip(indexes_next, samples)]
                for step in steps:
                    step.gen_s = gen_s
                steps = list(pool.map(lambda pair: run_step(pair[0].sandbox, pair[1]), zip(ready, steps)))
                # 4. Record the steps; close the episodes that ended; waiting starts take their rows.
                active = []
                for e, step in zip(ready, steps):
                    e.trajectory.steps.append(step)
                    if _episode_over(e):
                        _close(e, on_episode_end)
                        if hasattr(student, "forget"):
                            student.forget(f"{id(e)}")  # its kept keys/values are not needed again
                    else:
                        active.append(e)
                active = admit(active)
        finally:
            for e in episodes:
                e.sandbox.close()
                if hasattr(student, "forget"):
                    student.forget(f"{id(e)}")
    return [by_index[i].trajectory for i in range(len(starts))]


def _episode_over(e: _Running) -> bool:
    trajectory = e.trajectory
    if trajectory.steps and trajectory.steps[-1].final_answer is not None:
        trajectory.final_answer = trajectory.steps[-1].final_answer
        trajectory.finished, trajectory.end_reason = True, "final_answer"
        return True
    if len(trajectory.steps) >= e.step_limit:
        trajectory.end_reason = "max_steps"
        return True
    return False


def _close(e: _Running, on_episode_end) -> None:
    grade_trajectory(e.trajectory, e.start.task)
    e.sandbox.close()
    if on_episode_end is not None:
        on_episode_end(e.trajectory)
