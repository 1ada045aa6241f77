"""The training objective both sides agree on: next-token cross-entropy over label tokens (prompt masked).

`IGNORE` (-100, PyTorch's `ignore_index`) marks a label position that carries no loss: prompt tokens and padding.
It lives with the loss, so the data pipeline and the wire checks both take it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


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
