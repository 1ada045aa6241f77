"""The server's protocol handler: one request envelope in, one reply envelope out. It decodes and checks the
request (`wire.py`), counts its payload, asks an `AsyncServer` (the deployment's Coordinator, which never sees
grpc or protobuf), encodes and counts the reply. No gRPC here: `grpc_server.py` feeds it from its sessions, and
the fuzz test calls it directly.
"""

from __future__ import annotations

import time
from collections import Counter

import torch

from . import wire
from .base import AsyncServer, ByteCounter
from .proto import splitft_pb2 as pb

Envelope = pb.Envelope


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


def kind_name(env: Envelope) -> str:
    return Envelope.Kind.Name(env.kind) if env.kind in Envelope.Kind.values() else f"kind {env.kind}"
