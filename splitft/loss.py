"""The training objective both sides agree on: next-token cross-entropy over label tokens (prompt masked).

`token_loss` takes logits; `head_loss` takes the hidden states and the LM head and never builds the (B, T, V)
logits (the parts use it: `model/split.py`, train.loss_chunk_tokens).

`IGNORE` (-100, PyTorch's `ignore_index`) marks a label position that carries no loss: prompt tokens and padding.
It lives with the loss, so the data pipeline and the wire checks both take it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

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


def head_loss(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, chunk: int) -> TokenStats:
    """`token_loss(head(hidden), labels)` without its (B, T, V) logits: only positions that have a label run the
    head at all, `chunk` of them at a time, and the gradient w.r.t. `hidden` is computed with each chunk's loss (the
    head is frozen), so at most one chunk's logits (chunk x V float32: 50 MB for 256 tokens of SmolLM2's 49,152
    words) exist at once and none is kept for the backward, which only scales the (n, H) gradient kept.

    hidden (B, T, H) after the final norm; labels (B, T). The loss is float32 whatever the compute dtype (logits are
    upcast per chunk); the head's matmuls run in the ambient autocast dtype, as the unchunked head would. The
    gradient is that of the mean loss, `loss_sum / n_tokens` (what every caller back-propagates), computed in the
    order autograd computes it through `token_loss` (log-softmax, its backward, the head's matmul), so the two agree
    to float32 rounding of the row blocks; another seed rescales it.
    """
    target = labels[:, 1:]
    mask = target != IGNORE
    h, y = hidden[:, :-1][mask], target[mask]  # (n, H), (n,): next-token pairs that carry a loss
    weight, bias = cast(torch.Tensor, head.weight), getattr(head, "bias", None)
    assert not weight.requires_grad, "the LM head is frozen: no LoRA on it"
    if torch.is_grad_enabled() and h.requires_grad:
        loss_sum, n_correct = _HeadLoss.apply(h, weight, bias, y, chunk)
    else:
        loss_sum, n_correct, _ = _chunks(h, weight, bias, y, chunk, seed=None)
    return TokenStats(loss_sum, int(y.numel()), int(n_correct))


def mean_seed(n_tokens: int, device: torch.device) -> torch.Tensor:
    """d(loss_sum / n)/d loss_sum as autograd computes it in float32: the seed of a mean loss over n tokens."""
    return torch.ones((), dtype=torch.float32, device=device) / max(n_tokens, 1)


def _chunks(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor, chunk: int,
            seed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss_sum float32, n_correct, seed x d loss_sum / d h, or None without a seed), `chunk` rows at a time."""
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    correct = torch.zeros((), dtype=torch.long, device=h.device)
    grad = torch.empty_like(h) if seed is not None else None
    for s in range(0, h.shape[0], chunk):
        yc = y[s:s + chunk]
        logits = F.linear(h[s:s + chunk], weight, bias)  # (c, V), the compute dtype under autocast
        correct += (logits.argmax(-1) == yc).sum()
        logp = torch.log_softmax(logits.float(), dim=-1)  # what cross_entropy computes
        picked = logp.gather(1, yc[:, None]).squeeze(1)
        loss -= picked.sum()
        if grad is not None and seed is not None:
            # log_softmax's backward of the nll seed: seed * (softmax - one-hot), then the head's
            dz = logp.exp_().mul_(seed)
            dz[torch.arange(yc.numel(), device=dz.device), yc] -= seed
            grad[s:s + chunk] = dz.to(logits.dtype) @ weight
    return loss, correct, grad


class _HeadLoss(torch.autograd.Function):
    """`_chunks` as one autograd node: the forward computes the gradient of the mean loss; the backward hands it on
    (rescaled when the seed is another, e.g. a loss scale)."""

    @staticmethod
    def forward(ctx, h, weight, bias, y, chunk):
        seed = mean_seed(y.numel(), h.device)
        loss, correct, grad = _chunks(h, weight, bias, y, chunk, seed)
        ctx.save_for_backward(grad, seed)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _):
        grad, seed = ctx.saved_tensors
        if not torch.equal(grad_loss, seed):
            grad = grad * (grad_loss / seed).to(grad.dtype)
        return grad, None, None, None, None
