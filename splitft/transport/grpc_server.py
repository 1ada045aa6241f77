"""The gRPC server: authenticated sessions (a per-client token checked before any frame is read, bounded
sessions and queued bytes per client, HELLO first), TLS, and `serve_grpc`, which runs the grpc.aio server
around an `Endpoint` (`endpoint.py`, the protocol handler). With `grpc_client.py`, the only modules that
import grpc.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import socket
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc

from ..config import ServerConfig, TransportConfig
from ..errors import reason
from . import wire
from .base import TransportError
from .channel import SERVICE, frame_options
from .endpoint import Endpoint, kind_name
from .frames import Reassembler, to_frames
from .proto import splitft_pb2 as pb
from .ratelimit import RateLimited
from .tls import certificate_warnings, read_pem

Envelope = pb.Envelope

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


HELLO_MAX_BYTES = 64 << 10
"""The largest message a session may send before its HELLO is accepted (a HELLO carries the client's terms, about
1 KB). A session that opened with a 64 MB request cost the server +268 MB of peak RSS before it was refused
(measured, loopback, tiny model): now it is refused after its first 64 KB."""

MAX_SESSIONS = 2
"""Open sessions per client: its stream, and the one a reconnect opens before the server has reaped the old."""


class Sessions:
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
        reasm = Reassembler(HELLO_MAX_BYTES, "a session's first message is its HELLO")
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
                for out in to_frames(reply, seq, self.opts.chunk_bytes):
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
        kind = kind_name(env)
        self.refusal(f"client {cid}", f"client {cid}: refused {kind} on a session that did not begin with HELLO")
        return wire.error(env, f"{kind} before HELLO: a session begins with a HELLO the server accepts; the session "
                               "is closed")

    async def _read(self, cid: int, frames: AsyncIterator[pb.Frame],
                    inbox: asyncio.Queue[Envelope | wire.WireError | None], queued: list[int],
                    reasm: Reassembler, greeted: asyncio.Event) -> None:
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
            self.refusal(f"client {cid}", f"client {cid}: refused {kind_name(env)}: {e}")
            return wire.error(env, str(e))
        except Exception as e:  # noqa: BLE001 (a bug, not a refusal: logged, counted, answered; others go on)
            return self._failed(cid, env, e)

    def _failed(self, cid: int, env: Envelope, e: Exception) -> Envelope:
        """The answer to a request the server failed on unexpectedly (it escaped as gRPC UNKNOWN, with nothing in
        the log): one log line with the client, the request's kind, the error and where it was raised."""
        kind = kind_name(env)
        self.endpoint.failures[kind] += 1
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" at {Path(where.filename).name}:{where.lineno} in {where.name}" if where else ""
        self.refusal(f"client {cid} failures", f"client {cid}: the server failed on its {kind} "
                                               f"({type(e).__name__}: {reason(e)}{at}); answered ERROR")
        return wire.error(env, f"the server failed on this {kind} ({type(e).__name__}: {reason(e)}); its log has "
                               "the details")


def _server_credentials(me: ServerConfig, log: Callable[[str], None]) -> grpc.ServerCredentials:
    cert = read_pem(me.tls_cert, "server.tls_cert", "CERTIFICATE")
    for line in certificate_warnings(cert, "server.tls_cert"):
        log(line)
    pair = [(read_pem(me.tls_key, "server.tls_key", "PRIVATE KEY"), cert)]
    if me.tls_client_ca:  # mutual TLS: the handshake fails for a client without a certificate from this CA
        ca = read_pem(me.tls_client_ca, "server.tls_client_ca", "CERTIFICATE")
        return grpc.ssl_server_credentials(pair, root_certificates=ca, require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


async def serve_grpc(endpoint: Endpoint, address: str, tokens: dict[int, str], opts: TransportConfig,
                     me: ServerConfig, until: asyncio.Event, log: Callable[[str], None] = print) -> None:
    """Serve sessions on `address` until `until` is set, then stop (in-flight calls get a grace second).
    `opts`: the wire's limits; `me`: the server's TLS identity."""
    service = Sessions(endpoint, tokens, opts, log)
    rpc = grpc.stream_stream_rpc_method_handler(service.session, request_deserializer=pb.Frame.FromString,
                                                response_serializer=pb.Frame.SerializeToString)
    server = grpc.aio.server(options=frame_options(opts) + SERVER_OPTIONS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"Session": rpc})])
    creds = _server_credentials(me, log) if me.tls_cert else None
    try:
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except Exception as e:  # grpc raises RuntimeError for an address it cannot bind
        raise TransportError(f"transport.address: cannot listen on '{address}' ({reason(e)}); use an address of "
                             "this machine (0.0.0.0:PORT for all) and a free port") from None
    if port == 0:
        raise TransportError(f"transport.address: cannot listen on '{address}'")
    await server.start()
    mode = "mutual TLS" if me.tls_client_ca else "TLS" if me.tls_cert else "plaintext"
    log(f"listening on {address} ({mode})")
    await until.wait()
    await server.stop(grace=1.0)
