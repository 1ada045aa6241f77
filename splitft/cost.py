"""What a round costs, in plain numbers: FLOPs and memory from the model's shape, bytes, and the round-time model
shared by the virtual clock (`sim/clock.py`) and the cut policies that plan for round time (`policy/makespan.py`).

Per split step of client i (batch B, padded length T; s = the forward's share, 1/2, or 1/3 under recompute):
    client forward  F_c * s / tflops_i        upload   latency_i + bytes_up * 8 / up_i
    server          F_s / tflops_server       download latency_i + bytes_down * 8 / down_i
    client backward F_c * (1 - s) / tflops_i
Under a U-shaped split (split.shape=u) the server runs only the middle blocks, then between its forward and its
backward the step goes down to the client's tail and back:
    server forward  F_s / 2 / tflops_server   hidden down   latency_i + bytes_hidden * 8 / down_i
    client tail     F_t / tflops_i            grad up       latency_i + bytes_hidden * 8 / up_i
    server backward F_s / 2 / tflops_server
and the server is held all along (it cannot serve another step before this one's update: see server.py).
Clients run in parallel; the server is one FIFO queue (it runs one request at a time, as the engine does), so
clients wait for each other there. A round starts with every selected client pulling its adapters and ends
when the last one has pushed them. FLOPs come from the model's shape: a block's forward is 2 * params +
4 * T * d per token (matmuls + attention scores and values); training is 2 x forward, because frozen weights
need input gradients only, and 3 x under activation checkpointing (the forward runs again in the backward).
Memory: weights at the storage dtype, kept activations at the compute dtype (`CostModel`). No torch here:
policies stay pure.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class Device(Protocol):
    """A device's compute and link, as the round-time model reads them (`sim.profiles.DeviceProfile` is one)."""

    @property
    def tflops(self) -> float: ...

    @property
    def up_mbps(self) -> float: ...

    @property
    def down_mbps(self) -> float: ...

    @property
    def latency_ms(self) -> float: ...


GB = 1e9


@dataclass(frozen=True)
class CostModel:
    block_params: tuple[int, ...]
    """Frozen parameters of each block."""
    embed_params: int
    head_params: int
    """Parameters of the LM head matmul (d x V), counted even when tied to the embeddings."""
    d_model: int
    n_heads: int
    param_bytes: int
    """Bytes of one stored frozen weight (model.dtype)."""
    act_bytes: int = 0
    """Bytes of one activation kept for the backward (the compute dtype); 0 = param_bytes."""
    recompute: bool = False
    """train.activation_checkpointing: a block keeps only its input, and runs its forward again in the backward."""
    loss_chunk: int = 0
    """train.loss_chunk_tokens: tokens of logits the loss holds at a time (0 = all B x T of them)."""
    lora_params: tuple[int, ...] = ()
    """LoRA parameters of each block (float32): every party keeps every block's initial adapters, and trains its
    own blocks' with a gradient and AdamW's two moments."""

    @property
    def n_layer(self) -> int:
        return len(self.block_params)

    @property
    def forward_share(self) -> float:
        """The forward's share of a part's training FLOPs: 1/2, or 1/3 when the backward runs it again."""
        return 1 / 3 if self.recompute else 1 / 2

    def train_flops(self, first: int, last: int, batch: int, seq: int, head: bool = False) -> float:
        """Forward + backward FLOPs of blocks [first, last) (and the head) on a (batch, seq) batch; under recompute
        the blocks' forward once more (not the head's: its loss computes the gradient with the forward)."""
        tokens = batch * seq
        fwd = sum(tokens * (2 * self.block_params[j] + 4 * seq * self.d_model) for j in range(first, last))
        return 2.0 * (fwd + (2 * self.head_params * tokens if head else 0)) + (fwd if self.recompute else 0.0)

    def _act(self) -> int:
        return self.act_bytes or self.param_bytes

    def _block_acts(self, batch: int, seq: int) -> float:
        """Bytes one block keeps for its backward (Korthikanti et al. 2022: s*b*h*(34 + 5*a*s/h) at 16 bits, scaled
        to the compute dtype's bytes)."""
        return seq * batch * self.d_model * (34 + 5 * self.n_heads * seq / self.d_model) * self._act() / 2

    def _kept(self, batch: int, seq: int) -> float:
        """Bytes per block kept for the backward: all its activations, or under recompute its input (B, T, H) in the
        residual stream's dtype (the storage dtype)."""
        return seq * batch * self.d_model * self.param_bytes if self.recompute else self._block_acts(batch, seq)

    def _working(self, batch: int, seq: int) -> float:
        """Bytes of the backward's working set, beyond what the blocks keep: the gradients of the block being
        back-propagated (about its activations), and under recompute that block's activations again."""
        return self._block_acts(batch, seq) * (2 if self.recompute else 1)

    def _adapters(self) -> float:
        """Bytes of every block's initial adapters (float32), which each party keeps."""
        return 4 * sum(self.lora_params)

    def _trained(self) -> float:
        """Bytes of one trained block's adapters: float32, with its gradient and AdamW's two moments."""
        return 16 * max(self.lora_params, default=0)

    def memory_gb(self, batch: int, seq: int) -> tuple[float, float]:
        """(base, per block) client memory for training with these shapes: the embeddings, every block's initial
        adapters and the backward's working set, then per block its weights, what it keeps for the backward and
        its trained adapters."""
        base = self.embed_params * self.param_bytes + self._adapters() + self._working(batch, seq)
        block = max(self.block_params) * self.param_bytes + self._kept(batch, seq) + self._trained()
        return base / GB, block / GB

    def head_gb(self, batch: int, seq: int) -> float:
        """The loss's peak beyond the weights: logits (B, T, V) and their gradient, or one chunk of logits (compute
        dtype, float32 log-probabilities, the gradient cast back) plus the (B, T, H) gradient the chunked loss
        keeps."""
        vocab, tokens = self.head_params // self.d_model, batch * seq
        if not self.loss_chunk:
            return 2 * tokens * vocab * self._act() / GB
        chunk = min(self.loss_chunk, tokens)
        return (chunk * vocab * (4 + 2 * self._act()) + tokens * self.d_model * self.param_bytes) / GB

    def tail_gb(self, batch: int, seq: int, tail: int) -> float:
        """What a U-shaped client's tail adds to its memory: `tail` blocks, and the loss over the head (the LM
        head's weight is the embeddings' or as large: counted in base)."""
        _, block = self.memory_gb(batch, seq)
        return tail * block + self.head_gb(batch, seq)

    def full_model_gb(self, batch: int, seq: int) -> float:
        """Memory to train the whole model on one device: every block, and the loss over the head."""
        base, block = self.memory_gb(batch, seq)
        return base + self.n_layer * block + self.head_gb(batch, seq)

    def server_gb(self, first: int, end: int, batch: int, seq: int, head: bool = True) -> float:
        """Memory of a server holding blocks [first, end) (and the final norm and head, whose weight is the
        embeddings' when tied): their weights, what each keeps for its backward, and the loss over the head."""
        weights = sum(self.block_params[first:end]) + (self.head_params if head else 0)
        kept = (end - first) * self._kept(batch, seq) + self._working(batch, seq)
        lora = self._adapters() + (end - first) * self._trained()
        return (weights * self.param_bytes + kept + lora) / GB + (self.head_gb(batch, seq) if head else 0.0)


@dataclass(frozen=True)
class StepCost:
    """One training step as the clock sees it (local steps have server_flops = 0 and no bytes)."""

    client_id: int
    client_flops: float
    server_flops: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    tail_flops: float = 0.0
    """U-shaped split: forward + backward of the client's tail and head (0: vanilla)."""
    hidden_down: int = 0
    grad_hidden_up: int = 0
    """U-shaped split: bytes of the second crossing (already part of bytes_down / bytes_up)."""
    forward_share: float = 0.5
    """The client forward's share of client_flops (`CostModel.forward_share`); the backward has the rest."""
    server_step: int = -1
    """`federation.server_batch`: the server step that served this one together with others (the index of that
    step's first client step in the round); -1: a server step of its own."""


def transfer_s(nbytes: float, mbps: float, latency_ms: float) -> float:
    return latency_ms / 1e3 + nbytes * 8 / (mbps * 1e6)


class Timeline:
    """One round's virtual time, step by step: when each client is ready, when its next request reaches the
    server, when the server is free. `round_time` runs it over a list of steps; the simulation runs it online to
    serve steps in the order they would arrive (`federation.order=arrival`)."""

    def __init__(self, devices: Mapping[int, Device], server: Device, lora_down: dict[int, int],
                 step_s: float = 0.0):
        """`step_s`: seconds every server step costs beside its FLOPs (`heterogeneity.server_step_s`)."""
        self.devices, self.server, self.step_s = devices, server, step_s
        self.ready = {c: transfer_s(lora_down.get(c, 0), d.down_mbps, d.latency_ms) for c, d in devices.items()}
        self.start = dict(self.ready)  # when each client has its adapters and begins its first step
        self.server_free = 0.0

    def arrival(self, s: StepCost) -> float:
        """When the step's request reaches the server (a local step: when its forward is done)."""
        d = self.devices[s.client_id]
        up = transfer_s(s.bytes_up - s.grad_hidden_up, d.up_mbps, d.latency_ms) if s.server_flops > 0 else 0.0
        return self.ready[s.client_id] + s.client_flops * s.forward_share / (d.tflops * 1e12) + up

    def serve(self, s: StepCost, arrived: float) -> float:
        """The server runs the step once it is free (one request at a time), the reply travels back, the client
        runs its backward; returns when the client is ready for its next step."""
        c, d = s.client_id, self.devices[s.client_id]
        t = arrived
        if s.server_flops > 0:
            self.server_free = max(arrived, self.server_free) + self.step_s + s.server_flops / (self.server.tflops
                                                                                             * 1e12)
            if s.tail_flops > 0:  # U: the server waits, held, for the hidden states' round trip through the tail
                self.server_free += (transfer_s(s.hidden_down, d.down_mbps, d.latency_ms) + s.tail_flops
                                     / (d.tflops * 1e12) + transfer_s(s.grad_hidden_up, d.up_mbps, d.latency_ms))
            t = self.server_free + transfer_s(s.bytes_down - s.hidden_down, d.down_mbps, d.latency_ms)
        self.ready[c] = t + s.client_flops * (1 - s.forward_share) / (d.tflops * 1e12)
        return self.ready[c]

    def serve_batch(self, steps: list[StepCost], arrived: list[float]) -> None:
        """Several clients' steps served by one server step (`federation.server_batch`): it begins once the last
        of them has arrived and the server is free, pays `step_s` once and runs their server FLOPs together
        (linear in tokens), then each reply travels back and each client runs its backward."""
        start = max([*arrived, self.server_free])
        self.server_free = start + self.step_s + sum(s.server_flops for s in steps) / (self.server.tflops * 1e12)
        for s in steps:
            d = self.devices[s.client_id]
            t = self.server_free + transfer_s(s.bytes_down, d.down_mbps, d.latency_ms)
            self.ready[s.client_id] = t + s.client_flops * (1 - s.forward_share) / (d.tflops * 1e12)

    def pushed(self, c: int, nbytes: int) -> float:
        """When client c's push of `nbytes` of adapters, sent once it is ready, has reached the server."""
        d = self.devices[c]
        return self.ready[c] + transfer_s(nbytes, d.up_mbps, d.latency_ms)

    def finish(self, lora_up: dict[int, int]) -> dict[int, float]:
        """Each client's push done: its ready time plus the upload of its adapters."""
        return {c: self.pushed(c, lora_up.get(c, 0)) for c in self.devices}


ORDERS = ("plan", "arrival")


def server_steps(clients: list[int], k: int) -> list[int]:
    """Pure: for steps of these clients in serving order, the server step that serves each (the index of its first
    step) when up to k consecutive steps of different clients join (`federation.server_batch`): a client's next
    step needs the reply to its previous one, so a server step ends before a client's second."""
    ids: list[int] = []
    start, seen = 0, set[int]()
    for i, c in enumerate(clients):
        if len(seen) == k or c in seen:
            start, seen = i, set()
        seen.add(c)
        ids.append(start)
    return ids


@dataclass(frozen=True)
class Serving:
    """How the server takes steps beside its FLOPs: `step_s` seconds per server step
    (`heterogeneity.server_step_s`), up to `batch` steps of different clients joined into one
    (`federation.server_batch`), waiting at most `wait_s` to fill one under arrival order."""

    step_s: float = 0.0
    batch: int = 1
    wait_s: float = 0.0


ONE_BY_ONE = Serving()
"""A server that costs its FLOPs alone and serves one client step per server step (the defaults)."""


def round_time(steps: list[StepCost], devices: Mapping[int, Device], server: Device,
               lora_down: dict[int, int], lora_up: dict[int, int], order: str = "arrival",
               serving: Serving = ONE_BY_ONE) -> dict[int, float]:
    """Virtual seconds from round start to each client's last push; the round takes the max of them.

    Args:
        steps: the round's steps; each client's steps run in the order given.
        devices: profile of every client taking part; lora_down / lora_up: adapter bytes per client.
        order: how the server serves them: "arrival" (first come, first served) or "plan" (in exactly the order
            of `steps`, as a server keeping the plan's turns does: a request that arrives before its turn waits
            for the steps ahead of it in the plan, so everyone moves at the pace of the slowest). Under plan,
            steps with the same `server_step` are served as one; under arrival with serving.batch > 1 a server
            step takes the steps that have arrived when it may begin (free, plus serving.wait_s).
    """
    line = Timeline(devices, server, lora_down, serving.step_s)
    if order == "plan":
        i = 0
        while i < len(steps):
            s, j = steps[i], i + 1
            if s.server_step < 0:
                line.serve(s, line.arrival(s))
            else:  # the steps served together with it follow it in the plan
                while j < len(steps) and steps[j].server_step == s.server_step:
                    j += 1
                line.serve_batch(steps[i:j], [line.arrival(t) for t in steps[i:j]])
            i = j
        return line.finish(lora_up)
    todo: dict[int, deque[StepCost]] = {c: deque() for c in devices}
    for s in steps:  # one pass (the planner calls this thousands of times per decision)
        todo[s.client_id].append(s)
    heap: list[tuple[float, int]] = []
    for c in devices:
        if todo[c]:
            heapq.heappush(heap, (line.arrival(todo[c][0]), c))
    while heap:
        t, c = heapq.heappop(heap)
        group = [(t, c)]
        begins = max(t, line.server_free) + serving.wait_s
        while serving.batch > len(group) and heap and heap[0][0] <= begins:
            group.append(heapq.heappop(heap))
        if len(group) == 1:
            line.serve(todo[c].popleft(), t)
        else:
            line.serve_batch([todo[g].popleft() for _, g in group], [a for a, _ in group])
        for _, g in group:
            if todo[g]:
                heapq.heappush(heap, (line.arrival(todo[g][0]), g))
    return line.finish(lora_up)
