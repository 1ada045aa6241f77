"""In-process transport: direct calls on the server object, zero copies, exact byte accounting.

Bytes are those a network transport would carry as payload (tensor bytes at the wire dtypes of
`transport.base`, plus the reply scalars); envelopes/headers are not counted.
"""

from __future__ import annotations

import torch

from .base import AdapterUpdate, ByteCounter, ForwardRequest, NoCount, StepReply, adapters_nbytes

class InProcTransport:
    """Carries messages to a `SplitServer` living in the same process.

    `count=False` is for the centralized baseline, whose trainer and adapters sit on one machine: nothing
    crosses a network, so nothing is counted.
    """

    def __init__(self, server: object, count: bool = True) -> None:
        self.server = server
        self.counter = ByteCounter() if count else NoCount()

    def step(self, req: ForwardRequest) -> StepReply:
        self.counter.request(req)
        reply = self.server.step(req)  # type: ignore[attr-defined]
        self.counter.reply(req, reply)
        return reply

    def push_adapters(self, update: AdapterUpdate) -> None:
        self.counter.add(update.client_id, "lora_up", update.nbytes())
        self.server.receive_adapters(update)  # type: ignore[attr-defined]

    def pull_adapters(self, client_id: int, cut: int, round_: int = 0) -> dict[str, torch.Tensor]:
        adapters = self.server.global_adapters(cut)  # type: ignore[attr-defined]
        self.counter.add(client_id, "lora_down", adapters_nbytes(adapters))
        return adapters
