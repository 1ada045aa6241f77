"""The gRPC service's bounds on what one authenticated client can make the server hold: open sessions per
client, and requests waiting on one session (pipelined behind a request that waits)."""

import asyncio

import grpc
import pytest
import torch

from splitft.config import TransportConfig
from splitft.transport import wire
from splitft.transport.grpc import MAX_SESSIONS, _Service


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

    def seen(self, cid):
        self.seen_ids.append(cid)

    async def __call__(self, env):
        await self.release.wait()
        return wire.ack(env)


def _service():
    return _Service(Waiting(), {0: "t" * 32}, TransportConfig(max_message_mb=1, chunk_kb=64), log=lambda s: None)


def test_requests_pipelined_behind_a_waiting_one_end_the_session_beyond_the_bound():
    service = _service()
    big = wire.encode_push(wire.AdapterUpdate(0, 0, {"x": torch.zeros(200_000)}, 1))  # 0.8 MB each
    sent = []

    async def frames():
        yield from_frames(wire.encode_pull(0, 2, 1), 0)
        for i in range(16):
            for f in wire.to_frames(big, i + 1, 64 * 1024):
                sent.append(i)
                yield f
        await asyncio.sleep(3600)  # the client would keep the stream open

    def from_frames(env, seq):
        return wire.to_frames(env, seq, 64 * 1024)[0]

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
    reasm = wire.Reassembler(1 << 30)
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
    from splitft.transport.grpc import RateLimited

    lines, now = [], [0.0]
    log = RateLimited(lines.append, per_window=3, window_s=60, clock=lambda: now[0])
    for i in range(2000):
        log("ipv4:10.0.0.9", f"refused {i}")
    log("ipv4:10.0.0.7", "another peer")
    assert lines == ["refused 0", "refused 1", "refused 2", "another peer"]
    now[0] = 61
    log("ipv4:10.0.0.9", "later")
    assert lines[-2:] == ["ipv4:10.0.0.9: 1997 more refusals in 60 s were not logged", "later"]
