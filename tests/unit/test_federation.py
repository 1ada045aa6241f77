"""The in-process round (sim/federation.py): serving order and round budgets on the virtual clock."""

import pytest
import torch

from splitft.build import build_setup
from splitft.metrics import NullLogger
from splitft.sim.methods import build_federation
from tests.conftest import tiny_config

# --- serving order and round budgets (federation.order, federation.round_budget) on the virtual clock --------

# a device 10x slower than the other in compute, with negligible latency: the tiny model's steps take ~0.1 s
# on `fast` and ~1 s on `slow`, so who waits for whom is visible
TIERS = ["heterogeneity.profile=list", "heterogeneity.devices=[fast, slow]", "heterogeneity.server_tflops=1",
         "heterogeneity.tiers=[{name: fast, tflops: 0.0002, latency_ms: 1, up_mbps: 1000, down_mbps: 1000},"
         " {name: slow, tflops: 0.00002, latency_ms: 1, up_mbps: 1000, down_mbps: 1000}]",
         "federation.local_steps=3", "federation.rounds=1", "data.truncation=right"]
# data.truncation=right: the batches the step counts below were worked out on (prompt_left keeps more long
# samples, and the slow client's next batches can be short enough to fit a 4th step in its budget)


def _round(tmp_path, *overrides, rounds=1):
    """The last of `rounds` rounds: (federation, its round record, its steps as (client, step))."""
    cfg = tiny_config(tmp_path, "llama", *TIERS, *overrides)
    fed = build_federation(build_setup(cfg), NullLogger())
    for r in range(rounds):
        steps = []
        fed.on_step = steps.append
        rec = fed.run_round(r, evaluate=False)
    return fed, rec, [(s["client_id"], s["step"]) for s in steps]


def test_arrival_order_serves_the_fast_client_without_waiting_and_the_clock_agrees(tmp_path):
    _, planned, plan_order = _round(tmp_path / "p")
    _, arrived, arrival_order = _round(tmp_path / "a", "federation.order=arrival")
    assert [c for c, _ in plan_order] in ([0, 1] * 3, [1, 0] * 3), "plan: turns alternate"
    assert [c for c, _ in arrival_order] == [0, 0, 0, 1, 1, 1], "arrival: client 0 (10x faster) never waits"
    assert arrived["round_virtual_s"] <= planned["round_virtual_s"]  # the slow client's finish bounds both


def test_a_time_budget_gives_the_faster_client_more_steps_up_to_the_cap(tmp_path):
    timed = ["federation.order=arrival", "federation.round_budget=time"]
    _, _, first = _round(tmp_path / "first", *timed)
    assert len(first) == 6, "before any step is measured a round runs local_steps each, as deployed"
    fed, rec, order = _round(tmp_path, *timed, rounds=2)
    ran = {c: sum(1 for cc, _ in order if cc == c) for c in (0, 1)}
    assert ran[0] == 6 and 1 <= ran[1] <= 3, ran  # the fast one reaches the cap (2 x local_steps)
    assert rec["steps_by_client"] == {str(c): n for c, n in ran.items()}, "the round record says so"
    med = max(fed.step_s.values()) * 3  # the upper median of two: the slow client's 3 steps, as deployed
    assert fed._budget_s([0, 1]) == pytest.approx(med)
    again, _, order_again = _round(tmp_path / "again", *timed, rounds=2)
    assert order_again == order, "deterministic"
    a, b = fed.server.global_view(2), again.server.global_view(2)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_fixed_time_budget_keeps_the_fast_client_busy_only_when_it_need_not_wait_its_turn(tmp_path):
    budget = ["federation.round_budget=time", "federation.round_time_s=2", "federation.max_steps_factor=10"]
    _, _, order = _round(tmp_path / "a", *budget, "federation.order=arrival")
    ran = {c: sum(1 for cc, _ in order if cc == c) for c in (0, 1)}
    assert ran[1] == 1 and 3 < ran[0] < 30, ran
    _, _, in_turns = _round(tmp_path / "p", *budget)
    assert sum(1 for c, _ in in_turns if c == 0) < ran[0], in_turns  # in plan turns it waited for the slow one


def test_the_wait_behind_turns_a_stopped_client_left_unused_is_charged_to_the_round(tmp_path):
    """Plan turns, time budget: the slow client stops after its first step, but its turns stay in the cycle until
    its push reaches the server (as deployed), so the fast client's next step waits for that push; the round's
    virtual time holds the wait (it was priced from the steps alone, without it: 21-26% short of a deployment)."""
    cfg = tiny_config(tmp_path, "llama", *TIERS, "federation.round_budget=time", "federation.round_time_s=2.5")
    fed = build_federation(build_setup(cfg), NullLogger())
    steps = []
    fed.on_step = steps.append
    rec = fed.run_round(0, evaluate=False)
    assert [s["client_id"] for s in steps] == [1, 0, 0], "the slow client's turn first; the fast one's 2nd waits"
    moved = fed.transport.counter.since({})
    unblocked = fed.clock.round_seconds(steps, {c: b["lora_down"] for c, b in moved.items()},
                                        {c: b["lora_up"] for c, b in moved.items()})
    assert rec["round_virtual_s"] > unblocked + 0.1, (rec["round_virtual_s"], unblocked)


@pytest.mark.parametrize("order, shape", [("arrival", "vanilla"), ("plan", "u"), ("arrival", "u")])
def test_a_steps_bytes_are_counted_once_and_the_round_is_their_sum(tmp_path, order, shape):
    """A step's bytes are what the transport counted as it crossed (an entropy coder's real output, U's second
    crossing): the step records add up to the round's training traffic, lora aside."""
    u = ["split.shape=u", "split.tail=1", "split.cut_max=2"] if shape == "u" else []
    fed, rec, _ = _round(tmp_path, f"federation.order={order}", "codec.up=int8_token",
                         "codec.entropy=zstd", *u)
    steps = []
    fed.on_step = steps.append
    rec = fed.run_round(1, evaluate=False)
    lora = fed.transport.counter.totals()
    assert steps and all(s["bytes_up"] > 0 and s["bytes_down"] > 0 for s in steps)
    assert (shape == "u") == all(s.get("hidden_down", 0) > 0 and s.get("grad_hidden_up", 0) > 0 for s in steps)
    pushed, pulled = rec["bytes_up"] - sum(s["bytes_up"] for s in steps), rec["bytes_down"] - sum(
        s["bytes_down"] for s in steps)
    assert 0 < pushed <= lora["lora_up"] and 0 < pulled <= lora["lora_down"], (pushed, pulled)
