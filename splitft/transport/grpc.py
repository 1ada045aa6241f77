"""gRPC transport: one long-lived bidirectional stream per client, protobuf envelopes with raw tensor bytes
(`codec.py`), chunked frames, a per-client token checked before any frame is read, optional TLS.

Server: `serve_grpc(handler, options)` runs a grpc.aio server; `handler` (deploy/coordinator) never sees grpc.
Client: `GrpcTransport` implements `Transport` synchronously, so `SplitClient` runs unchanged.
The only module that imports grpc.
"""

from __future__ import annotations

import asyncio
import hmac
import queue
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import grpc
import torch

from . import codec
from .base import AdapterUpdate, ByteCounter, ForwardRequest, StepReply, TransportError, adapters_nbytes
from .proto import splitft_pb2 as pb

METHOD = "/splitft.SplitFT/Session"
Envelope = pb.Envelope


@dataclass
class WireOptions:
    chunk_bytes: int = 1 << 20
    max_bytes: int = 64 << 20
    tls_cert: str = ""
    tls_key: str = ""
    tls_root: str = ""
    """Client side: the CA (or self-signed server certificate) to trust; empty = plaintext."""

    def grpc_options(self) -> list[tuple[str, int]]:
        frame = self.chunk_bytes + 4096  # one frame = one chunk + the Frame header
        return [("grpc.max_send_message_length", frame), ("grpc.max_receive_message_length", frame)]


def _error(env: Envelope, text: str) -> Envelope:
    return Envelope(kind=Envelope.ERROR, client_id=env.client_id, round=env.round, step=env.step, error=text)


# --- server -----------------------------------------------------------------------------------------------

Handler = Callable[[Envelope], Awaitable[Envelope]]


class _Service:
    def __init__(self, handler: Handler, tokens: dict[int, str], opts: WireOptions, log: Callable[[str], None]):
        self.handler, self.tokens, self.opts, self.log = handler, tokens, opts, log

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
        cid = self._client_of(context)
        if cid is None:  # refused before a single frame is read
            self.log("refused a session: unknown client id or bad token")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown client id or bad token")
        reasm, seq = codec.Reassembler(self.opts.max_bytes), 0
        async for frame in frames:
            try:
                env = reasm.add(frame)
                if env is None:
                    continue
                reply = await self._handle(cid, env)
            except codec.WireError as e:
                self.log(f"client {cid}: refused: {e}")
                reply = _error(Envelope(client_id=cid), str(e))
            for out in codec.to_frames(reply, seq, self.opts.chunk_bytes):
                yield out
            seq += 1

    async def _handle(self, cid: int, env: Envelope) -> Envelope:
        if env.client_id != cid:
            raise codec.WireError(f"envelope claims client {env.client_id} on client {cid}'s session")
        try:
            return await self.handler(env)
        except (codec.WireError, ValueError) as e:  # Refused is a ValueError: state unchanged
            self.log(f"client {cid}: refused {Envelope.Kind.Name(env.kind)}: {e}")
            return _error(env, str(e))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def serve_grpc(handler: Handler, address: str, tokens: dict[int, str], opts: WireOptions,
                     until: asyncio.Event, log: Callable[[str], None] = print) -> None:
    """Serve sessions on `address` until `until` is set, then stop (in-flight calls get a grace second)."""
    service = _Service(handler, tokens, opts, log)
    rpc = grpc.stream_stream_rpc_method_handler(service.session, request_deserializer=pb.Frame.FromString,
                                                response_serializer=pb.Frame.SerializeToString)
    server = grpc.aio.server(options=opts.grpc_options())
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("splitft.SplitFT", {"Session": rpc})])
    if opts.tls_cert:
        creds = grpc.ssl_server_credentials([(_read(opts.tls_key), _read(opts.tls_cert))])
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise TransportError(f"transport.address: cannot listen on '{address}'")
    await server.start()
    log(f"listening on {address} ({'TLS' if opts.tls_cert else 'plaintext'})")
    await until.wait()
    await server.stop(grace=1.0)


# --- client -----------------------------------------------------------------------------------------------


class GrpcTransport:
    """`Transport` over one bidirectional stream. Counts payload bytes by kind like the in-process transport
    (`counter`) and, apart, the serialized frames that really crossed (`wire_up`, `wire_down`)."""

    def __init__(self, address: str, client_id: int, token: str, opts: WireOptions, timeout_s: float = 600.0):
        self.client_id, self.opts = client_id, opts
        if opts.tls_root:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(_read(opts.tls_root)),
                                               options=opts.grpc_options())
        else:
            self.channel = grpc.insecure_channel(address, options=opts.grpc_options())
        self.outbox: queue.Queue[pb.Frame | None] = queue.Queue()
        call = self.channel.stream_stream(METHOD, request_serializer=pb.Frame.SerializeToString,
                                          response_deserializer=pb.Frame.FromString)
        self.replies = call(iter(self.outbox.get, None), timeout=timeout_s,
                            metadata=(("splitft-client-id", str(client_id)), ("splitft-token", token)))
        self.counter = ByteCounter()
        self.wire_up = self.wire_down = self.seq = 0

    def _call(self, env: Envelope) -> Envelope:
        for frame in codec.to_frames(env, self.seq, self.opts.chunk_bytes):
            self.wire_up += frame.ByteSize()
            self.outbox.put(frame)
        self.seq += 1
        reasm = codec.Reassembler(self.opts.max_bytes)
        try:
            while (reply := reasm.add(self._next())) is None:
                pass
        except codec.WireError as e:
            raise TransportError(f"client {self.client_id}: bad reply from the server: {e}") from None
        if reply.kind == Envelope.ERROR:
            raise TransportError(f"client {self.client_id}: the server refused the request: {reply.error}")
        return reply

    def _next(self) -> pb.Frame:
        try:
            frame = next(self.replies)
        except grpc.RpcError as e:
            raise TransportError(f"client {self.client_id}: connection to the server failed: "
                                 f"{e.code().name}: {e.details()}") from None
        except StopIteration:
            raise TransportError(f"client {self.client_id}: the server closed the session") from None
        self.wire_down += frame.ByteSize()
        return frame

    def step(self, req: ForwardRequest) -> StepReply:
        self.counter.request(req)
        reply = codec.decode_reply(self._call(codec.encode_step(req)), req.activations.numel())
        self.counter.reply(req, reply)
        return reply

    def push_adapters(self, update: AdapterUpdate) -> None:
        self.counter.add(self.client_id, "lora_up", update.nbytes())
        self._call(codec.encode_adapters(Envelope.PUSH, update.client_id, update.round, update.adapters,
                                         update.n_samples))

    def pull_adapters(self, client_id: int, cut: int, round_: int) -> dict[str, torch.Tensor]:
        env = self._call(Envelope(kind=Envelope.PULL, client_id=client_id, cut=cut, round=round_))
        adapters = {m.name: codec.tensor_from_pb(m, 1 << 30) for m in env.tensors}
        self.counter.add(client_id, "lora_down", adapters_nbytes(adapters))
        return adapters

    def done(self) -> None:
        self._call(Envelope(kind=Envelope.DONE, client_id=self.client_id))

    def close(self) -> None:
        self.outbox.put(None)
        self.channel.close()

