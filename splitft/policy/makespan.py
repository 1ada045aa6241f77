"""Cuts for round time: the assignment of per-client cuts that minimises the predicted time of a round, within
each client's memory and the privacy floor `cut_min`, then SplitFT's performance rule inside a tolerance.

The prediction is the virtual clock's own model (`cost.round_time`: clients in parallel, one FIFO server queue,
each client's link), fed with what one step and one round cost at each cut (`RoundCosts`). So a cut trades a
client's compute (blocks it runs) against the server's queue (blocks the server runs for it), and every client
sends the same activation bytes whatever its cut: with a fast server the slowest uplink sets the round, and
per-client cuts pay when the server is the bottleneck.

Search: exhaustive over all assignments when there are at most EXACT_LIMIT of them, else coordinate descent
(move one client's cut at a time to the best cut for the round, until no move helps; a move that keeps the round
but lowers the clients' mean finish time counts, so the search crosses plateaus set by one slow client) from the
fastest fixed cut (clipped to each client's memory) and from the resource rule's cuts; the better end wins.

Decision every `period` rounds, in this order:
  1. best   = the fastest assignment found (ties: the earlier in the search order: smaller cuts first);
  2. performance rule (the paper's): clients whose last loss is below the federation's mean, best first, take
     up to round(gamma * (mean - loss) / sigma) more blocks each, as long as the predicted round stays within
     (1 + tolerance) of best's;
  3. hysteresis: if the current cuts (all still allowed) predict within (1 + hysteresis) of the proposal, keep
     them: cuts do not flap for small gains.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..cost import ONE_BY_ONE, Serving, StepCost, round_time, server_steps
from .base import ClientStats, CutBounds, Decision, max_feasible_cut
from .resource import ResourcePolicy

EXACT_LIMIT = 4096
MAX_SWEEPS = 20


@dataclass(frozen=True)
class _Server:
    tflops: float
    up_mbps: float = math.inf
    down_mbps: float = math.inf
    latency_ms: float = 0.0


@dataclass(frozen=True)
class RoundCosts:
    """What a round of split steps costs at each cut (index = cut; index 0 unused), in plain numbers.

    Attributes:
        client_flops: forward + backward FLOPs of blocks [0, cut) for one step.
        server_flops: the same for blocks [cut, L) and the head.
        lora_bytes: adapter bytes a client at that cut pulls, and again pushes, each round (cut layer at r_cut).
        step_bytes_up: activations (as the codec encodes them) + mask + labels of one step.
        step_bytes_down: grad_activations (encoded) + the loss scalars of one step.
        local_steps: steps per client per round.
        server_tflops: the server's effective training throughput.
        order: the server's serving order (`federation.order`), which the round time depends on: under `plan` a
            client waits for the turns ahead of it (predicted with turns in client-id order).
        tail_flops, tail_bytes_up, tail_bytes_down: under a U-shaped split, the client tail's FLOPs per step and
            the bytes of the gradient of the hidden states (up) and of the hidden states (down), part of
            step_bytes_up / step_bytes_down.
        client_bytes_up: step_bytes_up of clients whose up codec differs from the config's (codec.up=auto).
        forward_share: the client forward's share of client_flops (1/3 under activation checkpointing).
        serving: the server's seconds per step beside its FLOPs and how many clients' steps it joins
            (`heterogeneity.server_step_s`, `federation.server_batch`).
    """

    client_flops: tuple[float, ...]
    server_flops: tuple[float, ...]
    lora_bytes: tuple[int, ...]
    step_bytes_up: int
    step_bytes_down: int
    local_steps: int
    server_tflops: float
    order: str = "arrival"
    tail_flops: float = 0.0
    tail_bytes_up: int = 0
    tail_bytes_down: int = 0
    forward_share: float = 0.5
    serving: Serving = ONE_BY_ONE
    client_bytes_up: Mapping[int, int] = field(default_factory=dict)

    def round_s(self, cuts: Mapping[int, int], stats: Mapping[int, ClientStats]) -> float:
        """Predicted seconds of one round with these cuts (the clock's model; steps interleaved round-robin)."""
        return self.score(cuts, stats)[0]

    def score(self, cuts: Mapping[int, int], stats: Mapping[int, ClientStats]) -> tuple[float, float]:
        """(round seconds, mean of the clients' finish times): the second breaks the first's ties, so a search
        can move on across assignments whose round is set by the same slowest client."""
        turns = [(c, k) for _ in range(self.local_steps) for c, k in cuts.items()]
        joined = server_steps([c for c, _ in turns], self.serving.batch if self.order == "plan" else 1)
        up = {c: self.client_bytes_up.get(c, self.step_bytes_up) for c in cuts}
        steps = [StepCost(c, self.client_flops[k], self.server_flops[k], up[c], self.step_bytes_down, self.tail_flops,
                          self.tail_bytes_down, self.tail_bytes_up, self.forward_share,
                          j if self.serving.batch > 1 else -1) for (c, k), j in zip(turns, joined, strict=True)]
        lora = {c: self.lora_bytes[k] for c, k in cuts.items()}
        finish = round_time(steps, {c: stats[c] for c in cuts}, _Server(self.server_tflops), lora, lora, self.order,
                            self.serving)
        return max(finish.values()), sum(finish.values()) / len(finish)


def allowed_cuts(stats: Iterable[ClientStats], bounds: CutBounds) -> dict[int, range]:
    """Each client's cuts: from the privacy floor cut_min up to the largest its memory fits (at least cut_min)."""
    return {s.client_id: range(bounds.cut_min, max_feasible_cut(s, bounds) + 1) for s in stats}


def exhaustive(costs: RoundCosts, stats: Mapping[int, ClientStats],
               allowed: Mapping[int, range]) -> tuple[dict[int, int], float]:
    """The fastest assignment of all (first found on ties, in itertools.product order)."""
    ids = sorted(allowed)
    best, best_s = {}, math.inf
    for combo in itertools.product(*(allowed[c] for c in ids)):
        cuts = dict(zip(ids, combo, strict=True))
        t = costs.round_s(cuts, stats)
        if t < best_s:
            best, best_s = cuts, t
    return best, best_s


def descend(costs: RoundCosts, stats: Mapping[int, ClientStats], allowed: Mapping[int, range],
            start: Mapping[int, int]) -> tuple[dict[int, int], float]:
    """Coordinate descent from `start`: give one client at a time its best cut, until a sweep changes nothing."""
    cuts = {c: min(max(start[c], allowed[c].start), allowed[c].stop - 1) for c in allowed}
    best = costs.score(cuts, stats)
    for _ in range(MAX_SWEEPS):
        moved = False
        for c in sorted(allowed):
            for k in allowed[c]:
                if k == cuts[c]:
                    continue
                t = costs.score({**cuts, c: k}, stats)
                if t[0] < best[0] - 1e-12 or (t[0] <= best[0] + 1e-12 and t[1] < best[1] - 1e-12):
                    cuts, best, moved = {**cuts, c: k}, t, True
        if not moved:
            break
    return cuts, best[0]


def fastest(costs: RoundCosts, stats: Mapping[int, ClientStats], allowed: Mapping[int, range],
            starts: Iterable[Mapping[int, int]]) -> tuple[dict[int, int], float, bool]:
    """(cuts, predicted seconds, exact): exhaustive when small enough, else the best descent from `starts`."""
    if math.prod(len(r) for r in allowed.values()) <= EXACT_LIMIT:
        return (*exhaustive(costs, stats, allowed), True)
    found = [descend(costs, stats, allowed, s) for s in starts]
    cuts, t = min(found, key=lambda f: f[1])
    return cuts, t, False


def fixed_starts(allowed: Mapping[int, range], bounds: CutBounds) -> list[dict[int, int]]:
    """Every fixed cut in [cut_min, cut_max], each clipped to what each client may hold."""
    return [{c: min(k, r.stop - 1) for c, r in allowed.items()} for k in range(bounds.cut_min, bounds.hi + 1)]


def best_starts(costs: RoundCosts, stats: Mapping[int, ClientStats], candidates: list[dict[int, int]],
                keep: int) -> list[dict[int, int]]:
    """The `keep` fastest of `candidates` (each predicted once): where descents start."""
    return sorted(candidates, key=lambda cuts: costs.round_s(cuts, stats))[:keep]


@dataclass
class MakespanPolicy:
    bounds: CutBounds
    costs: RoundCosts
    cut: int = 2
    """Reference cut of the resource rule, one of the search's starting points."""
    gamma: float = 1.0
    """Performance rule: most extra blocks per standard deviation a client's loss is below the mean."""
    period: int = 2
    tolerance: float = 0.02
    """Performance rule: how much slower than the fastest found the round may get (0.02 = 2%)."""
    hysteresis: float = 0.05
    """Keep the current cuts unless the new ones predict a round this much faster (0.05 = 5%)."""
    name: str = "makespan"

    def assign(self, stats: list[ClientStats], current: dict[int, int], round_: int) -> Decision:
        by_id = {s.client_id: s for s in stats}
        if current and round_ % self.period != 0 and all(c in current for c in by_id):
            return Decision({c: current[c] for c in by_id}, {c: {"rule": "hold", "period": self.period}
                                                              for c in by_id})
        allowed = allowed_cuts(stats, self.bounds)
        resource = ResourcePolicy(self.bounds, self.cut).assign(stats, {}, round_).cuts
        starts = [*best_starts(self.costs, by_id, fixed_starts(allowed, self.bounds), 1), resource]
        best, best_s, exact = fastest(self.costs, by_id, allowed, starts)
        proposal, why = self._performance(best, best_s, by_id, allowed)
        proposal_s = self.costs.round_s(proposal, by_id)
        rule = "fastest" if exact else "fastest found"
        if current and all(current.get(c) in allowed[c] for c in by_id):
            current_s = self.costs.round_s({c: current[c] for c in by_id}, by_id)
            if current_s <= proposal_s * (1 + self.hysteresis):
                proposal, proposal_s, rule = {c: current[c] for c in by_id}, current_s, "hold (hysteresis)"
        base = {"rule": rule, "round_s": proposal_s, "fastest_s": best_s, "exact": exact}
        return Decision(proposal, {c: {**base, "allowed": [allowed[c].start, allowed[c].stop - 1], **why.get(c, {})}
                                   for c in by_id})

    def _performance(self, best: dict[int, int], best_s: float, stats: Mapping[int, ClientStats],
                     allowed: Mapping[int, range]) -> tuple[dict[int, int], dict[int, dict]]:
        """More blocks for clients whose loss is below the mean, best first, within the time tolerance."""
        losses = {c: s.loss for c, s in stats.items() if s.loss is not None}
        if len(losses) < 2 or self.gamma == 0:
            return best, {}
        mean = sum(losses.values()) / len(losses)
        sigma = math.sqrt(sum((x - mean) ** 2 for x in losses.values()) / len(losses))
        if sigma == 0:
            return best, {}
        cuts, why, limit = dict(best), {}, best_s * (1 + self.tolerance)
        for c in sorted(losses, key=lambda c: losses[c]):
            score = (mean - losses[c]) / sigma
            if score <= 0:
                break
            want = min(best[c] + round(self.gamma * score), allowed[c].stop - 1)
            for k in range(want, best[c], -1):
                if self.costs.round_s({**cuts, c: k}, stats) <= limit:
                    cuts[c] = k
                    break
            why[c] = {"score": score, "wanted": want, "from": best[c], "to": cuts[c]}
        return cuts, why


def oracle(costs: RoundCosts, stats: list[ClientStats], bounds: CutBounds,
           exact_limit: int = 200_000) -> tuple[dict[int, int], float, bool]:
    """The fastest assignment: exhaustive up to `exact_limit` assignments (exact=True), else the best of
    descents from the three fastest fixed cuts, the resource rule's cuts and four seeded random starts
    (exact=False: best found).
    For tests and benchmarks, not for deciding rounds."""
    import random

    by_id = {s.client_id: s for s in stats}
    allowed = allowed_cuts(stats, bounds)
    if math.prod(len(r) for r in allowed.values()) <= exact_limit:
        return (*exhaustive(costs, by_id, allowed), True)
    rng = random.Random(0)
    starts = [*best_starts(costs, by_id, fixed_starts(allowed, bounds), 3),
              ResourcePolicy(bounds).assign(stats, {}, 0).cuts,
              *({c: rng.choice(r) for c, r in allowed.items()} for _ in range(4))]
    cuts, t, _ = fastest(costs, by_id, allowed, starts)
    return cuts, t, False
