"""Every attack of bench/sandbox_attacks.py, in every isolation mode this machine supports.

The attacks are kept in one list, in the benchmark, so that `python bench/sandbox_attacks.py`
(its table in bench/RESULTS.md) and this test can never disagree about what is contained.
"""

import pytest

from bench.sandbox_attacks import ATTACKS, Skip
from tools import probe_isolation

MODES = [
    pytest.param("limits"),
    pytest.param("bwrap", marks=pytest.mark.skipif(
        probe_isolation() != "bwrap", reason="bubblewrap does not work on this machine")),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attack", ATTACKS, ids=[attack.name for attack in ATTACKS])
def test_attack_is_contained(attack, mode):
    """If this fails, model code escapes the sandbox in the way the attack's docstring describes:
    the message says what got through."""
    try:
        escape = attack.run(mode)
    except Skip as skip:
        pytest.skip(str(skip))
    assert escape is None, escape
