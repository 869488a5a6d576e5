"""Does a training phase make the student repeat itself? Score the repeated actions of an evaluation
under several checkpoints, at the very states where the evaluated student repeated.

    python bench/step_entropy.py --episodes runs/cmp/s2-score/eval/sft.jsonl --task-set lookup \
        runs/cmp/s2-score/checkpoints/bc runs/cmp/s2-score/checkpoints/sft

For every episode of the task set whose code repeats an earlier action verbatim, the first such step
is taken with the state before it (question and the steps before, exactly as sampled). Each
checkpoint then reads that step teacher-forced (fp32, CPU) and reports, over all such steps:
- `greedy`: the share of steps it would write itself under greedy decoding (every token its argmax);
- `logprob/token`: the mean log pi of the step's tokens;
- `entropy`: the mean entropy (nats) of its next-token distribution over the step's positions;
and the same entropy over the first action step of every episode of the set (`first-step entropy`),
a state every checkpoint meets. A phase that sharpens the policy onto its own steps shows as lower
entropy and a higher greedy share at the repeat states. Prints `RESULT name=value` lines last.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def states(episodes: list[dict], task_set: str) -> tuple[list, list]:
    """(repeat states, first-step states): each (question, steps before, the step's sampled ids)."""
    from training import step_from_dict
    repeats, firsts = [], []
    for episode in episodes:
        if episode["task_set"] != task_set:
            continue
        steps = [step_from_dict(s) for s in episode["steps"]]
        actions = [i for i, s in enumerate(steps) if s.kind == "action" and s.token_ids]
        if actions:
            firsts.append((episode["question"], steps[:actions[0]], steps[actions[0]].token_ids))
        seen = set()
        for i in actions:
            if steps[i].code and steps[i].code in seen:
                repeats.append((episode["question"], steps[:i], steps[i].token_ids))
                break
            seen.add(steps[i].code)
    return repeats, firsts


def score(student, state) -> dict:
    """Teacher-forced read of one step: greedy (all argmax), mean log-prob, mean entropy."""
    import torch
    from agent import render_ids
    question, before, target = state
    prompt = render_ids(student.tokenizer, question, before, add_generation_prompt=True).ids
    ids = torch.tensor([prompt + list(target)])
    with torch.no_grad():
        logits = student.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()  # (len(target), V)
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(1, torch.tensor(target).unsqueeze(1)).squeeze(1)
    entropy = -(logp.exp() * logp).sum(-1)
    return {"greedy": bool((logits.argmax(-1) == torch.tensor(target)).all()),
            "logprob": float(chosen.mean()), "entropy": float(entropy.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="student checkpoints (or presets) to compare")
    parser.add_argument("--episodes", required=True, help="an evaluation's eval/<label>.jsonl")
    parser.add_argument("--task-set", default="lookup")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from student import load_student
    episodes = [json.loads(line) for line in open(args.episodes)]
    repeats, firsts = states(episodes, args.task_set)
    print(f"{args.episodes}: {len(repeats)} {args.task_set} episodes repeat an action; {len(firsts)} first steps")
    if not repeats:
        raise SystemExit("no repeated action to score")
    print(f"{'checkpoint':<60}{'greedy':>8}{'logprob/token':>15}{'entropy':>9}{'first-step entropy':>20}")
    for path in args.checkpoints:
        student = load_student(path, device="cpu", dtype="float32", threads=args.threads)
        student.model.eval()
        at_repeat = [score(student, s) for s in repeats]
        at_first = [score(student, s) for s in firsts]
        name = Path(path).name or path
        greedy = sum(r["greedy"] for r in at_repeat) / len(at_repeat)
        logprob = statistics.mean(r["logprob"] for r in at_repeat)
        entropy = statistics.mean(r["entropy"] for r in at_repeat)
        first = statistics.mean(r["entropy"] for r in at_first)
        print(f"{path:<60}{greedy:>8.2f}{logprob:>15.3f}{entropy:>9.3f}{first:>20.3f}", flush=True)
        print(f"RESULT {name}_repeat_greedy_share={greedy:.2f}")
        print(f"RESULT {name}_repeat_logprob_per_token={logprob:.3f}")
        print(f"RESULT {name}_repeat_entropy={entropy:.3f}")
        print(f"RESULT {name}_first_step_entropy={first:.3f}")


if __name__ == "__main__":
    main()
