"""Cut policies are pure functions of plain data; hand-computed cases."""

import pytest

from splitft.policy import (
    POLICIES,
    ClientStats,
    CutBounds,
    FixedPolicy,
    ResourcePolicy,
    SplitFTPolicy,
    max_feasible_cut,
)

B = CutBounds(n_layer=30, cut_min=1, cut_max=9, base_gb=1.0, block_gb=0.5)


def test_memory_cap():
    assert max_feasible_cut(ClientStats(0, memory_gb=3.0), B) == 4  # (3 - 1) / 0.5
    assert max_feasible_cut(ClientStats(0, memory_gb=0.5), B) == 1  # nothing fits: cut_min
    assert max_feasible_cut(ClientStats(0), B) == 9  # unlimited memory: cut_max


def test_bounds_are_checked():
    with pytest.raises(AssertionError):
        CutBounds(n_layer=4, cut_min=2, cut_max=5)


def test_fixed_gives_everyone_the_same_cut():
    d = FixedPolicy(B, cut=3).assign([ClientStats(0, speed=9), ClientStats(1, speed=0.1)], {}, 0)
    assert d.cuts == {0: 3, 1: 3}


def test_resource_scales_with_speed_and_respects_memory():
    stats = [ClientStats(0, speed=2.0), ClientStats(1, speed=1.0), ClientStats(2, speed=0.5, memory_gb=1.6),
             ClientStats(3, speed=4.5, memory_gb=2.0)]
    d = ResourcePolicy(B, cut=4).assign(stats, {}, 0)  # mean speed 2.0
    assert d.cuts == {0: 4, 1: 2, 2: 1, 3: 2}  # 3 would want 9 but fits only 2 blocks
    assert d.why[3]["memory_cap"] == 2


def test_splitft_starts_from_resource_cuts_then_moves_by_performance():
    p = SplitFTPolicy(B, cut=4, gamma=1.0, period=1)
    stats = [ClientStats(0, speed=1.0), ClientStats(1, speed=1.0)]
    assert p.assign(stats, {}, 0).cuts == {0: 4, 1: 4}
    stats = [ClientStats(0, speed=1.0, loss=3.0), ClientStats(1, speed=1.0, loss=5.0)]
    d = p.assign(stats, {0: 4, 1: 4}, 1)  # mean 4, sigma 1: scores +1 / -1, steps +1 / -1
    assert d.cuts == {0: 5, 1: 3} and d.why[0]["score"] == pytest.approx(1.0)
    assert p.assign([ClientStats(0, loss=2.0), ClientStats(1, loss=2.0)], {0: 4, 1: 4}, 1).cuts == {0: 4, 1: 4}


def test_splitft_growth_is_scaled_by_speed_and_capped_by_memory():
    p = SplitFTPolicy(B, cut=4, gamma=4.0, period=1)
    stats = [ClientStats(0, speed=0.25, loss=2.0), ClientStats(1, speed=1.0, loss=2.0, memory_gb=3.0),
             ClientStats(2, speed=1.0, loss=8.0)]
    # mean 4, sigma sqrt(8): scores .707, .707, -1.414 -> steps 2.83*0.25=.71 -> +1, 2.83 -> +3 (cap 4), -5.66 -> -6
    d = p.assign(stats, {0: 4, 1: 4, 2: 4}, 1)
    assert d.cuts == {0: 5, 1: 4, 2: 1}


def test_splitft_holds_between_periods_and_without_losses():
    p = SplitFTPolicy(B, cut=4, gamma=1.0, period=3)
    stats = [ClientStats(0, loss=1.0), ClientStats(1, loss=9.0)]
    assert p.assign(stats, {0: 4, 1: 4}, 2).cuts == {0: 4, 1: 4}
    assert p.assign([ClientStats(0), ClientStats(1)], {0: 4, 1: 6}, 3).cuts == {0: 4, 1: 6}


def test_registry_names_match():
    names = {name: cls.__dataclass_fields__["name"].default for name, cls in POLICIES.items()}
    assert names == {n: n for n in POLICIES}
