"""What every grader shares: the code under grade, a time limit per test, the tokenizer, tiny models.

`python score.py assignments grade DIR` runs these files with DIR first on sys.path and
SCORE_GRADE_DIR=DIR, so `import rl` is the submission's rl.py; the check below makes sure of it.
"""
import os
import signal
from pathlib import Path

import pytest
import torch

GRADED_MODULES = ("agent", "mps", "rl", "sft", "student")
# Generous for a 2-core laptop (each test takes a few seconds); an endless loop ends here, not in the
# grader's patience. `assignments grade --test-timeout S` sets it.
SECONDS_PER_TEST = int(os.environ.get("SCORE_GRADE_TEST_S", "60"))


class GraderTimeout(Exception):
    pass


def pytest_sessionstart(session):
    """Refuse to grade anything but the directory asked for (a stray copy on sys.path would pass)."""
    expected = os.environ.get("SCORE_GRADE_DIR")
    if not expected:
        return
    import importlib
    for name in GRADED_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # a submission that does not import: each grader's collection reports it
            continue
        where = Path(module.__file__).resolve()
        if not where.is_relative_to(Path(expected).resolve()):
            raise pytest.UsageError(f"grading {expected} but {name} was imported from {where}")


@pytest.fixture(autouse=True)
def time_limit():
    """Each test ends after SECONDS_PER_TEST with a message, so one slow assignment cannot stall the others."""
    def expire(signum, frame):
        raise GraderTimeout(f"took over {SECONDS_PER_TEST} s: an endless loop, or far too slow")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(SECONDS_PER_TEST)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # tiny tensors: threads only add noise and contention


@pytest.fixture(scope="session")
def tokenizer():
    """The offline student's real tokenizer (SmolLM2, ChatML): masks are checked on real templates."""
    from transformers import AutoTokenizer
    from student import resolve_model_path
    return AutoTokenizer.from_pretrained(resolve_model_path("smol-135m"))


@pytest.fixture
def tiny_student(tokenizer):
    """A random 2-layer Llama with the real vocabulary (student.make_tiny_student)."""
    from student import make_tiny_student
    return make_tiny_student(tokenizer)
