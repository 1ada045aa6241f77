"""Optimizer and clipping shared by both sides of the cut (each side updates only its own LoRA)."""

from __future__ import annotations

import torch

from .errors import Mismatch, UserError


class NonFiniteStep(UserError):
    """A training step whose loss or LoRA gradient is NaN/Inf; it was not applied (that side's state unchanged)."""


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


def optimizer_state(opt: torch.optim.Optimizer,
                    named: dict[str, torch.nn.Parameter]) -> dict[str, dict[str, torch.Tensor]]:
    """AdamW moments and step count of each parameter that has any, {param name: {key: tensor}} (CPU copies)."""
    return {name: {k: torch.as_tensor(v).detach().clone().cpu() for k, v in opt.state[p].items()}
            for name, p in named.items() if opt.state.get(p)}


def load_optimizer_state(opt: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter],
                         state: dict[str, dict[str, torch.Tensor]]) -> None:
    """Replace `opt`'s per-parameter state with `state` (from `optimizer_state`), on each parameter's device."""
    for name, moments in state.items():
        p = named.get(name)
        odd = [k for k, v in moments.items() if k != "step" and p is not None and v.shape != p.shape]
        if odd:
            raise Mismatch(f"AdamW's {odd[0]} of '{name}' is {tuple(moments[odd[0]].shape)}, the parameter "
                           f"{tuple(p.shape)}")
    opt.state.clear()
    for name, p in named.items():
        if name in state:  # 'step' stays on the CPU, as torch's AdamW keeps it
            opt.state[p] = {k: v.clone() if k == "step" else v.to(p.device, v.dtype).clone()
                            for k, v in state[name].items()}
