"""The gRPC client: `GrpcTransport` implements `Transport` synchronously over one bidirectional stream (so
`SplitClient` runs unchanged): it encodes each request, counts its payload, sends, waits with a deadline,
decodes and counts the reply; it keeps the server informed with heartbeats and reconnects (resending the
request) when the connection breaks. With `grpc_server.py`, the only modules that import grpc.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ..config import ClientConfig, CodecConfig, TransportConfig
from . import wire
from .base import (
    AdapterUpdate,
    BackwardRequest,
    ByteCounter,
    ForwardRequest,
    Pulled,
    StepReply,
    TransportError,
    adapters_nbytes,
)
from .channel import METHOD, frame_options
from .compress import codecs_of
from .frames import Reassembler, to_frames
from .proto import splitft_pb2 as pb
from .tls import read_pem

Envelope = pb.Envelope


def _client_credentials(me: ClientConfig) -> grpc.ChannelCredentials:
    """Read (and check) once, when the transport is made: a bad file is one line, not minutes of retries."""
    cert = read_pem(me.tls_cert, "client.tls_cert", "CERTIFICATE") if me.tls_cert else None
    key = read_pem(me.tls_key, "client.tls_key", "PRIVATE KEY") if me.tls_key else None
    return grpc.ssl_channel_credentials(read_pem(me.tls_root, "client.tls_root", "CERTIFICATE"),
                                        private_key=key, certificate_chain=cert)


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
            self.channel = grpc.secure_channel(address, creds, options=frame_options(opts))
        else:
            self.channel = grpc.insecure_channel(address, options=frame_options(opts))
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

    def __init__(self, address: str, client_id: int, token: str, opts: TransportConfig, me: ClientConfig,
                 codec: CodecConfig, log: Callable[[str], None] = print):
        """`opts`: the wire's limits; `me`: this client's settings (TLS, deadlines, reconnects, heartbeats);
        `codec`: what crosses each way."""
        self.address, self.client_id, self.token, self.opts = address, client_id, token, opts
        self.timeout_s, self.reconnect_s, self.log = me.timeout_s, me.reconnect_s, log
        self.counter, (self.up, self.down) = ByteCounter(), codecs_of(codec)
        self.wire_up = self.wire_down = self.seq = self.reconnects = 0
        self.terms: dict[str, Any] | None = None  # sent on every new connection once `hello` was called
        self.welcome: dict[str, Any] | None = None  # the server's last answer to HELLO
        self.greeted = False  # on this connection
        self.lock = threading.Lock()  # the frames of one envelope leave together; heartbeats go in between
        self.creds = _client_credentials(me) if me.tls_root else None
        self.conn = _Connection(address, client_id, token, opts, self.creds)
        self.stopped = threading.Event()
        threading.Thread(target=self._heartbeats, args=(me.heartbeat_s,), daemon=True).start()

    def _send(self, env: Envelope) -> None:
        with self.lock:
            for frame in to_frames(env, self.seq, self.opts.chunk_bytes):
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
                                         f"gave up after {self.reconnect_s:g} s (client.reconnect_s): {e}") from None
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
        reasm = Reassembler(self.opts.max_bytes)
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
                                 "(client.timeout_s)") from None
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
