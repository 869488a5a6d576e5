"""Tests of rl.py: output normalisation, the reward table, advantages, the loss mask, the loss against a
naive per-token loop, sampling/training log-prob agreement, learning, skipped groups, KL, resume.
CPU only, offline: tiny random Llamas with the real SmolLM2 vocabulary."""
import contextlib
import copy
import dataclasses
import io
import json

import pytest
import torch

from agent import RolloutConfig, Step, Trajectory, format_step, grade_trajectory, render_ids
from environment.tasks import RefStep, Task
from conftest import make_tiny_student
import rl
from rl import (RLConfig, StartState, TrainRow, build_row, continuation_mask, group_advantages, group_rewards,
                micro_batch_loss, rollout_groups, same_signature, select_start_states, step_limit,
                train_rl)
from student import Sample, ScriptedStudent, Student, masked_token_logprobs, shared_context_logprobs, token_logprobs
from tools import ToolResult
from training import context_batches, micro_batches, pad_left, prepare_policy, rows_logprobs, update_batches

TASK = Task(id="toy-0", task_set="toy", question="What is 6 times 7?", answer="42", grader="numeric",
            solution=(RefStep("multiply"),))
RIGHT = "<thought>Multiply.</thought>\n<code>\nx = 6 * 7\nprint(x)\n</code>"  # the rewarded first step
WRONG = "<thought>Multiply.</thought>\n<code>\nx = 6 * 8\nprint(x)\n</code>"  # same length, one digit apart
ANSWER = "<thought>Done.</thought>\n<code>\nfinal_answer(x)\n</code>"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and the CPU is shared: one thread, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def enc(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def step(index, code="", observation="", author="student", kind="action", error=False, final_answer=None,
         parse_error=False, tokenizer=None):
    """A finished step as the rollout records it (student steps may carry their ids and log-probs)."""
    content = format_step(kind, "t", code) if not parse_error else "gibberish"
    ids = enc(tokenizer, content) if tokenizer is not None and author == "student" else None
    return Step(index=index, kind=kind, author=author, content=content, thought="t", code=code,
                observation=observation, error=error, parse_error=parse_error, final_answer=final_answer,
                token_ids=ids, logprobs=[-1.0] * len(ids) if ids else None)


PLAN = Step(1, "plan", "student", "<first_thought>Multiply 6 by 7.</first_thought>", thought="Multiply 6 by 7.",
            observation="None")
TEACHER = step(2, "x = 6 * 7\nprint(x)", "42\n", author="teacher")
WRONG_STEP = step(2, "x = 6 * 8\nprint(x)", "48\n")


def keystep_record(k=2, prefix=(PLAN,), teacher=TEACHER, wrong=WRONG_STEP, last=True, split="rl", task_id="toy-0"):
    as_dict = dataclasses.asdict
    return {"task_id": task_id, "task_set": "toy", "question": TASK.question, "reference_answer": "42", "split": split,
            "k": k, "prefix": [as_dict(s) for s in prefix], "teacher_step": as_dict(teacher),
            "wrong_step": as_dict(wrong), "last": last}


class InProcessSandbox:
    """A stand-in for tools.Sandbox for the scripted tests below, whose code is written by this file
    (never by a model): exec in a dict, stdout captured, errors as the sandbox formats them."""

    def __init__(self, corpus=None):
        self.namespace = {}

    def run(self, code):
        out, answer = io.StringIO(), []

        def final_answer(x):
            answer.append(str(x))
            raise StopIteration
        self.namespace["final_answer"] = final_answer
        try:
            with contextlib.redirect_stdout(out):
                exec(code, self.namespace)
        except StopIteration:
            pass
        except Exception as exc:
            return ToolResult(out.getvalue() + f"Error: {type(exc).__name__}: {exc}", True, None)
        return ToolResult(out.getvalue(), False, answer[0] if answer else None)

    def replay(self, codes):
        for code in codes:
            self.run(code)

    def close(self):
        pass


def real_sandbox(corpus):
    from tools import Sandbox
    return Sandbox(corpus=corpus, timeout_s=5)


class CandidateStudent(Student):
    """A real tiny model that may only say one of a few fixed turns. `candidates(prompt_text)` lists
    them; the model's own probabilities, renormalised over the candidates, pick one with the row's
    seeded generator. It records the model's true log pi of each sampled id, as Student.sample does,
    so the update is on-policy within the candidates."""

    def __init__(self, base: Student, candidates):
        super().__init__(base.model, base.tokenizer, base.device, name="candidates")
        self.candidates = candidates

    @torch.no_grad()
    def continuation_logprobs(self, prompt, ids) -> torch.Tensor:
        sequence = torch.tensor([list(prompt) + list(ids)], device=self.device)
        hidden = self.hidden_states(sequence)[0, len(prompt) - 1:-1]  # positions that predict `ids`
        return token_logprobs(self.lm_head(), hidden, sequence[0, len(prompt):])

    def choice_probs(self, prompt) -> torch.Tensor:
        texts = self.candidates(self.decode(prompt))
        return torch.stack([self.continuation_logprobs(prompt, self.encode(t)).sum() for t in texts]).softmax(0).cpu()

    def sample(self, prompts, stops, max_new_tokens, temperature, top_p, seeds, keys=None):
        samples = []
        for prompt, seed in zip(prompts, seeds):
            texts = self.candidates(self.decode(prompt))
            choice = int(torch.multinomial(self.choice_probs(prompt), 1, generator=torch.Generator().manual_seed(seed)))
            ids = self.encode(texts[choice])
            logprobs = self.continuation_logprobs(prompt, ids).tolist()
            samples.append(Sample(token_ids=ids, logprobs=logprobs, text=self.decode(ids), stop_reason="stop"))
        return samples


def two_way(prompt_text):
    """At the key step: RIGHT or WRONG; after it: answer with x (RIGHT ends correct, WRONG wrong)."""
    return [RIGHT, WRONG] if prompt_text.count("<|im_start|>assistant") == 2 else [ANSWER]


def start_prompt(student):
    return render_ids(student.tokenizer, TASK.question, [PLAN], add_generation_prompt=True).ids


def run_candidates(tmp_path, student, config, name="run", stop_after=None):
    return train_rl(student, [keystep_record()], {"toy-0": TASK}, config, tmp_path / name, tmp_path / name / "metrics.jsonl",
                    tmp_path / name / "samples", rollout_config=RolloutConfig(max_steps=4, max_new_tokens=32),
                    sandbox_factory=InProcessSandbox, stop_after=stop_after)


def quick(**changes) -> RLConfig:
    base = RLConfig(lr=1e-4, group_size=4, prompts_per_update=1, num_updates=4, lora=False, progress=False,
                    checkpoint_every=100, samples_every=1)
    return dataclasses.replace(base, **changes)


# ---------------------------------------------------------------------------------------------- rewards

ERROR_WRONG = step(2, "x = 6 / 0", "Error: ZeroDivisionError: division by zero (at line 1: x = 6 / 0)", error=True)
SILENT_WRONG = step(2, "x = 6 * 8", "")
ANSWER_WRONG = step(2, "final_answer(48)", "", final_answer="48")


@pytest.mark.parametrize("case,first,ends,wrong,k,expected,verdict", [
    ("teacher match, wrong answer", step(2, "y = 42.0\nprint(y)", " 42.0\n"), "41", WRONG_STEP, 2, 0.5, "teacher"),
    ("wrong-step match", step(2, "x = 48\nprint(x)", "48\n"), "41", WRONG_STEP, 2, 0.0, "wrong"),
    ("same error type, other message", step(2, "1 / 0", "Error: ZeroDivisionError: float division by zero",
                                             error=True), "41", ERROR_WRONG, 2, 0.0, "wrong"),
    ("other error type", step(2, "x[0]", "Error: NameError: name 'x' is not defined", error=True), "41",
     ERROR_WRONG, 2, 0.1, "neither"),
    ("neither", step(2, "print(7)", "7\n"), "41", WRONG_STEP, 2, 0.1, "neither"),
    ("empty signatures never match", step(2, "z = 1", ""), "41", SILENT_WRONG, 2, 0.1, "neither"),
    ("a_k answers right", step(2, "final_answer(42)", "", final_answer="42"), None, WRONG_STEP, 2, 1.0, ""),
    ("a_k answers wrong, unlike the wrong step", step(2, "final_answer(41)", "", final_answer="41"), None,
     WRONG_STEP, 2, 0.0, "answer"),
    ("a_k repeats the wrong step's wrong answer", step(2, "final_answer(48.0)", "", final_answer="48.0"), None,
     ANSWER_WRONG, 2, 0.0, "answer"),
    ("unparseable first step", step(2, parse_error=True, error=True, observation="Error: could not read"), "41",
     WRONG_STEP, 2, 0.0, "unparseable"),
    ("k = 1: outcome only", step(1, kind="plan", observation="None"), "41", WRONG_STEP, 1, 0.0, ""),
    ("unfinished after a teacher match: honest work", step(2, "print(42)", "42\n"), "unfinished", WRONG_STEP, 2,
     0.5, "teacher"),
    ("unfinished after neither", step(2, "print(7)", "7\n"), "unfinished", WRONG_STEP, 2, 0.0, "neither"),
    ("unfinished after the wrong step", step(2, "x = 48\nprint(x)", "48\n"), "unfinished", WRONG_STEP, 2, 0.0,
     "wrong"),
    ("unfinished after an unparseable step", step(2, parse_error=True, error=True, observation="Error: could not read"),
     "unfinished", WRONG_STEP, 2, 0.0, "unparseable"),
    ("correct answer, even after the wrong step", step(2, "x = 48\nprint(x)", "48\n"), "42", WRONG_STEP, 2, 1.0, ""),
])
def test_reward_table(case, first, ends, wrong, k, expected, verdict):
    """Each row of the reward table (rl.py, deviation 2). If this failed, RL would reward the wrong
    behaviour (e.g. pay a wrong answer blurted at a_k, give nothing to an unfinished episode whose a_k
    was the teacher's step, or treat a silent step as the teacher's step)."""
    start = StartState(TASK, [PLAN][:k - 1], k, TEACHER if k > 1 else PLAN, wrong if k > 1 else PLAN, "keystep")
    steps = list(start.prefix) + [first]
    if ends not in (None, "unfinished"):
        steps.append(step(len(steps) + 1, f"final_answer({ends})", "", final_answer=ends))
    trajectory = Trajectory("toy-0", "toy", TASK.question, "42", steps=steps)
    if steps[-1].final_answer is not None:
        trajectory.final_answer, trajectory.finished = steps[-1].final_answer, True
    grade_trajectory(trajectory, TASK)
    [reward] = group_rewards([trajectory], start, RLConfig())
    assert (reward.reward, reward.key_step) == (expected, verdict), case
    assert reward.correct == (expected == 1.0) and reward.finished == (ends != "unfinished")


def test_a_wrong_blurt_never_outscores_honest_work():
    """Issue 11: a_k = final_answer(wrong) was judged "neither" and paid 0.1, above a continuation that
    took the teacher's step and then ran out of steps (0). If this failed, RL would teach the student
    to guess at the key step rather than work."""
    start = StartState(TASK, [PLAN], 2, TEACHER, WRONG_STEP, "keystep")

    def reward(*steps):
        trajectory = Trajectory("toy-0", "toy", TASK.question, "42", steps=[PLAN, *steps])
        if steps[-1].final_answer is not None:
            trajectory.final_answer, trajectory.finished = steps[-1].final_answer, True
        grade_trajectory(trajectory, TASK)
        return group_rewards([trajectory], start, RLConfig())[0].reward
    blurt = reward(step(2, "final_answer(41)", "", final_answer="41"))
    honest = reward(step(2, "x = 6 * 7\nprint(x)", "42\n"), step(3, "print(x + 1)", "43\n"))  # out of steps
    different = reward(step(2, "print(7)", "7\n"), step(3, "final_answer(41)", "", final_answer="41"))
    assert (blurt, honest, different) == (0.0, 0.5, 0.1)


def test_final_answers_match_on_the_graded_answer():
    """Two final answers are the same step when the task's grader says so ("48.0" is "48"). If this
    failed, a_k could never match a teacher step that answers."""
    assert same_signature(step(2, "final_answer(48.0)", final_answer="48.0"), ANSWER_WRONG, "numeric")
    assert not same_signature(step(2, "final_answer(41)", final_answer="41"), ANSWER_WRONG, "numeric")


def test_late_key_step_leaves_room_to_answer(tokenizer):
    """Issue 11: a key step at k >= H left the continuation only a_k (step limit max(H, k)), so the
    teacher's step could never lead to an answer. Now the limit is max(H, k + steps_after_key). If
    this failed, late key steps would be unfinished by construction and earn at most the key-step part."""
    assert [step_limit(k, 6, 3) for k in (1, 2, 3, 4, 6, 9)] == [6, 6, 6, 7, 9, 12]
    prefix = [PLAN, step(2, "x = 6", "", author="teacher"), step(3, "y = 7", ""), step(4, "z = 0", "")]
    record = keystep_record(k=5, prefix=prefix, teacher=step(5, "x = 6 * 7\nprint(x)", "42\n", author="teacher"),
                            wrong=step(5, "x = 6 * 8\nprint(x)", "48\n"))
    [start] = select_start_states([record], {"toy-0": TASK}, RLConfig())
    script = lambda prompt, seed: RIGHT if prompt.count("<|im_start|>assistant") == 5 else ANSWER
    config = RLConfig(group_size=2)
    [group] = rollout_groups(ScriptedStudent(tokenizer, script), [start], 0, config,
                             RolloutConfig(max_steps=4, max_new_tokens=32), {}, InProcessSandbox)
    assert [len(t.steps) for t in group] == [6, 6] and all(t.correct for t in group)  # a_k at 5, the answer at 6
    assert [r.reward for r in group_rewards(group, start, config)] == [1.0, 1.0]


def test_outcome_ablation_and_teacher_judge():
    """reward="outcome" ignores the key step; key_step_judge="teacher" asks teacher.equivalent with the
    prefix. If this failed, the Table 3 ablation or the teacher-judged variant would be silently wrong."""
    start = StartState(TASK, [PLAN], 2, TEACHER, WRONG_STEP, "keystep")
    first = step(2, "print(42)", "42\n")
    trajectory = Trajectory("toy-0", "toy", TASK.question, "42", final_answer="41", finished=True, correct=False,
                            steps=[PLAN, first, step(3, "final_answer(41)", final_answer="41")])
    assert group_rewards([trajectory], start, RLConfig(reward="outcome"))[0].reward == 0.0

    class Judge:
        calls = []

        def equivalent(self, task, prefix, a, b):
            self.calls.append((task.id, len(prefix), b.author))
            return b.author == "student"  # "equivalent" to the wrong step only
    reward = group_rewards([trajectory], start, RLConfig(key_step_judge="teacher"), teacher=Judge())[0]
    assert (reward.reward, reward.key_step) == (0.0, "wrong")
    assert Judge.calls == [("toy-0", 1, "teacher"), ("toy-0", 1, "student")]


def test_group_advantages():
    """Mean baseline, GRPO and RLOO against hand-computed values; equal rewards give None (skipped).
    If this failed, the gradient would have the wrong sign or scale, or no-signal groups would train."""
    assert group_advantages([1.0, 0.0, 0.5, 0.5], "mean") == pytest.approx([0.5, -0.5, 0.0, 0.0])
    std = (0.125) ** 0.5  # population std of [1, 0, .5, .5]
    assert group_advantages([1.0, 0.0, 0.5, 0.5], "grpo") == pytest.approx([0.5 / std, -0.5 / std, 0.0, 0.0])
    assert group_advantages([1.0, 0.0, 0.5, 0.5], "rloo") == pytest.approx([1 - 1 / 3, -2 / 3, 0.0, 0.0])
    assert group_advantages([0.1, 0.1, 0.1, 0.1], "mean") is None
    assert group_advantages([0.0, 0.0], "grpo") is None


def test_start_states():
    """Only `last` records of the RL split start groups; the prefix excludes the teacher step and keeps
    authors; the question ablation starts from the bare task; question-only starts follow their rates.
    If this failed, RL would show the student the answer step, or train on the wrong records."""
    tasks = {f"toy-{i}": dataclasses.replace(TASK, id=f"toy-{i}") for i in range(5)}
    prefix = (PLAN, step(2, "x = 6", "", author="teacher"))
    records = [keystep_record(k=3, prefix=prefix, task_id="toy-0"), keystep_record(task_id="toy-1", last=False),
               keystep_record(task_id="toy-2", split="sft")]
    [start] = select_start_states(records, tasks, RLConfig())
    assert (start.k, [s.author for s in start.prefix], start.source) == (3, ["student", "teacher"], "keystep")
    assert start.teacher_step.code == TEACHER.code and len(start.prefix) == 2
    [question] = select_start_states(records, tasks, RLConfig(rl_start="question"))
    assert (question.prefix, question.k, question.source) == ([], 1, "question")
    episodes = [{"task_id": "toy-0", "split": "rl", "hard": True}, {"task_id": "toy-3", "split": "rl", "hard": True},
                {"task_id": "toy-4", "split": "rl", "hard": False}]
    chosen = lambda hard, other: [s.task.id for s in select_start_states(
        records, tasks, RLConfig(question_only_rate_hard=hard, question_only_rate_other=other), episodes)[1:]]
    assert chosen(1.0, 0.0) == ["toy-3"] and chosen(0.0, 1.0) == ["toy-4"] and chosen(0.0, 0.0) == []


# ---------------------------------------------------------------------------------------------- loss

def test_continuation_mask(tokenizer):
    """m = 1 exactly on the ids the student generated in this rollout (steps >= k), never on the prefix
    (student or teacher), observations, prompt or the end-of-turn token. If this failed, RL would
    push up tokens it did not sample, or the teacher's step it was not shown."""
    steps = [dataclasses.replace(PLAN, token_ids=enc(tokenizer, PLAN.content)), TEACHER,
             step(3, "print(6 * 7)", "42\n", tokenizer=tokenizer),
             step(4, "final_answer(42)", "", final_answer="42", tokenizer=tokenizer)]
    rendered = render_ids(tokenizer, TASK.question, steps)
    mask = continuation_mask(rendered, 3)
    generated = [s for s in rendered.segments if s.kind == "assistant" and s.step_index >= 3]
    expected = [0] * len(rendered.ids)
    for segment in generated:
        expected[segment.start:segment.end] = [1] * (segment.end - segment.start)
    assert mask == expected and sum(mask) == len(steps[2].token_ids) + len(steps[3].token_ids)
    assert [rendered.ids[i] for i, m in enumerate(mask) if m] == steps[2].token_ids + steps[3].token_ids
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(m == 0 for i, m in zip(rendered.ids, mask) if i == end_of_turn)
    with pytest.raises(ValueError):  # a teacher-written step can never be part of a continuation
        continuation_mask(rendered, 2)


def accumulate(student, rows, config, reference=None):
    """The update's gradient accumulation as train_rl writes it: each micro-batch's share of L with the
    update-wide N, backpropagated. Returns (L, mean k3, mean |log-prob gap|); the gradients are in .grad."""
    num_tokens = sum(sum(r.mask) for r in rows)
    loss_total, kl_total, gap_total = 0.0, 0.0, 0.0
    for micro in update_batches(rows, config):
        loss, numbers = micro_batch_loss(student, micro, num_tokens, config, reference)
        loss.backward()
        assert numbers["loss"] == float(loss.detach())
        loss_total += numbers["loss"]
        kl_total += numbers["kl"]
        gap_total += numbers["logprob_gap"]
    return loss_total, kl_total / num_tokens, gap_total / num_tokens


def naive_loss(student, rows, reference=None, kl_coef=0.0):
    """L = -(1/N) sum_i sum_t m_it A_i log pi(y_it) (+ beta k3), one token at a time over unpadded prefixes,
    backpropagated into student's .grad. Returns (L, mean k3)."""
    num_tokens = sum(sum(r.mask) for r in rows)
    naive, kl = 0.0, 0.0
    for row in rows:
        for t in range(1, len(row.ids)):
            if row.mask[t]:
                prefix = torch.tensor([row.ids[:t]])
                logp = torch.log_softmax(student.model(prefix).logits[0, -1].float(), -1)[row.ids[t]]
                k3 = torch.zeros(())
                if reference is not None:
                    with torch.no_grad():
                        ref = torch.log_softmax(reference.model(prefix).logits[0, -1].float(), -1)[row.ids[t]]
                    k3 = torch.exp(ref - logp) - (ref - logp) - 1
                naive = naive + (-row.advantage * logp + kl_coef * k3) / num_tokens
                kl += float(k3.detach()) / num_tokens
    naive.backward()
    return float(naive.detach()), kl


def assert_accumulated_is_naive(student, rows, config, reference):
    """accumulate's loss, mean k3 (non-zero) and every gradient equal those of the naive per-token loop."""
    loss, mean_kl, _ = accumulate(student, rows, config, reference)
    ours = {name: p.grad.clone() for name, p in student.model.named_parameters()}

    student.model.zero_grad()
    naive, kl = naive_loss(student, rows, reference, kl_coef=config.kl_coef)
    assert loss == pytest.approx(naive, rel=1e-5) and mean_kl == pytest.approx(kl, rel=1e-4) and kl > 0
    for name, p in student.model.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=1e-6, rtol=1e-4), name


def test_loss_matches_naive_loop(tokenizer):
    """The update's loss as train_rl accumulates it (micro_batch_loss over micro_batches: left padding,
    several micro-batches, chunked head, KL to a reference) equals an explicit per-token loop over
    unpadded prefixes: value and every gradient. If this failed, the normaliser, the masking, the
    padding or the KL term would be wrong."""
    student = make_tiny_student(tokenizer, seed=1)
    reference = make_tiny_student(tokenizer, seed=2)  # any other policy: the KL term is then non-zero
    gen = torch.Generator().manual_seed(0)
    rows = []
    for length, advantage in [(9, 0.5), (14, -1.0), (6, 0.25)]:
        ids = torch.randint(0, 1000, (length,), generator=gen).tolist()
        mask = [0] * 3 + [int(i % 3 != 0) for i in range(length - 3)]
        rows.append(TrainRow(ids, mask, advantage, [0.0] * sum(mask)))
    config = RLConfig(kl_coef=0.3, max_grad_norm=1e9, micro_batch_tokens=20, head_chunk_tokens=3)
    assert len(micro_batches(rows, config.micro_batch_tokens)) == 2  # one batch holds two padded rows
    assert_accumulated_is_naive(student, rows, config, reference)


def test_shared_context_loss_matches_naive_loop(tokenizer):
    """Rows that begin with the same context (a group's continuations after one prompt and prefix) run
    that context once (context_batches + shared_context_logprobs), and the update's loss equals the
    explicit per-token loop: value and every gradient, with KL, a chunked head, two contexts and a
    context split over two micro-batches. If this failed, sharing the context would change the
    gradient (a missing sum over rows, a position off by one, a pad token seen)."""
    student = make_tiny_student(tokenizer, seed=1)
    reference = make_tiny_student(tokenizer, seed=2)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for context_size, tails in [(7, [(5, 0.5), (9, -1.0), (2, 0.25)]), (4, [(6, 1.0), (3, -0.5)])]:
        context = torch.randint(0, 1000, (context_size,), generator=gen).tolist()
        for length, advantage in tails:
            tail_mask = [1] + [int(i % 3 != 1) for i in range(length - 1)]  # first tail token supervised
            rows.append(TrainRow(context + torch.randint(0, 1000, (length,), generator=gen).tolist(),
                                 [0] * context_size + tail_mask, advantage, [0.0] * sum(tail_mask)))
    config = RLConfig(kl_coef=0.3, max_grad_norm=1e9, micro_batch_tokens=7 + 2 * 9, head_chunk_tokens=3,
                      share_context=True)
    batches = context_batches(rows, config.micro_batch_tokens)
    assert [len(b) for b in batches] == [2, 1, 2]  # 7 + 2 x 9 fits two rows; the second context in one
    assert update_batches(rows, config) == batches
    assert update_batches(rows, dataclasses.replace(config, share_context=False)) != batches
    assert_accumulated_is_naive(student, rows, config, reference)


def test_a_short_continuation_beside_a_long_one_runs_its_context_again():
    """context_batches puts a row beside a longer one of its group only when the padding that adds
    (longest tail - its tail) is less than the context it would otherwise run again: tails 20 and 19
    after a 4-token context share it, a tail of 2 runs alone (18 padded tokens > 4 re-run)."""
    context = [5, 6, 7, 8]
    rows = [TrainRow(context + [9] * w, [0] * 4 + [1] * w, 1.0, [0.0] * w) for w in (2, 20, 19)]
    assert [[len(r.ids) - 4 for r in b] for b in context_batches(rows, 10 ** 6)] == [[20, 19], [2]]
    assert [len(b) for b in context_batches(rows, 4 + 2 * 20 - 1)] == [1, 1, 1]  # the token bound still holds


def test_rl_speed_counts_the_flops_a_forward_and_backward_run(tokenizer):
    """bench/rl_speed.py's FLOP count of an update, which it sets beside this CPU's matmul rate:
    its weight matmuls equal what torch's FLOP counter counts in one forward + backward of
    rows_logprobs (left-padded rows and a shared context; the counter sees the padding, so it is
    passed here as tokens run), and its attention pairs equal a brute count of (query, key <= query).
    If this failed, the bench's share of the matmul rate would be misstated."""
    from torch.utils.flop_counter import FlopCounterMode
    from bench.rl_speed import attention_pairs, update_flops
    student = make_tiny_student(tokenizer, seed=1)
    context = list(range(100, 107))
    rows = [TrainRow(context + list(range(200, 200 + w)), [0] * 7 + [1] * w, 1.0, [0.0] * w) for w in (5, 9, 2)]
    for config, tokens_run in [(RLConfig(head_chunk_tokens=4), 3 * 16),  # left-padded to the longest row
                               (RLConfig(head_chunk_tokens=4, share_context=True), 7 + 3 * 9)]:  # context once
        student.model.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as counter:
            rows_logprobs(student, rows, config).sum().backward()
        counted = counter.get_flop_counts()["Global"]
        supervised = sum(sum(r.mask[1:]) for r in rows)  # position t predicts a supervised token t + 1
        assert sum(counted.values()) == update_flops(student.model, tokens_run, 0, supervised)
    brute = sum(q + 1 for r in rows for q in range(len(r.ids)))
    assert attention_pairs(rows, 0) == brute
    assert attention_pairs(rows, 7) == brute - 2 * sum(q + 1 for q in range(7))  # the context's pairs once


@pytest.mark.parametrize("share_context", [True, False])
def test_train_rl_update_is_the_naive_gradient_of_its_rows(tokenizer, tmp_path, monkeypatch, share_context):
    """One update of train_rl itself (lr 0, so the weights stay where the gradient was taken) leaves in
    .grad the gradient of the naive per-token loss over the rows it built, with N = their supervised
    tokens, and logs that loss. If this failed, train_rl's loop would use another normaliser, drop a
    micro-batch, or train on rows other than the continuations it sampled."""
    stall = "<thought>Look.</thought>\n<code>\nprint(x)\n</code>"  # after WRONG: steps until the limit

    def uneven(text):  # RIGHT then the answer (2 steps), or WRONG then stalling (4 steps): rows of two lengths
        if text.count("<|im_start|>assistant") == 2:
            return [RIGHT, WRONG]
        return [stall] if "48" in text else [ANSWER]
    built = []
    real_build_row = rl.build_row
    monkeypatch.setattr(rl, "build_row", lambda *a: built.append(real_build_row(*a)) or built[-1])
    student = CandidateStudent(make_tiny_student(tokenizer, seed=9), uneven)
    config = quick(num_updates=1, group_size=8, lr=0.0, max_grad_norm=1e9, kl_coef=0.3, head_chunk_tokens=5,
                   micro_batch_tokens=1500, share_context=share_context)
    run_candidates(tmp_path, student, config)
    [record] = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    batches = update_batches(built, config)
    assert record["rl/skipped_groups"] == 0 and len(built) == 8 and len({len(r.ids) for r in built}) == 2
    assert len(batches) > 1 and any(len({len(r.ids) for r in b}) > 1 for b in batches)  # several batches, uneven rows
    ours = {name: p.grad.clone() for name, p in student.model.named_parameters()}

    student.model.zero_grad()
    reference = make_tiny_student(tokenizer, seed=9)  # the policy the update started from: KL 0
    naive, kl = naive_loss(student, built, reference, kl_coef=0.3)
    assert record["rl/loss"] == pytest.approx(naive, rel=1e-5) and record["rl/kl"] == pytest.approx(kl, abs=1e-7)
    assert record["rl/supervised_tokens"] == sum(sum(r.mask) for r in built)
    for name, p in student.model.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=1e-6, rtol=1e-4), name


def test_sampling_logprobs_match_training_forward(tokenizer):
    """The log-probs Student.sample recorded (KV cache, batched) equal those of the training forward pass
    over the rendered RL episodes, left-padded together in micro-batches. If this failed, the update
    would be off-policy without knowing it (wrong ids, wrong positions, or a padding leak)."""
    student = make_tiny_student(tokenizer, seed=3)
    prefix_3 = (PLAN, step(2, "x = 6 * 7\nprint(x)", "42\n", author="teacher"))
    starts = select_start_states([keystep_record(), keystep_record(k=3, prefix=prefix_3, task_id="toy-1")],
                                 {"toy-0": TASK, "toy-1": dataclasses.replace(TASK, id="toy-1")}, RLConfig())
    groups = rollout_groups(student, starts, 0, RLConfig(group_size=2), RolloutConfig(max_steps=4, max_new_tokens=10),
                            {}, real_sandbox)
    rows = [build_row(tokenizer, t, s.k, 1.0) for s, g in zip(starts, groups) for t in g]
    assert all(len(t.steps) - s.k + 1 >= 2 for s, g in zip(starts, groups) for t in g)  # multi-turn continuations
    batches = micro_batches(rows, len(rows) * max(len(r.ids) for r in rows))
    assert len(batches) == 1 and len({len(r.ids) for r in rows}) > 1  # one batch, really left-padded
    for batch in batches:
        ids, attention, positions, mask = pad_left(batch, student.pad_id, student.device)
        with torch.no_grad(), student.compute():
            trained = masked_token_logprobs(student.model, ids, mask, attention, positions, chunk_tokens=7)
        sampled = torch.tensor([lp for r in batch for lp in r.sampled_logprobs])
        assert trained.shape == sampled.shape and torch.allclose(trained, sampled, atol=1e-4)
    shared = context_batches(rows, 10 ** 6)  # each start's group, its prompt and prefix run once
    assert len(shared) == len(starts) and all(len(b) == 2 for b in shared)
    for batch in shared:
        size = batch[0].mask.index(1)
        with torch.no_grad(), student.compute():
            trained = shared_context_logprobs(student.model, batch[0].ids[:size], [r.ids[size:] for r in batch],
                                              [r.mask[size:] for r in batch], chunk_tokens=7)
        sampled = torch.tensor([lp for r in batch for lp in r.sampled_logprobs])
        assert trained.shape == sampled.shape and torch.allclose(trained, sampled, atol=1e-4)


# ---------------------------------------------------------------------------------------------- the loop

def test_learning_raises_the_rewarded_first_step(tokenizer, tmp_path):
    """A tiny random model chooses between two fixed key steps of the same length; only RIGHT leads to
    the correct answer. Over 30 updates its probability must rise clearly. If this failed, the
    policy gradient would have the wrong sign or not reach the weights."""
    student = CandidateStudent(make_tiny_student(tokenizer, seed=4), two_way)
    before = float(student.choice_probs(start_prompt(student))[0])
    run_candidates(tmp_path, student, quick(num_updates=30, samples_every=10))
    after = float(student.choice_probs(start_prompt(student))[0])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 30 and metrics[0]["rl/skipped_groups"] == 0
    assert after - before > 0.2, (before, after)  # measured: 0.60 -> 0.89
    assert metrics[-1]["rl/reward_mean"] > metrics[0]["rl/reward_mean"]


def test_zero_variance_groups_are_skipped(tokenizer, tmp_path):
    """A random tiny model never calls final_answer: every reward is 0, so every group is skipped
    (counted), no step is taken and the weights stay as they were. Also: a record with k > H still
    gets its key step and steps_after_key more (deviation 3: step limit max(H, k + steps_after_key)).
    If this failed, no-signal groups would add noise or crash."""
    student = make_tiny_student(tokenizer, seed=5)
    before = {n: p.detach().clone() for n, p in student.model.named_parameters()}
    prefix_3 = (PLAN, step(2, "x = 6 * 7\nprint(x)", "42\n", author="teacher"))
    records = [keystep_record(k=3, prefix=prefix_3), keystep_record(task_id="toy-1")]
    tasks = {"toy-0": TASK, "toy-1": dataclasses.replace(TASK, id="toy-1")}
    config = quick(group_size=3, prompts_per_update=2, num_updates=1, steps_after_key=1)
    summary = train_rl(student, records, tasks, config, tmp_path,
                       tmp_path / "metrics.jsonl", tmp_path / "samples",
                       rollout_config=RolloutConfig(max_steps=2, max_new_tokens=6), sandbox_factory=real_sandbox)
    [record] = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["rl/skipped_groups"] == 2 and record["rl/reward_mean"] == 0.0 and record["rl/loss"] is None
    assert record["rl/share_unfinished"] == 1.0 and summary["finished"]
    assert all(torch.equal(before[n], p) for n, p in student.model.named_parameters())
    [sample] = [json.loads(p.read_text()) for p in (tmp_path / "samples").iterdir()]
    k = sample["k"]
    # H = 2: k = 3 runs to step max(2, 3 + 1) = 4, k = 2 to step max(2, 2 + 1) = 3
    assert all([s["index"] for s in c["steps"]] == [k, k + 1] for c in sample["continuations"])


def test_kl_is_zero_at_first_update_with_a_fresh_adapter(tokenizer, tmp_path):
    """With LoRA, the SFT adapter is merged and a fresh adapter trained: "adapter disabled" must be the
    SFT policy, so the KL at the first update is exactly 0 (and then grows). If this failed, the KL
    would pull towards the wrong model (e.g. the base without SFT)."""
    sft = make_tiny_student(tokenizer, seed=6)
    sft.attach_lora(rank=4, alpha=8)
    with torch.no_grad():  # a trained-looking SFT adapter: B != 0, so merging really matters
        for name, p in sft.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    probe = torch.tensor([start_prompt(sft)])
    with torch.no_grad():
        sft_logits = sft.model(probe).logits
    merged = copy.deepcopy(sft)
    use_lora, _, reference = prepare_policy(merged, RLConfig(lora_rank=4, lora_alpha=8))
    with torch.no_grad(), merged.model.disable_adapter():
        assert use_lora and reference is None and torch.allclose(merged.model(probe).logits, sft_logits, atol=1e-4)

    student = CandidateStudent(sft, two_way)
    run_candidates(tmp_path, student, quick(kl_coef=0.1, lora=None, lora_rank=4, lora_alpha=8, lr=1e-2, num_updates=3))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["rl/kl"] == 0.0 and metrics[0]["rl/logprob_gap"] < 1e-5
    assert any(m["rl/kl"] and m["rl/kl"] > 0 for m in metrics[1:])


def test_resume_gives_the_same_weights(tokenizer, tmp_path):
    """4 updates straight == 2 updates, a new process-like restart from the checkpoint, 2 more: same
    weights and the same metrics lines, none repeated; re-running a finished run restores its weights.
    If this failed, an interrupted run would train on a different batch order, lose optimiser state,
    or log an update twice."""
    straight = CandidateStudent(make_tiny_student(tokenizer, seed=7), two_way)
    run_candidates(tmp_path, straight, quick(group_size=8), name="straight")
    first = CandidateStudent(make_tiny_student(tokenizer, seed=7), two_way)
    assert not run_candidates(tmp_path, first, quick(group_size=8), name="resumed", stop_after=2)["finished"]
    second = CandidateStudent(make_tiny_student(tokenizer, seed=7), two_way)  # the SFT weights again
    assert run_candidates(tmp_path, second, quick(group_size=8), name="resumed")["finished"]
    for (name, a), b in zip(straight.model.named_parameters(), second.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    again = CandidateStudent(make_tiny_student(tokenizer, seed=7), two_way)  # a finished run only restores
    assert run_candidates(tmp_path, again, quick(group_size=8), name="resumed").get("restored")
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(straight.model.parameters(), again.model.parameters()))
    lines = {run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
             for run in ("straight", "resumed")}
    assert [m["rl/update"] for m in lines["resumed"]] == [1, 2, 3, 4]
    assert all(m["rl/loss"] is not None for m in lines["resumed"])  # every update really stepped
    drop_times = lambda m: {k: v for k, v in m.items() if not k.endswith("_s")}
    assert [drop_times(m) for m in lines["resumed"]] == [drop_times(m) for m in lines["straight"]]


def test_autocast_samples_and_trains_in_the_same_dtype(tokenizer):
    """RLConfig.autocast="bfloat16": prepare_policy makes sampling and the update compute in bf16 over
    fp32 weights (the weights stay fp32, the step updates them), and the on-policy gap between the
    log-probs recorded at sampling and those of the update stays small; "off" keeps fp32 exactly.
    If this failed, bf16 RL would train on log-probs of a different policy than the one it sampled."""
    gaps = {}
    for setting in ("off", "bfloat16"):
        student = make_tiny_student(tokenizer, seed=8)
        config = RLConfig(autocast=setting, lora=False, group_size=2, prompts_per_update=2)
        _, params, _ = prepare_policy(student, config)
        assert student.autocast_dtype == (None if setting == "off" else torch.bfloat16)
        assert all(p.dtype == torch.float32 for p in params)
        starts = select_start_states([keystep_record()], {"toy-0": TASK}, config)
        groups = rollout_groups(student, starts, 0, config, RolloutConfig(max_steps=3, max_new_tokens=12), {},
                                InProcessSandbox)
        rows = [build_row(tokenizer, t, s.k, 1.0 if i % 2 else -1.0) for s, g in zip(starts, groups)
                for i, t in enumerate(g)]
        before = [p.detach().clone() for p in params]
        optimizer = torch.optim.SGD(params, lr=0.1)
        _, _, gaps[setting] = accumulate(student, rows, config)
        optimizer.step()
        assert any(not torch.equal(a, p) for a, p in zip(before, params))  # the fp32 weights moved
    assert gaps["off"] < 1e-5 and gaps["bfloat16"] < 1e-2, gaps
    with pytest.raises(ValueError, match="autocast"):
        prepare_policy(make_tiny_student(tokenizer), RLConfig(autocast="fp8", lora=False))
