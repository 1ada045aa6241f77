"""SplitFT's adaptive cut: start from resource-feasible cuts, then every `period` rounds move each client's cut
by its performance relative to the federation.

The paper gives the rule only in words (clients above the average take more layers, below take fewer, γ
tunes the adjustment); our formula, for client i with loss L_i (`ClientStats.loss`), mean L̄ and spread σ
(population standard deviation over the clients):
    score_i = (L̄ - L_i) / σ                          (> 0: better than average, in standard deviations)
    step_i  = γ * score_i                             (in blocks)
    step_i *= speed_i / max(speed)   when step_i > 0  (only clients with compute headroom grow much)
    cut_i   = clip(cut_i + round(step_i), cut_min, max_feasible_cut_i)
Scoring in standard deviations makes γ independent of the loss scale: losses of clients in one federation
differ by a few percent, so a relative score would round to no move at all. Clients without a loss keep
their cut, and equal losses (σ = 0) move nobody.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import ClientStats, CutBounds, Decision, max_feasible_cut
from .resource import ResourcePolicy


@dataclass
class SplitFTPolicy:
    bounds: CutBounds
    cut: int = 2
    gamma: float = 1.0
    period: int = 2
    name: str = "splitft"

    def __post_init__(self) -> None:
        assert self.gamma >= 0 and self.period >= 1, "gamma must be >= 0 and period >= 1"

    def assign(self, stats: list[ClientStats], current: dict[int, int], round_: int) -> Decision:
        if not current or any(s.client_id not in current for s in stats):
            return ResourcePolicy(self.bounds, self.cut).assign(stats, current, round_)
        if round_ % self.period != 0:
            return Decision({s.client_id: current[s.client_id] for s in stats},
                            {s.client_id: {"rule": "hold", "period": self.period} for s in stats})
        losses = [s.loss for s in stats if s.loss is not None]
        mean = sum(losses) / len(losses) if losses else 0.0
        sigma = (sum((x - mean) ** 2 for x in losses) / len(losses)) ** 0.5 if losses else 0.0
        max_speed = max(s.speed for s in stats)
        decision = Decision({})
        for s in stats:
            decision.cuts[s.client_id], decision.why[s.client_id] = self._move(s, current[s.client_id], mean,
                                                                              sigma, max_speed)
        return decision

    def _move(self, s: ClientStats, cut: int, mean: float, sigma: float, max_speed: float) -> tuple[int, dict]:
        cap = max_feasible_cut(s, self.bounds)
        if s.loss is None or sigma == 0:
            return min(cut, cap), {"rule": "no loss yet" if s.loss is None else "equal losses", "memory_cap": cap}
        score = (mean - s.loss) / sigma
        step = self.gamma * score
        if step > 0:
            step *= s.speed / max_speed
        new = max(self.bounds.cut_min, min(cap, cut + round(step)))
        return new, {"rule": "performance", "loss": s.loss, "mean_loss": mean, "sigma": sigma, "score": score,
                     "step": step, "memory_cap": cap, "from": cut}
