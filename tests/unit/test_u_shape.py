"""The U-shaped split's server side: hidden states down, grad_hidden up, one step in flight at a time; the
coordinator serialises U steps under both orders, answers resends from its caches, and abandons the step of a
dropped client; the wire refuses labels at a U server and BACKWARD at a vanilla one."""

import asyncio

import pytest
import torch

from splitft.deploy.coordinator import Coordinator, Refused
from splitft.schedule import Schedule
from splitft.transport import wire
from splitft.transport.base import AdapterUpdate, BackwardRequest, ForwardRequest
from tests.conftest import tiny_split_server


def _req(cid, step, round_=0, train=True):
    g = torch.Generator().manual_seed(100 * cid + step)
    return ForwardRequest(cid, round_, step, 2, torch.randn(2, 5, 32, generator=g),
                          torch.ones(2, 5, dtype=torch.uint8), None, train)


def _back(cid, step, round_=0):
    g = torch.Generator().manual_seed(1000 + 100 * cid + step)
    return BackwardRequest(cid, round_, step, torch.randn(2, 5, 32, generator=g))


def test_a_u_step_sends_hidden_states_and_updates_only_at_its_backward():
    _, server = tiny_split_server(tail_cut=3)
    before = server.adapters()
    reply = server.step(_req(0, 0))
    assert reply.hidden.shape == (2, 5, 32) and reply.grad_activations is None and reply.n_tokens == 0
    assert all(torch.equal(before[n], t) for n, t in server.adapters().items()), "nothing applied yet"
    with pytest.raises(AssertionError, match="one at a time"):
        server.step(_req(1, 0))
    back = server.backward(_back(0, 0))
    assert back.grad_activations.shape == (2, 5, 32) and server.in_flight is None
    assert any(not torch.equal(before[n], t) for n, t in server.adapters().items())
    assert set(server.global_adapters(2)) == {n for n in server.store if server._layer(n) in (0, 1, 3)}, \
        "a client at cut 2 gets blocks 0-1 and its tail, block 3"


def test_a_u_server_evaluates_with_the_round_start_adapters_and_sends_hidden_states():
    _, server = tiny_split_server(tail_cut=3)
    first = server.step(_req(0, 0, train=False)).hidden
    server.step(_req(0, 0))
    server.backward(_back(0, 0))
    assert torch.equal(server.step(_req(0, 0, train=False)).hidden, first)


def _coord(order="plan"):
    _, server = tiny_split_server(tail_cut=3)
    return Coordinator(server, n_clients=2, rounds=1, local_steps=1, per_round=0, seed=0, log=lambda s: None,
                       schedule=Schedule(order))


@pytest.mark.parametrize("order", ["plan", "arrival"])
def test_the_coordinator_serves_one_u_step_at_a_time_and_answers_resends_from_cache(order):
    coord = _coord(order)
    first, second = (c for c, _ in coord.plan.order)

    async def go():
        await coord.step(_req(first, 0))
        waiting = asyncio.create_task(coord.step(_req(second, 0)))  # must wait for first's backward
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert (await coord.step(_req(first, 0))).hidden is not None  # a resent forward: from the cache
        reply = await coord.backward(_back(first, 0))
        assert torch.equal((await coord.backward(_back(first, 0))).grad_activations, reply.grad_activations)
        assert (await asyncio.wait_for(waiting, 5)).hidden is not None
        with pytest.raises(Refused, match="no forward in flight"):
            await coord.backward(BackwardRequest(first, 0, 5, torch.zeros(2, 5, 32)))  # a step never begun
        with pytest.raises(Refused, match="does not match the hidden states"):
            await coord.backward(BackwardRequest(second, 0, 0, torch.zeros(1, 5, 32)))
        await coord.backward(_back(second, 0))
        assert coord.server.in_flight is None and coord.done_steps == {first: 1, second: 1}

    asyncio.run(go())


def test_dropping_a_client_abandons_its_u_step_and_the_next_one_goes():
    coord = _coord("arrival")

    async def go():
        await coord.step(_req(0, 0))
        waiting = asyncio.create_task(coord.step(_req(1, 0)))
        await asyncio.sleep(0.05)
        await coord.drop(0, "silent")
        assert (await asyncio.wait_for(waiting, 5)).hidden is not None
        with pytest.raises(Refused, match="dropped"):
            await coord.backward(_back(0, 0))
        await coord.backward(_back(1, 0))
        await coord.pull_adapters(1, 2, 0)
        await coord.push_adapters(AdapterUpdate(1, 0, coord.server.global_adapters(2), 2))
        assert coord.round == 1, "the round aggregates over the survivor"

    asyncio.run(go())


U_SHAPE = wire.StepShape(hidden=32, dtype=torch.float32, max_tokens=64, vocab=260, cut_range=(2, 3), u=True)
VANILLA = wire.StepShape(hidden=32, dtype=torch.float32, max_tokens=64, vocab=260, cut_range=(2, 4))


def test_the_wire_keeps_labels_off_a_u_server_and_backward_off_a_vanilla_one():
    labelled = ForwardRequest(0, 0, 0, 2, torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.uint8),
                              torch.zeros(2, 5, dtype=torch.int32))
    with pytest.raises(wire.WireError, match="labels stay on the client"):
        wire.decode_step(wire.encode_step(labelled), U_SHAPE)
    with pytest.raises(wire.WireError, match="needs activations, attention_mask, labels"):
        wire.decode_step(wire.encode_step(_req(0, 0)), VANILLA)
    assert wire.decode_step(wire.encode_step(_req(0, 0)), U_SHAPE).labels is None
    env = wire.encode_backward(_back(0, 0), wire.NONE.encode(_back(0, 0).grad_hidden))
    assert torch.equal(wire.decode_backward(env, U_SHAPE).grad_hidden, _back(0, 0).grad_hidden)
    with pytest.raises(wire.WireError, match="this server runs split.shape=vanilla"):
        wire.decode_backward(env, VANILLA)
    bad = _back(0, 0)
    bad.grad_hidden[0, 0, 0] = float("inf")
    with pytest.raises(wire.WireError, match="NaN or Inf"):
        wire.decode_backward(wire.encode_backward(bad, wire.NONE.encode(bad.grad_hidden)), U_SHAPE)
