"""Optimizer and clipping shared by both sides of the cut (each side updates only its own LoRA)."""

from __future__ import annotations

import torch


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over LoRA parameters (element-wise, so one optimizer per side equals one over both)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def clip(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """Clip this side's gradient norm (0 = off); per side, since no process sees both sides' gradients."""
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def grads_finite(tensors: list[torch.Tensor]) -> bool:
    """True when every gradient present is finite (one device sync; LoRA gradients are small)."""
    grads = [t.grad for t in tensors if t.grad is not None]
    return not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all())
