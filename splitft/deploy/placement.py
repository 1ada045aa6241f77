"""Where each deployed client's cut comes from: the cut policy (the simulation's own code) over what the clients
measured and reported (`measure.py`), decided by the server once per round.

Round 0 is decided when every selected client has pulled (each pull carries its first report: the memory it can
give, its device tier under `measure.profile`); later rounds right after the previous one is aggregated, from
the reports that came with the pushes (compute and link measured over the round, its mean step loss). Every
decision is logged as a `cut_decision` record, as a simulation logs it, with the measured inputs behind each
client's cut and any value that had to be clamped. The `makespan` policy plans with the same round-cost model the
simulation uses (`cuts.round_costs`), from the clients' measurements and the server's own: the FLOPs of the steps
it served over their compute seconds (before its first step, heterogeneity.server_tflops). The no-split baseline
(fedlora) has no cut to decide: every client holds the whole model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..measure import stats_of
from ..policy import CutBounds, CutPolicy, floor_record


class Placement:
    def __init__(self, policy: CutPolicy | None, bounds: CutBounds, flops_per_block_token: float, *,
                 smallest_cut: int, allow_over_memory: bool = False,
                 log_decision: Callable[..., Any] = lambda **record: None):
        self.policy, self.bounds, self.flops = policy, bounds, flops_per_block_token
        self.smallest_cut, self.allow_over_memory, self.log_decision = smallest_cut, allow_over_memory, log_decision
        self.reports: dict[int, dict[str, Any]] = {}
        self.cuts: dict[int, int] = {}
        self.refused: dict[int, str] = {}
        self.decided = -1
        self.served_flops = self.served_s = 0.0  # the server's own training steps: their FLOPs and compute seconds
        self.served_steps = 0

    def note(self, cid: int, report: dict[str, Any]) -> None:
        """Keep the newest value of everything `cid` reported (a pull's report has no loss: the push's stays)."""
        self.reports.setdefault(cid, {}).update({k: v for k, v in report.items() if k != "eval"})

    def note_server(self, flops: float, seconds: float) -> None:
        """One server step computed: its FLOPs (blocks [cut, L) and the head of every client step it served) and
        its real compute seconds. The makespan policy plans with the server's measured throughput."""
        if flops > 0 and seconds > 0:
            self.served_flops, self.served_s, self.served_steps = (self.served_flops + flops,
                                                                   self.served_s + seconds, self.served_steps + 1)

    def _server_speed(self) -> dict[str, Any]:
        """makespan: plan with the server's measured throughput (its steps' FLOPs over their compute seconds,
        the per-step overhead included, so `server_step_s` is then 0) once it has served a step; before, with
        heterogeneity.server_tflops and server_step_s from the config. Returns what the decision used."""
        costs = getattr(self.policy, "costs", None)
        if costs is None:
            return {}
        if self.served_s > 0:
            tflops = self.served_flops / self.served_s / 1e12
            self.policy.costs = dataclasses.replace(  # type: ignore[union-attr]
                costs, server_tflops=tflops, serving=dataclasses.replace(costs.serving, step_s=0.0))
            return {"server": {"tflops": tflops, "source": f"measured over {self.served_steps} server steps"}}
        return {"server": {"tflops": costs.server_tflops, "step_s": costs.serving.step_s,
                           "source": "heterogeneity.server_tflops (no server step measured yet)"}}

    def cut_of(self, cid: int) -> int:
        return self.cuts.get(cid, self.bounds.n_layer if self.policy is None else self.smallest_cut)

    def decide(self, round_: int, clients: list[int]) -> dict[int, int]:
        """Cuts of `round_` for `clients` (every client of the federation); refuses a place to a client whose
        memory fits not even the smallest cut (`refused`: client -> why)."""
        self.decided = round_
        if self.policy is None:
            self.cuts = {c: self.bounds.n_layer for c in clients}
            return self.cuts
        measured = {c: stats_of(c, self.reports.get(c, {}), self.flops) for c in clients}
        need = self.bounds.base_gb + self.smallest_cut * self.bounds.block_gb
        for c, m in measured.items():
            if m.stats.memory_gb < need and not self.allow_over_memory and c not in self.refused:
                self.refused[c] = (f"client {c} has {m.stats.memory_gb:.3f} GB for its part of the model, and the "
                                   f"smallest cut ({self.smallest_cut}) needs {need:.3f} GB; free memory or raise "
                                   "measure.memory_gb, lower split.cut_min (split.cut under fixed), train.batch_size "
                                   "or data.max_length, or set split.allow_over_memory=true")
        placed = [c for c in clients if c not in self.refused]
        current = {c: self.cuts[c] for c in placed if c in self.cuts}
        server = self._server_speed()
        decision = self.policy.assign([measured[c].stats for c in placed], current if round_ > 0 else {}, round_)
        self.cuts.update(decision.cuts)
        self.log_decision(round=round_, policy=self.policy.name, cuts={str(c): v for c, v in decision.cuts.items()},
                          why={str(c): v for c, v in decision.why.items()},
                          measured={str(c): m.inputs for c, m in measured.items()},
                          clamped={str(c): m.clamps for c, m in measured.items() if m.clamps},
                          refused={str(c): why for c, why in self.refused.items()}, **server,
                          **floor_record(self.bounds, decision.cuts))
        return {c: self.cuts[c] for c in placed}

    def state_dict(self) -> dict[str, Any]:
        """What the next decisions build on: the reports kept, the cuts, the refusals, the last decided round."""
        return {"reports": {str(c): r for c, r in self.reports.items()},
                "cuts": {str(c): v for c, v in self.cuts.items()},
                "refused": {str(c): w for c, w in self.refused.items()}, "decided": self.decided,
                "served": [self.served_flops, self.served_s, self.served_steps]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reports = {int(c): dict(r) for c, r in state["reports"].items()}
        self.cuts = {int(c): int(v) for c, v in state["cuts"].items()}
        self.refused = {int(c): str(w) for c, w in state["refused"].items()}
        self.decided = int(state["decided"])
        flops, seconds, steps = state.get("served", [0.0, 0.0, 0])
        self.served_flops, self.served_s, self.served_steps = float(flops), float(seconds), int(steps)
