"""The split server: `SplitServer` finishes each client's forward pass from its cut, computes the loss,
back-propagates, and returns grad_activations (under a U-shaped split it runs only the middle blocks: hidden
states go down to the client's tail, which computes the loss, and the gradient at the tail comes back up before
the backward). Its base, `fedavg.FedAvgServer`, keeps the global adapters and aggregates them each round.

Transport-agnostic: it receives `ForwardRequest`/`AdapterUpdate` objects and never knows how they arrived.
One shared server-side model (blocks [first, L) + head) is trained on every client's activations, one
optimizer step per request, in the order requests arrive.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from . import lora
from .fedavg import FedAvgServer
from .model.families import Family
from .model.split import Joining, ServerPart
from .optim import (
    LrSchedule,
    NonFiniteStep,
    clip,
    grads_finite,
    load_optimizer_state,
    make_optimizer,
    optimizer_state,
    set_lr,
)
from .precision import LossScaler
from .transport.base import BackwardRequest, ForwardRequest, StepReply


class SplitServer(FedAvgServer):
    """Server side of the split: the shared server part, its optimizer, and the global adapter store.

    Blocks [0, first) live only in the store (clients train them); blocks [first, L) live in the server part,
    which serves every client from that client's cut. With adaptive cuts a block j in [first, cut_max) can be
    trained in one round both by clients holding it (cut > j) and by the server (for clients with cut <= j);
    `aggregate` merges all those copies (see `_take_own_copies` for the server's weights).
    """

    def __init__(self, part: ServerPart, initial_adapters: dict[str, torch.Tensor], family: Family, *,
                 r_cut: int | None = None, lr: float = 0.0, weight_decay: float = 0.0, max_grad_norm: float = 0.0,
                 schedule: LrSchedule | None = None):
        super().__init__(initial_adapters, family)
        self.part, self.r_cut, self.first, self.tail_cut = part, r_cut, part.first, part.tail_cut
        self.store = {n: t for n, t in self.store.items() if not self._live(n)}  # [first, end) is live in the part
        self.in_flight: tuple[tuple[int, int, int], torch.Tensor, torch.Tensor, int] | None = None
        """U-shaped split: the training step whose forward ran and whose backward is due: ((client, round, step),
        activations (leaf), hidden states (graph), cut). One at a time: the next step must see this one's update."""
        self.served: Counter[int] = Counter()  # training samples served per client cut this round
        self.params = part.lora_parameters()
        self.opt = make_optimizer(self.params, lr, weight_decay)
        self.scaler = LossScaler(part.compute.precision.scaled)  # float16 only; a plain backward otherwise
        self.max_grad_norm = max_grad_norm
        self.schedule = schedule or LrSchedule(lr)
        self.at = (0, 0)  # (round, step) of the client step(s) the pending update serves: its lr (the latest)
        self.kept = False  # whether the gradients `forward_backward` left are for `update` to apply
        self.pending_served: Counter[int] = Counter()  # their samples per cut, counted in `served` once applied
        self.device = next(part.module.parameters()).device
        self.round_start = self.adapters()  # the global adapters of blocks [first, L) as of the last aggregation
        self.moved = False  # whether training steps changed them since
        part.train()

    def _live(self, name: str) -> bool:
        """A block the server part holds (its adapters live there, not in the store)."""
        return self.first <= self._layer(name) < self.part.end

    def n_blocks(self) -> int:
        return self.part.n_layer

    def step(self, req: ForwardRequest) -> StepReply:
        """One client's step: logits from its cut, loss over label tokens, and for training requests backward
        to the activations and one AdamW step of the server LoRA (`step_batch` of one). Under a U-shaped split
        (`req.labels` is None) only the forward: see `_forward`.

        Returns:
            StepReply with grad_activations (B, T, H) of the activations' dtype when req.train.
        Raises:
            NonFiniteStep before any update when the loss or a gradient is not finite: one client's overflowing
            activations (hostile, or a diverging run) must not turn the shared server LoRA into NaN.
        """
        if not req.train and self.moved:
            return self._at_round_start(req)
        assert (req.labels is None) == (self.tail_cut is not None), "labels cross the network under vanilla only"
        if self.tail_cut is not None:
            mask = req.attention_mask.to(self.device, torch.long)
            acts = req.activations.to(self.device).detach().requires_grad_(req.train)
            self.part.train(req.train)
            return self._forward(req, acts, mask)
        if not req.train:
            self.part.train(False)  # eval requests run without dropout
            with torch.no_grad():
                stats = self.part.loss(*self._joining(req, grad=False))
            return StepReply(stats.loss_sum.item(), stats.n_tokens, stats.n_correct)
        [out] = self.step_batch([req])
        if isinstance(out, NonFiniteStep):
            raise out
        return out

    def step_batch(self, reqs: list[ForwardRequest]) -> list[StepReply | NonFiniteStep]:
        """Several clients' training steps as one server step (`federation.server_batch`): `forward_backward`
        of them all, then one `update`. One AdamW step on the token-weighted mean gradient of the k batches
        (SFL-V2 with gradient averaging over a window), not k sequential steps; each client still gets the
        gradient of its own mean loss w.r.t. its own activations. One request is exactly `step`.

        Returns:
            per request, its StepReply, or the NonFiniteStep that kept it out of the update.
        """
        outs = self.forward_backward(reqs)
        self.update()
        return outs

    def forward_backward(self, reqs: list[ForwardRequest]) -> list[StepReply | NonFiniteStep]:
        """The compute half of a server step: one forward of every request's activations from its own cut
        (`ServerPart.joined_loss`), the loss summed over all their label tokens and divided by their total, one
        backward. The LoRA gradients are left for `update`; each request's grad_activations go in its reply.

        A request whose loss or gradients are not finite stays out: when the joined step is not finite, each
        request runs again alone, and only those that are finite keep their gradients (rescaled to the mean over
        their tokens), so one client's overflowing activations never reach the shared LoRA."""
        assert self.tail_cut is None, "U-shaped steps run one at a time (`step`, `backward`)"
        self.opt.zero_grad(set_to_none=True)
        self.pending_served = Counter()
        self.at = max((r.round, r.step) for r in reqs)
        self.part.train(True)
        rows = [self._joining(r, grad=True) for r in reqs]
        stats = self.part.joined_loss(rows)
        total = max(sum(s.n_tokens for s in stats), 1)
        acts = [r.activations for r in rows]
        if len(rows) == 1:  # today's step, to the bit: loss_sum / n_tokens
            kept = [0] if self._backward(stats[0].loss_sum / total, None, acts) else []
        elif self._backward(_sum([s.loss_sum for s in stats]) / total, None, acts):
            kept = list(range(len(rows)))
        else:
            kept = self._one_by_one(rows, total)
        if len(kept) < len(rows) and kept:  # the mean over the tokens of the steps kept
            share = total / max(sum(stats[i].n_tokens for i in kept), 1)
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(share)
        self.kept = bool(kept)
        outs: list[StepReply | NonFiniteStep] = []
        for i, (req, s, a) in enumerate(zip(reqs, stats, acts, strict=True)):
            if i not in kept:
                outs.append(_not_applied(req))
                continue
            assert a.grad is not None and a.grad.shape == a.shape
            grad = a.grad if len(rows) == 1 else a.grad * (total / max(s.n_tokens, 1))  # d(its own mean loss)
            self.pending_served[req.cut] += a.shape[0]
            outs.append(StepReply(s.loss_sum.item(), s.n_tokens, s.n_correct, grad))
        return outs

    def update(self) -> None:
        """The optimizer half of a server step: clip, one AdamW step of the server LoRA, zero the gradients;
        nothing but the zeroing when `forward_backward` kept no request."""
        if self.kept:
            clip(self.params, self.max_grad_norm)
            set_lr(self.opt, self.schedule.at(*self.at))
            self.opt.step()
            self.moved = True
            self.served.update(self.pending_served)
        self.kept, self.pending_served = False, Counter()
        self.opt.zero_grad(set_to_none=True)

    def _joining(self, req: ForwardRequest, grad: bool) -> Joining:
        """A request as the server part takes it, on this device; the activations a leaf whose .grad is the
        client's grad_activations."""
        acts = req.activations.to(self.device).detach().requires_grad_(grad)
        assert req.labels is not None, "a vanilla split's labels travel with its activations"
        return Joining(acts, req.attention_mask.to(self.device, torch.long), req.cut,
                       req.labels.to(self.device, torch.long))

    def _backward(self, root: torch.Tensor, seed: torch.Tensor | None, acts: list[torch.Tensor]) -> bool:
        """Accumulate d root . seed (a loss: seed None) into the LoRA and activation gradients; False (and nothing
        kept) when the loss, the seed or any gradient is not finite."""
        tensors = [*self.params, *acts]
        finite = bool(torch.isfinite(root if seed is None else seed).all())
        if finite and self.scaler.backward(root, seed, tensors) and grads_finite(tensors):
            return True
        self.opt.zero_grad(set_to_none=True)
        for a in acts:
            a.grad = None
        return False

    def _one_by_one(self, rows: list[Joining], total: int) -> list[int]:
        """A joined step that was not finite, again request by request (each its own forward), keeping the
        gradients of those that are finite: returns their indices."""
        kept = []
        for i, row in enumerate(rows):
            before = [None if p.grad is None else p.grad.clone() for p in self.params]
            if self._backward(self.part.loss(*row).loss_sum / total, None, [row.activations]):
                kept.append(i)
                continue
            for p, g in zip(self.params, before, strict=True):  # its NaN never mixes with the others' gradients
                p.grad = g
        return kept

    def _forward(self, req: ForwardRequest, acts: torch.Tensor, mask: torch.Tensor) -> StepReply:
        """U-shaped split: the hidden states (B, T, H) after block tail_cut-1 for the client's tail. A training
        step keeps its graph until `backward`; no other training step may run in between (its forward would use
        adapters this step is about to update, and the update would corrupt this graph)."""
        assert self.in_flight is None, (f"client {req.client_id}: step {req.step} began while step "
                                        f"{self.in_flight[0]} awaits its backward; U-shaped steps run one at a time")
        with torch.set_grad_enabled(req.train):
            hidden = self.part.forward(acts, mask, req.cut)
        if req.train:
            self.in_flight = ((req.client_id, req.round, req.step), acts, hidden, req.cut)
        return StepReply(0.0, 0, 0, hidden=hidden.detach())

    def backward(self, req: BackwardRequest) -> StepReply:
        """U-shaped split: back-propagate the client's grad_hidden through blocks [cut, tail_cut) of the step in
        flight, one AdamW step of the server LoRA; returns grad_activations (B, T, H).

        Raises:
            NonFiniteStep (nothing applied, the step is abandoned) when a gradient is NaN/Inf.
        """
        assert self.in_flight is not None and self.in_flight[0] == (req.client_id, req.round, req.step), (
            f"backward of client {req.client_id} step {req.step} without its forward in flight")
        _, acts, hidden, cut = self.in_flight
        self.in_flight = None
        assert req.grad_hidden.shape == hidden.shape, f"grad_hidden {tuple(req.grad_hidden.shape)} != hidden"
        self.opt.zero_grad(set_to_none=True)
        if not self._backward(hidden, req.grad_hidden.to(hidden.device, hidden.dtype), [acts]):
            raise _not_applied(req)
        self.kept, self.pending_served, self.at = True, Counter({cut: acts.shape[0]}), (req.round, req.step)
        self.update()
        assert acts.grad is not None and acts.grad.shape == acts.shape
        return StepReply(0.0, 0, 0, acts.grad)

    def abandon(self) -> None:
        """Forget the U-shaped step in flight (its client was dropped before its backward): nothing was applied."""
        self.in_flight = None

    def _at_round_start(self, req: ForwardRequest) -> StepReply:
        """An evaluation request is about the global model, which the round's training steps have moved on from
        (a deployed client evaluates the model it pulled while others already train): run it with the adapters
        of the last aggregation, then put the live ones (and nothing else: AdamW is untouched) back."""
        assert self.in_flight is None, "swapping adapters in place would corrupt the graph of the step in flight"
        live = self.adapters()
        lora.load_adapter_state_dict(self.part.module, self.round_start, strict=False)
        self.moved = False
        try:
            return self.step(req)
        finally:
            lora.load_adapter_state_dict(self.part.module, live, strict=False)
            self.moved = True

    def _take_own_copies(self) -> list[tuple[dict[str, torch.Tensor], float]]:
        """The server's copy of each block j it holds, as (adapters of block j, samples it trained them on);
        starts the next round's count.

        Block j trained all r components for clients with cut < j, and only the r_cut leading ones for clients
        with cut == j (block j was their first server block), so it enters the merge twice: full, weighted by
        the samples of cuts < j, and cut to r_cut, weighted by the samples of cut j.
        """
        by_layer: dict[int, dict[str, torch.Tensor]] = {}
        for name, t in self.adapters().items():
            by_layer.setdefault(self._layer(name), {})[name] = t
        out = []
        for j, sd in sorted(by_layer.items()):
            out.append((sd, float(sum(n for c, n in self.served.items() if c < j))))
            if self.r_cut is not None and self.served[j]:
                out.append((lora.cut_payload(sd, self.family, j + 1, self.r_cut), float(self.served[j])))
        self.served = Counter()
        return out

    def _keep(self, merged: dict[str, torch.Tensor]) -> None:
        self.store.update({n: t for n, t in merged.items() if not self._live(n)})
        lora.load_adapter_state_dict(self.part.module, merged, strict=False)
        self.round_start, self.moved = self.adapters(), False

    def global_view(self, cut: int) -> dict[str, torch.Tensor]:
        """Current global adapters of blocks [0, cut), full rank: the store below `first`, the server part above."""
        live = self.adapters() if cut > self.first else {}
        return {n: t.clone() for n, t in {**self.store, **live}.items() if self._layer(n) < cut}

    def global_model(self, eval_cut: int) -> dict[str, torch.Tensor]:
        """Every block's global adapters with the two cut-layer blocks of `eval_cut` at r_cut components (the
        rest zero), which is what a client at that cut and the server compute with: the model a run evaluates
        is exactly the one it exports, and PEFT's rank-r modules reproduce it."""
        view = self.global_view(self.part.n_layer)
        return view if self.r_cut is None else lora.mask_cut_layer(view, self.family, eval_cut, self.r_cut,
                                                                   self.tail_cut)

    def global_adapters(self, cut: int) -> dict[str, torch.Tensor]:
        """What a client with this cut loads: blocks [0, cut) (and under U its tail), its cut layers (block cut-1,
        and under U block tail_cut) at r_cut components."""
        view = self._client_side(cut)
        if self.r_cut is None:
            return view
        return lora.cut_payload(view, self.family, cut, self.r_cut, self.tail_cut)

    def adapters(self) -> dict[str, torch.Tensor]:
        """The server part's adapters (blocks [first, L), under U [first, tail_cut)), full rank."""
        return lora.adapter_state_dict(self.part.module)

    def state_dict(self) -> dict[str, Any]:
        """The store, the server part's LoRA and AdamW state, and the samples served per cut this round."""
        assert self.in_flight is None, "a server's state is taken between rounds, with no step in flight"
        named = lora.lora_parameters(self.part.module)
        scale = {"loss_scale": self.scaler.state_dict()} if self.scaler.enabled else {}
        return {**super().state_dict(), "lora": self.adapters(), "opt": optimizer_state(self.opt, named),
                "served": {str(cut): n for cut, n in self.served.items()}, **scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        named = lora.lora_parameters(self.part.module)
        lora.load_adapter_state_dict(self.part.module, state["lora"])
        load_optimizer_state(self.opt, named, state["opt"])
        self.served = Counter({int(cut): n for cut, n in state["served"].items()})
        if "loss_scale" in state:
            self.scaler.load_state_dict(state["loss_scale"])
        self.round_start, self.moved = self.adapters(), False


def _sum(terms: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(terms).sum()


def _not_applied(req: ForwardRequest | BackwardRequest) -> NonFiniteStep:
    return NonFiniteStep(f"client {req.client_id}, round {req.round}, step {req.step}: the loss or a gradient is "
                         "NaN/Inf, so the step was not applied (a diverging run: lower train.lr or use "
                         "train.compute_dtype=float32; in deployment, a client sent overflowing values)")
