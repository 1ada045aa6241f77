"""Virtual clock: what a round would take on the simulated devices, from the model's FLOPs and the bytes the
transport counted (the round-time model itself is `splitft/cost.py`). Evaluation is a measurement and is not
charged. It charges what the server's serving order makes clients wait for: under `federation.order=plan`
lockstep turns (a request waits for the steps ahead of it in the plan), under `arrival` first come first
served, which is also the order the simulation then runs the steps in.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..cost import ONE_BY_ONE, CostModel, Serving, StepCost, Timeline, round_time, transfer_s
from .profiles import DeviceProfile


class RoundClock(Protocol):
    """Turns a round's step records and adapter bytes into virtual seconds (see sim/clock.py, cost.py)."""

    def round_seconds(self, steps: list[dict[str, Any]], lora_down: dict[int, int],
                      lora_up: dict[int, int]) -> float: ...

    def step_cost(self, rec: dict[str, Any]) -> Any: ...

    def timeline(self, lora_down: dict[int, int]) -> Any:
        """A `cost.Timeline` of the round: arrival(step_cost) and serve(step_cost, arrived) -> ready."""
        ...

    def own_s(self, rec: dict[str, Any]) -> float:
        """Seconds of a step's own work on its client's device: its compute and its link, not the server's compute
        nor the waits for other clients (what a deployed client measures and reports)."""
        ...


class VirtualClock:
    """`RoundClock` for the simulation: step records -> `StepCost` -> `round_time`."""

    def __init__(self, cost: CostModel, devices: dict[int, DeviceProfile], server: DeviceProfile,
                 order: str = "plan", tail_cut: int | None = None, serving: Serving = ONE_BY_ONE):
        """`tail_cut`: under a U-shaped split, the first block of the clients' tail; `serving`: the server's
        seconds per step beside its FLOPs and its joined steps."""
        self.cost, self.devices, self.server, self.order, self.tail_cut = cost, devices, server, order, tail_cut
        self.serving = serving

    def step_cost(self, rec: dict) -> StepCost:
        (batch, seq), cut, L, share = rec["batch"], rec["cut"], self.cost.n_layer, self.cost.forward_share
        if cut >= L:  # no split: the whole model runs on the client
            return StepCost(rec["client_id"], self.cost.train_flops(0, L, batch, seq, head=True), forward_share=share)
        if self.tail_cut is not None:  # U: the client also runs its tail and the head, the server the middle
            return StepCost(rec["client_id"], self.cost.train_flops(0, cut, batch, seq),
                            self.cost.train_flops(cut, self.tail_cut, batch, seq), rec["bytes_up"], rec["bytes_down"],
                            self.cost.train_flops(self.tail_cut, L, batch, seq, head=True),
                            rec.get("hidden_down", 0), rec.get("grad_hidden_up", 0), share)
        return StepCost(rec["client_id"], self.cost.train_flops(0, cut, batch, seq),
                        self.cost.train_flops(cut, L, batch, seq, head=True), rec["bytes_up"], rec["bytes_down"],
                        forward_share=share, server_step=rec.get("server_step", -1))

    def timeline(self, lora_down: dict[int, int]) -> Timeline:
        """A round's timeline for the clients in `lora_down`, from when each has its adapters."""
        return Timeline({c: self.devices[c] for c in lora_down}, self.server, lora_down, self.serving.step_s)

    def round_seconds(self, steps: list[dict], lora_down: dict[int, int], lora_up: dict[int, int]) -> float:
        finish = round_time([self.step_cost(s) for s in steps], {c: self.devices[c] for c in lora_down},
                            self.server, lora_down, lora_up, order=self.order, serving=self.serving)
        return max(finish.values())

    def own_s(self, rec: dict) -> float:
        """The step's own seconds on its client's device: forward and backward (and a U-shaped tail), and the link
        (each crossing's latency and bytes); not the server's compute, not the waits for others."""
        s, d = self.step_cost(rec), self.devices[rec["client_id"]]
        compute = (s.client_flops + s.tail_flops) / (d.tflops * 1e12)
        if s.server_flops == 0:
            return compute
        link = (transfer_s(s.bytes_up - s.grad_hidden_up, d.up_mbps, d.latency_ms)
                + transfer_s(s.bytes_down - s.hidden_down, d.down_mbps, d.latency_ms))
        if s.tail_flops:  # U: the second crossing, both ways
            link += (transfer_s(s.hidden_down, d.down_mbps, d.latency_ms)
                     + transfer_s(s.grad_hidden_up, d.up_mbps, d.latency_ms))
        return compute + link
