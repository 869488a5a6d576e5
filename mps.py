"""Phase 1, Mentored Problem Solving (MPS), and phase 0's data: the teacher steps in at the first error.

    python score.py mps --n 16        # student rollouts, teacher verdicts and one-step corrections
    python score.py bc --n 16         # phase 0 data: the teacher solves the BC share itself

For every task of the SFT and RL halves (METHOD.md section 3, phase 1):
  1. the student rolls out alone;
  2. unfinished -> tagged hard, not corrected; finished and correct -> kept as it is;
  3. finished and wrong -> the teacher, who sees the reference answer, names the first critical
     error k (1-based; 1 = the plan);
  4. the teacher writes ONE replacement for step k, as a fresh attempt;
  5. the interpreter is rebuilt by replaying steps 1..k-1, then the teacher step runs;
  6. the student continues from prefix + teacher step with a fresh step budget;
  7. 2-6 repeat up to `max_corrections` times; a later verdict must point after the last teacher step;
  8. a correction is valid only if the episode finally ends correct with its teacher step still in
     the trajectory. Each valid correction yields a key-step record; RL uses the last one. A teacher
     step that itself answers ends the episode; a wrong answer there is tagged hard (step 7 allows no
     verdict at or before it, so no correction can follow).

Deviations from the paper, with reasons:
  1. Replay from a fresh interpreter before the teacher step (the paper's code kept the interpreter
     state of the discarded steps, so variables of a wrong continuation leaked into the corrected one).
  2. Grading is programmatic wherever the task allows; the paper spent a teacher call on every
     judgement of answer equivalence.
  3. Rounds are batched: every active episode advances together (one batched generation per turn),
     and the teacher handles the finished-wrong ones between rounds. Same protocol, less wall time.

A teacher that stops answering (teacher.TeacherUnavailable: its server down after the retries) gives
no verdict, and its fault is never tagged hard: the episode in flight is not recorded, the episodes
of the round that need no teacher still are, and the phase stops with the fault; the same command
then runs the unrecorded episodes again.

Files (DESIGN.md): mps.jsonl (every episode with every verdict and correction, valid or not; resumable
by task id), then, derived from it once the phase is complete: sft.jsonl (the SFT half's correct final
trajectories) and keysteps.jsonl (one record per valid correction).
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from agent import RolloutConfig, Start, Step, Trajectory, derive_seed, replay_codes, rollout
from config import MPSConfig  # this phase's settings (config.py: every option's one home)
from teacher import TeacherUnavailable


# ----------------------------------------------------------------------------------------------
# The split (METHOD.md, Split)


def unit_hash(text: str) -> float:
    """A number in [0, 1) fixed by the text: the same on every machine and run (Python's hash() is salted)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") / 2 ** 64


def assign_split(task_id: str, seed: int, bc_fraction: float) -> str:
    """Deterministic by a hash of (task id, seed): first the BC share, then the rest 50/50 into SFT and RL."""
    u = unit_hash(f"{task_id}|{seed}")  # uniform in [0, 1)
    if u < bc_fraction:
        return "bc"
    return "sft" if (u - bc_fraction) / (1 - bc_fraction) < 0.5 else "rl"


# ----------------------------------------------------------------------------------------------
# METHOD: one correction


@dataclass
class _Episode:
    task: object
    trajectory: Trajectory  # the current trajectory (prefix + teacher steps + student continuation)
    split: str
    seed: int
    done: bool = False


def hard(trajectory: Trajectory, reason: str) -> None:
    trajectory.hard, trajectory.hard_reason = True, reason


def run_teacher_step(task, prefix: Sequence[Step], step: Step, sandbox_factory: Callable) -> Step:
    """METHOD: replay steps 1..k-1 in a FRESH interpreter, then run the teacher step and record what it
    printed. The discarded steps' state never leaks into the corrected episode (deviation 1)."""
    from agent import run_step
    with sandbox_factory(task) as sandbox:
        sandbox.replay(replay_codes(prefix))
        return run_step(sandbox, step)


def correct_once(episode: _Episode, teacher, config: MPSConfig, max_steps: int,
                 sandbox_factory: Callable) -> Start | None:
    """Ask the teacher about a finished-wrong episode. Returns where the student resumes, or None
    when the episode is tagged hard (the reason is recorded on the trajectory)."""
    trajectory, task = episode.trajectory, episode.task
    if len(trajectory.corrections) >= config.max_corrections:
        hard(trajectory, "still wrong after max corrections")
        return None
    verdict = teacher.verdict(trajectory, task.answer)
    n = len(trajectory.steps)
    if verdict is None:
        hard(trajectory, "no usable verdict")
        return None
    k = verdict.first_error_step
    last_teacher = max([s.index for s in trajectory.steps if s.author == "teacher"], default=0)
    record = {"k": k, "verdict": dataclasses.asdict(verdict), "teacher_step": None, "wrong_step": None,
              "discarded": [], "valid": False}
    trajectory.corrections.append(record)
    if k == 0:
        hard(trajectory, "teacher found no error in a wrong episode")
        return None
    if not 1 <= k <= n:
        hard(trajectory, "first_error_step out of range")
        return None
    if k <= last_teacher:  # a verdict may not blame a step at or before an earlier correction
        hard(trajectory, "first_error_step not after the last teacher step")
        return None
    prefix, wrong = trajectory.steps[:k - 1], trajectory.steps[k - 1]
    replacement = teacher.replacement_step(task, list(prefix), wrong, verdict)
    if replacement is None or replacement.index != k:
        hard(trajectory, "no usable replacement step")
        return None
    replacement = run_teacher_step(task, prefix, replacement, sandbox_factory)
    record.update(teacher_step=dataclasses.asdict(replacement), wrong_step=dataclasses.asdict(wrong),
                  discarded=[dataclasses.asdict(s) for s in trajectory.steps[k - 1:]])
    # The student continues from prefix + teacher step, with a fresh budget of steps after it.
    return Start(task=task, seed=derive_seed(episode.seed, "continue", len(trajectory.corrections)),
                 prefix=list(prefix) + [replacement], step_limit=k + max_steps)


def mark_validity(trajectory: Trajectory) -> None:
    """METHOD: a correction is valid only if the episode ends correct and its teacher step is still there."""
    for record in trajectory.corrections:
        step = record.get("teacher_step")
        record["valid"] = bool(
            trajectory.correct and step is not None and step["index"] <= len(trajectory.steps)
            and trajectory.steps[step["index"] - 1].author == "teacher"
            and trajectory.steps[step["index"] - 1].content == step["content"])


def keystep_records(trajectory: Trajectory) -> list[dict]:
    """One key-step record per valid correction; the last one is marked for RL (as the paper's code)."""
    valid = [r for r in trajectory.corrections if r["valid"]]
    records = []
    for i, record in enumerate(valid):
        k = record["k"]
        records.append({
            "task_id": trajectory.task_id, "task_set": trajectory.task_set, "question": trajectory.question,
            "reference_answer": trajectory.reference_answer, "split": trajectory.split, "k": k,
            "prefix": [dataclasses.asdict(s) for s in trajectory.steps[:k - 1]],  # each with its author
            "teacher_step": record["teacher_step"], "wrong_step": record["wrong_step"],
            "last": i == len(valid) - 1, "run": trajectory.run, "config_hash": trajectory.config_hash})
    return records


# ----------------------------------------------------------------------------------------------
# The phase: rounds of batched rollouts, teacher corrections in between


def run_mps(student, teacher, tasks: Sequence, splits: dict[str, str], rollout_config: RolloutConfig,
            config: MPSConfig, sandbox_factory: Callable, on_episode_done: Callable[[Trajectory], None],
            indexes: dict | None = None, on_round: Callable[[int, int], None] | None = None,
            max_active: int | None = None) -> list[Trajectory]:
    """Run MPS on `tasks` (split: task id -> "sft" | "rl"). `sandbox_factory(corpus)` opens a sandbox
    (corpus: a search index or None). Each episode goes to `on_episode_done` as soon as it is final
    (the caller appends it to mps.jsonl). TeacherUnavailable is raised after the round it struck in:
    the episodes that round finished without the teacher are passed on first; the one in flight and
    the ones waiting for a correction are not, so a rerun does them again. `max_active` bounds the
    episodes in flight (agent.rollout's continuous batching; None: all of a round at once)."""
    from agent import build_indexes
    indexes = indexes if indexes is not None else build_indexes(tasks)

    def open_sandbox(task):
        return sandbox_factory(indexes.get(task.corpus_id) if task.corpus is not None else None)

    episodes = {t.id: _Episode(task=t, trajectory=None, split=splits[t.id],
                               seed=derive_seed(config.seed, "mps", t.id)) for t in tasks}
    starts = [Start(task=e.task, seed=e.seed) for e in episodes.values()]
    finished: list[Trajectory] = []
    round_index = 0
    fault: TeacherUnavailable | None = None  # set when the teacher goes down; raised at the end of that round
    while starts:
        if on_round is not None:
            on_round(round_index, len(starts))
        # 1. All active episodes advance together (one batched generation per turn).
        results = rollout(student, starts, rollout_config, indexes=indexes,
                          sandbox_factory=sandbox_factory, max_active=max_active)
        next_starts = []
        for start, trajectory in zip(starts, results):
            episode = episodes[start.task.id]
            if episode.trajectory is not None:  # keep the record of earlier corrections
                trajectory.corrections = episode.trajectory.corrections
            trajectory.split = episode.split
            episode.trajectory = trajectory
            # 2. Unfinished: hard, never corrected. Correct: done.
            if not trajectory.finished:
                hard(trajectory, f"unfinished ({trajectory.end_reason})")
            elif not trajectory.correct:
                if fault is not None:  # PLUMBING: the teacher is down: not asked again, nothing recorded
                    continue
                # 3-6. Finished and wrong: the teacher's verdict and one replacement step.
                try:
                    resume = correct_once(episode, teacher, config, rollout_config.max_steps,
                                          open_sandbox)
                except TeacherUnavailable as error:
                    # A fault, not a verdict: no hard tag, no record (a correction may be half-made).
                    # The rest of the round is still recorded where it needs no teacher.
                    fault = error
                    continue
                if resume is not None:
                    teacher_step = resume.prefix[-1]
                    if teacher_step.final_answer is not None:  # the teacher step itself ended the episode
                        trajectory.steps = list(resume.prefix)
                        trajectory.final_answer, trajectory.finished = teacher_step.final_answer, True
                        trajectory.end_reason = "final_answer"
                        from agent import grade_trajectory
                        grade_trajectory(trajectory, episode.task)
                        if not trajectory.correct:  # nothing after the teacher step is left to blame
                            hard(trajectory, "teacher step answered wrong")
                    else:
                        next_starts.append(resume)
                        continue
            # 8. The episode is final: mark which corrections are valid.
            mark_validity(trajectory)
            finished.append(trajectory)
            on_episode_done(trajectory)
        if fault is not None:  # the episodes waiting for a next round stay unrecorded: a rerun redoes them
            raise fault
        starts = next_starts
        round_index += 1
    return finished


def derive_outputs(trajectories: Sequence[Trajectory], config: MPSConfig) -> tuple[list[dict], list[dict]]:
    """From the final episodes: (sft records, key-step records). Deterministic, so a resumed phase
    derives exactly the same files."""
    sft, keysteps = [], []
    for trajectory in sorted(trajectories, key=lambda t: t.task_id):
        if trajectory.correct:
            corrected = any(r["valid"] for r in trajectory.corrections)
            keep = corrected or random.Random(derive_seed(config.seed, "keep", trajectory.task_id)).random() < config.keep_correct_rate
            if trajectory.split == "sft" and keep:
                sft.append(trajectory.to_dict())
        keysteps.extend(keystep_records(trajectory))
    return sft, keysteps


def diagnostics(trajectories: Sequence[Trajectory]) -> dict:
    """Shares solved alone / corrected / hard (with reasons), first-error histogram, corrections per episode."""
    n = len(trajectories)
    alone = sum(1 for t in trajectories if t.correct and not t.corrections)
    corrected = sum(1 for t in trajectories if t.correct and any(r["valid"] for r in t.corrections))
    hard_reasons = Counter(t.hard_reason for t in trajectories if t.hard)
    wrong_unhard = sum(1 for t in trajectories if not t.correct and not t.hard)
    return {
        "episodes": n, "solved_alone": alone, "corrected": corrected, "hard": sum(hard_reasons.values()),
        "wrong_not_hard": wrong_unhard, "hard_reasons": dict(hard_reasons),
        "first_error_histogram": dict(sorted(Counter(r["k"] for t in trajectories for r in t.corrections).items())),
        "corrections_per_episode": dict(sorted(Counter(len(t.corrections) for t in trajectories).items())),
        "valid_corrections": sum(r["valid"] for t in trajectories for r in t.corrections),
        # A few corrections to read: the wrong step and the teacher's step, side by side in the records.
        "examples": [{"task_id": t.task_id, "k": r["k"], "analysis": r["verdict"]["analysis"],
                      "wrong_code": (r["wrong_step"] or {}).get("code") or (r["wrong_step"] or {}).get("content"),
                      "teacher_code": (r["teacher_step"] or {}).get("code") or (r["teacher_step"] or {}).get("content"),
                      "valid": r["valid"]}
                     for t in trajectories for r in t.corrections if r["teacher_step"]][:3],
    }
