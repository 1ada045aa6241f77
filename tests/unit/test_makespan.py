"""The makespan policy and the oracle: hand-computed rounds, equal to the exhaustive oracle on small random
federations, limits never crossed, hysteresis, and SplitFT's performance rule inside the tolerance."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitft.policy import ClientStats, CutBounds, MakespanPolicy, max_feasible_cut
from splitft.policy.makespan import RoundCosts, oracle


def _costs(n_layer=4, server_tflops=1.0, local_steps=1, up=0, down=0, lora=0):
    """Client runs 1e12 FLOPs forward per block held (fwd + bwd = 2e12 x cut); the server 1e12 per block."""
    return RoundCosts(client_flops=tuple(2e12 * k for k in range(n_layer)),
                      server_flops=tuple(1e12 * (n_layer - k) for k in range(n_layer)),
                      lora_bytes=tuple(lora * k for k in range(n_layer)), step_bytes_up=up, step_bytes_down=down,
                      local_steps=local_steps, server_tflops=server_tflops)


def test_one_client_one_step_by_hand():
    # cut k: forward k s, server (4 - k) s, backward k s -> 4 + k s; fastest at the privacy floor
    cuts, t, exact = oracle(_costs(), [ClientStats(0, speed=1.0)], CutBounds(4))
    assert (cuts, t, exact) == ({0: 1}, pytest.approx(5.0), True)


def test_a_fast_and_a_slow_client_on_a_busy_server_by_hand():
    """Fast (10 TFLOP/s) at cut kf reaches the server first, at 0.1 kf s, and holds it 4 - kf s; the slow one
    (1 TFLOP/s) at ks waits for it. Fixed cuts 1, 2, 3 take 7.1, 6.2, 7.0 s; the fast client deep and the
    slow one shallow (3, 1) take 5.3 s: 0.3 + 1 (server) -> 1.3, then the slow client's 3 s there, + 1."""
    stats = [ClientStats(0, speed=10.0), ClientStats(1, speed=1.0)]
    costs, by_id = _costs(), {s.client_id: s for s in stats}
    assert [costs.round_s({0: k, 1: k}, by_id) for k in (1, 2, 3)] == pytest.approx([7.1, 6.2, 7.0])
    cuts, t, exact = oracle(costs, stats, CutBounds(4))
    assert cuts == {0: 3, 1: 1} and t == pytest.approx(5.3) and exact
    decision = MakespanPolicy(CutBounds(4), costs).assign(stats, {}, 0)
    assert decision.cuts == cuts and decision.why[0]["round_s"] == pytest.approx(5.3)


def test_a_slow_uplink_sets_the_round_whatever_the_cut():
    # 1 MB per step at 8 Mbit/s = 1 s each way for everyone: the best cut is still the cheapest compute
    stats = [ClientStats(0, speed=1.0, up_mbps=8.0, down_mbps=8.0)]
    cuts, t, _ = oracle(_costs(up=1_000_000, down=1_000_000), stats, CutBounds(4))
    assert cuts == {0: 1} and t == pytest.approx(7.0)


federations = st.lists(st.tuples(st.sampled_from([0.5, 1.0, 2.0, 20.0]), st.sampled_from([0.3, 0.6, 1.0, 9.0]),
                                 st.sampled_from([10.0, 100.0, math.inf])), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(federations, st.integers(3, 6), st.sampled_from([0.5, 1.0, 5.0]), st.integers(1, 2))
def test_the_policy_equals_the_oracle_and_keeps_memory_and_privacy_limits(clients, n_layer, server, cut_min):
    stats = [ClientStats(i, speed=s, memory_gb=m, up_mbps=u, down_mbps=u, latency_ms=5.0)
             for i, (s, m, u) in enumerate(clients)]
    bounds = CutBounds(n_layer, cut_min=min(cut_min, n_layer - 1), base_gb=0.1, block_gb=0.25)
    costs = _costs(n_layer, server, local_steps=2, up=200_000, down=200_000, lora=10_000)
    decision = MakespanPolicy(bounds, costs).assign(stats, {}, 0)
    _, best, exact = oracle(costs, stats, bounds)
    by_id = {s.client_id: s for s in stats}
    assert exact and costs.round_s(decision.cuts, by_id) == pytest.approx(best)
    for s in stats:
        assert bounds.cut_min <= decision.cuts[s.client_id] <= max_feasible_cut(s, bounds)


def test_hysteresis_keeps_cuts_for_small_gains_and_moves_them_for_large_ones():
    stats = [ClientStats(0, speed=10.0), ClientStats(1, speed=1.0)]
    by_id = {s.client_id: s for s in stats}
    policy = MakespanPolicy(CutBounds(4), _costs(), period=1, hysteresis=0.2)
    assert _costs().round_s({0: 3, 1: 2}, by_id) == pytest.approx(6.0)  # 13% slower than the best 5.3
    held = policy.assign(stats, {0: 3, 1: 2}, 1)
    assert held.cuts == {0: 3, 1: 2} and held.why[0]["rule"] == "hold (hysteresis)"
    moved = policy.assign(stats, {0: 1, 1: 1}, 1)  # 7.1 s: 34% slower
    assert moved.cuts == {0: 3, 1: 1}
    assert policy.assign(stats, {0: 1, 1: 1}, 1).cuts == MakespanPolicy(
        CutBounds(4), _costs(), period=2).assign(stats, {0: 1, 1: 1}, 2).cuts
    assert MakespanPolicy(CutBounds(4), _costs(), period=2).assign(stats, {0: 1, 1: 1}, 1).cuts == {0: 1, 1: 1}


def test_the_performance_rule_gives_a_better_client_more_blocks_only_within_the_tolerance():
    # two equal clients, a fast server, 1 MB each way at 8 Mbit/s: cut k takes 2k s of compute + 2 s of link,
    # so cut 1 is fastest (4 s); the client with the lower loss (one sigma below the mean) wants 1 + 3 blocks
    # and gets as many as keep the round within the tolerance: cut 2 is 6 s (1.5x), cut 3 is 8 s (2x)
    stats = [ClientStats(i, speed=1.0, up_mbps=8.0, down_mbps=8.0, loss=loss) for i, loss in ((0, 2.0), (1, 3.0))]
    costs = _costs(n_layer=6, server_tflops=1e6, up=1_000_000, down=1_000_000)
    tight = MakespanPolicy(CutBounds(6), costs, gamma=3.0, tolerance=0.0).assign(stats, {}, 0)
    loose = MakespanPolicy(CutBounds(6), costs, gamma=3.0, tolerance=0.6).assign(stats, {}, 0)
    assert tight.cuts == {0: 1, 1: 1}
    assert loose.cuts == {0: 2, 1: 1} and loose.why[0]["score"] == pytest.approx(1.0) and loose.why[0]["wanted"] == 4
    assert loose.why[0]["round_s"] == pytest.approx(6.0, rel=1e-3) and "score" not in loose.why[1]


def test_deployed_makespan_plans_with_the_servers_measured_speed():
    """A deployed server plans makespan's cuts with its own measured throughput once it has served a step: a slow
    server (0.5 TFLOP/s measured) makes two fast clients take blocks off it that a fast server (the config's 100)
    would have kept."""
    from splitft.deploy.placement import Placement

    stats = {0: {"tflops": 10.0, "memory_gb": 100.0}, 1: {"tflops": 10.0, "memory_gb": 100.0}}
    placement = Placement(MakespanPolicy(CutBounds(4), _costs(server_tflops=100.0), period=1, hysteresis=0.0),
                          CutBounds(4), 1e9,
                          smallest_cut=1, log_decision=lambda **r: decisions.append(r))
    decisions: list[dict] = []
    for c, report in stats.items():
        placement.note(c, report)
    before = placement.decide(0, [0, 1])
    assert decisions[0]["server"]["source"].startswith("heterogeneity.server_tflops")
    placement.note_server(flops=1e12, seconds=2.0)  # 0.5 TFLOP/s
    after = placement.decide(1, [0, 1])
    assert decisions[1]["server"] == {"tflops": pytest.approx(0.5), "source": "measured over 1 server steps"}
    assert before == {0: 1, 1: 1} and min(after.values()) > 1, (before, after)
