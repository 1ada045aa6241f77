"""The messages that cross the cut and the small `Transport` interface that carries them.

Client and server code talk only to `Transport`; `inproc.py` calls the server object directly (simulation)
and `grpc_client.py` / `grpc_server.py` encode the same messages (`wire.py`). Wire dtypes are fixed here so
byte counts are exact:
    activations        (B, T, H)  as `codec.up` encodes them (compress.py; `none`: float32)
    attention_mask     (B, T)     uint8   (1 = token, 0 = padding)
    labels             (B, T)     int32   (-100 = no loss; under split.shape=vanilla labels travel to the server,
                                            which computes the loss; under u they never leave the client)
    grad_activations   (B, T, H)  same dtype as activations, or as `codec.down` encodes them
A U-shaped step crosses twice more, between the server's last block and the client's tail:
    hidden             (B, T, H)  server -> client, encoded by codec.down
    grad_hidden        (B, T, H)  client -> server (`BackwardRequest`), encoded by codec.up
The messages hold decoded tensors: each transport encodes what it sends with the codec, counts the encoded
bytes, and hands the other side what it decodes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

import torch

from ..errors import UserError

MASK_DTYPE = torch.uint8
LABEL_DTYPE = torch.int32
SCALARS_NBYTES = 8 * 3  # loss_sum (float64) + n_tokens + n_correct (int64) in every reply


class TransportError(UserError):
    """The other side refused a request or could not be reached; the message says which and why."""


def tensor_nbytes(t: torch.Tensor | None) -> int:
    """Raw payload bytes of one tensor (numel x itemsize; 0 for None): the one byte-size rule of every count."""
    return 0 if t is None else t.numel() * t.element_size()


def adapters_nbytes(adapters: dict[str, torch.Tensor]) -> int:
    return sum(tensor_nbytes(t) for t in adapters.values())


@dataclass
class ForwardRequest:
    """Client -> server, once per split step (train) or eval batch (train=False).

    Bytes up = activations (as encoded) + attention_mask + labels. A U-shaped client sends no labels (None): the
    server answers with the hidden states for the client's tail instead of a loss.
    """

    client_id: int
    round: int
    step: int
    cut: int
    activations: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    train: bool = True

    def __post_init__(self) -> None:
        b, t = self.attention_mask.shape
        assert self.activations.dim() == 3 and self.activations.shape[:2] == (b, t), (
            f"activations {tuple(self.activations.shape)} do not match attention_mask {(b, t)}")
        assert self.labels is None or self.labels.shape == (b, t), f"labels {tuple(self.labels.shape)} != {(b, t)}"
        assert self.attention_mask.dtype == MASK_DTYPE and (self.labels is None or self.labels.dtype == LABEL_DTYPE)

    def labels_nbytes(self) -> int:
        """labels (none under U) + attention_mask."""
        return tensor_nbytes(self.labels) + tensor_nbytes(self.attention_mask)

    @property
    def priced(self) -> tuple[int, int, int]:
        """(cut, batch, seq): what the cost model prices the step by."""
        b, t = self.attention_mask.shape
        return self.cut, b, t


@dataclass
class BackwardRequest:
    """Client -> server, second half of a U-shaped training step: the gradient of the client's loss w.r.t. the
    hidden states the server sent, (B, T, H). The server back-propagates it through its blocks, updates its
    LoRA and answers with grad_activations."""

    client_id: int
    round: int
    step: int
    grad_hidden: torch.Tensor


@dataclass
class StepReply:
    """Server -> client: the loss over label tokens and, for training steps, grad_activations (B, T, H)."""

    loss_sum: float
    n_tokens: int
    n_correct: int
    grad_activations: torch.Tensor | None = None
    server_s: float = 0.0
    """Seconds the server held the step (its queue and compute): the client's round trip minus this is its link
    time. 0 in process (the simulation's clock charges links from profiles)."""

    hidden: torch.Tensor | None = None
    """U-shaped split, reply to a ForwardRequest: the hidden states (B, T, H) after the server's last block, for
    the client's tail (no loss: the server has no labels)."""

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.n_tokens, 1)


@dataclass
class AdapterUpdate:
    """Client -> server at round end: the client's LoRA tensors (full names) and the samples they saw."""

    client_id: int
    round: int
    adapters: dict[str, torch.Tensor]
    n_samples: int
    report: dict[str, Any] = field(default_factory=dict)
    """What a deployed client measured this round and its evaluation (`measure.Report`); empty in process."""

    def nbytes(self) -> int:
        return adapters_nbytes(self.adapters)


@dataclass
class Pulled:
    """Server -> client at round start: the cut the client holds this round and the global adapters of its
    blocks [0, cut). In process the cut is the one asked for (the federation decides cuts itself); a deployed
    server answers with the cut its policy decided."""

    cut: int
    adapters: dict[str, torch.Tensor]
    budget_s: float | None = None
    """Under federation.round_budget=time (deployed): train until this many seconds have passed since the first
    step, at least one step and at most `max_steps`; None: run local_steps."""
    max_steps: int | None = None


BYTE_KINDS = ("activations_up", "labels_up", "hidden_down", "grad_hidden_up", "grad_activations_down", "lora_up",
              "lora_down", "eval_up", "eval_down")
"""labels_up: labels + attention_mask (the mask alone under U); hidden_down, grad_hidden_up: the U-shaped
split's second crossing (0 under vanilla)."""
STEP_UP, STEP_DOWN = ("activations_up", "labels_up", "grad_hidden_up"), ("hidden_down", "grad_activations_down")
"""The kinds a training step sends up and down."""


class Traffic(TypedDict):
    bytes_up: int
    bytes_down: int


def training_traffic(kinds: Mapping[str, int]) -> Traffic:
    """bytes_up and bytes_down of training (evaluation traffic left out) from byte counts by kind."""
    return {"bytes_up": sum(kinds[k] for k in STEP_UP) + kinds["lora_up"],
            "bytes_down": sum(kinds[k] for k in STEP_DOWN) + kinds["lora_down"]}


class ByteCounter:
    """bytes[client_id][kind] of tensor payload for the kinds in BYTE_KINDS, shared by every transport."""

    def __init__(self) -> None:
        self.bytes: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(BYTE_KINDS, 0))

    def add(self, client_id: int, kind: str, n: int) -> None:
        self.bytes[client_id][kind] += n

    def request(self, req: ForwardRequest, activations_nbytes: int) -> None:
        """A step request: activations (encoded size) and labels + mask, or all of it as eval_up for evaluation."""
        if req.train:
            self.add(req.client_id, "activations_up", activations_nbytes)
            self.add(req.client_id, "labels_up", req.labels_nbytes())
        else:
            self.add(req.client_id, "eval_up", activations_nbytes + req.labels_nbytes())

    def reply(self, req: ForwardRequest, reply: StepReply, nbytes: int) -> None:
        """A step reply of `nbytes` tensor payload (as encoded): grad_activations (0 for evaluation) and the loss
        scalars, or under a U-shaped split the hidden states for the client's tail (no loss scalars)."""
        if reply.hidden is not None:
            self.add(req.client_id, "hidden_down" if req.train else "eval_down", nbytes)
        else:
            self.add(req.client_id, "grad_activations_down" if req.train else "eval_down", nbytes + SCALARS_NBYTES)

    def backward(self, req: BackwardRequest, grad_hidden_nbytes: int, grad_nbytes: int) -> None:
        """A U-shaped step's second half: grad_hidden up, grad_activations down (encoded sizes)."""
        self.add(req.client_id, "grad_hidden_up", grad_hidden_nbytes)
        self.add(req.client_id, "grad_activations_down", grad_nbytes)

    def totals(self) -> dict[str, int]:
        return sum_kinds(self.bytes)

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {str(c): dict(kinds) for c, kinds in self.bytes.items()}

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:
        self.bytes.clear()
        for c, kinds in state.items():
            self.bytes[int(c)].update(kinds)

    def snapshot(self, clients: Iterable[int] | None = None) -> dict[int, dict[str, int]]:
        """The counts so far of `clients` (default: every client counted yet), to pass to `since` later."""
        return {c: dict(self.bytes[c]) for c in (self.bytes if clients is None else clients)}

    def since(self, snapshot: dict[int, dict[str, int]],
              clients: Iterable[int] | None = None) -> dict[int, dict[str, int]]:
        """Bytes by client and kind counted after `snapshot` (a step's, a round's), of `clients` (default: every
        client counted by now): the one place per-step and per-round deltas are computed."""
        ids = sorted(set(self.bytes) | set(snapshot)) if clients is None else clients
        zero = dict.fromkeys(BYTE_KINDS, 0)
        return {c: {k: self.bytes[c][k] - snapshot.get(c, zero)[k] for k in BYTE_KINDS} for c in ids}


def sum_kinds(per_client: Mapping[int, Mapping[str, int]]) -> dict[str, int]:
    """Bytes by kind, summed over clients."""
    out = dict.fromkeys(BYTE_KINDS, 0)
    for kinds in per_client.values():
        for k, v in kinds.items():
            out[k] += v
    return out


class NoCount(ByteCounter):
    """Counts nothing: for training that crosses no network (the centralized baseline)."""

    def add(self, client_id: int, kind: str, n: int) -> None:
        pass


class Transport(Protocol):
    """What a client can ask of the server. Implementations count payload bytes per client and kind in
    `counter` (the federation's bytes_up / bytes_down and the virtual clock read it). The server's side of the
    same verbs is `Server` (in process) or `AsyncServer` (behind a network)."""

    counter: ByteCounter

    def step(self, req: ForwardRequest) -> StepReply:
        """Forward from the cut, loss, and (train) backward + server update; returns grad_activations. Under a
        U-shaped split: forward to the client's tail; returns the hidden states (`backward` finishes the step)."""
        ...

    def backward(self, req: BackwardRequest) -> StepReply:
        """U-shaped split: back-propagate grad_hidden, update the server LoRA; returns grad_activations."""
        ...

    def push_adapters(self, update: AdapterUpdate) -> None:
        """Hand the client's adapters to the server for aggregation."""
        ...

    def pull_adapters(self, client_id: int, cut: int, round_: int,
                      report: dict[str, Any] | None = None) -> Pulled:
        """This round's cut and the global adapters for blocks [0, cut) as of the start of `round_` (a network
        transport waits until the previous round is aggregated). `cut` is the client's current one and `report`
        what it measured so far (a deployed server decides the cut from them)."""
        ...

    def done(self, client_id: int, report: dict[str, Any] | None = None) -> None:
        """This client has finished every round it takes part in (`report`: its evaluation of the final model)."""
        ...


class Server(Protocol):
    """The server's side of `Transport`, called in the server's process: the same verbs, plus `seen`.
    `SplitServer` and `FedAvgServer` are one (the simulation calls them directly through `InProcTransport`)."""

    def step(self, req: ForwardRequest) -> StepReply: ...

    def step_batch(self, reqs: list[ForwardRequest]) -> Sequence[StepReply | Exception]:
        """Several clients' training steps as one server step (`federation.server_batch`); per request its reply,
        or the error that kept it out."""
        ...

    def backward(self, req: BackwardRequest) -> StepReply: ...

    def push_adapters(self, update: AdapterUpdate) -> None: ...

    def pull_adapters(self, client_id: int, cut: int, round_: int) -> dict[str, torch.Tensor]: ...

    def done(self, client_id: int) -> None: ...

    def seen(self, client_id: int) -> None:
        """Something (a request, a heartbeat) arrived from this client: it is alive."""
        ...


class AsyncServer(Protocol):
    """`Server` behind a network, where a request may wait (for its turn, for the round to end): the same verbs
    as coroutines. `deploy.coordinator.Coordinator` is one; the gRPC endpoint calls it."""

    async def step(self, req: ForwardRequest) -> StepReply: ...

    async def backward(self, req: BackwardRequest) -> StepReply: ...

    async def push_adapters(self, update: AdapterUpdate) -> None: ...

    async def pull_adapters(self, client_id: int, cut: int, round_: int,
                            report: dict[str, Any] | None = None) -> Pulled: ...

    async def done(self, client_id: int, report: dict[str, Any] | None = None) -> None: ...

    async def hello(self, client_id: int, terms: dict[str, Any]) -> dict[str, Any]:
        """A client connected with `terms`: refuse it (ValueError) if they differ from the server's; else where
        the federation stands (round, the round the client starts at, run and server ids)."""
        ...

    def seen(self, client_id: int) -> None: ...
