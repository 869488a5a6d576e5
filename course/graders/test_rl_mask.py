"""Grader for the assignment rl-mask: `rl.continuation_mask`, which tokens RL trains on.

The rule (METHOD.md section 3, Phase 3, The loss; section 2, Token exactness; section 7, item 26):
m = 1 on every id of the assistant segments of steps k and later (the continuation: each of them
sampled by the student in this rollout) and 0 everywhere else: system prompt, task, observations,
the template's glue with the end-of-turn tokens (the template adds them; they were never sampled and
have no sampling log-prob), and the prefix's steps 1..k-1, whoever wrote them. A teacher step at
index >= k cannot be part of a continuation: the function raises ValueError.

The episode below is rendered by `agent.render_ids` on the real SmolLM2 chat template: a prefix of a
student plan, a teacher step and a student step, then a continuation of two student steps whose
stored ids are not the re-tokenisation of their text. The expected mask is spelled out from the
segments here, one rule a test.
"""
import dataclasses

import rl
from agent import Step, format_step, render_ids

SECTION = "METHOD.md 3, Phase 3, The loss"
QUESTION = "What is 6 times 7, plus 1?"
K = 4  # the first generated step, a_k: steps 1..3 are the prefix


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def sampled_step(tokenizer, index, kind, pieces, **fields):
    """A student step as the sampler stores it: its ids are the pieces encoded one by one (a stop or a
    sampled split can fall inside what a fresh tokenisation would merge), its content their decoding."""
    ids = [i for piece in pieces for i in encode(tokenizer, piece)]
    return Step(index, kind, "student", tokenizer.decode(ids), token_ids=ids, logprobs=[-1.0] * len(ids), **fields)


def episode(tokenizer):
    """The steps: 1 student plan, 2 teacher action, 3 student action (the prefix); 4 and 5 student actions
    (the continuation; 5 answers, so no observation follows it)."""
    plan = sampled_step(tokenizer, 1, "plan", ["<first_thought>Multiply, then add one.</first_thought>"],
                        thought="Multiply, then add one.", observation="None")
    teacher = Step(2, "action", "teacher", format_step("action", "Multiply.", "x = 6 * 7\nprint(x)"),
                   thought="Multiply.", code="x = 6 * 7\nprint(x)", observation="42\n")
    mine = sampled_step(tokenizer, 3, "action", ["<thought>Check.</thought>\n<code>\nprint(x == 42)\n</code>"],
                        code="print(x == 42)", observation="True\n")
    a_k = sampled_step(tokenizer, 4, "action", ["<thought>Ad", "d one.</thought>\n<code>\ny = x + 1\nprint(y)\n</code>"],
                       code="y = x + 1\nprint(y)", observation="43\n")
    answer = sampled_step(tokenizer, 5, "action", ["<thought>Done.</thought>\n<code>\nfinal_", "answer(y)\n</code>"],
                          code="final_answer(y)", final_answer="43")
    return [plan, teacher, mine, a_k, answer]


def mask_of(rendered, first_generated_step=K):
    """The submission's mask as a plain list of ints (a tensor or a list of bools is accepted)."""
    mask = rl.continuation_mask(rendered, first_generated_step)
    assert mask is not None, "continuation_mask returns the mask (a list of 0 / 1, one per token), not None"
    mask = [int(m) for m in mask]
    assert len(mask) == len(rendered.ids), (
        f"continuation_mask gives one entry per rendered token ({SECTION}): got {len(mask)} entries for {len(rendered.ids)} ids")
    return mask


def rendered_episode(tokenizer, steps=None):
    return render_ids(tokenizer, QUESTION, steps if steps is not None else episode(tokenizer))


def assistant_segments(rendered):
    return [s for s in rendered.segments if s.kind == "assistant"]


def closing_positions(tokenizer, rendered):
    """(step index, position) of the end-of-turn token right after each assistant segment."""
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    positions = []
    for i, segment in enumerate(rendered.segments):
        if segment.kind == "assistant":
            after = rendered.segments[i + 1]
            assert after.kind == "glue" and rendered.ids[after.start] == end_of_turn, "the chat template changed"
            positions.append((segment.step_index, after.start))
    return positions


def where(rendered, position):
    """What holds the token at `position`, in words: "glue after assistant step 3", "observation of step 4"."""
    before = None
    for segment in rendered.segments:
        if segment.start <= position < segment.end:
            if segment.kind == "glue":
                return f"glue after {before.kind} step {before.step_index}" if before and before.step_index else "glue"
            return f"{segment.kind} step {segment.step_index}" if segment.step_index else segment.kind
        before = segment
    return "past the end"


def test_mask_has_one_entry_per_token_of_0_or_1(tokenizer):
    """continuation_mask returns a 0/1 list as long as the rendered ids (build_row zips it with them)."""
    mask = mask_of(rendered_episode(tokenizer))
    assert set(mask) <= {0, 1}, f"continuation_mask entries are 0 (context) or 1 (trained): got the values {sorted(set(mask))}"


def test_every_id_of_the_steps_from_a_k_on_is_trained(tokenizer):
    """Every id of the assistant segments of steps k = 4 and 5 is 1: a_k itself and every later step
    the student generated in this rollout."""
    rendered = rendered_episode(tokenizer)
    mask = mask_of(rendered)
    for segment in assistant_segments(rendered):
        if segment.step_index < K:
            continue
        got = mask[segment.start:segment.end]
        missing = sum(1 for m in got if m != 1)
        what = "a_k itself, step k, the first generated step" if segment.step_index == K else f"step {segment.step_index}"
        assert not missing, (
            f"every sampled id of steps k and later is trained, a_k included ({SECTION}): {what} (k = {K}) has "
            f"{missing} of its {len(got)} ids at 0, expected all 1")


def test_the_end_of_turn_token_is_never_trained(tokenizer):
    """The <|im_end|> right after each generated step is 0: the template adds it, the student never
    sampled it, so it has no sampling log-prob and is not an action of this policy (SFT trains it, RL does not)."""
    rendered = rendered_episode(tokenizer)
    mask = mask_of(rendered)
    for step_index, position in closing_positions(tokenizer, rendered):
        assert mask[position] == 0, (
            f"the end-of-turn token <|im_end|> is not trained by RL: the template adds it, it was never sampled "
            f"(METHOD.md 2, Token exactness; 7, item 26): after step {step_index}, position {position}: got 1, expected 0")


def test_the_prefix_steps_are_context_whoever_wrote_them(tokenizer):
    """Steps 1..k-1 are the verified prefix of the start state: replayed, not sampled in this rollout.
    0 on all of them: the student's plan and step 3 as much as the teacher's step 2."""
    rendered = rendered_episode(tokenizer)
    mask = mask_of(rendered)
    for segment in assistant_segments(rendered):
        if segment.step_index >= K:
            continue
        trained = sum(mask[segment.start:segment.end])
        assert not trained, (
            f"the prefix's steps 1..k-1 are context, whoever wrote them: they were not sampled in this rollout "
            f"({SECTION}): prefix step {segment.step_index} ({segment.author}; k = {K}) has {trained} ids at 1, expected 0")


def test_system_prompt_task_and_observations_are_context(tokenizer):
    """No id of the system prompt, the task or an observation is trained, the continuation's own
    observations included: the sandbox wrote them, not the policy."""
    rendered = rendered_episode(tokenizer)
    mask = mask_of(rendered)
    names = {"system": "the system prompt", "user": "the task", "observation": "an observation"}
    for segment in rendered.segments:
        if segment.kind not in names:
            continue
        trained = sum(mask[segment.start:segment.end])
        where = f" (of step {segment.step_index})" if segment.kind == "observation" else ""
        assert not trained, (
            f"{names[segment.kind]} is context, never trained: the policy did not sample it ({SECTION}): "
            f"{segment.kind} segment{where} has {trained} ids at 1, expected 0")


def test_all_template_glue_is_context(tokenizer):
    """Role headers, newlines and every <|im_end|> are glue: 0 everywhere, also between the generated steps."""
    rendered = rendered_episode(tokenizer)
    mask = mask_of(rendered)
    for segment in rendered.segments:
        if segment.kind != "glue":
            continue
        for t in range(segment.start, segment.end):
            assert mask[t] == 0, (
                f"template glue is context, its end-of-turn tokens included: the template adds it, nothing sampled it "
                f"({SECTION}): position {t} ({tokenizer.decode([rendered.ids[t]])!r}, {where(rendered, t)}) got 1, expected 0")


def test_the_trained_ids_are_exactly_the_sampled_ids_in_order(tokenizer):
    """The ids at m = 1, read left to right, are the stored token_ids of step 4 then step 5: one per
    sampled log-prob (build_row checks sum(m) == len(sampled log-probs)), in the order they were sampled."""
    steps = episode(tokenizer)
    rendered = rendered_episode(tokenizer, steps)
    mask = mask_of(rendered)
    got = [i for i, m in zip(rendered.ids, mask) if m]
    expected = [i for s in steps[K - 1:] for i in s.token_ids]
    assert got == expected, (
        f"the trained ids are exactly the continuation's sampled ids, in order (METHOD.md 2, Token exactness): "
        f"got {len(got)} ids, expected the {len(expected)} ids of steps {K}..{len(steps)}"
        + ("" if len(got) != len(expected) else "; same count, other positions"))


def test_a_question_start_trains_every_step_from_the_plan(tokenizer):
    """k = 1 (a question start): every step is generated, the plan included; still 0 on the
    observations, the glue and the end-of-turn tokens."""
    steps = [s for s in episode(tokenizer) if s.author == "student"]
    steps = [dataclasses.replace(s, index=i + 1) for i, s in enumerate(steps)]
    rendered = rendered_episode(tokenizer, steps)
    mask = mask_of(rendered, 1)
    expected = [0] * len(rendered.ids)
    for segment in assistant_segments(rendered):
        expected[segment.start:segment.end] = [1] * (segment.end - segment.start)
    wrong = [t for t in range(len(mask)) if mask[t] != expected[t]]
    assert not wrong, (
        f"with k = 1 every assistant step is generated, the plan included, and nothing else is trained ({SECTION}): "
        f"{len(wrong)} positions differ, first at {wrong[0] if wrong else None} "
        f"({where(rendered, wrong[0]) if wrong else ''}: got {mask[wrong[0]] if wrong else None}, "
        f"expected {expected[wrong[0]] if wrong else None})")


def test_a_teacher_step_inside_the_continuation_is_refused(tokenizer):
    """With k = 2 the teacher's step 2 would be part of the continuation: the student never sampled it,
    so training on it would be off-policy imitation. continuation_mask raises ValueError."""
    rendered = rendered_episode(tokenizer)
    try:
        mask = rl.continuation_mask(rendered, 2)
    except ValueError:
        return
    trained = sum(int(m) for m in mask) if mask is not None else None
    raise AssertionError(
        f"a teacher step at index >= k cannot be part of a continuation: raise ValueError ({SECTION}): k = 2 with the "
        f"teacher's step 2 returned a mask with {trained} ids at 1")


def test_the_whole_mask_spelled_out(tokenizer):
    """All positions at once, for k = 4 and for k = 5 (then step 4 joins the prefix): 1 exactly on the
    ids of the assistant segments with step index >= k."""
    rendered = rendered_episode(tokenizer)
    for k in (K, K + 1):
        mask = mask_of(rendered, k)
        expected = [0] * len(rendered.ids)
        for segment in assistant_segments(rendered):
            if segment.step_index >= k:
                expected[segment.start:segment.end] = [1] * (segment.end - segment.start)
        wrong = [t for t in range(len(mask)) if mask[t] != expected[t]]
        assert not wrong, (
            f"m is 1 exactly on the assistant ids of steps >= k ({SECTION}): k = {k}, {len(wrong)} positions differ, "
            f"first at {wrong[0] if wrong else None} ({where(rendered, wrong[0]) if wrong else ''})")


WRONG = [
    {"target": "rl.continuation_mask", "mistake": "the end-of-turn token after each generated step is trained, as in SFT",
     "expect": "end-of-turn token <|im_end|> is not trained",
     "source": '''
def continuation_mask(rendered, first_generated_step):
    mask = [0] * len(rendered.ids)
    for segment in rendered.segments:
        if segment.kind == "assistant" and segment.step_index >= first_generated_step:
            if segment.author != "student":
                raise ValueError(f"step {segment.step_index} of a continuation was not written by the student")
            mask[segment.start:segment.end + 1] = [1] * (segment.end + 1 - segment.start)
    return mask
'''},
    {"target": "rl.continuation_mask", "mistake": "every student step is trained, the prefix's student steps too",
     "expect": "prefix's steps 1..k-1 are context",
     "source": '''
def continuation_mask(rendered, first_generated_step):
    mask = [0] * len(rendered.ids)
    for segment in rendered.segments:
        if segment.kind != "assistant":
            continue
        if segment.step_index >= first_generated_step and segment.author != "student":
            raise ValueError(f"step {segment.step_index} of a continuation was not written by the student")
        if segment.author == "student":
            mask[segment.start:segment.end] = [1] * (segment.end - segment.start)
    return mask
'''},
    {"target": "rl.continuation_mask", "mistake": "off by one: steps after k are trained, a_k itself is not",
     "expect": "a_k included",
     "source": '''
def continuation_mask(rendered, first_generated_step):
    mask = [0] * len(rendered.ids)
    for segment in rendered.segments:
        if segment.kind == "assistant" and segment.step_index > first_generated_step:
            if segment.author != "student":
                raise ValueError(f"step {segment.step_index} of a continuation was not written by the student")
            mask[segment.start:segment.end] = [1] * (segment.end - segment.start)
    return mask
'''},
    {"target": "rl.continuation_mask", "mistake": "one span from a_k to the end: the continuation's observations and glue are trained too",
     "expect": "an observation is context",
     "source": '''
def continuation_mask(rendered, first_generated_step):
    mask = [0] * len(rendered.ids)
    for segment in rendered.segments:
        if segment.kind == "assistant" and segment.step_index >= first_generated_step:
            if segment.author != "student":
                raise ValueError(f"step {segment.step_index} of a continuation was not written by the student")
            mask[segment.start:] = [1] * (len(rendered.ids) - segment.start)
            break
    return mask
'''},
    {"target": "rl.continuation_mask", "mistake": "a teacher step in the continuation is trained silently instead of refused",
     "expect": "raise ValueError",
     "source": '''
def continuation_mask(rendered, first_generated_step):
    mask = [0] * len(rendered.ids)
    for segment in rendered.segments:
        if segment.kind == "assistant" and segment.step_index >= first_generated_step:
            mask[segment.start:segment.end] = [1] * (segment.end - segment.start)
    return mask
'''},
]
