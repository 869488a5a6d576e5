"""Grader for the assignment pg-loss: `rl.micro_batch_loss`, one micro-batch's share of the RL update.

The rules (METHOD.md section 3, Phase 3, The loss; section 7, items 25-28):
    L = -(1/N) sum_i sum_t m_it * A_i * log pi(y_it)       N = tokens with m = 1 in the WHOLE update
    with KL: L += beta * (1/N) sum_i sum_t m_it * k3_it,    k3 = exp(q - p) - (q - p) - 1,
             p = log pi(y_it), q = log pi_ref(y_it)         (pi_ref: `reference`, or with reference None
                                                             this model with its LoRA adapter disabled)
Each micro-batch returns (its term of L, {"loss": the term's value, "kl": its plain sum of k3,
"logprob_gap": its plain sum of |sampled log-prob - p|}); the terms of the update's micro-batches add
up to L exactly (gradient accumulation), whatever the micro-batches are.

Value and gradient are checked against torch.autograd of an explicit per-token loop over each row
alone (no padding) on a tiny random Llama. The rows are rl.TrainRow built by hand: context pieces at
m = 0, generated pieces at m = 1, advantages of both signs, and sampled log-probs that differ from
the model's by known offsets. No other assignment's function runs here.
"""
import math

import pytest
import torch

import rl
from student import make_tiny_student

SECTION = "METHOD.md 3, Phase 3, The loss"
GLUE_USER = "<|im_start|>user\n"
GLUE_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
# Three continuations as rendered episodes: (pieces, advantage). "ctx" pieces are context (m = 0),
# "gen" pieces what the student sampled (m = 1). Their lengths and supervised counts all differ, so a
# per micro-batch or per sequence normaliser gives another number than the update's N.
ROWS = [
    ([("ctx", GLUE_USER + "What is 6 times 7?" + GLUE_ASSISTANT),
      ("gen", "<thought>Multiply.</thought>\n<code>\nprint(6 * 7)\n</code>"),
      ("ctx", "<|im_end|>\n" + GLUE_USER + "Observation: 42" + GLUE_ASSISTANT),
      ("gen", "<thought>Done.</thought>\n<code>\nfinal_answer(42)\n</code>")], 0.75),
    ([("ctx", GLUE_USER + "What is 6 times 7?" + GLUE_ASSISTANT),
      ("gen", "<thought>Add six seven times, one at a time.</thought>\n<code>\ntotal = 0\nfor _ in range(7):\n"
              "    total += 6\nprint(total)\n</code>")], -0.5),
    ([("ctx", GLUE_USER + "Observation: 48" + GLUE_ASSISTANT),
      ("gen", "<code>\nfinal_answer(48)\n</code>")], 1.25),
]
MICRO_BATCHES = [[0, 1], [2]]  # the update's rows, as the loop would cut them: two rows padded together, one alone
# sampled log-prob = the model's log-prob + these offsets, cycled: mixed signs, so the gap's |.| matters
OFFSETS = [0.01, -0.02, 0.005, -0.001]
BETA = 0.2


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def naive_logprobs(model, row):
    """log pi(y_t | y_<t) of each m = 1 token of one row, alone (no padding), one token at a time."""
    logits = model(input_ids=torch.tensor([row.ids])).logits[0].float()  # (T, V)
    out = []
    for t in range(1, len(row.ids)):
        if row.mask[t]:  # the logits at t - 1 predict token t
            out.append(torch.log_softmax(logits[t - 1], -1)[row.ids[t]])
    return out


def build_rows(tokenizer, model):
    """The hand-built TrainRows; their sampled log-probs are the model's own plus OFFSETS."""
    rows = []
    for pieces, advantage in ROWS:
        ids, mask = [], []
        for kind, text in pieces:
            piece = encode(tokenizer, text)
            ids += piece
            mask += [int(kind == "gen")] * len(piece)
        rows.append(rl.TrainRow(ids, mask, advantage, []))
    with torch.no_grad():
        for row in rows:
            true = [float(p) for p in naive_logprobs(model, row)]
            row.sampled_logprobs = [p + OFFSETS[j % len(OFFSETS)] for j, p in enumerate(true)]
    return rows


def num_tokens(rows):
    return sum(sum(r.mask) for r in rows)  # N


def run(student, rows, config, reference=None):
    """The submission over the update's micro-batches with the update's N: [(loss, numbers)] per micro-batch."""
    out = []
    for batch in MICRO_BATCHES:
        result = rl.micro_batch_loss(student, [rows[i] for i in batch], num_tokens(rows), config, reference)
        assert isinstance(result, tuple) and len(result) == 2, (
            f"micro_batch_loss returns (the loss term, a dict of numbers) ({SECTION}): got {type(result).__name__}")
        loss, numbers = result
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0, (
            f"micro_batch_loss's first value is a scalar loss tensor to backpropagate ({SECTION}): got "
            f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}")
        assert isinstance(numbers, dict) and {"loss", "kl", "logprob_gap"} <= set(numbers), (
            f"micro_batch_loss's second value is a dict with 'loss', 'kl' and 'logprob_gap' ({SECTION}): got "
            f"{sorted(numbers) if isinstance(numbers, dict) else type(numbers).__name__}")
        out.append((loss, numbers))
    return out


def per_token(model, rows):
    """[[p_it as floats] per row] from the naive loop."""
    with torch.no_grad():
        return [[float(p) for p in naive_logprobs(model, row)] for row in rows]


def pg_diagnosis(got, rows, p):
    """Name the wrong normaliser (or sign) that the summed loss `got` matches, if one does."""
    total = num_tokens(rows)
    s = [-row.advantage * sum(ps) for row, ps in zip(rows, p)]  # -A_i sum_t p_it, per row
    n = [sum(r.mask) for r in rows]
    batches = MICRO_BATCHES
    candidates = [
        ("each micro-batch divided by its own supervised tokens n, not the update's N",
         sum(sum(s[i] for i in b) / sum(n[i] for i in b) for b in batches)),
        ("a per-sequence mean: each row averaged over its own tokens, then over the rows",
         sum(sum(s[i] / n[i] for i in b) / len(b) for b in batches)),
        ("a per-sequence mean: each row averaged over its own tokens", sum(s[i] / n[i] for i in range(len(rows)))),
        ("divided by the number of sequences (G x P rows), not by tokens", sum(sum(s[i] for i in b) / len(b) for b in batches)),
        ("the plain sum, not divided by N", sum(s)),
        ("divided by all tokens of the rows (context included), not the supervised ones",
         sum(sum(s[i] for i in b) / sum(len(rows[i].ids) for i in b) for b in batches)),
        ("divided by the padded size of each micro-batch (rows x longest)",
         sum(sum(s[i] for i in b) / (len(b) * max(len(rows[i].ids) for i in b)) for b in batches)),
        ("the sign flipped: +A log pi would lower the probability of rewarded tokens", -sum(s) / total),
        ("the advantage left out", -sum(sum(ps) for ps in p) / total),
    ]
    for name, value in candidates:
        if math.isclose(got, value, rel_tol=1e-4):
            return f" here {name}:"
    return ""


def k3(p, q):
    return math.exp(q - p) - (q - p) - 1


def kl_diagnosis(got_kl_part, rows, p, q):
    """Name the wrong KL estimator or scale that the KL part of the summed loss matches, if one does."""
    total = num_tokens(rows)
    pairs = [(a, b) for pr, qr in zip(p, q) for a, b in zip(pr, qr)]
    n = [sum(r.mask) for r in rows]
    per_row = [sum(k3(a, b) for a, b in zip(pr, qr)) for pr, qr in zip(p, q)]
    candidates = [
        ("exp(p - q) - (p - q) - 1, the difference reversed (q and p swapped)",
         BETA * sum(k3(b, a) for a, b in pairs) / total),
        ("k1 = p - q (log pi - log pi_ref), not k3", BETA * sum(a - b for a, b in pairs) / total),
        ("q - p, not k3", BETA * sum(b - a for a, b in pairs) / total),
        ("k2 = (p - q)^2 / 2, not k3", BETA * sum((a - b) ** 2 / 2 for a, b in pairs) / total),
        ("beta is missing", sum(k3(a, b) for a, b in pairs) / total),
        ("the KL divided by each micro-batch's own tokens, not the update's N",
         BETA * sum(sum(per_row[i] for i in b) / sum(n[i] for i in b) for b in MICRO_BATCHES)),
        ("the KL not divided by N", BETA * sum(per_row)),
        ("the KL term subtracted, not added", -BETA * sum(per_row) / total),
        ("no KL term at all", 0.0),
    ]
    for name, value in candidates:
        if math.isclose(got_kl_part, value, rel_tol=1e-3, abs_tol=1e-9):
            return f" here {name}:"
    return ""


def grads(model):
    return {name: p.grad.clone() if p.grad is not None else None for name, p in model.named_parameters()}


def assert_same_gradients(fast, model, rule):
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert fast[name] is not None, f"{rule}: {name} got no gradient from micro_batch_loss (is the loss detached?)"
        error = float((fast[name] - p.grad).abs().max())
        scale = float(p.grad.abs().max()) + 1e-12
        assert error <= 1e-4 * scale + 1e-8, (
            f"{rule}: {name} differs from autograd of the naive per-token loop by {error:.2e} (its largest entry is {scale:.2e})")


@pytest.fixture
def reference(tokenizer):
    """Another random policy, frozen as prepare_policy freezes the copy: so the KL term is not zero."""
    other = make_tiny_student(tokenizer, seed=1)
    other.model.requires_grad_(False)
    return other


def test_returns_a_loss_on_the_graph_and_its_numbers(tokenizer, tiny_student):
    """(a 0-dim loss tensor that requires grad, {"loss", "kl", "logprob_gap"} as plain floats);
    numbers["loss"] is the term's own value, detached."""
    rows = build_rows(tokenizer, tiny_student.model)
    for loss, numbers in run(tiny_student, rows, rl.RLConfig()):
        assert loss.requires_grad, f"the loss term must stay on the graph: it is backpropagated ({SECTION})"
        for key in ("loss", "kl", "logprob_gap"):
            value = numbers[key]
            assert not (isinstance(value, torch.Tensor) and value.requires_grad), (
                f"numbers[{key!r}] is a number the update adds up for its log: detach it (float(...)), or every "
                f"micro-batch's graph stays alive until the update ends")
        assert math.isclose(float(numbers["loss"]), float(loss.detach()), rel_tol=1e-6, abs_tol=1e-9), (
            f"numbers['loss'] is the value of the returned term itself ({SECTION}): got {float(numbers['loss']):.6f}, "
            f"the term is {float(loss.detach()):.6f}")


def test_the_micro_batch_terms_add_up_to_the_loss_over_the_updates_supervised_tokens(tokenizer, tiny_student):
    """Summed over the update's micro-batches, the terms equal L = -(1/N) sum_i sum_t A_i log pi(y_it)
    of the naive loop, N = the supervised tokens of all three rows (kl off)."""
    rows = build_rows(tokenizer, tiny_student.model)
    got = sum(float(loss.detach()) for loss, _ in run(tiny_student, rows, rl.RLConfig()))
    p = per_token(tiny_student.model, rows)
    expected = -sum(row.advantage * sum(ps) for row, ps in zip(rows, p)) / num_tokens(rows)
    hint = pg_diagnosis(got, rows, p)
    assert math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-8), (
        f"L = -(1/N) sum A_i log pi, N = supervised tokens of the WHOLE update ({SECTION});{hint} got {got:.6f}, "
        f"expected {expected:.6f} (summed over the micro-batches, N = {num_tokens(rows)})")


def test_one_micro_batch_is_its_own_tokens_over_the_updates_n(tokenizer, tiny_student):
    """Each term alone is -(1/N) sum over ITS rows' tokens of A_i log pi, with the N passed in: the
    padded micro-batch of two rows and the single row alike (left padding changes nothing)."""
    rows = build_rows(tokenizer, tiny_student.model)
    p = per_token(tiny_student.model, rows)
    for batch, (loss, _) in zip(MICRO_BATCHES, run(tiny_student, rows, rl.RLConfig())):
        got = float(loss.detach())
        expected = -sum(rows[i].advantage * sum(p[i]) for i in batch) / num_tokens(rows)
        own = sum(sum(rows[i].mask) for i in batch)
        hint = " here divided by its own n, not N:" if math.isclose(got, expected * num_tokens(rows) / own, rel_tol=1e-4) else ""
        assert math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-8), (
            f"a micro-batch's term is -(1/N) sum A_i log pi over its rows, with the update's N passed in ({SECTION});{hint} "
            f"got {got:.6f}, expected {expected:.6f} (rows {batch}: {own} of N = {num_tokens(rows)} tokens)")


def test_the_gradient_equals_autograd_of_the_naive_per_token_loop(tokenizer, tiny_student):
    """Backpropagating each micro-batch's term (gradient accumulation) leaves in .grad the gradient of
    the naive loop's L: same tokens, same advantages, same N, the loss kept on the graph."""
    model = tiny_student.model
    rows = build_rows(tokenizer, model)
    model.zero_grad(set_to_none=True)
    for loss, _ in run(tiny_student, rows, rl.RLConfig()):
        loss.backward()
    fast = grads(model)
    model.zero_grad(set_to_none=True)
    naive = sum(-row.advantage * p for row in rows for p in naive_logprobs(model, row)) / num_tokens(rows)
    naive.backward()
    assert_same_gradients(fast, model, f"the accumulated gradient is dL of L = -(1/N) sum A_i log pi ({SECTION})")


def test_the_kl_penalty_is_beta_k3_of_the_reference_over_n(tokenizer, tiny_student, reference):
    """kl_coef = beta > 0: L gains beta * (1/N) sum k3, k3 = exp(q - p) - (q - p) - 1 per sampled token,
    q from the `reference` policy passed in (a frozen copy, full fine-tuning)."""
    rows = build_rows(tokenizer, tiny_student.model)
    config = rl.RLConfig(kl_coef=BETA)
    got = sum(float(loss.detach()) for loss, _ in run(tiny_student, rows, config, reference))
    p, q = per_token(tiny_student.model, rows), per_token(reference.model, rows)
    policy = -sum(row.advantage * sum(ps) for row, ps in zip(rows, p)) / num_tokens(rows)
    penalty = BETA * sum(k3(a, b) for pr, qr in zip(p, q) for a, b in zip(pr, qr)) / num_tokens(rows)
    hint = kl_diagnosis(got - policy, rows, p, q)
    assert math.isclose(got, policy + penalty, rel_tol=1e-5, abs_tol=1e-8), (
        f"the KL term is beta (1/N) sum k3, k3 = exp(q - p) - (q - p) - 1, q = log pi_ref, p = log pi (METHOD.md 3, The "
        f"loss; 7, item 25);{hint} got L = {got:.6f}, expected {policy:.6f} + {penalty:.6f} (beta {BETA})")


def test_the_kl_gradient_equals_autograd_of_the_naive_loop(tokenizer, tiny_student, reference):
    """With the KL on, the gradient is that of -(1/N) sum A p + beta (1/N) sum k3(p, q): q is a constant
    (no gradient into the reference), p carries the gradient of both terms."""
    model = tiny_student.model
    rows = build_rows(tokenizer, model)
    model.zero_grad(set_to_none=True)
    for loss, _ in run(tiny_student, rows, rl.RLConfig(kl_coef=BETA), reference):
        loss.backward()
    fast = grads(model)
    model.zero_grad(set_to_none=True)
    naive = torch.zeros(())
    for row in rows:
        with torch.no_grad():
            q = naive_logprobs(reference.model, row)
        for p, q_t in zip(naive_logprobs(model, row), q):
            naive = naive + (-row.advantage * p + BETA * (torch.exp(q_t - p) - (q_t - p) - 1)) / num_tokens(rows)
    naive.backward()
    assert_same_gradients(fast, model, f"with the KL on, the gradient is that of L + beta (1/N) sum k3 ({SECTION})")


def test_the_returned_kl_is_the_plain_sum_of_k3(tokenizer, tiny_student, reference):
    """numbers["kl"] is this micro-batch's sum of k3 over its tokens (no beta, no 1/N): the update adds
    the micro-batches' sums and logs rl/kl = that total / N."""
    rows = build_rows(tokenizer, tiny_student.model)
    p, q = per_token(tiny_student.model, rows), per_token(reference.model, rows)
    for batch, (_, numbers) in zip(MICRO_BATCHES, run(tiny_student, rows, rl.RLConfig(kl_coef=BETA), reference)):
        got = float(numbers["kl"])
        expected = sum(k3(a, b) for i in batch for a, b in zip(p[i], q[i]))
        own = sum(sum(rows[i].mask) for i in batch)
        hint = ""
        for name, value in [("divided by its own tokens", expected / own), ("times beta", BETA * expected),
                            ("divided by N", expected / num_tokens(rows)), ("times beta / N", BETA * expected / num_tokens(rows))]:
            if math.isclose(got, value, rel_tol=1e-4):
                hint = f" here {name}:"
        assert math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-9), (
            f"numbers['kl'] is the plain sum of k3 over the micro-batch's tokens, no beta and no 1/N ({SECTION});{hint} "
            f"got {got:.6g}, expected {expected:.6g} (rows {batch})")


def test_kl_off_adds_nothing_and_needs_no_reference(tokenizer, tiny_student):
    """kl_coef = 0 (the default, as in the paper): no reference pass at all (a full fine-tuning model
    without an adapter and reference=None must work), numbers["kl"] is 0."""
    rows = build_rows(tokenizer, tiny_student.model)
    for batch, (_, numbers) in zip(MICRO_BATCHES, run(tiny_student, rows, rl.RLConfig(kl_coef=0.0), None)):
        assert float(numbers["kl"]) == 0.0, (
            f"with kl_coef = 0 there is no KL term and numbers['kl'] is 0 ({SECTION}): rows {batch} got {numbers['kl']}")


def test_the_logprob_gap_is_the_sum_of_absolute_differences(tokenizer, tiny_student):
    """numbers["logprob_gap"] is sum |sampled log-prob - log pi here| over the micro-batch's tokens. The
    sampled log-probs here differ from the model's by known offsets of both signs, so the sum of
    their absolute values is the answer (a signed sum would let them cancel)."""
    rows = build_rows(tokenizer, tiny_student.model)
    for batch, (_, numbers) in zip(MICRO_BATCHES, run(tiny_student, rows, rl.RLConfig())):
        offsets = [OFFSETS[j % len(OFFSETS)] for i in batch for j in range(sum(rows[i].mask))]
        expected = sum(abs(o) for o in offsets)
        got = float(numbers["logprob_gap"])
        own = len(offsets)
        hint = ""
        for name, value in [("a signed sum, no absolute value", -sum(offsets)), ("a signed sum, no absolute value", sum(offsets)),
                            ("the mean, not the sum", expected / own), ("divided by N", expected / num_tokens(rows))]:
            if math.isclose(got, value, rel_tol=1e-3, abs_tol=1e-7):
                hint = f" here {name}:"
        assert math.isclose(got, expected, rel_tol=1e-3, abs_tol=1e-5), (
            f"numbers['logprob_gap'] is the sum of |sampled log-prob - log pi| over the micro-batch's tokens ({SECTION});"
            f"{hint} got {got:.6g}, expected {expected:.6g} (rows {batch})")


def test_with_lora_and_no_reference_the_reference_is_the_adapter_disabled(tokenizer, tiny_student):
    """reference=None (the LoRA case): q is this model's log-prob with its adapter disabled, which is
    the SFT policy; the adapter is on again for p. The adapter is perturbed here so the two differ."""
    tiny_student.attach_lora(rank=4, alpha=8)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, weight in tiny_student.model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, 0.3)  # a trained adapter, so pi != pi_ref
    model = tiny_student.model
    rows = build_rows(tokenizer, model)
    config = rl.RLConfig(kl_coef=BETA)
    out = run(tiny_student, rows, config, None)
    got = sum(float(loss.detach()) for loss, _ in out)
    p = per_token(model, rows)
    with model.disable_adapter():
        q = per_token(model, rows)
    policy = -sum(row.advantage * sum(ps) for row, ps in zip(rows, p)) / num_tokens(rows)
    penalty = BETA * sum(k3(a, b) for pr, qr in zip(p, q) for a, b in zip(pr, qr)) / num_tokens(rows)
    hint = " here q = log pi with the adapter still on, so k3 is 0:" if math.isclose(got, policy, rel_tol=1e-6) else ""
    assert penalty > 1e-4 and math.isclose(got, policy + penalty, rel_tol=1e-5, abs_tol=1e-8), (
        f"with reference None, pi_ref is this model with its LoRA adapter disabled, the SFT policy ({SECTION});{hint} "
        f"got L = {got:.6f}, expected {policy:.6f} + {penalty:.6f}")
    again = per_token(model, rows)
    assert again == p, "micro_batch_loss must leave the LoRA adapter enabled: the next rollouts sample with it"


WRONG = [
    {"target": "rl.micro_batch_loss", "mistake": "each micro-batch divided by its own supervised tokens n, not the update's N",
     "expect": "each micro-batch divided by its own supervised tokens",
     "source": '''
def micro_batch_loss(student, rows, num_tokens, config, reference=None):
    with student.compute():
        logprobs = rows_logprobs(student, rows, config)
    advantages = torch.tensor([r.advantage for r in rows for _ in range(sum(r.mask))], device=logprobs.device)
    loss = -(advantages * logprobs).sum() / logprobs.numel()
    kl_sum = 0.0
    if config.kl_coef > 0:
        scorer = reference or student
        adapter_off = student.model.disable_adapter() if reference is None else contextlib.nullcontext()
        with torch.no_grad(), adapter_off, scorer.compute():
            ref_logprobs = rows_logprobs(scorer, rows, config)
        delta = ref_logprobs - logprobs
        k3 = torch.exp(delta) - delta - 1
        loss = loss + config.kl_coef * k3.sum() / logprobs.numel()
        kl_sum = float(k3.detach().sum())
    sampled = torch.tensor([lp for r in rows for lp in r.sampled_logprobs], device=logprobs.device)
    gap_sum = float((sampled - logprobs.detach()).abs().sum())
    return loss, {"loss": float(loss.detach()), "kl": kl_sum, "logprob_gap": gap_sum}
'''},
    {"target": "rl.micro_batch_loss", "mistake": "a per-sequence mean: each row's log-probs averaged, then the rows",
     "expect": "per-sequence mean",
     "source": '''
def micro_batch_loss(student, rows, num_tokens, config, reference=None):
    with student.compute():
        logprobs = rows_logprobs(student, rows, config)
    per_row = logprobs.split([sum(r.mask) for r in rows])
    loss = -sum(r.advantage * lp.mean() for r, lp in zip(rows, per_row)) / len(rows)
    sampled = torch.tensor([lp for r in rows for lp in r.sampled_logprobs], device=logprobs.device)
    gap_sum = float((sampled - logprobs.detach()).abs().sum())
    return loss, {"loss": float(loss.detach()), "kl": 0.0, "logprob_gap": gap_sum}
'''},
    {"target": "rl.micro_batch_loss", "mistake": "divided by the number of continuations (G x P), not by tokens",
     "expect": "number of sequences",
     "source": '''
def micro_batch_loss(student, rows, num_tokens, config, reference=None):
    with student.compute():
        logprobs = rows_logprobs(student, rows, config)
    advantages = torch.tensor([r.advantage for r in rows for _ in range(sum(r.mask))], device=logprobs.device)
    loss = -(advantages * logprobs).sum() / len(rows)
    sampled = torch.tensor([lp for r in rows for lp in r.sampled_logprobs], device=logprobs.device)
    gap_sum = float((sampled - logprobs.detach()).abs().sum())
    return loss, {"loss": float(loss.detach()), "kl": 0.0, "logprob_gap": gap_sum}
'''},
    {"target": "rl.micro_batch_loss", "mistake": "KL with the wrong sign: exp(p - q) - (p - q) - 1",
     "expect": "the difference reversed",
     "source": '''
def micro_batch_loss(student, rows, num_tokens, config, reference=None):
    with student.compute():
        logprobs = rows_logprobs(student, rows, config)
    advantages = torch.tensor([r.advantage for r in rows for _ in range(sum(r.mask))], device=logprobs.device)
    loss = -(advantages * logprobs).sum() / num_tokens
    kl_sum = 0.0
    if config.kl_coef > 0:
        scorer = reference or student
        adapter_off = student.model.disable_adapter() if reference is None else contextlib.nullcontext()
        with torch.no_grad(), adapter_off, scorer.compute():
            ref_logprobs = rows_logprobs(scorer, rows, config)
        delta = logprobs - ref_logprobs
        k3 = torch.exp(delta) - delta - 1
        loss = loss + config.kl_coef * k3.sum() / num_tokens
        kl_sum = float(k3.detach().sum())
    sampled = torch.tensor([lp for r in rows for lp in r.sampled_logprobs], device=logprobs.device)
    gap_sum = float((sampled - logprobs.detach()).abs().sum())
    return loss, {"loss": float(loss.detach()), "kl": kl_sum, "logprob_gap": gap_sum}
'''},
    {"target": "rl.micro_batch_loss", "mistake": "k1 (log pi - log pi_ref) instead of k3",
     "expect": "k1 = p - q",
     "source": '''
def micro_batch_loss(student, rows, num_tokens, config, reference=None):
    with student.compute():
        logprobs = rows_logprobs(student, rows, config)
    advantages = torch.tensor([r.advantage for r in rows for _ in range(sum(r.mask))], device=logprobs.device)
    loss = -(advantages * logprobs).sum() / num_tokens
    kl_sum = 0.0
    if config.kl_coef > 0:
        scorer = reference or student
        adapter_off = student.model.disable_adapter() if reference is None else contextlib.nullcontext()
        with torch.no_grad(), adapter_off, scorer.compute():
            ref_logprobs = rows_logprobs(scorer, rows, config)
        k1 = logprobs - ref_logprobs
        loss = loss + config.kl_coef * k1.sum() / num_tokens
        kl_sum = float(k1.detach().sum())
    sampled = torch.tensor([lp for r in rows for lp in r.sampled_logprobs], device=logprobs.device)
    gap_sum = float((sampled - logprobs.detach()).abs().sum())
    return loss, {"loss": float(loss.detach()), "kl": kl_sum, "logprob_gap": gap_sum}
'''},
    {"target": "rl.micro_batch_loss", "mistake": "the log-prob gap summed with signs, so errors of both signs cancel",
     "expect": "signed sum",
     "source": '''
def micro_batch_loss(student, rows, num_tokens, config, reference=None):
    with student.compute():
        logprobs = rows_logprobs(student, rows, config)
    advantages = torch.tensor([r.advantage for r in rows for _ in range(sum(r.mask))], device=logprobs.device)
    loss = -(advantages * logprobs).sum() / num_tokens
    kl_sum = 0.0
    if config.kl_coef > 0:
        scorer = reference or student
        adapter_off = student.model.disable_adapter() if reference is None else contextlib.nullcontext()
        with torch.no_grad(), adapter_off, scorer.compute():
            ref_logprobs = rows_logprobs(scorer, rows, config)
        delta = ref_logprobs - logprobs
        k3 = torch.exp(delta) - delta - 1
        loss = loss + config.kl_coef * k3.sum() / num_tokens
        kl_sum = float(k3.detach().sum())
    sampled = torch.tensor([lp for r in rows for lp in r.sampled_logprobs], device=logprobs.device)
    gap_sum = float((sampled - logprobs.detach()).sum())
    return loss, {"loss": float(loss.detach()), "kl": kl_sum, "logprob_gap": gap_sum}
'''},
    {"target": "rl.micro_batch_loss", "mistake": "with LoRA and no reference, the model itself (adapter on) is the reference: KL is always 0",
     "expect": "adapter still on",
     "source": '''
def micro_batch_loss(student, rows, num_tokens, config, reference=None):
    with student.compute():
        logprobs = rows_logprobs(student, rows, config)
    advantages = torch.tensor([r.advantage for r in rows for _ in range(sum(r.mask))], device=logprobs.device)
    loss = -(advantages * logprobs).sum() / num_tokens
    kl_sum = 0.0
    if config.kl_coef > 0:
        scorer = reference or student
        with torch.no_grad(), scorer.compute():
            ref_logprobs = rows_logprobs(scorer, rows, config)
        delta = ref_logprobs - logprobs
        k3 = torch.exp(delta) - delta - 1
        loss = loss + config.kl_coef * k3.sum() / num_tokens
        kl_sum = float(k3.detach().sum())
    sampled = torch.tensor([lp for r in rows for lp in r.sampled_logprobs], device=logprobs.device)
    gap_sum = float((sampled - logprobs.detach()).abs().sum())
    return loss, {"loss": float(loss.detach()), "kl": kl_sum, "logprob_gap": gap_sum}
'''},
]
