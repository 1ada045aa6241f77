"""Pure aggregation of adapter state dicts (no models, no I/O): FedAvg keyed by full parameter name.

`layerwise_fedavg` averages each name over the updates that hold it, weighted by samples seen, so clients
holding different numbers of blocks merge naturally: block j is averaged over the clients that trained it.
Weights are normalised before the sum, so a single update comes back bit-identical.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch


def layerwise_fedavg(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of each tensor name over the states that contain it.

    Args:
        states: adapter state dicts {name: tensor}; shapes must agree per name.
        weights: one non-negative weight per state (e.g. samples seen); a name held only by zero-weight
            states is averaged uniformly over them.

    Returns:
        {name: averaged tensor} for the union of names.
    """
    assert len(states) == len(weights) and states, "need one weight per state and at least one state"
    assert all(w >= 0 for w in weights), f"weights must be >= 0, got {list(weights)}"
    holders: dict[str, list[int]] = {}
    for i, sd in enumerate(states):
        for name in sd:
            holders.setdefault(name, []).append(i)
    out = {}
    for name, idx in holders.items():
        w = torch.tensor([float(weights[i]) for i in idx], dtype=torch.float64)
        w = w / w.sum() if w.sum() > 0 else torch.full_like(w, 1.0 / len(idx))
        shapes = {tuple(states[i][name].shape) for i in idx}
        assert len(shapes) == 1, f"{name}: states disagree on shape {shapes}"
        acc = sum(states[i][name].double() * w[k] for k, i in enumerate(idx))
        out[name] = acc.to(states[idx[0]][name].dtype)  # type: ignore[union-attr]
    return out
