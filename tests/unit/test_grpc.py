"""The gRPC service's bounds on what one authenticated client can make the server hold: open sessions per
client, and requests waiting on one session (pipelined behind a request that waits); a session answers nothing
before a HELLO the server accepts; a request the server fails on is logged, counted and answered."""

import asyncio
from collections import Counter

import grpc
import pytest
import torch

from splitft.config import TransportConfig
from splitft.transport import wire
from splitft.transport.frames import Reassembler, to_frames
from splitft.transport.grpc_server import MAX_SESSIONS, Sessions


class Aborted(Exception):
    pass


class Context:
    def __init__(self, cid=0, token="t" * 32):
        self.md = (("splitft-client-id", str(cid)), ("splitft-token", token))
        self.status = None

    def invocation_metadata(self):
        return self.md

    def peer(self):
        return "ipv4:127.0.0.1:5555"

    async def abort(self, code, details):
        self.status = (code, details)
        raise Aborted(details)


class Waiting:
    """An endpoint whose every request waits (like a PULL waiting for the round to end)."""

    def __init__(self):
        self.seen_ids, self.release = [], asyncio.Event()
        self.failures = Counter()

    def seen(self, cid):
        self.seen_ids.append(cid)

    async def __call__(self, env):
        if env.kind == wire.Envelope.HELLO:  # greetings are answered at once
            return wire.encode_welcome(env, {"round": 0, "run": "r", "server": "s"})
        await self.release.wait()
        return wire.ack(env)


def _service():
    return Sessions(Waiting(), {0: "t" * 32}, TransportConfig(max_message_mb=1, chunk_kb=64), log=lambda s: None)


def test_requests_pipelined_behind_a_waiting_one_end_the_session_beyond_the_bound():
    service = _service()
    big = wire.encode_push(wire.AdapterUpdate(0, 0, {"x": torch.zeros(200_000)}, 1))  # 0.8 MB each
    sent = []

    async def frames():
        yield from_frames(wire.encode_hello(0, {}), 0)
        await asyncio.sleep(0.2)  # its WELCOME, as an honest client waits for it
        yield from_frames(wire.encode_pull(0, 2, 1), 1)
        for i in range(16):
            for f in to_frames(big, i + 2, 64 * 1024):
                sent.append(i)
                yield f
        await asyncio.sleep(3600)  # the client would keep the stream open

    def from_frames(env, seq):
        return to_frames(env, seq, 64 * 1024)[0]

    async def run():
        replies = []
        gen = service.session(frames(), Context())
        task = asyncio.ensure_future(_collect(gen, replies))
        await asyncio.sleep(0.5)
        service.endpoint.release.set()  # the waiting PULL is answered; then the queued ones, then the refusal
        await asyncio.wait_for(task, 10)
        return replies

    replies = asyncio.run(run())
    kinds = [r.kind for r in replies]
    assert kinds[-1] == wire.Envelope.ERROR and "one request at a time" in replies[-1].error
    assert len(set(sent)) < 16, "reading stopped once the bound was crossed"
    assert service.open[0] == 0


async def _collect(gen, replies):
    reasm = Reassembler(1 << 30)
    async for frame in gen:
        env = reasm.add(frame)
        if env is not None:
            replies.append(env)


def test_a_client_gets_at_most_max_sessions_open_at_once():
    service = _service()

    async def idle():
        await asyncio.sleep(3600)
        yield None

    async def run():
        gens = [service.session(idle(), Context()) for _ in range(MAX_SESSIONS)]
        tasks = [asyncio.ensure_future(_collect(g, [])) for g in gens]
        await asyncio.sleep(0.1)
        ctx = Context()
        with pytest.raises(Aborted):
            await _collect(service.session(idle(), ctx), [])
        assert ctx.status[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        tasks[0].cancel()
        await asyncio.sleep(0.1)
        assert service.open[0] == MAX_SESSIONS - 1, "a closed session frees its place"
        for t in tasks[1:]:
            t.cancel()

    asyncio.run(run())


def test_refusals_are_logged_at_most_per_window_per_key_then_counted():
    from splitft.transport.ratelimit import RateLimited

    lines, now = [], [0.0]
    log = RateLimited(lines.append, per_window=3, window_s=60, clock=lambda: now[0])
    for i in range(2000):
        log("ipv4:10.0.0.9", f"refused {i}")
    log("ipv4:10.0.0.7", "another peer")
    assert lines == ["refused 0", "refused 1", "refused 2", "another peer"]
    now[0] = 61
    log("ipv4:10.0.0.9", "later")
    assert lines[-2:] == ["ipv4:10.0.0.9: 1997 more refusals in 60 s were not logged", "later"]


def _session(service, envelopes, hold_open=False):
    """The replies a session gives to `envelopes` sent in order on one stream (then closed, or held open)."""
    async def frames():
        for seq, env in enumerate(envelopes):
            for f in to_frames(env, seq, 64 * 1024):
                yield f
        if hold_open:
            await asyncio.sleep(3600)

    async def run():
        replies = []
        await asyncio.wait_for(_collect(service.session(frames(), Context()), replies), 10)
        return replies

    return asyncio.run(run())


def test_a_session_that_does_not_begin_with_hello_gets_only_a_refusal():
    service = _service()
    service.endpoint.release.set()
    replies = _session(service, [wire.encode_pull(0, 2, 0), wire.encode_hello(0, {}), wire.encode_done(0, {})],
                       hold_open=True)  # the server, not the client, ends it
    assert [r.kind for r in replies] == [wire.Envelope.ERROR] and "before HELLO" in replies[0].error
    assert service.open[0] == 0


def test_a_refused_hello_ends_the_session():
    class Picky(Waiting):
        async def __call__(self, env):
            if env.kind == wire.Envelope.HELLO:
                raise ValueError("client 0 does not match this server: lora.r")
            return wire.ack(env)

    service = Sessions(Picky(), {0: "t" * 32}, TransportConfig(), log=lambda s: None)
    replies = _session(service, [wire.encode_hello(0, {}), wire.encode_done(0, {})], hold_open=True)
    assert [r.kind for r in replies] == [wire.Envelope.ERROR] and "does not match" in replies[0].error


def test_a_request_the_server_fails_on_is_logged_counted_and_answered_and_the_session_goes_on():
    class Buggy(Waiting):
        async def __call__(self, env):
            if env.kind == wire.Envelope.PULL:
                raise RuntimeError("something the code did not expect")
            return await super().__call__(env)

    lines = []
    endpoint = Buggy()
    endpoint.release.set()
    service = Sessions(endpoint, {0: "t" * 32}, TransportConfig(), log=lines.append)
    replies = _session(service, [wire.encode_hello(0, {}), wire.encode_pull(0, 2, 0), wire.encode_done(0, {})])
    assert [r.kind for r in replies] == [wire.Envelope.WELCOME, wire.Envelope.ERROR, wire.Envelope.ACK]
    assert "failed on this PULL (RuntimeError: something the code did not expect)" in replies[1].error
    assert endpoint.failures == {"PULL": 1}
    assert any("client 0" in x and "PULL" in x and "RuntimeError" in x and "test_grpc.py" in x for x in lines), lines


def test_a_session_that_opens_with_a_large_message_is_refused_at_its_first_64_kb():
    """Before its HELLO is accepted a session may send only a greeting's worth: a 64 MB first message cost the
    server +268 MB of peak RSS before it was refused; now reading stops at the first frame past 64 KB."""
    from splitft.transport.grpc_server import HELLO_MAX_BYTES

    service = _service()
    big = wire.encode_push(wire.AdapterUpdate(0, 0, {"x": torch.zeros(200_000)}, 1))  # 0.8 MB
    frames = to_frames(big, 0, 16 * 1024)
    read = []

    async def stream():
        for f in frames:
            read.append(f)
            yield f

    async def run():
        replies = []
        await asyncio.wait_for(_collect(service.session(stream(), Context()), replies), 10)
        return replies

    replies = asyncio.run(run())
    assert [r.kind for r in replies] == [wire.Envelope.ERROR] and "its HELLO" in replies[0].error
    assert len(read) * 16 * 1024 <= HELLO_MAX_BYTES + 2 * 16 * 1024 < len(frames) * 16 * 1024
