"""Grader for the assignment sft-loss: `sft.micro_batch_loss` and `sft.lr_factor`.

The rules (METHOD.md section 3, Phase 2; section 7, item 17):
    L_SFT = (1/N) sum_r sum_t m_rt * (-log pi(y_rt | y_r,<t))   N = sum of m over every row r of the update
Each micro-batch (one packed row) contributes its own term with the update's N, so the terms of the
update's rows add up to L exactly; under DDP, which AVERAGES gradients over world_size processes, each
process multiplies its term by world_size. The schedule multiplies the peak lr by
    (u + 1) / W                                 for u < W (the first update already moves)
    0.5 * (1 + cos(pi * (u - W) / (U - W)))     after (the peak at u = W)

The loss is checked in value and in gradient against torch.autograd of an explicit per-token loop on
a tiny random Llama. The rows are built by hand (sft.pack_row) with hand-made masks: no other
assignment's function runs here.
"""
import math

import torch

from sft import Example, lr_factor, micro_batch_loss, pack_row

# Three documents: (text, how many of its last tokens are targets). Row A holds the first two, row B
# the third, so the rows have very different supervised counts: a per micro-batch or per document
# mean then gives a different number from the update's (1/N) sum.
DOCUMENTS = [("What is 2 + 3? Add the numbers and print the sum.", 3),
             ("What is 10 + 7? First add ten and seven, then submit seventeen as the final answer.", 9),
             ("Plan: read the task, compute the product of six and seven in code, print it, check it, "
              "and call final_answer with forty-two once the printed number is right.", 20)]
ROWS = [[0, 1], [2]]  # the update: row index -> its documents


def update(tokenizer):
    """(documents as Examples, the update's packed rows, N = supervised tokens of the whole update)."""
    examples = []
    for text, targets in DOCUMENTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) > targets + 1, "a grader document must be longer than its targets (its first token is never one)"
        examples.append(Example(ids, [0] * (len(ids) - targets) + [1] * targets, False))
    rows = [pack_row([examples[d] for d in docs]) for docs in ROWS]
    return examples, rows, sum(sum(r.mask) for r in rows)


def naive_nll(model, example) -> torch.Tensor:
    """sum_t m_t * -log pi(y_t | y_<t) of one document, alone, one target token at a time."""
    logits = model(input_ids=torch.tensor([example.ids])).logits[0].float()  # (T, V): the document alone
    total = torch.zeros(())
    for t, m in enumerate(example.mask):
        if m:  # the logits at t - 1 predict token t
            total = total - torch.log_softmax(logits[t - 1], -1)[example.ids[t]]
    return total


def shares(model, tokenizer, world_size=1):
    """The submission's (loss, logged nll) per row of the update, and the update's N."""
    examples, rows, num_tokens = update(tokenizer)
    out = [micro_batch_loss(model, row, "cpu", num_tokens, world_size) for row in rows]
    for loss, _ in out:
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0, (
            "micro_batch_loss returns (a scalar loss tensor to backpropagate, the nll sum for logging): got "
            f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))} as the loss")
    return examples, rows, num_tokens, out


def diagnosis(got: float, sums, counts, doc_sums, doc_counts, all_tokens: int) -> str:
    """Name the common wrong normaliser that `got` matches, if one does."""
    candidates = {
        "a per micro-batch mean: each row divided by its own supervised tokens":
            sum(s / c for s, c in zip(sums, counts)),
        "the mean of the micro-batch means": sum(s / c for s, c in zip(sums, counts)) / len(sums),
        "a per sequence mean: each document divided by its own supervised tokens":
            sum(s / c for s, c in zip(doc_sums, doc_counts)),
        "the plain sum, not divided by N": sum(sums),
        "divided by all tokens of the rows, not only the supervised ones": sum(sums) / all_tokens,
    }
    for name, value in candidates.items():
        if math.isclose(got, value, rel_tol=1e-4):
            return f"; here {name}"
    return ""


def test_the_update_loss_is_divided_by_the_supervised_tokens_of_the_whole_update(tokenizer, tiny_student):
    """Summed over the update's rows, micro_batch_loss gives (1/N) sum of -log pi over every target token,
    N counted over the whole update: equal to the naive per-token loop (world_size 1)."""
    model = tiny_student.model
    examples, rows, num_tokens, out = shares(model, tokenizer)
    with torch.no_grad():
        doc_sums = [float(naive_nll(model, e)) for e in examples]
        got = float(sum(loss.detach() for loss, _ in out))
    expected = sum(doc_sums) / num_tokens
    row_sums = [sum(doc_sums[d] for d in docs) for docs in ROWS]
    all_tokens = sum(len(r.ids) for r in rows)
    hint = diagnosis(got, row_sums, [sum(r.mask) for r in rows], doc_sums, [sum(e.mask) for e in examples], all_tokens)
    assert math.isclose(got, expected, rel_tol=1e-5), (
        f"L = (1/N) sum of -log pi over the targets, N = supervised tokens of the WHOLE update (num_update_tokens; "
        f"METHOD.md 3, Phase 2){hint}: summed over {len(rows)} rows, N = {num_tokens}, got {got:.6f}, expected {expected:.6f}")


def test_the_gradient_equals_autograd_of_the_naive_loop(tokenizer, tiny_student):
    """Backpropagating each row's loss (gradient accumulation) gives the gradient of the naive loop's
    (1/N) sum: the loss must stay on the graph, with the same targets and the same normaliser."""
    model = tiny_student.model
    examples, rows, num_tokens, out = shares(model, tokenizer)
    model.zero_grad(set_to_none=True)
    for loss, _ in out:
        assert loss.requires_grad, "micro_batch_loss's first value is the loss to backpropagate: it must not be detached"
        loss.backward()
    fast = {name: p.grad.clone() if p.grad is not None else None for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    (sum(naive_nll(model, e) for e in examples) / num_tokens).backward()
    for name, p in model.named_parameters():
        assert fast[name] is not None, (
            f"the gradient of L must reach every weight (METHOD.md 3, Phase 2): {name} got no gradient from micro_batch_loss")
        error = float((fast[name] - p.grad).abs().max())
        scale = float(p.grad.abs().max()) + 1e-12
        assert error <= 1e-4 * scale + 1e-7, (
            f"the accumulated gradient is dL of L = (1/N) sum -log pi over the update's targets (METHOD.md 3, Phase 2): "
            f"{name} differs from autograd of the naive loop by {error:.2e} (its largest entry is {scale:.2e})")


def test_each_process_multiplies_its_share_by_world_size(tokenizer, tiny_student):
    """Under DDP every process computes its rows' terms with the global N, and DDP AVERAGES gradients over
    world_size processes: each term is multiplied by world_size, so the averaged gradient is dL."""
    model = tiny_student.model
    examples, rows, num_tokens, out = shares(model, tokenizer, world_size=4)
    with torch.no_grad():
        doc_sums = [float(naive_nll(model, e)) for e in examples]
    for r, (docs, (loss, _)) in enumerate(zip(ROWS, out)):
        row_sum = sum(doc_sums[d] for d in docs)
        expected, got = 4 * row_sum / num_tokens, float(loss.detach())
        hint = "; here the world_size factor is missing" if math.isclose(got, row_sum / num_tokens, rel_tol=1e-4) else ""
        hint = "; here divided by world_size, not multiplied" if math.isclose(got, row_sum / num_tokens / 4, rel_tol=1e-4) else hint
        assert math.isclose(got, expected, rel_tol=1e-5), (
            f"DDP averages gradients over world_size processes, so each term is world_size * nll_sum / N (METHOD.md 3, "
            f"Phase 2){hint}: row {r}, world_size 4, N = {num_tokens}: got {got:.6f}, expected {expected:.6f}")


def test_the_logged_number_is_the_rows_plain_nll_sum(tokenizer, tiny_student):
    """The second value is what the loop logs: sum of -log pi over the row's targets, not normalised, and
    detached (it is added up across rows and processes for the logged mean)."""
    model = tiny_student.model
    examples, rows, num_tokens, out = shares(model, tokenizer, world_size=2)
    with torch.no_grad():
        doc_sums = [float(naive_nll(model, e)) for e in examples]
    for r, (docs, (_, logged)) in enumerate(zip(ROWS, out)):
        expected = sum(doc_sums[d] for d in docs)
        got = float(logged)
        assert math.isclose(got, expected, rel_tol=1e-5), (
            "micro_batch_loss's second value is the row's plain sum of -log pi over its targets, for logging "
            f"(no 1/N, no world_size): row {r} got {got:.6f}, expected {expected:.6f}")
        assert not (isinstance(logged, torch.Tensor) and logged.requires_grad), (
            "the logged nll sum is a number for the logs: detach it, or every row's graph stays alive until the update ends")


def test_warmup_is_u_plus_one_over_w_so_the_first_update_moves():
    """lr_factor(u) = (u + 1) / W for u < W: the first update already has lr / W, and the last warmup
    update reaches the peak."""
    got = lr_factor(0, 20, 4)
    assert math.isclose(got, 0.25), (
        "the warmup factor is (u + 1) / W, so the first update already moves (METHOD.md 3, Phase 2): "
        f"lr_factor(0, num_updates=20, warmup=4) got {got}, expected 0.25")
    got = [lr_factor(u, 20, 4) for u in range(4)]
    expected = [0.25, 0.5, 0.75, 1.0]
    assert all(math.isclose(g, e) for g, e in zip(got, expected)), (
        f"the warmup factor rises linearly as (u + 1) / W (METHOD.md 3, Phase 2): u = 0..3 with W = 4 got {got}, "
        f"expected {expected}")


def test_the_cosine_starts_at_the_peak_at_u_equals_w():
    """The first update after warmup, u = W, is at the peak: cos(pi * (u - W) / (U - W)) = cos(0) = 1."""
    for num_updates, warmup in [(20, 4), (10, 1), (7, 3)]:
        got = lr_factor(warmup, num_updates, warmup)
        assert math.isclose(got, 1.0), (
            "after warmup the cosine starts at its peak at u = W, 0.5 * (1 + cos(pi * (u - W) / (U - W))) (METHOD.md 3, "
            f"Phase 2): lr_factor({warmup}, num_updates={num_updates}, warmup={warmup}) got {got}, expected 1.0")


def test_the_cosine_decays_towards_zero_at_the_last_update():
    """For W <= u < U: 0.5 * (1 + cos(pi * (u - W) / (U - W))), decreasing, just above 0 at u = U - 1."""
    num_updates, warmup = 20, 4
    for u in range(warmup, num_updates):
        expected = 0.5 * (1 + math.cos(math.pi * (u - warmup) / (num_updates - warmup)))
        got = lr_factor(u, num_updates, warmup)
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12), (
            "after warmup the factor is 0.5 * (1 + cos(pi * (u - W) / (U - W))) (METHOD.md 3, Phase 2): "
            f"lr_factor({u}, num_updates={num_updates}, warmup={warmup}) got {got}, expected {expected:.6f}")


def test_no_warmup_starts_at_the_peak():
    """warmup = 0 (warmup_ratio 0) has no warmup phase: the first update is at the peak, then the cosine."""
    got = [lr_factor(u, 8, 0) for u in range(8)]
    expected = [0.5 * (1 + math.cos(math.pi * u / 8)) for u in range(8)]
    assert all(math.isclose(g, e, rel_tol=1e-9, abs_tol=1e-12) for g, e in zip(got, expected)), (
        "with warmup = 0 the cosine starts at the peak at the first update, 0.5 * (1 + cos(pi * u / U)) (METHOD.md 3, "
        f"Phase 2): num_updates = 8 got {[round(g, 4) for g in got]}, expected {[round(e, 4) for e in expected]}")


WRONG = [
    {"target": "sft.lr_factor", "mistake": "warmup is u / W, so the first update does not move",
     "expect": "first update already moves",
     "source": '''
def lr_factor(update_idx, num_updates, warmup):
    if update_idx < warmup:
        return update_idx / warmup
    progress = (update_idx - warmup) / max(1, num_updates - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
'''},
    {"target": "sft.lr_factor", "mistake": "the cosine runs over all updates, warmup included, so it is past its peak at u = W",
     "expect": "peak at u = W",
     "source": '''
def lr_factor(update_idx, num_updates, warmup):
    if update_idx < warmup:
        return (update_idx + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * update_idx / num_updates))
'''},
    {"target": "sft.micro_batch_loss", "mistake": "each micro-batch is averaged over its own supervised tokens",
     "expect": "per micro-batch mean",
     "source": '''
def micro_batch_loss(model, row, device, num_update_tokens, world_size):
    nll_sum, count = masked_nll_sum(model, row, device)
    return nll_sum * (world_size / count), nll_sum.detach()
'''},
    {"target": "sft.micro_batch_loss", "mistake": "no world_size factor: under DDP the averaged gradient is dL / world_size",
     "expect": "world_size factor is missing",
     "source": '''
def micro_batch_loss(model, row, device, num_update_tokens, world_size):
    nll_sum, _ = masked_nll_sum(model, row, device)
    return nll_sum / num_update_tokens, nll_sum.detach()
'''},
]
