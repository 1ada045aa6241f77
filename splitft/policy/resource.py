"""Cuts from compute and memory only: faster clients hold more blocks, within what their memory fits.

    cut_i = clip(round(cut * speed_i / mean(speed)), cut_min, max_feasible_cut_i)
so a client at the federation's mean speed gets the reference `cut`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import ClientStats, CutBounds, Decision, max_feasible_cut


def resource_cut(s: ClientStats, mean_speed: float, cut: int, bounds: CutBounds) -> tuple[int, dict[str, float]]:
    cap = max_feasible_cut(s, bounds)
    raw = cut * s.speed / mean_speed
    return max(bounds.cut_min, min(cap, round(raw))), {"speed": s.speed, "mean_speed": mean_speed,
                                                        "raw": raw, "memory_cap": cap}


@dataclass
class ResourcePolicy:
    bounds: CutBounds
    cut: int = 2
    """Reference cut for a client of mean speed."""
    name: str = "resource"

    def assign(self, stats: list[ClientStats], current: dict[int, int], round_: int) -> Decision:
        mean_speed = sum(s.speed for s in stats) / len(stats)
        out = {s.client_id: resource_cut(s, mean_speed, self.cut, self.bounds) for s in stats}
        return Decision({c: cut for c, (cut, _) in out.items()}, {c: why for c, (_, why) in out.items()})
