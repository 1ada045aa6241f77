"""Hostile input at the server: 12,000 random and mutated messages (3,000 each under the `none`, `int8_token`,
`int4_group`+zstd and `int4_token`+lz4 activation codecs; compressed frames re-tagged, cut, padded, replaced by
random bytes or by a zstd bomb) through the real frame reassembly, envelope decoding, session checks and endpoint
(transport/endpoint.Endpoint -> Coordinator -> SplitServer). Zero crashes (only refusals or legitimate replies), and a
refused message never changes the server: LoRA weights, optimizer state, round, plan position, pushes, caches.
Nothing makes the server's weights or optimizer state NaN/Inf (finite but huge activations whose gradients
overflow are refused by the server step, not applied)."""

import asyncio
import math
import random

import pytest
import torch

from splitft import lora
from splitft.config import TransportConfig
from splitft.deploy.coordinator import Coordinator
from splitft.model.families import family_for
from splitft.transport import pbtensor, wire
from splitft.transport.base import AdapterUpdate, ForwardRequest
from splitft.transport.compress import CODECS, codec_of
from splitft.transport.endpoint import Endpoint
from splitft.transport.frames import Reassembler, to_frames
from splitft.transport.grpc_server import Sessions
from tests.conftest import tiny_split_server

Envelope = wire.Envelope
N_INPUTS = 3_000  # per codec
BOMB = None  # 16 MB of zeros as one zstd frame (1.5 KB), made once


@pytest.fixture(scope="module", params=["none", "int8_token", "int4_group+zstd", "int4_token+lz4"])
def target(request):
    peft, server = tiny_split_server()
    coord = Coordinator(server, n_clients=2, rounds=2, local_steps=2, per_round=0, seed=0, log=lambda s: None,
                        max_cut=3)
    full = lora.adapter_state_dict(peft)
    codec = codec_of(*request.param.split("+"))
    shape = wire.StepShape(hidden=peft.base_model.model.config.hidden_size, dtype=torch.float32, max_tokens=64,
                            vocab=peft.base_model.model.config.vocab_size, cut_range=(2, 4), codec_up=codec,
                            codec_down=codec)
    endpoint = Endpoint(coord, shape, {n: t.shape for n, t in full.items()}, max(t.numel() for t in full.values()))
    return Sessions(endpoint, {0: "x" * 32, 1: "y" * 32}, TransportConfig(max_message_mb=1), log=lambda s: None), \
        server, coord, shape, full


def _fingerprint(server, coord):
    """Everything a request could change: LoRA and AdamW moments of the server, its store, the coordinator."""
    tensors = [*server.adapters().values(), *server.store.values()]
    tensors += [v for st in server.opt.state.values() for v in st.values() if torch.is_tensor(v)]
    flat = torch.cat([t.detach().float().flatten() for t in tensors]) if tensors else torch.zeros(0)
    return (flat.clone(), coord.round, coord.pos, frozenset(coord.current.pushed), frozenset(coord.finished_clients),
            tuple(sorted((c, k) for c, (k, _) in coord.steps.cache.items())), len(server.pending))


def _same(a, b):
    return torch.equal(a[0], b[0]) and a[1:] == b[1:]


server_family = family_for("llama")  # tiny_split_server's model


def _valid(rng, shape, full):
    """One well-formed envelope of a random kind, for mutation (one step in ten in another codec)."""
    kind = rng.choice(["step", "eval", "push", "pull", "done", "heartbeat"])
    cid = rng.randrange(2)
    if kind in ("step", "eval"):
        b, t = rng.randint(1, 3), rng.randint(1, 8)
        req = ForwardRequest(cid, 0, rng.randrange(2), 2, torch.randn(b, t, shape.hidden),
                             torch.ones(b, t, dtype=torch.uint8),
                             torch.randint(0, 50, (b, t), dtype=torch.int32), kind == "step")
        c = shape.codec_up if rng.random() < 0.9 else codec_of(rng.choice(sorted(CODECS)),
                                                                 rng.choice(["none", "zstd", "lz4"]))
        return wire.encode_step(req, c.encode(req.activations))
    if kind == "push":  # a few of any block's, exactly its own (cut 2), the server's (blocks 2-3), or none
        own = sorted(n for n in full if lora.layer_of(n, server_family) < 2)
        names = rng.choice([rng.sample(sorted(full), 3), own, sorted(set(full) - set(own)), []])
        dtype = rng.choice([torch.float32] * 3 + [torch.int32, torch.float16])
        return wire.encode_push(AdapterUpdate(cid, 0, {n: torch.randn_like(full[n]).to(dtype) for n in names},
                                              rng.choice([2, 4, 1000])))
    if kind == "pull":
        return wire.encode_pull(cid, rng.choice([2, 3, 4]), 0)
    return Envelope(kind=Envelope.DONE if kind == "done" else Envelope.HEARTBEAT, client_id=cid)


def _mutate_fields(rng, env):
    env = Envelope.FromString(env.SerializeToString())
    for _ in range(rng.randint(1, 3)):
        what = rng.randrange(12)
        if what == 0:
            env.kind = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 99])
        elif what == 1:
            env.client_id = rng.choice([-1, 2, 7, 2**31 - 1, -2**31])
        elif what == 2:
            env.round, env.step = rng.choice([-1, 1, 5, 2**31 - 1]), rng.choice([-3, 0, 1, 9])
        elif what == 3:
            env.cut = rng.choice([-1, 0, 1, 4, 1000])
        elif what == 4 and env.tensors:
            m = rng.choice(env.tensors)
            m.dtype = rng.choice(["float64", "int8", "", "bfloat16", "float16", "uint8", "pickle"])
        elif what == 5 and env.tensors:
            m = rng.choice(env.tensors)
            m.shape[:] = rng.choice([[], [-1], [2**32, 2**32, 1], [1] * 9, [0, 5, 64], list(reversed(m.shape))])
        elif what == 6 and env.tensors:
            m = rng.choice(env.tensors)
            m.data = m.data[: rng.randrange(len(m.data) + 1)] if rng.random() < 0.5 else m.data + b"\0" * 4
        elif what == 7 and env.tensors:
            m = rng.choice(env.tensors)
            try:
                t = pbtensor.tensor_from_pb(m, 1 << 30)
            except wire.WireError:  # an earlier mutation broke it already
                t = None
            if t is not None and t.is_floating_point() and t.numel():
                t.view(-1)[rng.randrange(t.numel())] = rng.choice([math.nan, math.inf, -math.inf, 1e38])
                m.data = pbtensor.tensor_to_pb(m.name, t).data
        elif what == 8:
            env.n_samples = rng.choice([-5, 0, 2**62])
            if env.tensors and rng.random() < 0.5:
                env.tensors[0].name = rng.choice(["", "nope", env.tensors[-1].name, "../../x"])
        elif what == 9:
            env.codec = rng.choice(["", "none", "int8_token", "int8_channel", "fp16", "zstd", "\x00", "int4_group",
                                    "int4_group+zstd", "int4_token+lz4", "int4_token+zstd"])
        elif what == 10 and env.tensors:  # token ids and mask values: the server indexes logits with them
            m = rng.choice(env.tensors)
            try:
                t = pbtensor.tensor_from_pb(m, 1 << 30) if m.dtype in ("int32", "uint8") else None
            except wire.WireError:
                t = None
            if t is not None and t.numel():
                t.view(-1)[rng.randrange(t.numel())] = rng.choice([-1, 2, 255] if m.dtype == "uint8"
                                                                  else [-101, -1, 2**31 - 1, 259, 260])
                m.data = pbtensor.tensor_to_pb(m.name, t).data
        elif what == 11 and env.tensors:  # compressed values: another coder's tag, random bytes, a bomb
            m = rng.choice(env.tensors)
            m.coding = rng.choice(["", "zstd", "lz4", "gzip", m.coding])
            if rng.random() < 0.5:
                m.data = rng.choice([_bomb(), rng.randbytes(rng.randrange(64)), m.data[::-1]])
    return env


def _bomb():
    global BOMB
    if BOMB is None:
        import zstandard
        BOMB = zstandard.ZstdCompressor().compress(bytes(16 << 20))
    return BOMB


def _frames(rng, shape, full):
    """A list of frames: random bytes, byte-mutated valid envelopes, field-mutated ones, or broken framing."""
    mode = rng.randrange(4)
    if mode == 0:
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(200)))
        return [wire.pb.Frame(seq=0, index=0, count=1, data=data)]
    env = _valid(rng, shape, full)
    if mode == 1:
        data = bytearray(env.SerializeToString())
        for _ in range(rng.randint(1, 8)):
            op, i = rng.randrange(3), rng.randrange(len(data) or 1)
            if op == 0 and data:
                data[i] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[i:i] = bytes([rng.getrandbits(8)])
            elif data:
                del data[i]
        return [wire.pb.Frame(seq=0, index=0, count=1, data=bytes(data))]
    if mode == 2:
        return to_frames(_mutate_fields(rng, env), 0, 256)
    frames = to_frames(env, 0, 64)
    if len(frames) > 1:
        rng.choice([lambda: frames.pop(rng.randrange(len(frames))), lambda: frames.reverse(),
                    lambda: frames[0].__setattr__("count", 0), lambda: frames[-1].__setattr__("seq", 9)])()
    return frames


def test_hostile_messages_crash_nothing_and_refusals_change_nothing(target):
    service, server, coord, shape, full = target
    rng = random.Random(20261125)
    refusals: list[str] = []
    service.log = refusals.append
    outcomes = {"refused": 0, "accepted": 0, "waiting": 0, "begun": 0, "heartbeat": 0}

    async def one(frames) -> str:
        reasm = Reassembler(service.opts.max_bytes)
        for frame in frames:
            try:
                env = reasm.add(frame)
            except wire.WireError:
                return "refused"
            if env is None:
                continue
            if env.kind == Envelope.HEARTBEAT:  # the session consumes these without a reply
                return "heartbeat"
            session = rng.randrange(2)  # the authenticated client of the session it arrives on
            try:
                reply = await asyncio.wait_for(service._handle(session, env), 0.01)
            except TimeoutError:  # a valid request waiting for its turn, or computing, then cancelled
                while coord.steps.serving.locked() or coord.worker.torch.locked():  # a step it began runs to its end
                    await asyncio.sleep(0.001)
                return "waiting"
            return "refused" if reply.kind == Envelope.ERROR else "accepted"
        return "refused"  # incomplete message: nothing was handed on

    async def run():
        before = _fingerprint(server, coord)
        for _ in range(N_INPUTS):
            outcome = await one(_frames(rng, shape, full))  # any exception here is a crash and fails the test
            after = _fingerprint(server, coord)
            if outcome == "waiting" and not _same(before, after):  # cancelled after its step began: applied whole
                assert after[2] == before[2] + 1 and after[5] != before[5], "a cancelled step was applied, not counted"
                outcome = "begun"
            elif outcome != "accepted":
                assert _same(before, after), f"a {outcome} message changed the server: {refusals[-1:]}"
            assert torch.isfinite(after[0]).all(), f"a {outcome} message made the server's LoRA or AdamW non-finite"
            outcomes[outcome] += 1
            before = after

    asyncio.run(run())
    assert sum(outcomes.values()) == N_INPUTS and outcomes["refused"] > N_INPUTS // 2, outcomes
    assert outcomes["accepted"] > 50, "the fuzzer must also reach the handler with valid-looking requests"
