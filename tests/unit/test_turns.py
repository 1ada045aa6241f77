"""The deployed round's synchronous core (`deploy/turns.py`), driven without asyncio or a network: admission,
the steps ready to run alone or joined, and turns leaving with a client."""

from splitft.deploy.turns import Turns
from splitft.schedule import RoundPlan


def _plan(order=((2, 0), (0, 0), (1, 0), (2, 1), (0, 1), (1, 1))) -> RoundPlan:
    return RoundPlan(0, [0, 1, 2], list(order))


def test_plan_order_admits_turns_ahead_and_serves_the_next_one():
    t = Turns(_plan(), "plan", cap=2)
    assert t.refusal(0, 0, 0) is None and t.refusal(0, 1, 0) is not None, "another round"
    assert t.is_next(2, 0) and not t.is_next(0, 0)
    t.applied(2)
    assert t.is_next(0, 0) and "replay" in t.refusal(2, 0, 0) and t.done[2] == 1


def test_arrival_order_admits_only_a_clients_own_next_step_within_the_cap():
    t = Turns(_plan(), "arrival", cap=2)
    assert t.refusal(1, 0, 0) is None and t.refusal(1, 0, 1) is not None, "its step 0 is not applied yet"
    t.applied(1)
    t.applied(1)
    assert t.refusal(1, 0, 2) is not None, "the cap"
    assert t.refusal(7, 0, 0) is not None, "not selected"


def test_plan_joins_the_next_turns_once_all_have_arrived():
    t = Turns(_plan(), "plan", cap=2, server_batch=4)
    t.arrive((0, 0, 0), 0.0)
    t.arrive((2, 0, 0), 0.1)
    assert t.ready(1.0) == (None, None), "client 1's turn is part of the batch: wait for it"
    t.arrive((1, 0, 0), 0.2)
    keys, _ = t.ready(1.0)
    assert keys == [(2, 0, 0), (0, 0, 0), (1, 0, 0)], "three turns of different clients, in plan order"
    t.take(keys)
    for c, _, _ in keys:
        t.applied(c)
    assert t.pos == 3 and not t.waiting


def test_arrival_takes_what_waits_once_full_or_after_the_wait():
    t = Turns(_plan(), "arrival", cap=2, server_batch=3, batch_wait_s=0.05)
    assert t.ready(0.0) == (None, None)
    t.arrive((1, 0, 0), 10.0)
    t.arrive((0, 0, 0), 10.01)
    keys, retry = t.ready(10.02)
    assert keys is None and retry == 0.05 - (10.02 - 10.0)
    assert t.ready(10.06) == ([(1, 0, 0), (0, 0, 0)], None), "the wait is over: the two that came, first first"
    t.arrive((2, 0, 0), 10.07)
    t.arrive((2, 0, 0), 10.5)  # a resend keeps its place
    assert t.waiting[(2, 0, 0)] == 10.07
    full = Turns(_plan(), "arrival", cap=2, server_batch=2, batch_wait_s=60.0)
    full.arrive((1, 0, 0), 0.0)
    full.arrive((2, 0, 0), 0.0)
    assert full.ready(0.0) == ([(1, 0, 0), (2, 0, 0)], None), "full: no wait"


def test_a_client_that_leaves_takes_its_turns_and_waiting_steps_along():
    t = Turns(_plan(), "plan", cap=2, server_batch=3)
    t.arrive((2, 0, 0), 0.0)
    t.arrive((0, 0, 0), 0.0)
    assert t.ready(0.0) == (None, None), "client 1's turn is still ahead"
    assert t.leave(1) == [] and all(c != 1 for c, _ in t.plan.order)
    keys, _ = t.ready(0.0)
    assert keys == [(2, 0, 0), (0, 0, 0)], "the batch no longer waits for the client that left"
    assert t.leave(0) == [(0, 0, 0)] and (0, 0, 0) not in t.waiting, "its waiting step is handed back to refuse"
    t.withdraw((2, 0, 0))
    assert not t.waiting
