"""Grader for the assignment sft-mask: `sft.loss_mask`, which tokens SFT learns to produce.

The rule (METHOD.md section 3, Phase 2; section 2, Token exactness): 1 on every assistant segment
(plan, thought, code; a student step or a teacher step alike) and on the end-of-turn token that
closes each assistant turn; 0 on the system prompt, the task, observations and all other template
glue. The conversation below is rendered by `agent.render_ids` on the real SmolLM2 chat template;
the expected mask is spelled out from its segments here, one rule at a time, so that each test names
the rule a submission broke.
"""
from agent import Segment, Step, format_step, render_ids
from sft import end_of_turn_ids, loss_mask

QUESTION = "What is 2 + 3?"


def conversation(tokenizer):
    """A three-step trajectory: a teacher plan, a student action whose stored ids are NOT the
    re-tokenisation of its text (token exactness), and a teacher step that answers."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    plan = Step(1, "plan", "teacher", format_step("plan", "Add the numbers."), thought="Add the numbers.",
                observation="None")
    sampled = encode("<thought>Ad") + encode("d.</thought>\n<code>\nx = 2 + 3\nprint(x)\n</code>")
    action = Step(2, "action", "student", tokenizer.decode(sampled), thought="Add.", code="x = 2 + 3\nprint(x)",
                  observation="5", token_ids=sampled)
    answer = Step(3, "action", "teacher", format_step("action", "Submit.", "final_answer(x)"), thought="Submit.",
                  code="final_answer(x)", final_answer="5")
    return render_ids(tokenizer, QUESTION, [plan, action, answer])


def mask_of(tokenizer, rendered):
    """The submission's mask, as a plain list of ints (a tensor or a list of bools is accepted)."""
    mask = loss_mask(rendered.ids, rendered.segments, end_of_turn_ids(tokenizer))
    assert mask is not None, "loss_mask must return the mask (a list of 0 / 1, one per token), not None"
    mask = [int(m) for m in mask]
    assert len(mask) == len(rendered.ids), (
        f"loss_mask must give one entry per token (METHOD.md 3, Phase 2): got {len(mask)} entries for {len(rendered.ids)} ids")
    return mask


def closing_positions(tokenizer, rendered):
    """Position of the end-of-turn token that closes each assistant turn: the first token of the glue after it."""
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    positions = []
    for i, segment in enumerate(rendered.segments):
        if segment.kind == "assistant":
            after = rendered.segments[i + 1]
            assert after.kind == "glue" and rendered.ids[after.start] == end_of_turn, "the chat template changed"
            positions.append((segment.step_index, segment.author, after.start))
    return positions


def owner(rendered, position):
    """(the segment that holds the token at `position`, the segment before it)."""
    for i, segment in enumerate(rendered.segments):
        if segment.start <= position < segment.end:
            return segment, rendered.segments[i - 1] if i else None
    raise IndexError(position)


def test_mask_has_one_entry_per_token(tokenizer):
    """loss_mask returns a 0/1 list as long as the rendered ids (SFT zips it with the ids, token by token)."""
    rendered = conversation(tokenizer)
    mask = mask_of(tokenizer, rendered)
    assert set(mask) <= {0, 1}, f"loss_mask entries are 0 (context) or 1 (target): got the values {sorted(set(mask))}"


def test_every_assistant_token_is_a_target_whoever_wrote_it(tokenizer):
    """Every id of every assistant segment is supervised: the plan, the thought and the code, whether
    the step is the student's (its stored sampled ids) or the teacher's."""
    rendered = conversation(tokenizer)
    mask = mask_of(tokenizer, rendered)
    for segment in rendered.segments:
        if segment.kind != "assistant":
            continue
        got = mask[segment.start:segment.end]
        missing = [t for t, m in zip(range(segment.start, segment.end), got) if m != 1]
        assert not missing, (
            f"every assistant token is a target, student or teacher step alike (METHOD.md 3, Phase 2): step "
            f"{segment.step_index} ({segment.author}) has {len(missing)} of its {len(got)} tokens at 0, first at "
            f"position {missing[0]} ({tokenizer.decode([rendered.ids[missing[0]]])!r}); expected all 1")


def test_the_end_of_turn_token_that_closes_each_assistant_turn_is_a_target(tokenizer):
    """The <|im_end|> right after each assistant segment is supervised: it comes from the template, not
    from the sampled ids, and without it the student never learns to end its turn."""
    rendered = conversation(tokenizer)
    mask = mask_of(tokenizer, rendered)
    for step_index, author, position in closing_positions(tokenizer, rendered):
        assert mask[position] == 1, (
            f"the end-of-turn token <|im_end|> that closes an assistant turn is a target, so the student learns to "
            f"end its turn (METHOD.md 2, Token exactness; 3, Phase 2): step {step_index} ({author}), position "
            f"{position}: got 0, expected 1")


def test_system_prompt_task_and_observations_are_context(tokenizer):
    """No token of the system prompt, the task or an observation is supervised: the student reads them,
    it never writes them."""
    rendered = conversation(tokenizer)
    mask = mask_of(tokenizer, rendered)
    names = {"system": "the system prompt", "user": "the task", "observation": "an observation"}
    for segment in rendered.segments:
        if segment.kind not in names:
            continue
        supervised = [t for t in range(segment.start, segment.end) if mask[t]]
        where = f" (of step {segment.step_index})" if segment.kind == "observation" else ""
        assert not supervised, (
            f"{names[segment.kind]} is context, never a target (METHOD.md 3, Phase 2): {segment.kind} segment{where} has "
            f"{len(supervised)} tokens at 1, first at position {supervised[0]} "
            f"({tokenizer.decode([rendered.ids[supervised[0]]])!r}); expected all 0")


def test_template_glue_is_context_except_the_end_of_turn_that_closes_an_assistant_turn(tokenizer):
    """Glue (role headers, newlines, the <|im_end|> of system, task and observation turns) is 0; the only
    glue token at 1 is the end-of-turn token right after an assistant segment."""
    rendered = conversation(tokenizer)
    mask = mask_of(tokenizer, rendered)
    closing = {position for _, _, position in closing_positions(tokenizer, rendered)}
    eot = end_of_turn_ids(tokenizer)
    for t, m in enumerate(mask):
        segment, before = owner(rendered, t)
        if segment.kind != "glue" or t in closing or not m:
            continue
        token = tokenizer.decode([rendered.ids[t]])
        if rendered.ids[t] in eot:
            assert False, (
                f"only the end-of-turn token that closes an assistant turn is a target (METHOD.md 3, Phase 2): position "
                f"{t} ({token!r}) closes the {before.kind if before else 'first'} turn: got 1, expected 0")
        assert False, (
            f"template glue is context, only the <|im_end|> right after an assistant segment is a target (METHOD.md 3, "
            f"Phase 2): position {t} ({token!r}, glue after the {before.kind if before else 'start'} segment): got 1, expected 0")


def test_the_whole_mask_spelled_out(tokenizer):
    """All positions at once: assistant ids and their closing <|im_end|> are 1, everything else 0; the
    supervised ids are exactly each step's ids (the stored sampled ids for the student step) + <|im_end|>."""
    rendered = conversation(tokenizer)
    mask = mask_of(tokenizer, rendered)
    expected = [0] * len(rendered.ids)
    for segment in rendered.segments:
        if segment.kind == "assistant":
            expected[segment.start:segment.end] = [1] * (segment.end - segment.start)
    for _, _, position in closing_positions(tokenizer, rendered):
        expected[position] = 1
    got_positions = [t for t, m in enumerate(mask) if m]
    want_positions = [t for t, m in enumerate(expected) if m]
    assert got_positions == want_positions, (
        f"loss_mask is 1 exactly on assistant ids and each assistant turn's closing <|im_end|> (METHOD.md 3, Phase 2): "
        f"{len(got_positions)} targets, expected {len(want_positions)}; first difference at position "
        f"{next(t for t in range(len(mask)) if mask[t] != expected[t])}")
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    student = next(s for s in rendered.segments if s.kind == "assistant" and s.author == "student")
    targets = [rendered.ids[t] for t in got_positions if student.start <= t <= student.end]
    sampled = rendered.ids[student.start:student.end]
    assert targets == sampled + [end_of_turn], (
        "the student step's targets are its stored sampled ids and then <|im_end|> (METHOD.md 2, Token exactness): "
        f"got {len(targets)} ids, expected {len(sampled) + 1}")


def test_the_end_of_turn_ids_are_the_ones_given():
    """The end-of-turn token is whichever id `eot_ids` names (ChatML's <|im_end|>, Llama 3's <|eot_id|>...):
    synthetic segments with made-up ids. The glue after an assistant segment is a target only at its first
    token and only when that token is in eot_ids."""
    ids = [50, 51, 52, 10, 11, 7, 60, 61, 62, 12, 13, 9, 63, 14, 15, 8, 64]
    segments = [Segment("glue", 0, 1), Segment("system", 1, 2), Segment("glue", 2, 3),
                Segment("assistant", 3, 5, 1, "teacher"), Segment("glue", 5, 7),  # closes with 7
                Segment("observation", 7, 8, 1), Segment("glue", 8, 9),
                Segment("assistant", 9, 11, 2, "student"), Segment("glue", 11, 13),  # closes with 9
                Segment("assistant", 13, 15, 3, "student"), Segment("glue", 15, 17)]  # 8: not an end-of-turn id
    expected = [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0]
    mask = [int(m) for m in loss_mask(ids, segments, {7, 9})]
    assert mask == expected, (
        "the token after an assistant segment is a target only if it is one of eot_ids, the set passed in (METHOD.md 3, "
        f"Phase 2; eot_ids = {{7, 9}} here, not the tokenizer's): got {mask}, expected {expected}")


WRONG = [
    {"target": "sft.loss_mask", "mistake": "only the assistant segments: the closing <|im_end|> is never a target",
     "expect": "end-of-turn token <|im_end|> that closes an assistant turn is a target",
     "source": '''
def loss_mask(ids, segments, eot_ids):
    mask = [0] * len(ids)
    for segment in segments:
        if segment.kind == "assistant":
            mask[segment.start:segment.end] = [1] * (segment.end - segment.start)
    return mask
'''},
    {"target": "sft.loss_mask", "mistake": "observations are supervised too (everything the agent loop produced)",
     "expect": "an observation is context",
     "source": '''
def loss_mask(ids, segments, eot_ids):
    mask = [0] * len(ids)
    for i, segment in enumerate(segments):
        if segment.kind not in ("assistant", "observation"):
            continue
        mask[segment.start:segment.end] = [1] * (segment.end - segment.start)
        after = segments[i + 1] if i + 1 < len(segments) else None
        if after is not None and after.kind == "glue" and after.end > after.start and ids[after.start] in eot_ids:
            mask[after.start] = 1
    return mask
'''},
    {"target": "sft.loss_mask", "mistake": "every end-of-turn token is a target, also those closing system, task and observation turns",
     "expect": "only the end-of-turn token that closes an assistant turn is a target",
     "source": '''
def loss_mask(ids, segments, eot_ids):
    mask = [1 if token in eot_ids else 0 for token in ids]
    for segment in segments:
        if segment.kind == "assistant":
            mask[segment.start:segment.end] = [1] * (segment.end - segment.start)
    return mask
'''},
    {"target": "sft.loss_mask", "mistake": "the whole glue after an assistant turn is a target (<|im_end|>, newline and the next role header)",
     "expect": "template glue is context",
     "source": '''
def loss_mask(ids, segments, eot_ids):
    mask = [0] * len(ids)
    for i, segment in enumerate(segments):
        if segment.kind != "assistant":
            continue
        mask[segment.start:segment.end] = [1] * (segment.end - segment.start)
        after = segments[i + 1] if i + 1 < len(segments) else None
        if after is not None and after.kind == "glue":
            mask[after.start:after.end] = [1] * (after.end - after.start)
    return mask
'''},
]
