"""The deployed server's coordinator: plan order, resends answered from cache, replays refused, clients dropped
for silence or lateness with the round aggregated over survivors, and the end of the run."""

import asyncio
import time

import pytest
import torch

from splitft.deploy.coordinator import Coordinator, Refused
from splitft.schedule import Schedule
from splitft.transport.base import AdapterUpdate, ForwardRequest
from tests.conftest import tiny_split_server


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _req(cid, step, round_=0):
    g = torch.Generator().manual_seed(100 * cid + step)
    return ForwardRequest(cid, round_, step, 2, torch.randn(2, 5, 32, generator=g),
                          torch.ones(2, 5, dtype=torch.uint8), torch.full((2, 5), 7, dtype=torch.int32))


def _push(cid, round_, server):
    return AdapterUpdate(cid, round_, {n: t.clone() for n, t in server.global_view(2).items()}, 2)


async def _pushed(coord, cid, round_):
    """An honest client's round end: it pulled its blocks (at cut 2) at the round's start, then pushes them."""
    await coord.pull_adapters(cid, 2, round_)
    await coord.push_adapters(_push(cid, round_, coord.server))


@pytest.fixture
def coord():
    _, server = tiny_split_server()
    records = []
    c = Coordinator(server, n_clients=3, rounds=2, local_steps=2, per_round=0, seed=0, log=lambda s: None,
                    dead_after_s=10, round_timeout_s=100, on_round=records.append, clock=FakeClock())
    c.records = records
    return c


def _state(server):
    return {n: t.clone() for n, t in {**server.adapters(), **server.store}.items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_a_resent_step_gets_the_cached_reply_and_an_old_one_is_refused(coord):
    order = coord.plan.order
    a = order[0][0]

    async def go():
        first = await coord.step(_req(a, 0))
        applied = _state(coord.server)
        again = await coord.step(_req(a, 0))  # e.g. resent after a reconnect: not applied twice
        assert again is first and _same(applied, _state(coord.server)) and coord.pos == 1
        for cid, step in order[1:order.index((a, 1)) + 1]:
            await coord.step(_req(cid, step))
        moved = _state(coord.server)
        with pytest.raises(Refused, match="replay"):  # a's older step, once a has moved on
            await coord.step(_req(a, 0))
        assert _same(moved, _state(coord.server))

    asyncio.run(go())


async def _run_steps(coord, skip=()):
    for cid, step in list(coord.plan.order):
        if cid not in skip:
            await coord.step(_req(cid, step, coord.round))


def test_a_silent_client_is_dropped_and_the_round_aggregates_over_survivors(coord):
    clock = coord.clock

    async def go():
        for c in range(3):
            coord.seen(c)
        # client 2 vanishes before its first step: the others' steps must not wait for it forever
        order = coord.plan.order
        blocked = asyncio.create_task(_run_steps(coord, skip={2}))
        await asyncio.sleep(0.05)
        assert not blocked.done() or order[0][0] != 2  # waiting on client 2's turn unless 2 went last
        clock.now = 5
        coord.seen(0), coord.seen(1)
        await coord.check(clock.now)
        assert coord.current.dropped == {}
        clock.now = 11
        await coord.check(clock.now)
        assert set(coord.current.dropped) == {2} and "silent" in coord.current.dropped[2]
        await asyncio.wait_for(blocked, 5)
        for c in (0, 1):
            await _pushed(coord, c, 0)
        assert coord.round == 1 and coord.records[-1]["clients"] == [0, 1] and "2" in coord.records[-1]["dropped"]

    asyncio.run(go())


def test_a_dropped_clients_waiting_and_later_requests_are_refused(coord):
    async def go():
        victim = coord.plan.order[-1][0]
        waiting = asyncio.create_task(coord.step(_req(victim, 1)))  # its second step waits for its turn
        await asyncio.sleep(0.05)
        await coord.drop(victim, "test")
        with pytest.raises(Refused, match="dropped"):
            await waiting
        with pytest.raises(Refused, match="dropped"):
            await coord.push_adapters(_push(victim, 0, coord.server))

    asyncio.run(go())


def test_a_straggler_is_dropped_at_the_round_deadline(coord):
    async def go():
        await _run_steps(coord)
        await _pushed(coord, 0, 0)
        await coord.push_adapters(_push(0, 0, coord.server))  # a resent push is acknowledged and ignored
        assert len(coord.server.pending) == 1
        coord.clock.now = 101
        for c in range(3):
            coord.seen(c)  # alive, but late
        await coord.check(coord.clock.now)
        assert coord.round == 1 and coord.records[-1]["clients"] == [0]
        dropped = coord.records[-1]["dropped"]
        assert set(dropped) == {"1", "2"} and "round_timeout_s" in dropped["1"]

    asyncio.run(go())


def test_a_push_before_the_clients_steps_are_done_is_refused(coord):
    with pytest.raises(Refused, match="before finishing"):
        asyncio.run(coord.push_adapters(_push(0, 0, coord.server)))


def test_the_run_finishes_when_every_client_is_done_or_gone(coord):
    async def go():
        for r in range(2):
            await _run_steps(coord)
            for c in range(3):
                await _pushed(coord, c, r)
        assert coord.round == 2
        await coord.done(0)
        await coord.done(1)
        coord.seen(2)
        await coord.check(coord.clock.now)
        assert not coord.finished.is_set()
        coord.clock.now += 11
        await coord.check(coord.clock.now)
        assert coord.finished.is_set()

    asyncio.run(go())


def test_a_step_that_overflows_drops_its_client_and_the_round_goes_on(coord):
    order = coord.plan.order
    a = order[0][0]
    bad = _req(a, 0)
    bad.activations[0, 0, 0] = 2.5e38  # finite on the wire; its LoRA gradients come out NaN

    async def go():
        before = _state(coord.server)
        with pytest.raises(Refused, match="not applied"):
            await coord.step(bad)
        assert _same(before, _state(coord.server)) and a in coord.current.dropped
        assert all(c != a for c, _ in coord.plan.order), "its remaining turns left the order"
        for cid, step in list(coord.plan.order):
            await coord.step(_req(cid, step))
        survivors = [c for c in range(3) if c != a]
        for cid in survivors:
            await _pushed(coord, cid, 0)
        assert coord.round == 1 and coord.records[0]["clients"] == survivors

    asyncio.run(go())


async def _finish_steps(coord):
    for c in range(3):
        await coord.pull_adapters(c, 2, 0)
    await _run_steps(coord)


@pytest.mark.parametrize("tamper, match", [
    (lambda u, s: u.adapters.update({n: torch.zeros_like(t) for n, t in s.adapters().items()}), "unexpected"),
    (lambda u, s: u.adapters.clear(), "missing"),
    (lambda u, s: u.adapters.update({n: t.to(torch.int32) for n, t in u.adapters.items()}), "float32"),
    (lambda u, s: u.adapters.update({n: t[:1] for n, t in u.adapters.items()}), "shape"),
    (lambda u, s: next(iter(u.adapters.values())).fill_(float("nan")), "finite"),
    (lambda u, s: setattr(u, "n_samples", 5), "claims 5 samples"),
], ids=["server-blocks", "empty", "int32", "shape", "nan", "samples"])
def test_a_push_may_only_carry_the_clients_own_blocks(coord, tamper, match):
    """A client at cut 2 may overwrite the global adapters of blocks 0-1 only, with what it trained: the
    server's blocks, another dtype, another shape, NaN, nothing at all, or more samples than it trained are
    refused before anything changes, and the round still completes with honest pushes."""
    async def go():
        await _finish_steps(coord)
        bad = _push(0, 0, coord.server)
        tamper(bad, coord.server)
        before = _state(coord.server)
        with pytest.raises(Refused, match=match):
            await coord.push_adapters(bad)
        assert _same(before, _state(coord.server)) and not coord.server.pending and 0 not in coord.current.pushed
        for c in range(3):
            await coord.push_adapters(_push(c, 0, coord.server))
        assert coord.round == 1

    asyncio.run(go())


def test_a_push_without_a_pull_of_that_round_is_refused(coord):
    async def go():
        await _run_steps(coord)
        with pytest.raises(Refused, match="without pulling"):
            await coord.push_adapters(_push(0, 0, coord.server))

    asyncio.run(go())


def test_a_pull_never_hands_out_the_servers_blocks():
    _, server = tiny_split_server()
    c = Coordinator(server, n_clients=1, rounds=1, local_steps=1, per_round=0, seed=0, log=lambda s: None,
                    max_cut=server.part.n_layer - 1)
    with pytest.raises(Refused, match="server's blocks"):
        asyncio.run(c.pull_adapters(0, server.part.n_layer, 0))


def test_a_client_with_other_terms_is_refused_at_hello_naming_each_setting():
    from splitft.config import Config
    from splitft.deploy.handshake import terms_of
    from splitft.precision import FP32

    _, server = tiny_split_server()
    cfg = Config()
    c = Coordinator(server, n_clients=2, rounds=2, local_steps=2, per_round=0, seed=0, log=lambda s: None,
                    terms=terms_of(cfg, "abc", FP32))
    standing = asyncio.run(c.hello(1, terms_of(cfg, "abc", FP32)))
    assert standing["round"] == 0 and standing["start"] == 0 and standing["run"] and standing["server"]
    other = Config()
    other.federation.local_steps, other.codec.up, other.model.source = 9, "int8_token", "tiny:qwen2"
    with pytest.raises(Refused) as e:
        asyncio.run(c.hello(1, terms_of(other, "def", FP32)))
    text = str(e.value)
    assert "\n" not in text and "federation.local_steps: the server has 4, this client 9" in text
    assert "codec.up: the server has 'none', this client 'int8_token'" in text
    assert "fingerprint abc" in text and "tiny:qwen2 (fingerprint def)" in text


def test_a_client_computing_in_another_dtype_is_refused_naming_both_and_why():
    """The dtypes are compared as each machine resolved them: `auto` on both sides can still differ."""
    from splitft.config import Config
    from splitft.deploy.handshake import terms_of
    from splitft.precision import FP32, Precision

    _, server = tiny_split_server()
    cfg = Config()
    c = Coordinator(server, n_clients=2, rounds=2, local_steps=2, per_round=0, seed=0, log=lambda s: None,
                    terms=terms_of(cfg, "abc", FP32))
    bf16 = Precision(torch.bfloat16, torch.bfloat16, "cpu", "auto: a CPU with AVX512-BF16")
    with pytest.raises(Refused) as e:
        asyncio.run(c.hello(1, terms_of(cfg, "abc", bf16)))
    assert ("train.compute_dtype: the server runs float32 (float32), this client bfloat16 (auto: a CPU with "
            "AVX512-BF16); set train.compute_dtype to the same dtype everywhere") in str(e.value)
    assert "model.dtype: the server runs float32 (float32), this client bfloat16" in str(e.value)


def test_a_restarted_client_rejoins_now_or_at_the_next_round_if_its_old_process_took_part(coord):
    async def go():
        for c in range(3):
            assert (await coord.hello(c, {"process": f"p{c}"}))["start"] == 0
        assert (await coord.hello(1, {"process": "p1"}))["start"] == 0, "a reconnect of the same process"
        assert (await coord.hello(1, {"process": "p1-again"}))["start"] == 0, "it had not begun the round"
        await coord.pull_adapters(2, 2, 0)
        standing = await coord.hello(2, {"process": "p2-again"})
        assert standing["start"] == 1 and 2 in coord.current.dropped and "restarted" in coord.current.dropped[2]
        assert all(c != 2 for c, _ in coord.plan.order), "the others do not wait for its old process's turns"

    asyncio.run(go())


def test_a_client_dropped_from_the_round_that_greets_again_starts_at_the_next(coord):
    """A client that slept past dead_after_s greets again from the same process when it wakes."""
    async def go():
        assert (await coord.hello(1, {"process": "p1"}))["start"] == 0
        await coord.drop(1, "silent for 130 s")
        standing = await coord.hello(1, {"process": "p1"})
        assert (standing["round"], standing["start"]) == (0, 1)

    asyncio.run(go())


def test_the_coordinator_stands_at_the_saved_round_after_load_state_dict(coord):
    async def go():
        await _finish_steps(coord)
        for c in range(3):
            await coord.push_adapters(_push(c, 0, coord.server))

    asyncio.run(go())
    coord.evals = {0: {1: (3.0, 10, 4, 2)}}
    state = coord.state_dict()
    _, server = tiny_split_server()
    other = Coordinator(server, n_clients=3, rounds=2, local_steps=2, per_round=0, seed=0, log=lambda s: None)
    other.load_state_dict(json_roundtrip(state))
    assert (other.round, other.run_id, other.evals, other.plan.order) == (1, coord.run_id, coord.evals,
                                                                          coord.plan.order)
    assert other.server_id != coord.server_id, "another process: its clients learn it restarted"


def json_roundtrip(obj):
    import json

    return json.loads(json.dumps(obj))


def _arrival(budget="steps", **kw):
    _, server = tiny_split_server()
    return Coordinator(server, n_clients=3, rounds=2, local_steps=2, per_round=0, seed=0, log=lambda s: None,
                       schedule=Schedule("arrival", budget), **kw)


def test_arrival_order_applies_each_clients_next_step_as_it_comes():
    c = _arrival()

    async def go():
        late = c.plan.order[-1][0]  # last in the plan: under plan order it would wait for everyone
        await c.step(_req(late, 0))
        await c.step(_req(late, 1))
        assert c.done_steps[late] == 2
        with pytest.raises(Refused, match="not expected"):
            await c.step(_req(late, 2))  # beyond local_steps
        with pytest.raises(Refused, match="not expected"):
            await c.step(_req((late + 1) % 3, 1))  # another client's step 1 before its step 0

    asyncio.run(go())


def test_a_time_budget_is_handed_out_from_reported_pace_and_bounds_steps():
    c = _arrival("time")

    async def go():
        first = await c.pull_adapters(0, 2, 0)
        assert first.budget_s is None, "no reports yet: round 0 runs local_steps"
        for cid in range(3):
            if cid:
                await c.pull_adapters(cid, 2, 0)
            for s in range(2):
                await c.step(_req(cid, s))
            update = _push(cid, 0, c.server)
            update.n_samples, update.report = 4, {"train_s": 1.0 * (cid + 1), "steps": 2}
            await c.push_adapters(update)
        pulled = await c.pull_adapters(0, 2, 1)
        assert pulled.budget_s == pytest.approx(2 * 1.0) and pulled.max_steps == 4  # median of 1, 2, 3 s x 2 steps
        for s in range(4):
            await c.step(_req(0, s, round_=1))
        with pytest.raises(Refused, match="not expected"):
            await c.step(_req(0, 4, round_=1))  # the cap

    asyncio.run(go())


def test_plan_turns_under_a_time_budget_let_a_client_stop_early_without_blocking_the_others():
    _, server = tiny_split_server()
    c = Coordinator(server, n_clients=2, rounds=2, local_steps=2, per_round=0, seed=0, log=lambda s: None,
                    schedule=Schedule(budget="time", round_time_s=1.0))

    async def go():
        first, second = [cid for cid, s in c.plan.order if s == 0]
        for cid in (0, 1):
            assert (await c.pull_adapters(cid, 2, 0)).budget_s == 1.0
        await c.step(_req(first, 0))
        await c.step(_req(second, 0))
        waiting = asyncio.create_task(c.step(_req(second, 1)))  # behind `first`'s second turn
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await c.push_adapters(_push(first, 0, c.server))  # its time is up after one step: its turns leave
        await asyncio.wait_for(waiting, 1)
        for s in (2, 3):
            await asyncio.wait_for(c.step(_req(second, s)), 1)
        await c.push_adapters(_push(second, 0, c.server))
        assert c.round == 1

    asyncio.run(go())


def test_an_emulated_server_paces_training_steps_only_after_their_compute():
    _, server = tiny_split_server()
    paced = []
    c = Coordinator(server, n_clients=1, rounds=1, local_steps=1, per_round=0, seed=0, log=lambda s: None,
                    clock=FakeClock(),
                    pace=lambda real_s, shapes, half: paced.append((shapes, half, real_s)) or 0.0)

    async def go():
        ev = _req(0, 0)
        ev.train = False
        await c.step(ev)
        assert paced == []  # evaluation is a measurement: the clock does not charge it, emulation does not pace it
        await c.step(_req(0, 0))
        assert [p[:2] for p in paced] == [([(2, 2, 5)], "step")] and paced[0][2] > 0 and c.pos == 1  # (cut, B, T)

    asyncio.run(go())


def test_a_round_record_says_how_many_steps_and_tokens_each_client_trained(coord):
    async def go():
        await _run_steps(coord)
        for cid in coord.plan.clients:
            await _pushed(coord, cid, 0)

    asyncio.run(go())
    rec = coord.records[0]
    assert rec["steps_by_client"] == {"0": 2, "1": 2, "2": 2}
    assert rec["train_tokens"] == 6 * 2 * 4  # six steps of 2 rows x 4 predicted tokens (5 labels, shifted by one)


class _SlowServer:
    """A server whose training step holds the CPU for `step_s` (time.sleep: it blocks whatever thread runs it)."""

    def __init__(self, server, step_s):
        self.inner, self.step_s = server, step_s

    def step(self, req):
        time.sleep(self.step_s)
        return self.inner.step(req)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_the_loop_keeps_receiving_while_the_server_computes_a_step():
    """A request that waits unread behind another client's step would reach its client's clock as link time."""
    _, server = tiny_split_server()
    c = Coordinator(_SlowServer(server, 0.3), n_clients=2, rounds=1, local_steps=1, per_round=0, seed=0,
                    log=lambda s: None, clock=FakeClock(), schedule=Schedule("arrival"))

    async def go():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await c.step(_req(0, 0))
        ticker.cancel()
        assert ticks >= 10, f"the event loop ran {ticks} times in a 0.3 s step"

    asyncio.run(go())


def test_a_step_whose_request_is_cancelled_while_it_computes_is_applied_whole():
    """Its client disconnected mid-step: the step still ends counted and cached, and the resend is answered from
    the cache, never applied twice."""
    _, server = tiny_split_server()
    c = Coordinator(_SlowServer(server, 0.2), n_clients=1, rounds=1, local_steps=2, per_round=0, seed=0,
                    log=lambda s: None, clock=FakeClock())

    async def go():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.step(_req(0, 0)), 0.05)
        while c.steps.serving.locked() or c.worker.torch.locked():
            await asyncio.sleep(0.01)
        assert c.pos == 1 and c.done_steps[0] == 1 and c.current.trained[0] == 2
        applied = _state(server)
        await c.step(_req(0, 0))
        assert c.pos == 1 and _same(applied, _state(server))

    asyncio.run(go())
