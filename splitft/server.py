"""SplitServer: finishes each client's forward pass from its cut, computes the loss, back-propagates, and
returns grad_activations; keeps the global client-side adapters and aggregates them each round.

Transport-agnostic: it receives `ForwardRequest`/`AdapterUpdate` objects and never knows how they arrived.
One shared server-side model (blocks [first, L) + head) is trained on every client's activations, one
optimizer step per request, in the order requests arrive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import lora
from .aggregate import layerwise_fedavg
from .data.datasets import IGNORE
from .model.split import ServerPart
from .optim import clip, make_optimizer
from .transport.base import AdapterUpdate, ForwardRequest, StepReply


@dataclass
class TokenStats:
    loss_sum: torch.Tensor
    n_tokens: int
    n_correct: int


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> TokenStats:
    """Next-token cross-entropy summed over label tokens, with the one-token shift.

    logits (B, T, V) at position t predict labels[t + 1]; positions whose label is IGNORE carry no loss.
    Accuracy counts argmax(logits[:, t]) == labels[:, t + 1] over the same positions.
    """
    pred, target = logits[:, :-1], labels[:, 1:]
    mask = target != IGNORE
    loss_sum = F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), target.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
    n_correct = int(((pred.argmax(-1) == target) & mask).sum())
    return TokenStats(loss_sum, int(mask.sum()), n_correct)


class SplitServer:
    """Server side of the split: the shared server part, its optimizer, and the client adapter store."""

    def __init__(self, part: ServerPart, global_client_adapters: dict[str, torch.Tensor], *, lr: float,
                 weight_decay: float = 0.0, max_grad_norm: float = 0.0):
        self.part = part
        self.params = part.lora_parameters()
        self.opt = make_optimizer(self.params, lr, weight_decay)
        self.max_grad_norm = max_grad_norm
        self.device = next(part.module.parameters()).device
        self.global_adapters_ = dict(global_client_adapters)
        self.pending: list[AdapterUpdate] = []
        self.part.train()

    def step(self, req: ForwardRequest) -> StepReply:
        """One client's step: logits from its cut, loss over label tokens, and for training requests backward
        to the activations and one AdamW step of the server LoRA.

        Returns:
            StepReply with grad_activations (B, T, H) of the activations' dtype when req.train.
        """
        mask = req.attention_mask.to(self.device, torch.long)
        labels = req.labels.to(self.device, torch.long)
        acts = req.activations.to(self.device).detach().requires_grad_(req.train)
        self.part.train(req.train)  # eval requests run without dropout
        with torch.set_grad_enabled(req.train):
            stats = token_loss(self.part.forward(acts, mask, req.cut), labels)
        if not req.train:
            return StepReply(stats.loss_sum.item(), stats.n_tokens, stats.n_correct)
        self.opt.zero_grad(set_to_none=True)
        (stats.loss_sum / max(stats.n_tokens, 1)).backward()
        clip(self.params, self.max_grad_norm)
        self.opt.step()
        assert acts.grad is not None and acts.grad.shape == acts.shape
        return StepReply(stats.loss_sum.item(), stats.n_tokens, stats.n_correct, acts.grad)

    def receive_adapters(self, update: AdapterUpdate) -> None:
        self.pending.append(update)

    def aggregate(self) -> list[int]:
        """FedAvg the adapters received this round (weighted by samples) into the global client adapters.

        Returns:
            client ids whose updates were merged (the survivors).
        """
        if not self.pending:
            return []
        merged = layerwise_fedavg([u.adapters for u in self.pending], [u.n_samples for u in self.pending])
        self.global_adapters_.update(merged)
        ids = [u.client_id for u in self.pending]
        self.pending = []
        return ids

    def global_adapters(self, cut: int) -> dict[str, torch.Tensor]:
        """Global client-side adapters of blocks [0, cut) (what a client with this cut loads)."""
        fam = self.part.family
        return {n: t.clone() for n, t in self.global_adapters_.items() if (lora.layer_of(n, fam) or 0) < cut}

    def adapters(self) -> dict[str, torch.Tensor]:
        return lora.adapter_state_dict(self.part.module)
