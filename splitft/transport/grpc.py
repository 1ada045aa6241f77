"""gRPC transport: one long-lived bidirectional stream per client, protobuf envelopes with raw tensor bytes
(`wire.py`), chunked frames, a per-client token checked before any frame is read, optional TLS.

The two halves of the protocol, side by side:
    client  `GrpcTransport` implements `Transport` synchronously (SplitClient runs unchanged): encodes each
            request, counts its payload, sends, waits, decodes and counts the reply.
    server  `Endpoint` decodes and checks each request, counts it, asks an `AsyncServer` (the deployment's
            Coordinator, which never sees grpc or protobuf), encodes and counts the reply;
            `serve_grpc(endpoint, ...)` runs the grpc.aio server around it.
The only module that imports grpc.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import queue
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import torch

from ..config import TransportConfig
from ..errors import reason
from . import wire
from .base import (
    AdapterUpdate,
    AsyncServer,
    BackwardRequest,
    ByteCounter,
    ForwardRequest,
    Pulled,
    StepReply,
    TransportError,
    adapters_nbytes,
)
from .compress import codecs_of
from .proto import splitft_pb2 as pb
from .tls import certificate_warnings, read_pem

METHOD = "/splitft.SplitFT/Session"
Envelope = pb.Envelope


def _grpc_options(t: TransportConfig) -> list[tuple[str, int]]:
    frame = t.chunk_bytes + 4096  # one frame = one chunk + the Frame header
    return [("grpc.max_send_message_length", frame), ("grpc.max_receive_message_length", frame)]


SERVER_OPTIONS = [("grpc.so_reuseport", 0)]
"""gRPC sets SO_REUSEPORT by default: a second server on a port in use would bind too, and the kernel would deal
the clients' connections between the two (measured: a second grpc server bound the same loopback port)."""


def check_listen(address: str) -> None:
    """Bind a plain socket to a HOST:PORT `address` and let it go, before a server writes anything: an address
    this machine does not have, a host that does not resolve or a port in use is one line naming its cause
    (gRPC's own error names none). Other address forms are left to gRPC."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return
    host = host.strip("[]")
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError, ValueError) as e:
        raise TransportError(f"transport.address: cannot listen on '{address}': host '{host}' does not resolve "
                             f"({reason(e)})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no obstacle
        try:
            probe.bind(where)
        except OSError as e:
            hint = "another process listens on it; choose a free port" if e.errno == errno.EADDRINUSE else \
                "use an address of this machine (0.0.0.0:PORT for all)"
            raise TransportError(f"transport.address: cannot listen on '{address}': {e.strerror}; {hint}") from None


# --- server -----------------------------------------------------------------------------------------------


class Endpoint:
    """Envelope in, envelope out: decodes and checks a request, asks the `AsyncServer`, encodes its answer.

    `counter` holds the payload bytes by client and kind, as the clients count them: every well-formed request
    (a resend answered from the cache is counted again: it crossed again) and every reply.
    """

    def __init__(self, server: AsyncServer, shape: wire.StepShape, adapter_shapes: dict[str, torch.Size],
                 max_numel: int, counter: ByteCounter | None = None):
        self.server, self.shape, self.adapter_shapes, self.max_numel = server, shape, adapter_shapes, max_numel
        self.counter = counter or ByteCounter()
        self.failures: Counter[str] = Counter()  # requests the server failed on unexpectedly, by kind

    def seen(self, client_id: int) -> None:
        self.server.seen(client_id)

    async def __call__(self, env: Envelope) -> Envelope:
        """The reply to one request; raises WireError or ValueError (the server's Refused) to refuse it."""
        if env.kind == Envelope.STEP:
            req = wire.decode_step(env, self.shape)
            self.counter.request(req, wire.payload_nbytes(env, "activations"))
            start = time.monotonic()
            answer = await self.server.step(req)
            answer.server_s = time.monotonic() - start
            reply = wire.encode_reply(answer, env, self.shape.codec_down)
            self.counter.reply(req, answer, wire.payload_nbytes(reply))
            return reply
        if env.kind == Envelope.BACKWARD:
            back = wire.decode_backward(env, self.shape)
            start = time.monotonic()
            answer = await self.server.backward(back)
            answer.server_s = time.monotonic() - start
            reply = wire.encode_reply(answer, env, self.shape.codec_down)
            self.counter.backward(back, wire.payload_nbytes(env), wire.payload_nbytes(reply))
            return reply
        if env.kind == Envelope.PUSH:
            update = wire.decode_push(env, self.adapter_shapes, self.max_numel)
            self.counter.add(env.client_id, "lora_up", wire.payload_nbytes(env))  # before: it may end the round
            await self.server.push_adapters(update)
            return wire.ack(env)
        if env.kind == Envelope.PULL:
            client_id, cut, round_, report = wire.decode_pull(env)
            pulled = await self.server.pull_adapters(client_id, cut, round_, report)
            reply = wire.encode_adapters(client_id, round_, pulled)
            self.counter.add(client_id, "lora_down", wire.payload_nbytes(reply))
            return reply
        if env.kind == Envelope.DONE:
            await self.server.done(*wire.decode_done(env))
            return wire.ack(env)
        if env.kind == Envelope.HELLO:
            return wire.encode_welcome(env, await self.server.hello(*wire.decode_hello(env)))
        raise wire.WireError(f"unexpected message kind {env.kind}")


class RateLimited:
    """A log that writes at most `per_window` lines per key (a peer's address, a client) every `window_s`, then
    one line saying how many it left out: 2,000 bad-token connections wrote 163 bytes each (5.5 GB a day at
    that rate) before."""

    def __init__(self, log: Callable[[str], None], per_window: int = 20, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.log, self.per_window, self.window_s, self.clock = log, per_window, window_s, clock
        self.windows: dict[str, list[float]] = {}  # key -> [window start, lines written, lines left out]

    def __call__(self, key: str, text: str) -> None:
        now = self.clock()
        w = self.windows.get(key)
        if w is None or now - w[0] >= self.window_s:
            if w is not None and w[2]:
                self.log(f"{key}: {int(w[2])} more refusals in {self.window_s:g} s were not logged")
            if len(self.windows) > 10_000:  # keys are peers' addresses: bounded too
                self.windows.clear()
            w = self.windows[key] = [now, 0, 0]
        if w[1] < self.per_window:
            w[1] += 1
            self.log(text)
        else:
            w[2] += 1


HELLO_MAX_BYTES = 64 << 10
"""The largest message a session may send before its HELLO is accepted (a HELLO carries the client's terms, about
1 KB). A session that opened with a 64 MB request cost the server +268 MB of peak RSS before it was refused
(measured, loopback, tiny model): now it is refused after its first 64 KB."""

MAX_SESSIONS = 2
"""Open sessions per client: its stream, and the one a reconnect opens before the server has reaped the old."""


class _Service:
    """Sessions of authenticated clients. What one client can make the server hold is bounded: MAX_SESSIONS open
    sessions, and per session the requests received but not yet answered (an honest client has one in flight:
    at most 2 x transport.max_message_mb; more, e.g. messages pipelined behind a waiting PULL, ends it)."""

    def __init__(self, endpoint: Endpoint, tokens: dict[int, str], opts: TransportConfig, log: Callable[[str], None]):
        self.endpoint, self.tokens, self.opts, self.log = endpoint, tokens, opts, log
        self.refusal = RateLimited(lambda text: self.log(text))
        self.open: dict[int, int] = {}  # client -> its open sessions
        self.max_queued = 2 * opts.max_bytes

    def _client_of(self, context: grpc.aio.ServicerContext) -> int | None:
        md = dict(context.invocation_metadata() or ())
        try:
            cid = int(md.get("splitft-client-id", ""))
        except ValueError:
            return None
        want = self.tokens.get(cid)
        ok = want is not None and hmac.compare_digest(want.encode(), str(md.get("splitft-token", "")).encode())
        return cid if ok else None

    async def session(self, frames: AsyncIterator[pb.Frame], context: grpc.aio.ServicerContext):
        """Requests are answered one at a time, in order; a reader task keeps taking frames meanwhile, so
        heartbeats count while a request waits (e.g. a pull waiting for the round to end)."""
        cid = self._client_of(context)
        if cid is None:  # refused before a single frame is read
            peer = (context.peer() or "unknown").rsplit(":", 1)[0]
            self.refusal(peer, f"refused a session from {peer}: unknown client id or bad token")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown client id or bad token")
        if self.open.get(cid, 0) >= MAX_SESSIONS:
            self.refusal(f"client {cid}", f"client {cid}: refused a session: it has {MAX_SESSIONS} open already")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"client {cid} has {MAX_SESSIONS} open sessions already; close one first")
        self.open[cid] = self.open.get(cid, 0) + 1
        self.endpoint.seen(cid)
        inbox: asyncio.Queue[Envelope | wire.WireError | None] = asyncio.Queue()
        queued = [0]  # bytes of the requests in `inbox`
        reasm = wire.Reassembler(HELLO_MAX_BYTES, "a session's first message is its HELLO")
        greeted = asyncio.Event()
        reader = asyncio.create_task(self._read(cid, frames, inbox, queued, reasm, greeted))
        seq = 0
        try:
            while (item := await inbox.get()) is not None:
                if isinstance(item, Envelope):
                    queued[0] -= item.ByteSize()
                if isinstance(item, wire.WireError):
                    self.refusal(f"client {cid}", f"client {cid}: refused: {item}")
                    reply = wire.error(Envelope(client_id=cid), str(item))
                elif not greeted.is_set() and item.kind != Envelope.HELLO:
                    reply = self._ungreeted(cid, item)
                else:
                    reply = await self._handle(cid, item)
                    if not greeted.is_set() and item.kind == Envelope.HELLO and reply.kind != Envelope.ERROR:
                        reasm.max_bytes, reasm.limit = self.opts.max_bytes, "transport.max_message_mb"
                        greeted.set()
                for out in wire.to_frames(reply, seq, self.opts.chunk_bytes):
                    yield out
                seq += 1
                if not greeted.is_set():  # a session that did not begin with an accepted HELLO ends at its refusal
                    return
        finally:
            reader.cancel()
            self.open[cid] -= 1

    def _ungreeted(self, cid: int, env: Envelope) -> Envelope:
        """The refusal of a request on a session that has not greeted: the server answers nothing before a HELLO
        it accepted (the terms it checks are what keeps a mismatched client from training)."""
        kind = _kind_name(env)
        self.refusal(f"client {cid}", f"client {cid}: refused {kind} on a session that did not begin with HELLO")
        return wire.error(env, f"{kind} before HELLO: a session begins with a HELLO the server accepts; the session "
                               "is closed")

    async def _read(self, cid: int, frames: AsyncIterator[pb.Frame],
                    inbox: asyncio.Queue[Envelope | wire.WireError | None], queued: list[int],
                    reasm: wire.Reassembler, greeted: asyncio.Event) -> None:
        try:
            async for frame in frames:
                self.endpoint.seen(cid)
                try:
                    env = reasm.add(frame)
                except wire.WireError as e:
                    inbox.put_nowait(e)
                    if not greeted.is_set():  # the session ends at this refusal: read no more of it
                        break
                    continue
                if env is None or env.kind == Envelope.HEARTBEAT:  # heartbeats are one-way
                    continue
                queued[0] += env.ByteSize()
                if queued[0] > self.max_queued:  # refuse, and read no more from this session
                    inbox.put_nowait(wire.WireError(f"more than {self.max_queued >> 20} MB of requests waiting on "
                                                    "one session; send one request at a time"))
                    break
                inbox.put_nowait(env)
        except (grpc.RpcError, asyncio.CancelledError):
            pass  # the client went away; the coordinator notices its silence
        finally:
            inbox.put_nowait(None)

    async def _handle(self, cid: int, env: Envelope) -> Envelope:
        try:
            if env.client_id != cid:
                raise wire.WireError(f"envelope claims client {env.client_id} on client {cid}'s session")
            return await self.endpoint(env)
        except (wire.WireError, ValueError) as e:  # Refused is a ValueError: state unchanged
            self.refusal(f"client {cid}", f"client {cid}: refused {_kind_name(env)}: {e}")
            return wire.error(env, str(e))
        except Exception as e:  # noqa: BLE001 (a bug, not a refusal: logged, counted, answered; others go on)
            return self._failed(cid, env, e)

    def _failed(self, cid: int, env: Envelope, e: Exception) -> Envelope:
        """The answer to a request the server failed on unexpectedly (it escaped as gRPC UNKNOWN, with nothing in
        the log): one log line with the client, the request's kind, the error and where it was raised."""
        kind = _kind_name(env)
        self.endpoint.failures[kind] += 1
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" at {Path(where.filename).name}:{where.lineno} in {where.name}" if where else ""
        self.refusal(f"client {cid} failures", f"client {cid}: the server failed on its {kind} "
                                               f"({type(e).__name__}: {reason(e)}{at}); answered ERROR")
        return wire.error(env, f"the server failed on this {kind} ({type(e).__name__}: {reason(e)}); its log has "
                               "the details")


def _kind_name(env: Envelope) -> str:
    return Envelope.Kind.Name(env.kind) if env.kind in Envelope.Kind.values() else f"kind {env.kind}"


def _server_credentials(opts: TransportConfig, log: Callable[[str], None]) -> grpc.ServerCredentials:
    cert = read_pem(opts.tls_cert, "transport.tls_cert", "CERTIFICATE")
    for line in certificate_warnings(cert, "transport.tls_cert"):
        log(line)
    pair = [(read_pem(opts.tls_key, "transport.tls_key", "PRIVATE KEY"), cert)]
    if opts.tls_client_ca:  # mutual TLS: the handshake fails for a client without a certificate from this CA
        ca = read_pem(opts.tls_client_ca, "transport.tls_client_ca", "CERTIFICATE")
        return grpc.ssl_server_credentials(pair, root_certificates=ca, require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def _client_credentials(opts: TransportConfig) -> grpc.ChannelCredentials:
    """Read (and check) once, when the transport is made: a bad file is one line, not minutes of retries."""
    cert = read_pem(opts.tls_client_cert, "transport.tls_client_cert", "CERTIFICATE") if opts.tls_client_cert else None
    key = read_pem(opts.tls_client_key, "transport.tls_client_key", "PRIVATE KEY") if opts.tls_client_key else None
    return grpc.ssl_channel_credentials(read_pem(opts.tls_root, "transport.tls_root", "CERTIFICATE"),
                                        private_key=key, certificate_chain=cert)


async def serve_grpc(endpoint: Endpoint, address: str, tokens: dict[int, str], opts: TransportConfig,
                     until: asyncio.Event, log: Callable[[str], None] = print) -> None:
    """Serve sessions on `address` until `until` is set, then stop (in-flight calls get a grace second)."""
    service = _Service(endpoint, tokens, opts, log)
    rpc = grpc.stream_stream_rpc_method_handler(service.session, request_deserializer=pb.Frame.FromString,
                                                response_serializer=pb.Frame.SerializeToString)
    server = grpc.aio.server(options=_grpc_options(opts) + SERVER_OPTIONS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("splitft.SplitFT", {"Session": rpc})])
    creds = _server_credentials(opts, log) if opts.tls_cert else None
    try:
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except Exception as e:  # grpc raises RuntimeError for an address it cannot bind
        raise TransportError(f"transport.address: cannot listen on '{address}' ({reason(e)}); use an address of "
                             "this machine (0.0.0.0:PORT for all) and a free port") from None
    if port == 0:
        raise TransportError(f"transport.address: cannot listen on '{address}'")
    await server.start()
    mode = "mutual TLS" if opts.tls_client_ca else "TLS" if opts.tls_cert else "plaintext"
    log(f"listening on {address} ({mode})")
    await until.wait()
    await server.stop(grace=1.0)


# --- client -----------------------------------------------------------------------------------------------

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED}
"""Worth a reconnect (RESOURCE_EXHAUSTED: the server has not yet reaped this client's previous session)."""


class ServerRefused(TransportError):
    """The server answered ERROR: it refused this request and its state is unchanged (e.g. a dropped client)."""


class ServerRestarted(TransportError):
    """The server came back as another process (`splitft server --resume`) while this client was talking to
    it: `welcome` says where it stands; the client goes back to the start of that round."""

    def __init__(self, welcome: dict[str, Any]):
        self.welcome = welcome
        super().__init__(f"the server restarted; it stands at round {welcome['round']}")


class _Broken(Exception):
    """The connection broke before the reply came; the request may or may not have been applied."""


PUMP_JOIN_S = 10.0
"""How long closing a connection waits for its reader thread (it ends as soon as the cancel reaches it)."""


class _Connection:
    """One channel and its bidirectional stream; a reader thread moves reply frames to `inbox` so a wait can
    have a deadline."""

    def __init__(self, address: str, client_id: int, token: str, opts: TransportConfig,
                 creds: grpc.ChannelCredentials | None):
        if creds is not None:
            self.channel = grpc.secure_channel(address, creds, options=_grpc_options(opts))
        else:
            self.channel = grpc.insecure_channel(address, options=_grpc_options(opts))
        self.outbox: queue.Queue[pb.Frame | None] = queue.Queue()
        self.inbox: queue.Queue[pb.Frame | grpc.RpcError | None] = queue.Queue()
        call = self.channel.stream_stream(METHOD, request_serializer=pb.Frame.SerializeToString,
                                          response_deserializer=pb.Frame.FromString)
        self.replies = call(iter(self.outbox.get, None),
                            metadata=(("splitft-client-id", str(client_id)), ("splitft-token", token)))
        self.pump = threading.Thread(target=self._pump, args=(self.replies,), daemon=True)
        self.pump.start()

    def _pump(self, replies: Iterator[pb.Frame]) -> None:
        try:
            for frame in replies:
                self.inbox.put(frame)
        except grpc.RpcError as e:
            self.inbox.put(e)
        self.inbox.put(None)

    def close(self) -> None:
        """Cancel the stream and wait for the reader thread to see it end: a daemon thread frozen inside gRPC
        at interpreter exit holds the call's lock, and the call's finalizer then waits on it forever (a client
        that had finished hung at exit in `_Rendezvous.__del__`, seen once in the e2e suite)."""
        self.outbox.put(None)
        self.replies.cancel()
        self.pump.join(timeout=PUMP_JOIN_S)
        self.channel.close()


class GrpcTransport:
    """`Transport` over one bidirectional stream, synchronous, so `SplitClient` runs unchanged.

    Counts payload bytes by kind like the in-process transport (`counter`) and, apart, the serialized frames
    that really crossed (`wire_up`, `wire_down`, heartbeats and resends included). A heartbeat thread keeps
    the server informed while the client computes. Every reply has a deadline (`timeout_s`). A broken
    connection (or a server not up yet) is re-opened with backoff for up to `reconnect_s` seconds and the
    request resent: the server recognises a resent step by its (client, round, step) key and answers it from
    its cache instead of applying it twice. Once `hello` has been answered, every new connection greets the
    server again; a server that is another process than before (restarted) raises `ServerRestarted`.
    """

    def __init__(self, address: str, client_id: int, token: str, opts: TransportConfig,
                 log: Callable[[str], None] = print):
        self.address, self.client_id, self.token, self.opts = address, client_id, token, opts
        self.timeout_s, self.reconnect_s, self.log = opts.timeout_s, opts.reconnect_s, log
        self.counter, (self.up, self.down) = ByteCounter(), codecs_of(opts)
        self.wire_up = self.wire_down = self.seq = self.reconnects = 0
        self.terms: dict[str, Any] | None = None  # sent on every new connection once `hello` was called
        self.welcome: dict[str, Any] | None = None  # the server's last answer to HELLO
        self.greeted = False  # on this connection
        self.lock = threading.Lock()  # the frames of one envelope leave together; heartbeats go in between
        self.creds = _client_credentials(opts) if opts.tls_root else None
        self.conn = _Connection(address, client_id, token, opts, self.creds)
        self.stopped = threading.Event()
        threading.Thread(target=self._heartbeats, args=(opts.heartbeat_s,), daemon=True).start()

    def _send(self, env: Envelope) -> None:
        with self.lock:
            for frame in wire.to_frames(env, self.seq, self.opts.chunk_bytes):
                self.wire_up += frame.ByteSize()
                self.conn.outbox.put(frame)
            self.seq += 1

    def _heartbeats(self, every_s: float) -> None:
        while not self.stopped.wait(every_s):
            self._send(Envelope(kind=Envelope.HEARTBEAT, client_id=self.client_id))

    def _call(self, env: Envelope | None) -> Envelope:
        """One request's reply (None: only greet), across reconnects for up to `reconnect_s` (backoff 0.5, 1,
        2 .. 10 s)."""
        deadline, attempt = None, 0
        while True:
            try:
                if self.terms is not None and not self.greeted:
                    self._greet()
                return self._exchange(env) if env is not None else Envelope()
            except _Broken as e:
                now = time.monotonic()
                deadline = deadline or now + self.reconnect_s
                if now >= deadline:
                    raise TransportError(f"client {self.client_id}: the server at {self.address} cannot be reached; "
                                         f"gave up after {self.reconnect_s:g} s (transport.reconnect_s): {e}") from None
                if attempt % 10 == 0:
                    self.log(f"client {self.client_id}: connection failed ({e}); reconnecting for up to "
                             f"{deadline - now:.0f} s more")
                time.sleep(min(0.5 * 2 ** attempt, 10.0, max(deadline - now, 0.0)))
                attempt += 1
                self._reconnect()

    def _greet(self) -> None:
        """HELLO on a new connection; raises ServerRestarted when the server is not the process it was."""
        try:
            welcome = wire.decode_welcome(self._exchange(wire.encode_hello(self.client_id, self.terms or {})))
        except wire.WireError as e:
            raise TransportError(f"client {self.client_id}: bad reply from the server: {e}") from None
        before, self.welcome, self.greeted = self.welcome, welcome, True
        if before is not None and (before["server"], before["run"]) != (welcome["server"], welcome["run"]):
            raise ServerRestarted(welcome)

    def hello(self, terms: dict[str, Any]) -> dict[str, Any]:
        """Introduce this client (its terms, `deploy.handshake`) and return where the federation stands; raises
        ServerRefused (the server names every setting that differs) before any training."""
        self.terms, self.greeted = terms, False
        self._call(None)
        assert self.welcome is not None
        return self.welcome

    def where(self) -> dict[str, Any]:
        """Greet the server again (same terms, same process) and return where the federation stands now."""
        assert self.terms is not None, "where() follows hello()"
        return self.hello(self.terms)

    def _exchange(self, env: Envelope) -> Envelope:
        """Send one request and wait for its reply. Raises _Broken (retry), TransportError (give up)."""
        self._send(env)
        reasm = wire.Reassembler(self.opts.max_bytes)
        try:
            while (reply := reasm.add(self._next())) is None:
                pass
        except wire.WireError as e:
            raise TransportError(f"client {self.client_id}: bad reply from the server: {e}") from None
        if reply.kind == Envelope.ERROR:
            raise ServerRefused(f"client {self.client_id}: the server refused the request: {reply.error}")
        return reply

    def _next(self) -> pb.Frame:
        try:
            item = self.conn.inbox.get(timeout=self.timeout_s)
        except queue.Empty:
            raise TransportError(f"client {self.client_id}: no reply within {self.timeout_s:g} s "
                                 "(transport.timeout_s)") from None
        if isinstance(item, grpc.RpcError):
            if item.code() in RETRYABLE:
                raise _Broken(f"{item.code().name}: {item.details()}")
            raise TransportError(f"client {self.client_id}: connection to the server failed: "
                                 f"{item.code().name}: {item.details()}")
        if item is None:
            raise _Broken("the server closed the session")
        self.wire_down += item.ByteSize()
        return item

    def _reconnect(self) -> None:
        with self.lock:
            self.conn.close()
            self.conn = _Connection(self.address, self.client_id, self.token, self.opts, self.creds)
            self.reconnects += 1
            self.greeted = False

    def step(self, req: ForwardRequest) -> StepReply:
        up = self.up.encode(req.activations)
        self.counter.request(req, up.nbytes())
        env = self._call(wire.encode_step(req, up))
        try:
            reply, down = wire.decode_reply(env, req, self.down)
        except wire.WireError as e:
            raise TransportError(f"client {self.client_id}: bad reply from the server: {e}") from None
        self.counter.reply(req, reply, down)
        return reply

    def backward(self, req: BackwardRequest) -> StepReply:
        up = self.up.encode(req.grad_hidden)
        env = self._call(wire.encode_backward(req, up))
        try:
            reply, down = wire.decode_backward_reply(env, req, self.down)
        except wire.WireError as e:
            raise TransportError(f"client {self.client_id}: bad reply from the server: {e}") from None
        self.counter.backward(req, up.nbytes(), down)
        return reply

    def push_adapters(self, update: AdapterUpdate) -> None:
        self.counter.add(self.client_id, "lora_up", update.nbytes())
        self._call(wire.encode_push(update))

    def pull_adapters(self, client_id: int, cut: int, round_: int, report: dict[str, Any] | None = None) -> Pulled:
        try:
            pulled = wire.decode_adapters(self._call(wire.encode_pull(client_id, cut, round_, report)), 1 << 30)
        except wire.WireError as e:
            raise TransportError(f"client {self.client_id}: bad reply from the server: {e}") from None
        self.counter.add(client_id, "lora_down", adapters_nbytes(pulled.adapters))
        return pulled

    def done(self, client_id: int, report: dict[str, Any] | None = None) -> None:
        self._call(wire.encode_done(client_id, report))

    def close(self) -> None:
        self.stopped.set()
        with self.lock:
            self.conn.close()
