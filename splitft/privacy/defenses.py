"""Mechanism only: what a client does to the tensors it sends so that a curious server learns less from them.

    activations (B, T, H)  -> + N(0, (noise x rms)^2)           privacy.noise        (either split shape)
    grad_hidden (B, T, H)  -> keep a random share of the rows   privacy.grad_keep    (split.shape=u)
                           -> clip each row, then add noise      privacy.grad_clip, privacy.grad_noise
Every draw comes from the client's own generator (never the global RNG, so the rest of a run is unchanged and a
resumed run draws the same). What each one protects, against which attack and at what cost in ppl:
`splitft privacy` and benchmarks/privacy.py.
"""

from __future__ import annotations

import torch


def noisy_activations(acts: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    """acts (B, T, H) plus N(0, (noise x rms)^2) per element, rms over the whole batch (padding rows included);
    returned in acts' dtype. The noise is a constant shift: the grad w.r.t. what is sent is the grad w.r.t. acts."""
    rms = acts.float().pow(2).mean().sqrt()
    draw = torch.randn(acts.shape, generator=gen, device=acts.device, dtype=torch.float32)
    return (acts.float() + noise * rms * draw).to(acts.dtype)


def defended_grad(grad: torch.Tensor, clip: float, noise: float, keep: float, gen: torch.Generator) -> torch.Tensor:
    """grad_hidden (B, T, H) as it leaves a U-shaped client: `keep` < 1 zeroes each row with probability 1 - keep
    (the server trains its blocks on the kept tokens only, and a zeroed row says nothing of its label); then
    each row is clipped to clip x the median norm of the nonzero rows (ref); then N(0, s^2) is added to every
    element with s = noise x bound / sqrt(H), so a row's noise has norm ~ noise x bound (bound = clip x ref, or
    ref when not clipping). With every setting off the tensor itself is returned."""
    if clip <= 0 and noise <= 0 and keep >= 1:
        return grad
    g = grad.float()
    if keep < 1:
        kept = torch.rand(g.shape[:2], generator=gen, device=g.device, dtype=torch.float32) < keep
        g = g * kept.unsqueeze(-1)
    norms = g.norm(dim=-1, keepdim=True)  # (B, T, 1)
    nonzero = norms[norms > 0]
    if nonzero.numel() == 0:
        return g.to(grad.dtype)
    bound = nonzero.median() * (clip if clip > 0 else 1.0)
    if clip > 0:
        g = g * torch.clamp(bound / norms.clamp_min(torch.finfo(torch.float32).tiny), max=1.0)
    if noise > 0:
        draw = torch.randn(g.shape, generator=gen, device=g.device, dtype=torch.float32)
        g = g + draw * (noise * bound / g.shape[-1] ** 0.5)
    return g.to(grad.dtype)
