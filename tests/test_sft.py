"""Tests of sft.py: the loss mask, the loss against a naive reference, packing isolation, learning,
resume, and save/load. CPU only, offline: tiny random Llamas with the real SmolLM2 vocabulary."""
import dataclasses
import json
import math

import pytest
import torch

import agent

from agent import ACTION_STOP, Step, Trajectory, format_step, render_ids
from sft import (SFTConfig, build_example, end_of_turn_ids, first_fit, lr_factor, loss_mask, masked_nll_sum,
                 micro_batch_loss, pack_row, plan_updates, train_sft)
from student import load_student
from conftest import make_tiny_student


def teacher_step(index: int, kind: str, thought: str, code: str = "", observation: str = "",
                 final_answer: str | None = None) -> Step:
    return Step(index=index, kind=kind, author="teacher", content=format_step(kind, thought, code), thought=thought,
                code=code, observation=observation or ("None" if kind == "plan" else ""), final_answer=final_answer)


def sum_trajectory(a: int, b: int) -> Trajectory:
    """A short three-step trajectory: plan, a printing step, a final answer."""
    steps = [teacher_step(1, "plan", f"Add {a} and {b}."),
             teacher_step(2, "action", "Add them.", f"x = {a} + {b}\nprint(x)", str(a + b)),
             teacher_step(3, "action", "Submit.", "final_answer(x)", final_answer=str(a + b))]
    return Trajectory(task_id=f"t{a}-{b}", task_set="arith", question=f"What is {a} + {b}?",
                      reference_answer=str(a + b), steps=steps, final_answer=str(a + b))


def tiny_config(**changes) -> SFTConfig:
    base = SFTConfig(lr=3e-3, epochs=1, warmup_ratio=0.0, micro_batch_tokens=1024, max_length=1024, grad_accum=1,
                     progress=False, checkpoint_every=100)
    return dataclasses.replace(base, **changes)


def test_loss_mask_exact_positions(tokenizer):
    """The mask must be 1 exactly on assistant ids and each turn's closing <|im_end|>; if this fails,
    SFT would train on the system prompt, the task or observations, or never learn to end a turn."""
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    plan = teacher_step(1, "plan", "Add the numbers.")
    # A student step whose stored ids are NOT the re-tokenisation of its text: the mask must follow
    # the stored ids (token exactness), whatever their count.
    student_ids = enc("<thought>Ad") + enc("d.</thought>\n<code>\nfinal_answer(5)\n</code>")
    assert student_ids != enc("<thought>Add.</thought>\n<code>\nfinal_answer(5)\n</code>")
    action = Step(index=2, kind="action", author="student", content=tokenizer.decode(student_ids),
                  token_ids=student_ids, final_answer="5", code="final_answer(5)")
    from agent import SYSTEM_PROMPT
    rendered = render_ids(tokenizer, "What is 2 + 3?", [plan, action])
    # The same conversation assembled by hand from the template's pieces: (ids, supervised?).
    pieces = [(enc("<|im_start|>system\n"), 0), (enc(SYSTEM_PROMPT), 0), (enc("<|im_end|>\n<|im_start|>user\n"), 0),
              (enc("What is 2 + 3?"), 0), (enc("<|im_end|>\n<|im_start|>assistant\n"), 0),
              (enc(plan.content), 1), (enc("<|im_end|>"), 1), (enc("\n<|im_start|>user\n"), 0),
              (enc("Observation: None"), 0), (enc("<|im_end|>\n<|im_start|>assistant\n"), 0),
              (student_ids, 1), (enc("<|im_end|>"), 1), (enc("\n"), 0)]
    expected_ids = [i for ids, _ in pieces for i in ids]
    assert rendered.ids == expected_ids
    mask = loss_mask(rendered.ids, rendered.segments, end_of_turn_ids(tokenizer))
    # Spelled out: the plan starts right after the fifth piece and runs through its <|im_end|>.
    plan_start = sum(len(ids) for ids, _ in pieces[:5])
    plan_end = plan_start + len(enc(plan.content)) + 1  # + the closing <|im_end|>
    action_start = sum(len(ids) for ids, _ in pieces[:10])
    action_end = action_start + len(student_ids) + 1
    expected_positions = list(range(plan_start, plan_end)) + list(range(action_start, action_end))
    assert [t for t, m in enumerate(mask) if m] == expected_positions
    assert rendered.ids[plan_end - 1] == rendered.ids[action_end - 1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert mask[plan_end] == 0 and mask[action_end] == 0  # the "\n" after <|im_end|> is template glue
    assert len(mask) == action_end + 1
    # build_example cuts ids and mask together.
    example = build_example(tokenizer, Trajectory("t", "arith", "What is 2 + 3?", "5", steps=[plan, action]),
                            plan_end, end_of_turn_ids(tokenizer))
    assert example.truncated and example.ids == rendered.ids[:plan_end] and example.mask == mask[:plan_end]


def test_loss_and_gradients_match_token_by_token_reference(tokenizer):
    """The packed, head-only-where-masked loss with the update-wide normaliser must equal a naive
    masked cross-entropy computed one token at a time, in value and gradient; if this fails, the
    shift, the mask, packing isolation or the normaliser 1/N is wrong."""
    student = make_tiny_student(tokenizer, seed=1)
    model = student.model.float()
    eot = end_of_turn_ids(tokenizer)
    examples = [build_example(tokenizer, sum_trajectory(a, b), 1024, eot) for a, b in [(2, 3), (10, 7), (4, 4)]]
    rows = [pack_row(examples[:2]), pack_row(examples[2:])]  # two micro-batches of one update
    num_tokens = sum(sum(e.mask) for e in examples)
    assert num_tokens == sum(sum(r.mask) for r in rows)

    model.zero_grad()
    total = sum(micro_batch_loss(model, row, "cpu", num_tokens, world_size=1)[0] for row in rows)
    total.backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    naive = torch.zeros(())
    for example in examples:  # L = -(1/N) sum over documents, over t with m_t = 1, of log p(x_t | x_<t)
        logits = model(input_ids=torch.tensor([example.ids])).logits[0]  # each document alone, full (T, V)
        log_probs = torch.log_softmax(logits.float(), -1)
        previous, targets = [], []
        for t, m in enumerate(example.mask):
            if m:  # the logits at t - 1 predict token t
                previous.append(t - 1)
                targets.append(example.ids[t])
        naive = naive - log_probs[previous, targets].sum()
    naive = naive / num_tokens
    naive.backward()
    assert total.item() == pytest.approx(naive.item(), rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast_grads[name], p.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_packed_row_logits_equal_documents_alone(tokenizer):
    """Each document in a packed row must see only itself (restarted positions, block-diagonal
    attention); if this fails, packing leaks context across trajectories and the loss is wrong."""
    student = make_tiny_student(tokenizer, seed=2)
    model = student.model
    eot = end_of_turn_ids(tokenizer)
    examples = [build_example(tokenizer, sum_trajectory(a, b), 1024, eot) for a, b in [(1, 2), (30, 40), (5, 6)]]
    row = pack_row(examples)
    ids, positions = torch.tensor([row.ids]), torch.tensor([row.positions])
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        # The pitfall: with a cache, transformers skips packed-sequence detection (one causal mask).
        leaky = model(input_ids=ids, position_ids=positions, use_cache=True).logits[0]
        start = 0
        for example in examples:
            alone = model(input_ids=torch.tensor([example.ids])).logits[0]
            torch.testing.assert_close(packed[start:start + len(example.ids)], alone, rtol=1e-4, atol=1e-5)
            start += len(example.ids)
    later = slice(len(examples[0].ids), None)
    assert not torch.allclose(leaky[later], packed[later], atol=1e-3), "the use_cache pitfall no longer exists?"


def test_packing_plan_and_schedule():
    """Every document must be trained exactly once per epoch in rows that fit, and the lr must warm up
    linearly then decay by a cosine; if this fails, data is dropped or duplicated, or lr is wrong."""
    lengths = [300, 700, 200, 900, 100, 512, 512]
    rows = first_fit(range(len(lengths)), lengths, 1024)
    assert rows == [[0, 1], [2, 4, 5], [3], [6]]  # first fit, spelled out
    config = SFTConfig(micro_batch_tokens=1024, grad_accum=2, epochs=3)
    plan = plan_updates(lengths, config, world_size=1)
    assert len(plan) == 3 * 2  # 4 rows an epoch, 2 rows an update
    docs = sorted(d for update in plan for row in update for d in row)
    assert docs == sorted(list(range(len(lengths))) * 3)
    assert all(sum(lengths[d] for d in row) <= 1024 for update in plan for row in update)
    assert plan == plan_updates(lengths, config, world_size=1)  # fixed by the seed
    assert [lr_factor(u, 10, 2) for u in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(6, 10, 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert 0 < lr_factor(9, 10, 2) < 0.05


def test_tiny_model_overfits_and_reproduces_a_step(tokenizer, tmp_path, monkeypatch):
    """A tiny random model must drive the loss on 4 fixed trajectories below 0.05 and then, greedily,
    write a trained step token for token; if this fails, the loop (or the mask) does not teach."""
    # A one-line system prompt keeps this fast: what is tested (mask, loss, loop) does not depend on
    # it, and with the real ~150-token prompt a 2-layer model needs far more updates to learn to copy
    # the task's numbers.
    monkeypatch.setattr(agent, "SYSTEM_PROMPT", "You solve tasks with Python.")
    student = make_tiny_student(tokenizer, seed=3)
    trajectories = [sum_trajectory(a, b) for a, b in [(2, 3), (11, 7), (40, 2), (9, 9)]]
    # One document a row and a row an update: 4 updates an epoch, 600 in all (copying digits from the
    # question is learnt late, after ~300 updates).
    config = tiny_config(lr=1e-2, epochs=150, warmup_ratio=0.05, micro_batch_tokens=256, max_length=256)
    summary = train_sft(student, trajectories, config, tmp_path / "out", tmp_path / "metrics.jsonl")
    assert summary["finished"] and summary["truncated"] == 0
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["sft/update"] for r in records] == list(range(1, 601))
    assert records[0]["sft/loss"] > 5 and set(records[0]) >= {"sft/tokens", "sft/tok_per_s", "sft/lr", "sft/grad_norm"}
    eot = end_of_turn_ids(tokenizer)
    with torch.no_grad():
        sums = [masked_nll_sum(student.model, pack_row([build_example(tokenizer, t, 256, eot)]), "cpu")
                for t in trajectories]
    assert sum(float(s) for s, _ in sums) / sum(n for _, n in sums) < 0.05
    target = trajectories[1]
    prompt = render_ids(tokenizer, target.question, target.steps[:1], add_generation_prompt=True).ids
    sample = student.sample([prompt], [[ACTION_STOP]], max_new_tokens=40, temperature=0.0, top_p=1.0, seeds=[0])[0]
    assert sample.text == target.steps[1].content


def test_resume_equals_straight_run(tokenizer, tmp_path):
    """3 updates, stop, resume 3 more must give the weights of 6 straight updates, log each update
    once, and a re-run of a finished call must only restore the weights; if this fails, resuming
    loses optimiser, schedule, RNG or data-order state."""
    trajectories = [sum_trajectory(a, b) for a, b in [(1, 1), (2, 5), (3, 8), (4, 4), (5, 1), (6, 2)]]
    config = tiny_config(lr=5e-3, micro_batch_tokens=256, max_length=256, warmup_ratio=0.3)  # one document a row

    straight = make_tiny_student(tokenizer, seed=4)
    summary = train_sft(straight, trajectories, config, tmp_path / "a", tmp_path / "a.jsonl")
    assert summary["num_updates"] == 6

    first = make_tiny_student(tokenizer, seed=4)
    stopped = train_sft(first, trajectories, config, tmp_path / "b", tmp_path / "b.jsonl", stop_after=3)
    assert not stopped["finished"] and stopped["updates_done"] == 3
    resumed_student = make_tiny_student(tokenizer, seed=4)
    resumed = train_sft(resumed_student, trajectories, config, tmp_path / "b", tmp_path / "b.jsonl")
    assert resumed["finished"]
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed_student.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert [json.loads(line)["sft/update"] for line in open(tmp_path / "b.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert not (tmp_path / "b" / "checkpoint" / "optimizer.pt").exists()  # finished: weights only

    again = make_tiny_student(tokenizer, seed=4)
    restored = train_sft(again, trajectories, config, tmp_path / "b", tmp_path / "b.jsonl")
    assert restored["restored"]
    torch.testing.assert_close(dict(again.model.named_parameters())["model.norm.weight"],
                               dict(straight.model.named_parameters())["model.norm.weight"])
    assert len(open(tmp_path / "b.jsonl").readlines()) == 6  # nothing trained twice


@pytest.mark.parametrize("lora", [True, False])
def test_saved_model_loads_with_load_student(tokenizer, tmp_path, lora):
    """The final model (a LoRA adapter or full weights) must load through student.load_student and give
    the trained model's logits; if this fails, later phases and eval would use other weights."""
    base_dir = tmp_path / "base"
    tiny = make_tiny_student(tokenizer, seed=5)
    tiny.model.save_pretrained(str(base_dir))
    tokenizer.save_pretrained(str(base_dir))
    student = load_student(str(base_dir), device="cpu", dtype="float32")
    trajectories = [sum_trajectory(a, b) for a, b in [(1, 2), (3, 4)]]
    config = tiny_config(lora=lora, lora_rank=4, lora_alpha=8, epochs=2, lr=1e-2)
    train_sft(student, trajectories, config, tmp_path / "out", tmp_path / "metrics.jsonl")
    assert (tmp_path / "out" / ("adapter_config.json" if lora else "model.safetensors")).exists()
    loaded = load_student(str(tmp_path / "out"), device="cpu", dtype="float32")
    assert hasattr(loaded.model, "peft_config") == lora
    ids = torch.tensor([build_example(tokenizer, trajectories[0], 1024, end_of_turn_ids(tokenizer)).ids])
    with torch.no_grad():
        trained_logits = student.model(input_ids=ids).logits
        loaded_logits = loaded.model(input_ids=ids).logits
        base_logits = tiny.model(input_ids=ids).logits
    torch.testing.assert_close(loaded_logits, trained_logits, rtol=0, atol=1e-5)
    assert not torch.allclose(base_logits, trained_logits, atol=1e-3)  # training changed the model


def test_cpu_autocast_trains_fp32_weights_with_bf16_matmuls(tokenizer, tmp_path):
    """SFTConfig.autocast="bfloat16": the decoder's matmuls run in bf16 while training, the weights stay
    fp32 and move, the losses follow the fp32 run's closely, and nothing of it is left on the model
    afterwards; "off" stays in fp32. If this failed, the CPU preset's BC would either not be faster or
    train (and hand back) another model than it says."""
    trajectories = [sum_trajectory(a, b) for a, b in [(2, 3), (11, 7), (40, 2), (9, 9)]]
    losses, seen = {}, {}
    for setting in ("off", "bfloat16"):
        student = make_tiny_student(tokenizer, seed=6)
        before = {n: p.detach().clone() for n, p in student.model.named_parameters()}
        dtypes = []
        hook = student.model.model.layers[0].self_attn.q_proj.register_forward_hook(
            lambda module, inputs, output: dtypes.append(output.dtype))
        config = tiny_config(autocast=setting, epochs=2, micro_batch_tokens=256, max_length=256)
        train_sft(student, trajectories, config, tmp_path / setting, tmp_path / f"{setting}.jsonl")
        seen[setting], trained = set(dtypes), len(dtypes)
        with torch.no_grad():  # after training: the model computes in its own dtype again
            student.model(input_ids=torch.tensor([[1, 2, 3]]))
        hook.remove()
        assert dtypes[trained:] == [torch.float32]
        assert all(p.dtype == torch.float32 for p in student.model.parameters())
        assert any(not torch.equal(before[n], p) for n, p in student.model.named_parameters())
        losses[setting] = [json.loads(line)["sft/loss"] for line in open(tmp_path / f"{setting}.jsonl")]
    assert seen == {"off": {torch.float32}, "bfloat16": {torch.bfloat16}}
    assert len(losses["off"]) == len(losses["bfloat16"]) == 8
    assert losses["off"] != losses["bfloat16"]  # another rounding ...
    for fp32, bf16 in zip(losses["off"], losses["bfloat16"]):
        assert abs(fp32 - bf16) < 0.05 * fp32, (losses["off"], losses["bfloat16"])  # ... of the same training
    with pytest.raises(ValueError, match="autocast"):
        train_sft(make_tiny_student(tokenizer), trajectories, tiny_config(autocast="fp8"), tmp_path / "bad",
                  tmp_path / "bad.jsonl")


def test_masked_nll_sum_counts_only_supervised_tokens(tokenizer):
    """The head must run on exactly the masked targets; if this fails the loss normaliser is off."""
    student = make_tiny_student(tokenizer, seed=6)
    example = build_example(tokenizer, sum_trajectory(2, 2), 1024, end_of_turn_ids(tokenizer))
    with torch.no_grad():
        _, count = masked_nll_sum(student.model, pack_row([example, example]), "cpu")
    assert count == 2 * sum(example.mask)
