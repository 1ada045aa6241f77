"""In-process transport: direct calls on the server object, zero copies, exact byte accounting.

Bytes are those a network transport would carry as payload (tensor bytes at the wire dtypes of
`transport.base`, plus the reply scalars); envelopes/headers are not counted.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from .base import AdapterUpdate, ForwardRequest, StepReply

BYTE_KINDS = ("activations_up", "labels_up", "grad_activations_down", "lora_up", "lora_down", "eval_up",
              "eval_down")


class ByteCounter:
    """bytes[client_id][kind] for the kinds in BYTE_KINDS; `snapshot()` for round deltas."""

    def __init__(self) -> None:
        self.bytes: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(BYTE_KINDS, 0))

    def add(self, client_id: int, kind: str, n: int) -> None:
        self.bytes[client_id][kind] += n

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(BYTE_KINDS, 0)
        for per in self.bytes.values():
            for k, v in per.items():
                out[k] += v
        return out


class _NoCount(ByteCounter):
    def add(self, client_id: int, kind: str, n: int) -> None:
        pass


class InProcTransport:
    """Carries messages to a `SplitServer` living in the same process.

    `count=False` is for the centralized baseline, whose trainer and adapters sit on one machine: nothing
    crosses a network, so nothing is counted.
    """

    def __init__(self, server: object, count: bool = True) -> None:
        self.server = server
        self.counter = ByteCounter() if count else _NoCount()

    def step(self, req: ForwardRequest) -> StepReply:
        up = req.nbytes()
        if req.train:
            self.counter.add(req.client_id, "activations_up", up["activations"])
            self.counter.add(req.client_id, "labels_up", up["labels"])
        else:
            self.counter.add(req.client_id, "eval_up", up["activations"] + up["labels"])
        reply = self.server.step(req)  # type: ignore[attr-defined]
        self.counter.add(req.client_id, "grad_activations_down" if req.train else "eval_down", reply.nbytes())
        return reply

    def push_adapters(self, update: AdapterUpdate) -> None:
        self.counter.add(update.client_id, "lora_up", update.nbytes())
        self.server.receive_adapters(update)  # type: ignore[attr-defined]

    def pull_adapters(self, client_id: int, cut: int, round_: int = 0) -> dict[str, torch.Tensor]:
        adapters = self.server.global_adapters(cut)  # type: ignore[attr-defined]
        self.counter.add(client_id, "lora_down", sum(t.numel() * t.element_size() for t in adapters.values()))
        return adapters
