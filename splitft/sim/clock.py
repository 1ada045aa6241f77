"""Virtual clock: what a round would take on the simulated devices, from the model's FLOPs and the bytes the
transport counted (the round-time model itself is `splitft/cost.py`). Evaluation is a measurement and is not
charged. It charges what the server's serving order makes clients wait for: under `federation.order=plan`
lockstep turns (a request waits for the steps ahead of it in the plan), under `arrival` first come first
served, which is also the order the simulation then runs the steps in.
"""

from __future__ import annotations

import statistics

from ..cost import CostModel, StepCost, Timeline, round_time, transfer_s
from .profiles import DeviceProfile


class VirtualClock:
    """`federation.RoundClock` for the simulation: step records -> `StepCost` -> `round_time`."""

    def __init__(self, cost: CostModel, devices: dict[int, DeviceProfile], server: DeviceProfile,
                 order: str = "plan", nominal: tuple[int, int, int] = (1, 1, 0), tail_cut: int | None = None):
        """`nominal`: (batch, seq, activation bytes per token) of a full batch, for the time budget. `tail_cut`:
        under a U-shaped split, the first block of the clients' tail."""
        self.cost, self.devices, self.server, self.order, self.nominal = cost, devices, server, order, nominal
        self.tail_cut = tail_cut

    def step_cost(self, rec: dict) -> StepCost:
        (batch, seq), cut, L = rec["batch"], rec["cut"], self.cost.n_layer
        if cut >= L:  # no split: the whole model runs on the client
            return StepCost(rec["client_id"], self.cost.train_flops(0, L, batch, seq, head=True))
        if self.tail_cut is not None:  # U: the client also runs its tail and the head, the server the middle
            return StepCost(rec["client_id"], self.cost.train_flops(0, cut, batch, seq),
                            self.cost.train_flops(cut, self.tail_cut, batch, seq), rec["bytes_up"], rec["bytes_down"],
                            self.cost.train_flops(self.tail_cut, L, batch, seq, head=True),
                            rec.get("hidden_down", 0), rec.get("grad_hidden_up", 0))
        return StepCost(rec["client_id"], self.cost.train_flops(0, cut, batch, seq),
                        self.cost.train_flops(cut, L, batch, seq, head=True), rec["bytes_up"], rec["bytes_down"])

    def timeline(self, lora_down: dict[int, int]) -> Timeline:
        """A round's timeline for the clients in `lora_down`, from when each has its adapters."""
        return Timeline({c: self.devices[c] for c in lora_down}, self.server, lora_down)

    def round_seconds(self, steps: list[dict], lora_down: dict[int, int], lora_up: dict[int, int]) -> float:
        finish = round_time([self.step_cost(s) for s in steps], {c: self.devices[c] for c in lora_down},
                            self.server, lora_down, lora_up, order=self.order)
        return max(finish.values())

    def budget_s(self, cuts: dict[int, int], local_steps: int) -> float:
        """What the median of these clients needs for `local_steps` full batches on its own (its compute and
        link, the server's compute, no queueing): the default time budget of a round."""
        batch, seq, act_bytes = self.nominal
        acts = batch * seq * act_bytes
        if self.tail_cut is None:  # activations, labels (int32) and mask (uint8); grad_activations
            shape = {"bytes_up": acts + batch * seq * 5, "bytes_down": acts}
        else:  # the mask alone, and the hidden states and their gradient at the tail
            shape = {"bytes_up": 2 * acts + batch * seq, "bytes_down": 2 * acts, "hidden_down": acts,
                     "grad_hidden_up": acts}
        need = []
        for c, cut in cuts.items():
            d = self.devices[c]
            s = self.step_cost({"batch": (batch, seq), "cut": cut, "client_id": c, **shape})
            link = 0.0 if s.server_flops == 0 else (
                transfer_s(s.bytes_up - s.grad_hidden_up, d.up_mbps, d.latency_ms)
                + transfer_s(s.bytes_down - s.hidden_down, d.down_mbps, d.latency_ms)
                + (transfer_s(s.hidden_down, d.down_mbps, d.latency_ms)
                   + transfer_s(s.grad_hidden_up, d.up_mbps, d.latency_ms) if s.tail_flops else 0.0))
            need.append(local_steps * ((s.client_flops + s.tail_flops) / (d.tflops * 1e12)
                                       + s.server_flops / (self.server.tflops * 1e12) + link))
        return statistics.median(need)
