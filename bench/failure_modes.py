"""How a student's test episodes fail, read from a run's eval/<label>.jsonl files: the two failure
modes that separate imitation from SCoRe in bench/RESULTS.md (remedies 3 and 4).

- arith, made-up intermediates: the episode's code binds a number (`total = 360`) that the
  plan stated and the question does not hold, i.e. it copies a value it never computed. A teacher
  that knows intermediate results (--teacher-knowledge) states them; a student that imitates it
  states numbers too, without knowing them.
- lookup, answering and looping: how many episodes answer, how many of those answers are right,
  and how many unfinished episodes repeat an action verbatim (the same search again and again
  until the steps run out).

    python bench/failure_modes.py runs/cmp/s1-imitation/eval/bc.jsonl runs/cmp/s1-score/eval/rl.jsonl

Prints one line per file and task set.
"""
from __future__ import annotations

import json
import re
import sys
from collections import defaultdict

NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
BOUND_NUMBER = re.compile(r"^\s*\w+\s*=\s*(\d+(?:\.\d+)?)\s*$", re.M)  # a line `name = 360`


def made_up_number(episode: dict) -> bool:
    """The student's code binds a number its plan stated that is not in the question."""
    plan = next((s.get("thought") or "" for s in episode["steps"] if s["kind"] == "plan"), "")
    stated = set(NUMBER.findall(plan)) - set(NUMBER.findall(episode["question"]))
    code = "\n".join(s.get("code") or "" for s in episode["steps"]
                     if s["kind"] == "action" and s["author"] == "student")
    return any(value in stated for value in BOUND_NUMBER.findall(code))


def repeats_an_action(episode: dict) -> bool:
    codes = [(s.get("code") or "").strip() for s in episode["steps"] if s["kind"] == "action"]
    codes = [c for c in codes if c]
    return len(codes) != len(set(codes))


def summarise(path: str) -> list[str]:
    by_set = defaultdict(list)
    with open(path) as f:
        for line in f:
            if line.strip():
                episode = json.loads(line)
                by_set[episode["task_set"]].append(episode)
    lines = []
    for name, episodes in sorted(by_set.items()):
        n = len(episodes)
        right = sum(bool(e["correct"]) for e in episodes)
        answered = [e for e in episodes if e.get("final_answer") is not None]
        unfinished = [e for e in episodes if not e.get("finished")]
        text = f"{path} {name}: n {n}, correct {right}"
        if name.startswith("arith"):
            made_up = [e for e in episodes if made_up_number(e)]
            text += f"; code binds a number the plan made up: {len(made_up)} ({sum(bool(e['correct']) for e in made_up)} correct)"
        text += (f"; answered {len(answered)} ({sum(bool(e['correct']) for e in answered)} correct); unfinished "
                 f"{len(unfinished)}, of which repeat an action verbatim {sum(map(repeats_an_action, unfinished))}")
        lines.append(text)
    return lines


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.split("\n\n")[2].strip())
        return 2
    for path in paths:
        try:
            print("\n".join(summarise(path)))
        except (OSError, ValueError, KeyError) as error:
            print(f"error: {path}: {error}")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
