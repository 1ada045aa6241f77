"""Optimizer and clipping shared by both sides of the cut (each side updates only its own LoRA)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import Mismatch, UserError


class NonFiniteStep(UserError):
    """A training step whose loss or LoRA gradient is NaN/Inf; it was not applied (that side's state unchanged)."""


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over LoRA parameters (element-wise, so one optimizer per side equals one over both)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@dataclass(frozen=True)
class LrSchedule:
    """The learning rate of every optimizer step of a run (train.schedule, train.warmup_steps), counted in global
    steps: a step's index is round x steps_per_round + its step in the round, so a client step and the server step
    it feeds compute the same lr from the (round, step) both see, in simulation and deployment alike.

    The factors are transformers' (get_constant_schedule_with_warmup, get_linear_schedule_with_warmup,
    get_cosine_schedule_with_warmup at step g), so a run's lr reads as a Trainer's would; constant without warmup
    returns `lr` itself: today's numerics, to the bit."""

    lr: float
    kind: str = "constant"
    warmup: int = 0
    steps_per_round: int = 1
    rounds: int = 1

    @property
    def total(self) -> int:
        return self.steps_per_round * self.rounds

    def at(self, round_: int, step: int) -> float:
        g = min(max(round_, 0) * self.steps_per_round + step, self.total - 1)  # a time budget's extra steps: last
        if g < self.warmup:
            return self.lr * g / max(1, self.warmup)
        if self.kind == "constant":
            return self.lr
        done = (g - self.warmup) / max(1, self.total - self.warmup)
        factor = 1 - done if self.kind == "linear" else 0.5 * (1 + math.cos(math.pi * done))
        return self.lr * max(0.0, factor)


    def round_lr(self, round_: int) -> float:
        """The lr of a round's last planned step (what round records report)."""
        return self.at(round_, self.steps_per_round - 1)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


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
        if odd and p is not None:
            raise Mismatch(f"AdamW's {odd[0]} of '{name}' is {tuple(moments[odd[0]].shape)}, the parameter "
                           f"{tuple(p.shape)}")
    opt.state.clear()
    for name, p in named.items():
        if name in state:  # 'step' stays on the CPU, as torch's AdamW keeps it
            opt.state[p] = {k: v.clone() if k == "step" else v.to(p.device, v.dtype).clone()
                            for k, v in state[name].items()}
