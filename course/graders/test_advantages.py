"""Grader for the assignment advantages: `rl.group_advantages`, the baseline of one group.

The rules (METHOD.md section 3, Phase 3, Advantages), for the G rewards r of one group:
    mean:  A_i = r_i - (1/G) sum_j r_j
    grpo:  A_i = (r_i - mean(r)) / std(r)                 std over the group, ddof 0 (divide by G)
    rloo:  A_i = r_i - (1/(G-1)) sum_{j != i} r_j  =  G/(G-1) * (r_i - mean(r))
    max(r) - min(r) < 1e-12: None, the group has no signal and is skipped (its tokens leave N too)
The expected values are worked out by hand in each test, or by an explicit loop written here (never
by the code under grade).
"""
import math

import rl

SECTION = "METHOD.md 3, Phase 3, Advantages"
KINDS = ("mean", "grpo", "rloo")
# Reward groups as RL sees them (the table's values 0, 0.1, 0.5, 1), of several sizes G.
GROUPS = [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.5, 0.5], [0.1, 0.5, 1.0], [0.0, 1.0],
          [0.5, 0.1, 0.1, 0.0, 1.0, 1.0, 0.0, 0.5], [0.1, 0.0, 0.0, 0.0, 0.0, 0.0]]


def advantages(rewards, kind):
    """The submission's advantages as a list of floats (None passes through), checked for length."""
    got = rl.group_advantages(list(rewards), kind)
    if got is None:
        return None
    got = [float(a) for a in got]
    assert len(got) == len(rewards), (
        f"group_advantages gives one advantage per reward of the group ({SECTION}): got {len(got)} for G = {len(rewards)}")
    return got


def show(values):
    return "None" if values is None else "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def same(got, expected, tol=1e-9):
    return got is not None and all(math.isclose(g, e, rel_tol=tol, abs_tol=tol) for g, e in zip(got, expected))


def naive(rewards, kind):
    """The rules above as explicit loops over the group."""
    size = len(rewards)
    mean = 0.0
    for r in rewards:
        mean += r / size
    if kind == "mean":
        return [r - mean for r in rewards]
    if kind == "grpo":
        variance = 0.0
        for r in rewards:
            variance += (r - mean) ** 2 / size  # ddof 0
        return [(r - mean) / math.sqrt(variance) for r in rewards]
    others = []
    for i in range(size):
        total = 0.0
        for j in range(size):
            if j != i:
                total += rewards[j]
        others.append(total / (size - 1))
    return [r - o for r, o in zip(rewards, others)]


def test_mean_baseline_subtracts_the_group_mean():
    """kind="mean": A_i = r_i - mean(r), e.g. [1, 0, 0.5, 0.5] -> [0.5, -0.5, 0, 0] (mean 0.5)."""
    for rewards, expected in [([1.0, 0.0, 0.5, 0.5], [0.5, -0.5, 0.0, 0.0]),
                              ([1.0, 0.0, 0.0, 0.0], [0.75, -0.25, -0.25, -0.25]),
                              ([0.1, 0.5, 1.0], [0.1 - 1.6 / 3, 0.5 - 1.6 / 3, 1.0 - 1.6 / 3])]:
        got = advantages(rewards, "mean")
        assert same(got, expected), (
            f"the mean baseline is A_i = r_i - (1/G) sum_j r_j ({SECTION}): rewards {rewards} got {show(got)}, "
            f"expected {show(expected)}")


def test_grpo_divides_by_the_group_std_with_ddof_0():
    """kind="grpo": (r_i - mean) / std with the population std (divide by G). [1, 0, 0, 0]: mean 0.25,
    std sqrt(0.1875) = 0.4330, so A_0 = 0.75 / 0.4330 = 1.7321; the sample std (ddof 1) would give 1.5."""
    for rewards in ([1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.5, 0.5], [0.1, 0.5, 1.0]):
        got = advantages(rewards, "grpo")
        mean = sum(rewards) / len(rewards)
        deviations = [r - mean for r in rewards]
        std = math.sqrt(sum(d * d for d in deviations) / len(rewards))
        expected = [d / std for d in deviations]
        sample_std = math.sqrt(sum(d * d for d in deviations) / (len(rewards) - 1))
        hint = ""
        if same(got, [d / sample_std for d in deviations], 1e-6):
            hint = " here divided by the sample std (ddof 1, G - 1):"
        elif same(got, deviations, 1e-6):
            hint = " here not divided by the std at all:"
        assert same(got, expected), (
            f"GRPO divides r_i - mean by the group's std with ddof 0, dividing by G not G - 1 ({SECTION});{hint} "
            f"rewards {rewards} got {show(got)}, expected {show(expected)}")


def test_grpo_advantages_have_mean_0_and_std_1():
    """Whatever the group, GRPO's advantages have mean 0 and population std exactly 1 (its point:
    every group's advantages on one scale)."""
    for rewards in GROUPS:
        got = advantages(rewards, "grpo")
        mean = sum(got) / len(got)
        std = math.sqrt(sum((a - mean) ** 2 for a in got) / len(got))
        assert math.isclose(mean, 0.0, abs_tol=1e-9) and math.isclose(std, 1.0, rel_tol=1e-9), (
            f"GRPO's advantages have mean 0 and std 1 over the group, std with ddof 0 ({SECTION}): rewards {rewards} "
            f"got mean {mean:.4f}, std {std:.4f}, expected 0 and 1")


def test_rloo_subtracts_the_mean_of_the_other_samples():
    """kind="rloo": the baseline of sample i is the mean of the OTHER G - 1 rewards. [1, 0, 0.5, 0.5]:
    A_0 = 1 - (0 + 0.5 + 0.5) / 3 = 2/3, A_1 = 0 - 2/3; r - mean of all would give 0.5 and -0.5."""
    for rewards, expected in [([1.0, 0.0, 0.5, 0.5], [2 / 3, -2 / 3, 0.0, 0.0]),
                              ([1.0, 0.0], [1.0, -1.0]),
                              ([1.0, 0.0, 0.0, 0.0], [1.0, -1 / 3, -1 / 3, -1 / 3])]:
        got = advantages(rewards, "rloo")
        mean = sum(rewards) / len(rewards)
        hint = " here r_i - the mean of the whole group, r_i itself included:" if same(got, [r - mean for r in rewards]) else ""
        assert same(got, expected), (
            f"RLOO's baseline is the mean of the other G - 1 rewards, r_i left out ({SECTION});{hint} rewards {rewards} "
            f"got {show(got)}, expected {show(expected)}")


def test_every_kind_matches_an_explicit_loop_on_groups_of_several_sizes():
    """For groups of G = 2..8, each kind equals the rule written as a plain loop (for rloo, the loop
    over j != i, which also equals G/(G-1) * (r_i - mean))."""
    for kind in KINDS:
        for rewards in GROUPS:
            got, expected = advantages(rewards, kind), naive(rewards, kind)
            assert same(got, expected), (
                f"{kind}: the advantages differ from the rule written as a loop ({SECTION}): rewards {rewards} "
                f"got {show(got)}, expected {show(expected)}")


def test_a_group_whose_rewards_are_all_equal_returns_none():
    """All rewards equal (all 0, all 1, all 0.1): no sample is better than another, so there is no
    signal. The function returns None, for every kind, so the loop skips the group (and leaves its
    tokens out of N); zeros would still count its tokens in N and shrink every other token's weight."""
    for kind in KINDS:
        for rewards in ([0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.1, 0.1, 0.1], [0.5, 0.5]):
            got = rl.group_advantages(list(rewards), kind)
            shape = " here a list of zeros:" if got is not None and all(float(a) == 0 for a in got) else ""
            assert got is None, (
                f"a group whose rewards are all equal has no signal: return None so it is skipped ({SECTION});{shape} "
                f"kind {kind!r}, rewards {rewards} got {show(got)}")


def test_rewards_within_1e_12_of_each_other_count_as_equal():
    """The test is max(r) - min(r) < 1e-12, not ==: 0.1 + 0.2 and 0.3 differ by float rounding only
    (5.6e-17), and such a group must be skipped like any equal group (GRPO would divide by ~1e-17)."""
    rewards = [0.1 + 0.2, 0.3, 0.3, 0.3]
    for kind in KINDS:
        got = rl.group_advantages(list(rewards), kind)
        assert got is None, (
            f"rewards within 1e-12 of each other are equal, max(r) - min(r) < 1e-12, not == ({SECTION}): kind {kind!r}, "
            f"rewards [0.1 + 0.2, 0.3, 0.3, 0.3] got {show(got)}, expected None")


def test_a_small_real_difference_is_still_a_signal():
    """A group that differs by 1e-6 is not skipped: only differences under 1e-12 are rounding."""
    rewards = [0.0, 1e-6, 0.0, 0.0]
    for kind in KINDS:
        got, expected = advantages(rewards, kind), naive(rewards, kind)
        assert same(got, expected, 1e-6), (
            f"only rewards within 1e-12 count as equal; a difference of 1e-6 is a signal ({SECTION}): kind {kind!r}, "
            f"rewards {rewards} got {show(got)}, expected {show(expected)}")


def test_the_rewards_passed_in_are_left_unchanged():
    """The loop keeps the rewards (they are logged and dumped with the samples): the advantages are a
    new list, the rewards are not overwritten."""
    for kind in KINDS:
        rewards = [1.0, 0.0, 0.5, 0.1]
        rl.group_advantages(rewards, kind)
        assert rewards == [1.0, 0.0, 0.5, 0.1], (
            f"group_advantages must not change the rewards it is given (a reward never holds an advantage): kind "
            f"{kind!r} left them as {rewards}")


def test_an_unknown_kind_is_refused():
    """kind is "mean", "grpo" or "rloo"; anything else (a typo in --advantage) raises ValueError
    rather than silently training with some other baseline."""
    for kind in ("ppo", "Mean", ""):
        try:
            got = rl.group_advantages([1.0, 0.0, 0.5, 0.5], kind)
        except ValueError:
            continue
        raise AssertionError(
            f"an unknown advantage kind must raise ValueError, not train with another baseline ({SECTION}): kind "
            f"{kind!r} returned {show(got)}")


WRONG = [
    {"target": "rl.group_advantages", "mistake": "GRPO divides by the sample std (ddof 1)",
     "expect": "ddof 0",
     "source": '''
def group_advantages(rewards, kind):
    num = len(rewards)
    if max(rewards) - min(rewards) < 1e-12:
        return None
    mean = sum(rewards) / num
    if kind == "mean":
        return [r - mean for r in rewards]
    if kind == "grpo":
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (num - 1))
        return [(r - mean) / std for r in rewards]
    if kind == "rloo":
        return [r - (sum(rewards) - r) / (num - 1) for r in rewards]
    raise ValueError(f"unknown advantage {kind!r}")
'''},
    {"target": "rl.group_advantages", "mistake": "RLOO written as r - mean, the sample itself left in its baseline",
     "expect": "mean of the other",
     "source": '''
def group_advantages(rewards, kind):
    num = len(rewards)
    if max(rewards) - min(rewards) < 1e-12:
        return None
    mean = sum(rewards) / num
    if kind in ("mean", "rloo"):
        return [r - mean for r in rewards]
    if kind == "grpo":
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / num)
        return [(r - mean) / std for r in rewards]
    raise ValueError(f"unknown advantage {kind!r}")
'''},
    {"target": "rl.group_advantages", "mistake": "a zero-variance group returns zeros instead of None",
     "expect": "return None",
     "source": '''
def group_advantages(rewards, kind):
    num = len(rewards)
    if max(rewards) - min(rewards) < 1e-12:
        return [0.0] * num
    mean = sum(rewards) / num
    if kind == "mean":
        return [r - mean for r in rewards]
    if kind == "grpo":
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / num)
        return [(r - mean) / std for r in rewards]
    if kind == "rloo":
        return [r - (sum(rewards) - r) / (num - 1) for r in rewards]
    raise ValueError(f"unknown advantage {kind!r}")
'''},
    {"target": "rl.group_advantages", "mistake": "equal rewards tested with ==, so float rounding passes for a signal",
     "expect": "1e-12",
     "source": '''
def group_advantages(rewards, kind):
    num = len(rewards)
    if len(set(rewards)) == 1:
        return None
    mean = sum(rewards) / num
    if kind == "mean":
        return [r - mean for r in rewards]
    if kind == "grpo":
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / num)
        return [(r - mean) / std for r in rewards]
    if kind == "rloo":
        return [r - (sum(rewards) - r) / (num - 1) for r in rewards]
    raise ValueError(f"unknown advantage {kind!r}")
'''},
]
