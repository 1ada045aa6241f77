"""The CutPolicy interface and the plain data it decides from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ClientStats:
    """What the policy knows of one client.

    Attributes:
        speed: compute speed, effective training TFLOP/s (the `fixed`/`resource`/`splitft` rules use only its
            ratio to other clients'; `makespan` uses it as TFLOP/s).
        memory_gb: memory the client can give to its part of the model.
        up_mbps, down_mbps, latency_ms: the client's link (`makespan` plans transfers with them).
        loss: the client's mean step loss over its last round (lower is better). Each batch's loss is measured
            before the step that trains on it (progressive validation), so it costs no extra pass; None before the
            first round.
    """

    client_id: int
    speed: float = 1.0
    memory_gb: float = float("inf")
    loss: float | None = None
    up_mbps: float = float("inf")
    down_mbps: float = float("inf")
    latency_ms: float = 0.0

    @property
    def tflops(self) -> float:
        """`speed` read as the round-time model's device compute (`cost.Device`)."""
        return self.speed


@dataclass(frozen=True)
class CutBounds:
    """Allowed cuts and the client-side memory model.

    Client memory for cut c = base_gb + c * block_gb (embeddings and optimizer state in base_gb; one block's
    weights, LoRA state and stored activations in block_gb).
    """

    n_layer: int
    cut_min: int = 1
    cut_max: int = 0
    """0 = n_layer - 1."""
    base_gb: float = 0.0
    block_gb: float = 0.0
    floor: int = 0
    """The cut split.privacy_floor raised cut_min to (0 = the floor is off or did not raise it)."""

    def __post_init__(self) -> None:
        assert 1 <= self.cut_min <= self.hi <= self.n_layer - 1, (
            f"need 1 <= cut_min={self.cut_min} <= cut_max={self.hi} <= n_layer-1={self.n_layer - 1}")

    @property
    def hi(self) -> int:
        return self.cut_max or self.n_layer - 1

    def at_floor(self, cuts: dict[int, int]) -> list[int]:
        """Clients whose cut sits at the privacy floor's cut: a policy may have wanted it lower."""
        return sorted(c for c, k in cuts.items() if self.floor and k == self.floor)


def floor_record(bounds: CutBounds | None, cuts: dict[int, int]) -> dict[str, Any]:
    """A cut_decision record's privacy floor fields: the floor's cut and the clients at it (none when off)."""
    if bounds is None or not bounds.floor:
        return {}
    return {"privacy_floor_cut": bounds.floor, "at_privacy_floor": [str(c) for c in bounds.at_floor(cuts)]}


def max_feasible_cut(stats: ClientStats, bounds: CutBounds) -> int:
    """Largest cut in [cut_min, cut_max] whose client memory fits `stats.memory_gb` (cut_min if none fits)."""
    if bounds.block_gb <= 0 or stats.memory_gb == float("inf"):
        return bounds.hi
    fit = int((stats.memory_gb - bounds.base_gb) // bounds.block_gb)
    return max(bounds.cut_min, min(bounds.hi, fit))


@dataclass
class Decision:
    """New cuts and, per client, the inputs and arithmetic behind its cut (logged with every decision)."""

    cuts: dict[int, int]
    why: dict[int, dict[str, Any]] = field(default_factory=dict)
    codecs: dict[int, str] = field(default_factory=dict)
    """codec.up=auto: each client's codec up (`policy/codecs.py`); empty: the config's for all."""


class CutPolicy(Protocol):
    @property
    def name(self) -> str: ...

    def assign(self, stats: list[ClientStats], current: dict[int, int], round_: int) -> Decision:
        """Cuts for the coming round. `current` is empty before the first round."""
        ...
