"""The agent core: records, the step parser, token-exact rendering, batched rollouts (METHOD.md section 2)."""
import json
import re

import torch
from hypothesis import given, settings, strategies as st

from agent import (ACTION_FORMAT_ERROR, PLAN_FORMAT_ERROR, RolloutConfig, Start, Step, Trajectory, derive_seed,
                   format_step, make_student_step, parse_action, parse_plan, render_ids, render_text, rollout,
                   to_messages)
from environment.tasks import RefStep, Task
from student import Sample, ScriptedStudent


# ---------------------------------------------------------------------------------------------- parser

def test_parse_plan():
    """The plan turn: text inside <first_thought>, a missing closing tag tolerated, empty/absent -> None.
    If this broke, plans would be lost or garbage plans would count as valid."""
    assert parse_plan("<first_thought> add them up </first_thought>") == "add them up"
    assert parse_plan("<first_thought>cut off here") == "cut off here"
    assert parse_plan("<first_thought>   </first_thought>") is None
    assert parse_plan("I will add them up") is None


def test_parse_action_tolerance():
    """Action turns as small models emit them. If this broke, well-meant steps would be rejected."""
    assert parse_action("<thought>mul</thought>\n<code>\nx = 3 * 4\nprint(x)\n</code>") == ("mul", "x = 3 * 4\nprint(x)")
    # a ```python fence inside <code>
    assert parse_action("<thought>t</thought><code>```python\nprint(1)\n```</code>") == ("t", "print(1)")
    # the generation stopped before </code>
    assert parse_action("<thought>t</thought><code>print(2)") == ("t", "print(2)")
    # no thought at all
    assert parse_action("<code>print(3)</code>") == ("", "print(3)")
    # indentation of the code is kept
    assert parse_action("<code>\nfor i in range(2):\n    print(i)\n</code>")[1] == "for i in range(2):\n    print(i)"
    assert parse_action("<thought>only a thought</thought>") is None
    assert parse_action("<code>   </code>") is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parser_never_raises(text):
    """Arbitrary model output becomes a step, never an exception (an exception would kill a rollout batch)."""
    parse_plan(text)
    parse_action(text)
    for index in (1, 2):
        step = make_student_step(index, Sample(token_ids=[1], logprobs=[0.0], text=text, stop_reason="eos"))
        assert step.parse_error == (step.observation in (PLAN_FORMAT_ERROR, ACTION_FORMAT_ERROR))


def test_unparseable_step_gets_format_error():
    """An unparseable turn counts as a step whose observation says what was expected."""
    step = make_student_step(2, Sample(token_ids=[5], logprobs=[-1.0], text="the answer is 7", stop_reason="eos"))
    assert step.parse_error and step.error and step.observation == ACTION_FORMAT_ERROR and step.code == ""
    plan = make_student_step(1, Sample(token_ids=[5], logprobs=[-1.0], text="<code>x=1</code>", stop_reason="eos"))
    assert plan.parse_error and plan.observation == PLAN_FORMAT_ERROR


# ---------------------------------------------------------------------------------------------- records

def test_trajectory_json_round_trip():
    """Records go to JSONL and come back equal; a lossy round trip would corrupt resume and training data."""
    steps = [Step(1, "plan", "student", "<first_thought>p</first_thought>", thought="p", observation="None",
                  token_ids=[1, 2], logprobs=[-0.5, -0.25]),
             Step(2, "action", "teacher", format_step("action", "t", "final_answer(3)"), thought="t",
                  code="final_answer(3)", final_answer="3")]
    trajectory = Trajectory("arith-1", "arith", "q?", "3", steps=steps, final_answer="3", finished=True,
                            end_reason="final_answer", score=1.0, correct=True, split="sft", seed=7)
    again = Trajectory.from_dict(json.loads(json.dumps(trajectory.to_dict())))
    assert again == trajectory


def test_derive_seed_is_stable_and_distinct():
    """Per-rollout seeds come from (seed, phase, task, sample): stable across runs, distinct across parts."""
    assert derive_seed(0, "eval", "arith-1") == derive_seed(0, "eval", "arith-1")
    assert len({derive_seed(0, "eval", f"arith-{i}") for i in range(100)}) == 100
    assert 0 <= derive_seed(1, "x") < 2 ** 63


# ---------------------------------------------------------------------------------------------- token exactness

def _conversation(tokenizer):
    """A plan and two actions by the student (ids from the tokenizer, one with a stop inside a token),
    plus a teacher step without ids."""
    def student_step(index, kind, text, **kw):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return Step(index, kind, "student", decoded, token_ids=ids, logprobs=[0.0] * len(ids), **kw)
    return [student_step(1, "plan", "<first_thought>Multiply, then add.</first_thought>", observation="None"),
            student_step(2, "action", "<thought>x</thought> <code>x = 6 * 7\nprint(x)</code>\n\n", observation="42"),
            Step(3, "action", "teacher", format_step("action", "add", "print(x + 1)"), observation="43"),
            student_step(4, "action", "<code>final_answer(x + 1)</code>", final_answer="43")]


def test_render_ids_decode_to_the_chat_template(tokenizer):
    """The id sequence built from stored ids decodes to the template's own rendering of the same
    conversation, at every turn and with a generation prompt. If this broke, training would see
    different text from what the student sampled."""
    steps = _conversation(tokenizer)
    for upto in range(len(steps) + 1):
        for gen in (True, False):
            rendered = render_ids(tokenizer, "What is 6*7+1?", steps[:upto], add_generation_prompt=gen)
            text = tokenizer.decode(rendered.ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            assert text == render_text(tokenizer, "What is 6*7+1?", steps[:upto], add_generation_prompt=gen)


def test_render_ids_splice_the_stored_ids(tokenizer):
    """Student segments hold exactly the stored ids (never a re-tokenisation); the observation of the
    final step is not rendered; segments tile the sequence."""
    steps = _conversation(tokenizer)
    rendered = render_ids(tokenizer, "q", steps)
    assistant = [s for s in rendered.segments if s.kind == "assistant"]
    assert [s.step_index for s in assistant] == [1, 2, 3, 4]
    for segment, step in zip(assistant, steps):
        if step.author == "student":
            assert rendered.ids[segment.start:segment.end] == step.token_ids
        assert segment.author == step.author
    assert [s.step_index for s in rendered.segments if s.kind == "observation"] == [1, 2, 3]
    assert rendered.segments[0].start == 0 and rendered.segments[-1].end == len(rendered.ids)
    assert all(a.end == b.start for a, b in zip(rendered.segments, rendered.segments[1:]))
    assert to_messages("q", steps)[-1]["role"] == "assistant"


def test_sampled_logprobs_match_a_forward_pass(tiny_student):
    """Log-probs recorded at sampling (temperature 1, before top-p) equal an independent forward pass over
    the stored ids, also for left-padded rows. If this broke, RL's log-ratios would be silently wrong."""
    tokenizer = tiny_student.tokenizer
    prompts = [render_ids(tokenizer, q, [], add_generation_prompt=True).ids
               for q in ("short?", "a much longer question, so that the other rows are left-padded " * 3, "mid length q")]
    assert len({len(p) for p in prompts}) == 3
    samples = tiny_student.sample(prompts, [["</code>"]] * 3, max_new_tokens=24, temperature=1.0, top_p=0.9,
                                  seeds=[1, 2, 3])
    for prompt, sample in zip(prompts, samples):
        assert len(sample.token_ids) == len(sample.logprobs) > 0
        forward = tiny_student.sequence_logprobs([list(prompt) + sample.token_ids])[0][len(prompt) - 1:]
        assert torch.allclose(forward, torch.tensor(sample.logprobs), atol=1e-3), (forward - torch.tensor(sample.logprobs)).abs().max()


def test_sampling_is_independent_of_the_batch(tiny_student):
    """A row's tokens depend on its own seed, not on its neighbours: the same prompt and seed alone
    and in a batch give the same ids (so resume and batch composition do not change samples)."""
    tokenizer = tiny_student.tokenizer
    prompt = render_ids(tokenizer, "q one", [], add_generation_prompt=True).ids
    other = render_ids(tokenizer, "another, longer question here", [], add_generation_prompt=True).ids
    alone = tiny_student.sample([prompt], [[]], 16, 1.0, 1.0, [5])[0]
    batched = tiny_student.sample([other, prompt], [[], []], 16, 1.0, 1.0, [9, 5])[1]
    assert alone.token_ids == batched.token_ids


def test_stop_string_inside_a_token(tiny_student):
    """Generation stops at the token that completes a stop string, and the text is the decoding of the ids."""
    tokenizer = tiny_student.tokenizer
    prompt = render_ids(tokenizer, "q", [], add_generation_prompt=True).ids
    sample = tiny_student.sample([prompt], [[]], 30, 1.0, 1.0, [3])[0]
    # Use a piece of what this seed generates as the stop string: the row must stop right there.
    full = sample.text
    stop = full[5:8]
    again = tiny_student.sample([prompt], [[stop]], 30, 1.0, 1.0, [3])[0]
    assert again.stop_reason == "stop" and stop in again.text
    assert stop not in tiny_student.decode(again.token_ids[:-1])
    assert again.text == tiny_student.decode(again.token_ids)


# ---------------------------------------------------------------------------------------------- rollouts

def _task(i=0, answer="42"):
    return Task(id=f"t-{i}", task_set="toy", question=f"What is 6*7? ({i})", answer=answer, grader="numeric",
                solution=(RefStep("multiply"),))


def _script(turns):
    """A scripted student that answers the n-th assistant turn of a conversation with turns[n-1]."""
    def respond(prompt, seed):
        return turns[min(prompt.count("<|im_start|>assistant") - 1, len(turns) - 1)]
    return respond


def test_rollout_solves_with_a_scripted_student(tokenizer):
    """generate -> parse -> execute: state persists across steps, final_answer ends the episode, grading
    uses the task's grader, and the stored ids decode to the template rendering."""
    student = ScriptedStudent(tokenizer, _script([
        "<first_thought>multiply</first_thought>",
        "<thought>mul</thought><code>x = 6 * 7\nprint(x)</code>",
        "<thought>done</thought><code>final_answer(x)</code>"]))
    [trajectory] = rollout(student, [Start(_task(), seed=1)], RolloutConfig(max_steps=6))
    assert [s.kind for s in trajectory.steps] == ["plan", "action", "action"]
    assert trajectory.steps[1].observation.strip() == "42"
    assert trajectory.finished and trajectory.final_answer == "42" and trajectory.correct and trajectory.score == 1.0
    assert trajectory.end_reason == "final_answer"
    ids = render_ids(tokenizer, trajectory.question, trajectory.steps).ids
    assert tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == \
        render_text(tokenizer, trajectory.question, trajectory.steps)


def test_rollout_step_limit_parse_errors_and_context_cap(tokenizer):
    """Episodes end unfinished at the step limit (unparseable turns count as steps) or at the context
    cap, with the reason recorded; several episodes run in one batch."""
    babble = ScriptedStudent(tokenizer, _script(["<first_thought>p</first_thought>", "I do not know"]))
    starts = [Start(_task(i), seed=i) for i in range(3)]
    trajectories = rollout(babble, starts, RolloutConfig(max_steps=4))
    for t in trajectories:
        assert not t.finished and t.end_reason == "max_steps" and len(t.steps) == 4
        assert all(s.parse_error for s in t.steps[1:]) and t.score == 0.0 and t.correct is False
    [capped] = rollout(babble, [Start(_task(), seed=0)], RolloutConfig(max_steps=6, max_context_tokens=400))
    assert capped.end_reason == "context" and not capped.finished and len(capped.steps) < 6


def test_rollout_from_a_prefix_replays_its_code(tokenizer):
    """A rollout that starts after a prefix sees the prefix's interpreter state (replayed) and keeps the
    prefix steps; a fatal prefix step is not replayed. MPS and RL both rely on this."""
    prefix = [Step(1, "plan", "student", "<first_thought>p</first_thought>", thought="p", observation="None"),
              Step(2, "action", "teacher", format_step("action", "t", "x = 6 * 7\nprint(x)"), code="x = 6 * 7\nprint(x)",
                   observation="42"),
              Step(3, "action", "student", format_step("action", "t", "x = 0\nwhile True: pass"),
                   code="x = 0\nwhile True: pass", error=True, fatal=True, observation="Error: timeout")]
    student = ScriptedStudent(tokenizer, _script(["unused"] * 3 + ["<code>final_answer(x)</code>"]))
    [trajectory] = rollout(student, [Start(_task(), seed=0, prefix=prefix)], RolloutConfig(max_steps=6))
    assert [s.author for s in trajectory.steps] == ["student", "teacher", "student", "student"]
    assert trajectory.final_answer == "42" and trajectory.correct


def test_kv_reuse_across_turns_changes_nothing(tiny_student):
    """Keeping an episode's keys/values between turns (sample(..., keys=...)) gives the same tokens and
    log-probs as re-reading the whole prompt, for rows of different lengths in one batch. If this broke,
    rollouts would silently sample from a different context than the one recorded."""
    tokenizer = tiny_student.tokenizer
    questions = ["first question?", "a second, noticeably longer question for the batch", "q3"]
    stops = [["</code>"]] * 3

    def two_turns(keys):
        first = [render_ids(tokenizer, q, [], add_generation_prompt=True).ids for q in questions]
        turn1 = tiny_student.sample(first, stops, 12, 1.0, 1.0, [1, 2, 3], keys=keys)
        steps = [[make_student_step(1, s)] for s in turn1]
        for row in steps:
            row[0].observation = "None"
        second = [render_ids(tokenizer, q, st, add_generation_prompt=True).ids for q, st in zip(questions, steps)]
        return second, tiny_student.sample(second, stops, 12, 1.0, 1.0, [4, 5, 6], keys=keys)

    prompts_plain, plain = two_turns(None)
    prompts_cached, cached = two_turns(["a", "b", "c"])
    assert prompts_plain == prompts_cached
    for p, c, prompt in zip(plain, cached, prompts_plain):
        assert p.token_ids == c.token_ids
        assert max(abs(x - y) for x, y in zip(p.logprobs, c.logprobs)) < 1e-4
        forward = tiny_student.sequence_logprobs([list(prompt) + c.token_ids])[0][len(prompt) - 1:]
        assert torch.allclose(forward, torch.tensor(c.logprobs), atol=1e-3)
    assert set(tiny_student._kept) == {"a", "b", "c"}
    for key in "abc":
        tiny_student.forget(key)
    assert not tiny_student._kept


def test_shared_prefix_prefill_changes_nothing(tiny_student):
    """Rows that share a long prefix (a group of RL samples of one prompt, or the system prompt) have it run
    once; tokens and log-probs are those of running each row alone."""
    tokenizer = tiny_student.tokenizer
    prompt = render_ids(tokenizer, "one shared question for the whole group", [], add_generation_prompt=True).ids
    other = render_ids(tokenizer, "a different question", [], add_generation_prompt=True).ids
    batch = tiny_student.sample([prompt, prompt, other], [[]] * 3, 10, 1.0, 1.0, [1, 2, 3])
    for row_prompt, seed, sample in zip([prompt, prompt, other], [1, 2, 3], batch):
        alone = tiny_student.sample([row_prompt], [[]], 10, 1.0, 1.0, [seed])[0]
        assert alone.token_ids == sample.token_ids
        assert max(abs(a - b) for a, b in zip(alone.logprobs, sample.logprobs)) < 1e-4


def test_continuous_batching_keeps_results_and_order(tokenizer):
    """rollout(max_active=2) over 5 starts of different lengths: never more than 2 rows in a batched turn,
    a finished episode's row is taken by the next start at once (the batch stays full while starts
    wait), and the trajectories, in the order of the starts, equal those of running all 5 together.
    If this failed, continuous batching would lose, reorder or change episodes."""
    def script(prompt, seed):  # episode i answers after i action steps
        turn = prompt.count("<|im_start|>assistant")
        i = int(re.search(r"6\*7\? \((\d+)\)", prompt).group(1))
        if turn == 1:
            return "<first_thought>multiply</first_thought>"
        return "<code>x = 6 * 7\nprint(x)</code>" if turn <= 1 + i else "<code>final_answer(42)</code>"

    class Counting(ScriptedStudent):
        def sample(self, prompts, *args, **kwargs):
            sizes.append(len(prompts))
            return super().sample(prompts, *args, **kwargs)

    starts = [Start(_task(i), seed=i) for i in (3, 0, 2, 1, 0)]
    sizes: list[int] = []
    together = rollout(Counting(tokenizer, script), starts, RolloutConfig(max_steps=8))
    together_sizes, sizes = sizes, []
    streamed = rollout(Counting(tokenizer, script), starts, RolloutConfig(max_steps=8), max_active=2)
    assert max(sizes) == 2 and max(together_sizes) == 5
    # Episodes take 2 + i turns (plan, i actions, the answer): 5, 2, 4, 3, 2 = 16 turns, always 2 rows a
    # turn, so 8 calls; chunks of 2 starts one after another would take 5 + 4 + 2 = 11.
    assert sizes == [2] * 8
    assert [t.task_id for t in streamed] == [s.task.id for s in starts]
    def untimed(t):  # wall times differ run to run
        return [{k: v for k, v in step.items() if not k.endswith("_s")} for step in t.to_dict()["steps"]]
    assert [untimed(t) for t in streamed] == [untimed(t) for t in together]
    assert all(t.finished and t.correct for t in streamed)
