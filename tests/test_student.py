"""student.py's speed machinery: batched token picking, OpenMP waiting and threads, borrowed prefixes, the prefill and the KV layer."""
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agent import render_ids
from student import pick_tokens, roomy_layer, top_p_filter

ROOT = Path(__file__).resolve().parent.parent


def test_pick_tokens_draws_from_the_distribution():
    """The batched inverse-CDF draw follows softmax(logits / T): frequencies over many seeds match the
    probabilities, a zero-mass token is never drawn, and greedy is the argmax. If this failed, every
    sampled rollout (RL, MPS) would come from a different policy than the one whose log-probs are recorded."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -float("inf"), 0.5]])
    probs = torch.softmax(logits[0] / 0.7, -1)
    draws = pick_tokens(logits.repeat(4000, 1), 0.7, 1.0, [torch.Generator().manual_seed(s) for s in range(4000)])
    counts = torch.bincount(torch.tensor(draws), minlength=5).double() / 4000
    assert counts[3] == 0  # the -inf logit has no mass
    assert torch.allclose(counts, probs.double(), atol=0.025), (counts, probs)
    assert pick_tokens(logits, 0.0, 1.0, [torch.Generator()]) == [0]


def test_pick_tokens_rows_depend_only_on_their_own_seed():
    """A row's token is the same alone and in a batch (batch independence of sampling)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1000, generator=gen)
    batched = pick_tokens(logits, 1.0, 0.9, [torch.Generator().manual_seed(s) for s in range(6)])
    alone = [pick_tokens(logits[i:i + 1], 1.0, 0.9, [torch.Generator().manual_seed(i)])[0] for i in range(6)]
    assert batched == alone


def test_top_p_filter_batched_matches_one_row_at_a_time():
    """top-p keeps the smallest set reaching the mass, per row; the batched form equals the row form."""
    probs = torch.softmax(torch.randn(4, 50, generator=torch.Generator().manual_seed(1)), -1)
    batched = top_p_filter(probs, 0.8)
    for i in range(4):
        row = top_p_filter(probs[i], 0.8)
        assert torch.allclose(batched[i], row)
        kept = probs[i][row > 0]
        assert kept.sum() >= 0.8 and kept.sum() - kept.min() < 0.8  # minimal: without its smallest it falls short
    assert torch.equal(top_p_filter(probs, 1.0), probs)


def _threads_line(env_extra: dict, code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    return done.stdout.strip()


def test_configure_threads_reports_the_waiting_policy_in_force():
    """Importing student.py before torch makes OpenMP threads wait passively (in the environment libgomp
    reads when torch loads), a user's own setting wins, and an import of torch before student.py is
    reported, not hidden. If this failed, the default loop could spin-wait on a busy machine again."""
    first = ("import os, student; print(student.configure_threads(1)); "
             "print(os.environ.get('OMP_WAIT_POLICY'))")
    assert _threads_line({}, first).splitlines() == ["threads: 1 (torch), waiting: passive", "PASSIVE"]
    assert "waiting: spin 300000 then sleep" in _threads_line({"GOMP_SPINCOUNT": "300000"}, first)
    assert "waiting: active" in _threads_line({"OMP_WAIT_POLICY": "ACTIVE"}, first)
    late = "import torch, student; print(student.configure_threads(None))"
    assert "torch was imported before student.py" in _threads_line({}, late)


def test_configure_threads_refuses_a_bad_count():
    from student import StudentError, configure_threads
    with pytest.raises(StudentError, match="positive"):
        configure_threads(0)


def test_a_joining_row_borrows_a_neighbours_prefix(tiny_student):
    """Continuous batching: a new episode joins rows whose keys/values are kept from earlier turns; it
    reuses the longest shared prefix (the system prompt) of a neighbour's cache. Its tokens and log-probs
    are those of sampling it alone, and the neighbour's are unchanged."""
    tokenizer = tiny_student.tokenizer
    old = render_ids(tokenizer, "an episode under way", [], add_generation_prompt=True).ids
    new = render_ids(tokenizer, "a new episode joins", [], add_generation_prompt=True).ids
    tiny_student.sample([old], [[]], 6, 1.0, 1.0, [1], keys=["old"])  # turn 1 of the old episode: kept
    turn2 = tiny_student._kept["old"].ids + render_ids(tokenizer, "x", [], add_generation_prompt=True).ids[-5:]
    mixed = tiny_student.sample([turn2, new], [[], []], 8, 1.0, 1.0, [2, 3], keys=["old", None])
    alone_new = tiny_student.sample([new], [[]], 8, 1.0, 1.0, [3])[0]
    tiny_student.forget("old")
    alone_old = tiny_student.sample([turn2], [[]], 8, 1.0, 1.0, [2])[0]
    for got, want in ((mixed[1], alone_new), (mixed[0], alone_old)):
        assert got.token_ids == want.token_ids
        assert max(abs(a - b) for a, b in zip(got.logprobs, want.logprobs)) < 1e-4


def test_each_distinct_prompt_is_prefilled_once(tiny_student):
    """Rows with the same prompt (a group of RL continuations) have its new part run once, alone and
    unpadded; the batched call then runs one token a row. Counted at the embedding: the common prefix once,
    each distinct prompt's rest once, one last token per row. A left-padded batch would run every row
    at the longest width. Tokens and log-probs are those of sampling each row alone."""
    tokenizer = tiny_student.tokenizer
    short = render_ids(tokenizer, "a question", [], add_generation_prompt=True).ids
    long = render_ids(tokenizer, "a much longer question, asked by a whole group of rows " * 2, [],
                      add_generation_prompt=True).ids
    prompts, seeds = [short, long, long, short], [1, 2, 3, 4]
    common = sum(1 for _ in itertools.takewhile(lambda pair: pair[0] == pair[1], zip(short, long)))
    fed: list[int] = []
    hook = tiny_student.causal_lm().get_input_embeddings().register_forward_hook(
        lambda module, args, output: fed.append(args[0].numel()))
    try:
        batch = tiny_student.sample(prompts, [[]] * 4, 1, 1.0, 1.0, seeds)
    finally:
        hook.remove()
    assert sum(fed) == common + (len(short) - 1 - common) + (len(long) - 1 - common) + len(prompts)
    for prompt, seed, got in zip(prompts, seeds, batch):
        alone = tiny_student.sample([prompt], [[]], 1, 1.0, 1.0, [seed])[0]
        assert got.token_ids == alone.token_ids
        assert max(abs(a - b) for a, b in zip(got.logprobs, alone.logprobs)) < 1e-4


def test_roomy_layer_is_the_concatenation():
    """The sampler's KV layer writes into kept room (and doubles it when full); what it returns is what
    transformers' concatenating DynamicLayer returns, also after rows leave the batch."""
    from transformers.cache_utils import DynamicLayer
    torch.manual_seed(0)
    past = torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5)  # (rows, heads, positions, head_dim)
    room = torch.zeros(3, 2, 6, 5), torch.zeros(3, 2, 6, 5)
    room[0][:, :, :4], room[1][:, :, :4] = past
    roomy, plain = roomy_layer()(room[0], room[1], 4), DynamicLayer()
    plain.update(*past)
    for new_tokens, keep in ((1, None), (3, torch.tensor([0, 2])), (2, None)):  # the 3 overflow the room
        new = torch.randn(len(plain.keys), 2, new_tokens, 5), torch.randn(len(plain.keys), 2, new_tokens, 5)
        for got, want in zip(roomy.update(*new), plain.update(*new)):
            assert torch.equal(got, want)
        if keep is not None:
            roomy.batch_select_indices(keep)
            plain.batch_select_indices(keep)
    assert roomy.get_seq_length() == plain.get_seq_length() == 10
