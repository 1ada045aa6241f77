"""In-process transport: direct calls on the server object, exact byte accounting.

Bytes are those a network transport carries as payload (tensor bytes at the wire dtypes of `transport.base`,
activations as codec.up and grad_activations as codec.down encode them, lossless coding included, plus the reply
scalars); envelopes/headers are not counted. With a lossy codec the server sees, and the client receives, exactly
what the other side would decode. `codec.up=auto` gives each client its own up codec (`use_codec_up`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from .base import (
    AdapterUpdate,
    BackwardRequest,
    ByteCounter,
    ForwardRequest,
    NoCount,
    Pulled,
    Server,
    StepReply,
    adapters_nbytes,
)
from .compress import NONE, Codec


class InProcTransport:
    """Carries messages to a `Server` (SplitServer, FedAvgServer) living in the same process.

    `count=False` is for the centralized baseline, whose trainer and adapters sit on one machine: nothing
    crosses a network, so nothing is counted.
    """

    def __init__(self, server: Server, count: bool = True, up: Codec = NONE, down: Codec = NONE) -> None:
        self.server, self.up, self.down = server, up, down
        self.up_of: dict[int, Codec] = {}  # clients whose up codec the cut policy chose
        self.counter = ByteCounter() if count else NoCount()

    def codec_up(self, client_id: int) -> Codec:
        return self.up_of.get(client_id, self.up)

    def use_codec_up(self, client_id: int, codec: Codec) -> None:
        self.up_of[client_id] = codec

    def step(self, req: ForwardRequest) -> StepReply:
        return self.serve(self.send(req))

    def step_batch(self, reqs: list[ForwardRequest]) -> list[StepReply]:
        """Several clients' training steps as one server step, each request and reply carried and counted as
        `step` carries it; a step the server refused raises here, as `step` would."""
        return self.serve_batch([self.send(r) for r in reqs])

    def send(self, req: ForwardRequest) -> ForwardRequest:
        """A step's request crossing up, encoded and counted (once: the simulator sends a request ahead of its
        server step to time its arrival by these bytes); returns the request as the server receives it."""
        acts, up = self.codec_up(req.client_id).roundtrip(req.activations)  # `none`: acts is req.activations
        self.counter.request(req, up)
        return replace(req, activations=acts)

    def serve(self, sent: ForwardRequest) -> StepReply:
        """The server's step for a `send`'s request, and its reply crossing down."""
        return self._down(sent, self.server.step(sent))

    def serve_batch(self, sent: list[ForwardRequest]) -> list[StepReply]:
        replies = self.server.step_batch(sent)
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return [self._down(req, cast(StepReply, reply)) for req, reply in zip(sent, replies, strict=True)]

    def _down(self, req: ForwardRequest, reply: StepReply) -> StepReply:
        down = 0
        if reply.hidden is not None:  # U-shaped: the hidden states go down to the client's tail
            hidden, down = self.down.roundtrip(reply.hidden)
            reply = replace(reply, hidden=hidden)
        elif reply.grad_activations is not None:
            grad, down = self.down.roundtrip(reply.grad_activations)
            reply = replace(reply, grad_activations=grad)
        self.counter.reply(req, reply, down)
        return reply

    def backward(self, req: BackwardRequest) -> StepReply:
        grad_hidden, up = self.codec_up(req.client_id).roundtrip(req.grad_hidden)
        reply = self.server.backward(replace(req, grad_hidden=grad_hidden))
        assert reply.grad_activations is not None, "a backward's reply carries grad_activations"
        grad, down = self.down.roundtrip(reply.grad_activations)
        self.counter.backward(req, up, down)
        return replace(reply, grad_activations=grad)

    def push_adapters(self, update: AdapterUpdate) -> None:
        self.counter.add(update.client_id, "lora_up", update.nbytes())
        self.server.push_adapters(update)

    def pull_adapters(self, client_id: int, cut: int, round_: int = 0, report: Any = None) -> Pulled:
        adapters = self.server.pull_adapters(client_id, cut, round_)
        self.counter.add(client_id, "lora_down", adapters_nbytes(adapters))
        return Pulled(cut, adapters)

    def done(self, client_id: int, report: Any = None) -> None:
        self.server.done(client_id)
