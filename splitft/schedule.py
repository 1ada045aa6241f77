"""The round schedule both runtimes share: which clients take part and in which order their steps run, which
turns one server step serves together, who drops out, the default time budget and whether a client begins
another step. Pure functions of the config's numbers and the seed; the simulator (`sim/federation.py`) and the
deployed coordinator and client (`deploy/`) ask the same questions here, so they cannot drift apart.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from .cost import server_steps
from .seeding import derive_seed


@dataclass(frozen=True)
class Schedule:
    """How a round's steps are served and when a client's round ends (the `federation.order`, `round_budget`,
    `round_time_s` and `max_steps_factor` settings)."""

    order: str = "plan"
    budget: str = "steps"
    round_time_s: float = 0.0
    max_steps_factor: float = 2.0
    server_batch: int = 1
    batch_wait_s: float = 0.0

    @classmethod
    def of(cls, f: Any) -> Schedule:
        """The schedule a `config.FederationConfig` asks for."""
        return cls(f.order, f.round_budget, f.round_time_s, f.max_steps_factor, f.server_batch,
                   f.server_batch_wait_ms / 1000)

    @property
    def planned(self) -> bool:
        """Today's deterministic round: plan order, local_steps each (no clock needed to order it)."""
        return self.order == "plan" and self.budget == "steps"

    def cap(self, local_steps: int) -> int:
        """The most steps a client runs in a round: local_steps, or under a time budget max_steps_factor x that."""
        return math.ceil(self.max_steps_factor * local_steps) if self.budget == "time" else local_steps


@dataclass
class RoundPlan:
    round: int
    clients: list[int]
    order: list[tuple[int, int]]
    """(client_id, step) in execution order."""


def plan_round(round_: int, client_ids: list[int], per_round: int, local_steps: int, seed: int) -> RoundPlan:
    """Pure: which clients take part and in which order their steps run (seeded by (seed, round))."""
    rng = random.Random(derive_seed(seed, "plan", round_))
    chosen = sorted(rng.sample(client_ids, per_round)) if 0 < per_round < len(client_ids) else list(client_ids)
    perm = rng.sample(chosen, len(chosen))
    return RoundPlan(round_, chosen, [(c, s) for s in range(local_steps) for c in perm])


def next_batch(order: list[tuple[int, int]], k: int) -> list[tuple[int, int]]:
    """Pure: the turns at the head of `order` that one server step serves together (`federation.server_batch`):
    up to k consecutive turns of different clients (a client's next step needs the reply to its previous one,
    so a batch ends before a client's second turn)."""
    return order[:server_steps([c for c, _ in order[:k]], k).count(0)]


def default_budget_s(step_s: dict[int, float], clients: list[int], local_steps: int) -> float | None:
    """Pure: the default time budget of a round, the same in both runtimes: local_steps x the seconds per step
    of the median client (the upper median) among `clients` with a known pace, but never less than the slowest
    one's single step (every client runs at least one, so the round lasts that long anyway: stopping the others
    sooner would only idle them); None when no pace is known (that round runs local_steps)."""
    known = sorted(step_s[c] for c in clients if c in step_s)
    return max(known[len(known) // 2] * local_steps, known[-1]) if known else None


def plan_dropouts(round_: int, clients: list[int], local_steps: int, p: float, seed: int) -> dict[int, int]:
    """Pure: {client: the step at which it vanishes} for the selected clients that drop out of this round (each
    with chance p; seeded by (seed, round) apart from the plan, so p does not change who is selected)."""
    if p <= 0:
        return {}
    rng = random.Random(derive_seed(seed, "dropout", round_))
    draws = [(c, rng.random(), rng.randrange(local_steps)) for c in clients]
    return {c: step for c, u, step in draws if u < p}


def another_step(done: int, elapsed_s: float, budget_s: float | None, cap: int) -> bool:
    """Pure: whether a client begins another step this round, having run `done` of them in `elapsed_s` seconds
    since its first: `cap` steps (local_steps) without a time budget (None); under one, at least one step, then
    more while the budget has not passed, never more than `cap` (max_steps_factor x local_steps)."""
    if budget_s is None:
        return done < cap
    return done < 1 or (done < cap and elapsed_s < budget_s)
