"""The same cut for every client, forever (the SplitLoRA / "same split" baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import ClientStats, CutBounds, Decision


@dataclass
class FixedPolicy:
    bounds: CutBounds
    cut: int = 2
    name: str = "fixed"

    def __post_init__(self) -> None:
        assert self.bounds.cut_min <= self.cut <= self.bounds.hi, f"cut={self.cut} outside the bounds"

    def assign(self, stats: list[ClientStats], current: dict[int, int], round_: int) -> Decision:
        return Decision({s.client_id: self.cut for s in stats}, {s.client_id: {"rule": "fixed"} for s in stats})
