"""Wire codec and the server endpoint: round trips, and hostile input refused with server state unchanged."""

import asyncio

import pytest
import torch

from splitft import lora
from splitft.deploy.coordinator import Coordinator, Refused
from splitft.transport import pbtensor, wire
from splitft.transport.base import AdapterUpdate, ForwardRequest, Pulled
from splitft.transport.endpoint import Endpoint
from splitft.transport.frames import Reassembler, to_frames
from tests.conftest import tiny_split_server

Envelope = wire.Envelope
VOCAB = 260
SHAPE = wire.StepShape(hidden=32, dtype=torch.float32, max_tokens=64, vocab=VOCAB, cut_range=(2, 4))


def _req(cid=0, step=0, acts=None, cut=2, train=True):
    acts = torch.randn(2, 5, 32) if acts is None else acts
    return ForwardRequest(cid, 0, step, cut, acts, torch.ones(2, 5, dtype=torch.uint8),
                          torch.full((2, 5), 7, dtype=torch.int32), train)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.int8,
                                   torch.int32])
def test_tensors_round_trip_bit_exactly(dtype):
    t = (torch.randn(3, 4) * 50).to(dtype)
    assert torch.equal(pbtensor.tensor_from_pb(pbtensor.tensor_to_pb("x", t), 100), t)


def test_frames_reassemble_and_oversized_messages_are_refused():
    env = wire.encode_step(_req())
    frames = to_frames(env, seq=3, chunk_bytes=100)
    assert len(frames) > 10
    r = Reassembler(max_bytes=1 << 20)
    assert [r.add(f) for f in frames[:-1]] == [None] * (len(frames) - 1) and r.add(frames[-1]) == env
    small = Reassembler(max_bytes=500)
    with pytest.raises(wire.WireError, match="byte limit"):
        for f in frames:
            small.add(f)
    with pytest.raises(wire.WireError, match="malformed"):
        Reassembler(1 << 20).add(wire.pb.Frame(seq=0, index=0, count=1, data=b"\xff\xff\xff"))


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.tensors[0].__setattr__("dtype", "float64"), "not accepted"),
    (lambda e: e.tensors[0].__setattr__("data", e.tensors[0].data[:-4]), "do not hold"),
    (lambda e: e.__setattr__("cut", 1), "not served"),
    (lambda e: e.tensors.pop(), "needs activations"),
    (lambda e: e.tensors[1].__setattr__("dtype", "int32") or e.tensors[1].__setattr__("data", b"\0" * 40),
     "uint8"),
    (lambda e: e.tensors[1].__setattr__("data", b"\2" + e.tensors[1].data[1:]), "0/1"),
    (lambda e: e.tensors[2].__setattr__("data", VOCAB.to_bytes(4, "little") + e.tensors[2].data[4:]), "labels in"),
    (lambda e: e.tensors[2].__setattr__("data", (2**32 - 1).to_bytes(4, "little") + e.tensors[2].data[4:]),
     "labels in"),
    (lambda e: e.__setattr__("codec", "int8_token"), "set codec.up"),
])
def test_malformed_steps_are_refused(mutate, message):
    env = wire.encode_step(_req())
    mutate(env)
    with pytest.raises(wire.WireError, match=message):
        wire.decode_step(env, SHAPE)


def test_non_finite_wrong_width_and_oversized_activations_are_refused():
    bad = torch.randn(2, 5, 32)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(wire.WireError, match="NaN"):
        wire.decode_step(wire.encode_step(_req(acts=bad)), SHAPE)
    with pytest.raises(wire.WireError, match=r"\(2, 5, 32\) float32"):
        wire.decode_step(wire.encode_step(_req(acts=torch.randn(2, 5, 16))), SHAPE)
    empty = ForwardRequest(0, 0, 0, 2, torch.randn(0, 5, 32), torch.ones(0, 5, dtype=torch.uint8),
                           torch.zeros(0, 5, dtype=torch.int32))
    with pytest.raises(wire.WireError, match="tokens outside"):
        wire.decode_step(wire.encode_step(empty), SHAPE)
    big = torch.randn(2, 40, 32)
    req = ForwardRequest(0, 0, 0, 2, big, torch.ones(2, 40, dtype=torch.uint8), torch.zeros(2, 40, dtype=torch.int32))
    with pytest.raises(wire.WireError):
        wire.decode_step(wire.encode_step(req), SHAPE)


@pytest.fixture
def endpoint():
    peft, server = tiny_split_server()
    coord = Coordinator(server, n_clients=2, rounds=1, local_steps=1, per_round=0, seed=0, log=lambda s: None)
    full = lora.adapter_state_dict(peft)
    return Endpoint(coord, SHAPE, {n: t.shape for n, t in full.items()}, 10_000), server


def _state(server):
    return {n: t.clone() for n, t in {**server.adapters(), **server.store}.items()}


def test_rejected_requests_leave_the_server_unchanged(endpoint):
    ep, server = endpoint
    before = _state(server)
    first = ep.server.plan.order[0]
    other = 1 - first[0]
    for env, err in [(wire.encode_step(_req(cid=5)), Refused), (wire.encode_step(_req(cid=other)), None),
                     (wire.encode_push(AdapterUpdate(first[0], 0, {"nope": torch.zeros(2)}, 3)), wire.WireError),
                     (wire.encode_push(AdapterUpdate(first[0], 0, {}, 0)), wire.WireError)]:
        if err is None:  # out of turn: it would wait for its turn; prove it has not run by a short timeout
            with pytest.raises(asyncio.TimeoutError):
                asyncio.run(asyncio.wait_for(ep(env), 0.2))
        else:
            with pytest.raises(err):
                asyncio.run(ep(env))
    after = _state(server)
    assert all(torch.equal(before[n], after[n]) for n in before) and ep.server.pos == 0


def test_every_message_has_an_encoder_and_a_decoder_that_invert_each_other():
    adapters = {"a.lora_A.default.weight": torch.randn(2, 3), "a.lora_B.default.weight": torch.randn(3, 2)}
    report = {"memory_gb": 0.5, "loss": 2.0, "eval": {"round": 3, "loss_sum": 1.5, "n_tokens": 9, "n_correct": 2}}
    push = wire.decode_push(wire.encode_push(AdapterUpdate(1, 4, adapters, 7, report)),
                            {n: t.shape for n, t in adapters.items()}, 100)
    assert (push.client_id, push.round, push.n_samples, push.report) == (1, 4, 7, report)
    assert all(torch.equal(push.adapters[n], t) for n, t in adapters.items())
    assert wire.decode_pull(wire.encode_pull(1, 3, 4, report)) == (1, 3, 4, report)
    pulled = wire.decode_adapters(wire.encode_adapters(1, 4, Pulled(3, adapters)), 100)
    assert pulled.cut == 3 and pulled.adapters.keys() == adapters.keys()
    assert all(torch.equal(pulled.adapters[n], t) for n, t in adapters.items())
    assert wire.decode_done(wire.encode_done(2, report)) == (2, report)
    with pytest.raises(wire.WireError, match="report must be a JSON object"):
        wire.decode_pull(wire.Envelope(kind=wire.Envelope.PULL, cut=1, report="[1]"))
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.decode_pull(wire.Envelope(kind=wire.Envelope.PULL, cut=1, report=" " * (wire.MAX_REPORT + 1)))
    with pytest.raises(wire.WireError, match="expected ADAPTERS"):
        wire.decode_adapters(wire.ack(wire.encode_done(2)), 100)
    with pytest.raises(wire.WireError, match="cut >= 1"):
        wire.decode_pull(wire.encode_pull(1, 0, 4))


def test_a_round_budget_crosses_with_the_pulled_adapters_and_a_bad_one_is_refused():
    adapters = {"a.lora_A.default.weight": torch.ones(2, 3)}
    pulled = wire.decode_adapters(wire.encode_adapters(0, 1, Pulled(2, adapters, 1.5, 6)), 100)
    assert (pulled.budget_s, pulled.max_steps) == (1.5, 6)
    assert wire.decode_adapters(wire.encode_adapters(0, 1, Pulled(2, adapters)), 100).budget_s is None
    for budget, cap in [(float("nan"), 6), (-1.0, 6), (1.0, 0), (1e9, 2)]:
        env = wire.encode_adapters(0, 1, Pulled(2, adapters))
        env.report = wire.encode_report({"budget_s": budget, "max_steps": cap})
        with pytest.raises(wire.WireError, match="round budget"):
            wire.decode_adapters(env, 100)
