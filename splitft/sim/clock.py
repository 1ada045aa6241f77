"""Virtual clock: what a round would take on the simulated devices, from the model's FLOPs and the bytes the
transport counted (the round-time model itself is `splitft/cost.py`). Evaluation is a measurement and is not
charged.
"""

from __future__ import annotations

from ..cost import CostModel, StepCost, round_time
from .profiles import DeviceProfile


class VirtualClock:
    """`federation.RoundClock` for the simulation: step records -> `StepCost` -> `round_time`."""

    def __init__(self, cost: CostModel, devices: dict[int, DeviceProfile], server: DeviceProfile):
        self.cost, self.devices, self.server = cost, devices, server

    def step_cost(self, rec: dict) -> StepCost:
        (batch, seq), cut, L = rec["batch"], rec["cut"], self.cost.n_layer
        if cut >= L:  # no split: the whole model runs on the client
            return StepCost(rec["client_id"], self.cost.train_flops(0, L, batch, seq, head=True))
        return StepCost(rec["client_id"], self.cost.train_flops(0, cut, batch, seq),
                        self.cost.train_flops(cut, L, batch, seq, head=True), rec["bytes_up"], rec["bytes_down"])

    def round_seconds(self, steps: list[dict], lora_down: dict[int, int], lora_up: dict[int, int]) -> float:
        finish = round_time([self.step_cost(s) for s in steps], {c: self.devices[c] for c in lora_down},
                            self.server, lora_down, lora_up)
        return max(finish.values())
