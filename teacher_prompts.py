"""What the teacher reads and how its replies are read: the prompts, each next to the code that parses its answer.

An LLM teacher (teacher.LLMTeacher) sees a trajectory as numbered steps (`render_steps`), asks
one of three questions (VERDICT_PROMPT, STEP_PROMPT, EQUIVALENCE_PROMPT) and validates every
reply against its format, whatever the backend: `parse_verdict` (the schema of `verdict_schema`),
`parse_teacher_step` (the agent's own parsers), `parse_equivalence`, and `agent_step` for the
turns it writes as the agent. A reply that breaks its format parses to None; the caller retries.

Deviations from the paper, with reasons:
  1. A teacher's replacement step is stored in the canonical agent format (`agent.format_step` of
     the parsed thought and code), and sentences of its thought that talk about a mistake or a
     correction are dropped, so SFT never teaches the student to apologise (METHOD.md, phase 1.4).
  2. The verdict schema puts `analysis` before `first_error_step`, so an LLM reasons before it
     commits to a number; the paper's field names are kept.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

from agent import (ACTION_FORMAT_ERROR, PLAN_FORMAT_ERROR, SYSTEM_PROMPT, Step, format_step, parse_action,
                   parse_plan)


@dataclass
class Verdict:
    """The teacher's judgement of a wrong episode (METHOD.md, phase 1.3)."""
    first_error_step: int  # 1-based, 1 = the plan; 0 = "no error found" (MPS tags the episode hard)
    analysis: str  # what goes wrong there; shown back to the teacher when it writes the replacement
    suggestion: str  # what that step should do instead; recorded, never shown to the student


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
    """Drop the sentences of a thought that talk about a mistake or a correction (deviation 1).
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
