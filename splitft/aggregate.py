"""Pure aggregation of adapter state dicts (no models, no I/O): FedAvg keyed by full parameter name.

The rule, for every tensor name and every element of it:
    global = sum_i w_i * x_i / sum_i w_i     over the copies i that hold that element,
    global = base                            where no copy with weight > 0 holds it.
"Holding" is by name (a client holds the blocks [0, cut), the server [first, L)) and, inside a tensor, by
leading slice: a cut-layer payload of r_cut components is the leading (r_cut, d_in) / (d_out, r_cut) slice of
the rank-r tensor, so component k is averaged over the copies that trained it and the others stay untouched.
Weights are normalised before the sum, so a single full update comes back bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def _region(full: torch.Size, part: torch.Size, name: str) -> tuple[slice, ...]:
    assert len(full) == len(part) and all(p <= f for p, f in zip(part, full, strict=True)), (
        f"{name}: shape {tuple(part)} is not a leading slice of {tuple(full)}")
    return tuple(slice(0, p) for p in part)


def _full_shape(name: str, copies: list[torch.Tensor], base: Mapping[str, torch.Tensor] | None) -> torch.Size:
    if base is not None and name in base:
        return base[name].shape
    return torch.Size(max(sizes) for sizes in zip(*(t.shape for t in copies), strict=True))


def layerwise_fedavg(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float],
                     base: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Weighted mean of each tensor element over the states that hold it.

    Args:
        states: adapter state dicts {name: tensor}; a tensor may be a leading slice of the full shape.
        weights: one weight >= 0 per state (e.g. samples trained on). If all are 0, every state counts equally.
        base: the previous global value, kept where no state holds an element (required for elements no
            full-shape state covers; without it the full shape is the largest copy's).

    Returns:
        {name: averaged tensor} for the union of names, in the full shape and the dtype of the first copy.
    """
    assert len(states) == len(weights) and states, "need one weight per state and at least one state"
    assert all(w >= 0 for w in weights), f"weights must be >= 0, got {list(weights)}"
    w = [float(x) for x in weights] if any(weights) else [1.0] * len(weights)
    names = dict.fromkeys(n for sd in states for n in sd)
    out = {}
    for name in names:
        holders = [sd[name] for sd in states if name in sd]
        idx = [i for i, sd in enumerate(states) if name in sd and w[i] > 0]
        copies = [states[i][name] for i in idx]
        full, first = _full_shape(name, holders, base), holders[0]
        den = torch.zeros(full, dtype=torch.float64, device=first.device)
        for i, t in zip(idx, copies, strict=True):
            den[_region(full, t.shape, name)] += w[i]
        acc = torch.zeros_like(den)
        for i, t in zip(idx, copies, strict=True):
            region = _region(full, t.shape, name)
            acc[region] += t.double() * (w[i] / den[region])
        held = den > 0
        if base is not None and name in base:
            acc = torch.where(held, acc, base[name].to(acc.device, torch.float64))
        else:
            assert bool(held.all()), f"{name}: elements no update holds need a base value"
        out[name] = acc.to(first.dtype)
    return out
