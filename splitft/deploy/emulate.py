"""Device emulation for one-machine deployments (`splitft client --emulate`, `splitft launch --emulate`): a client
process paces itself to the device profile the config gives it (`devices.client_profiles`, as the simulation
draws it), so a loopback deployment behaves like the heterogeneous federation in the config and the client's
measured resources reflect its emulated device.

Per split step: after its forward it waits until the profile's forward time has passed, then the upload time
(latency + activations, labels and mask at the profile's uplink) before it sends; after the reply the rest of the
link time (the download at the downlink, minus what the real round trip already took); after its backward the
profile's backward time. Adapter pulls and pushes wait for their transfer time at the emulated link too.
Emulation can slow a process down, never speed it up: when the real work takes longer than the profile allows
(e.g. several processes on 2 shared cores) it says so in the log and in the client's results
(`slower_than_profile`).

The server (`splitft server --emulate`, and `launch --emulate`) paces each training step it serves to
`heterogeneity.server_tflops`, as the virtual clock charges it: its real compute on a shared machine is neither
the configured server's nor steady, and a federation whose clients are paced but whose server is not would not be
the configured one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..config import Config, DeviceConfig
from ..cost import CostModel, transfer_s
from ..errors import UserError


def check_shape(cfg: Config) -> None:
    """Emulation paces the vanilla split's step; a U-shaped step's tail and second crossing are not paced yet."""
    if cfg.split.shape == "u":
        raise UserError("--emulate paces vanilla split steps only (a U-shaped step's tail and its second crossing "
                        "are not paced yet): run with split.shape=vanilla, or without --emulate")


class Pacer:
    party = "client"

    def __init__(self, device: DeviceConfig, cost: CostModel, log: Callable[[str], Any],
                 sleep: Callable[[float], None] = time.sleep):
        self.device, self.cost, self.log, self.sleep = device, cost, log, sleep
        self.steps = self.slower = 0
        self.real_s = self.paced_s = 0.0

    def _wait(self, real_s: float, target_s: float) -> float:
        """Sleep what the profile needs beyond the real time; returns the paced time."""
        self.real_s += real_s
        self.paced_s += max(real_s, target_s)
        if real_s > target_s * 1.05:  # counted as slower only beyond 5%, but never a negative sleep
            self.slower += 1
        elif target_s > real_s:
            self.sleep(target_s - real_s)
        return max(real_s, target_s)

    def half_step(self, real_s: float, cut: int, batch: int, seq: int, whole: bool = False,
                  backward: bool = False) -> float:
        """A forward or a backward of blocks [0, cut) (whole: the whole model and its head, fedlora)."""
        share = (1 - self.cost.forward_share) if backward else self.cost.forward_share
        flops = self.cost.train_flops(0, self.cost.n_layer if whole else cut, batch, seq, head=whole) * share
        return self._wait(real_s, flops / (self.device.tflops * 1e12))

    def upload(self, nbytes: int) -> float:
        """Before sending: the uplink's latency and bandwidth (the real send on loopback is ~0)."""
        target = self.transfer(nbytes, "up")
        self.sleep(target)
        return target

    def download(self, real_s: float, nbytes: int) -> float:
        """After a reply came back in `real_s` (minus the server's time): the rest of the download's time."""
        return self._wait(real_s, self.transfer(nbytes, "down"))

    def transfer(self, nbytes: int, way: str) -> float:
        """Seconds `nbytes` take on the emulated link, "up" or "down"."""
        d = self.device
        return transfer_s(nbytes, d.up_mbps if way == "up" else d.down_mbps, d.latency_ms)

    def step_done(self) -> None:
        self.steps += 1

    def summary(self) -> dict[str, Any]:
        """What the emulation did, for the client's results and log."""
        d = self.device
        return {"device": d.name, "tflops": d.tflops, "up_mbps": d.up_mbps, "down_mbps": d.down_mbps,
                "latency_ms": d.latency_ms, "steps": self.steps, "real_s": round(self.real_s, 4),
                "paced_s": round(self.paced_s, 4), "slower_than_profile": self.slower}

    def warn_if_behind(self) -> None:
        if self.slower:
            self.log(f"emulation: the real work took longer than the '{self.device.name}' profile allows "
                     f"{self.slower} times (compute or link); this machine cannot honor that device here, so "
                     f"this {self.party} ran slower than the federation in the config")


def server_pacer(server_tflops: float, cost: CostModel, log: Callable[[str], Any],
                 step_s: float = 0.0) -> ServerPacer:
    pacer = ServerPacer(DeviceConfig(name="server", tflops=server_tflops), cost, log, sleep=lambda s: None)
    pacer.step_s = step_s
    return pacer


class ServerPacer(Pacer):
    """The server's pacer: compute only (the links are the clients', paced on their side). It does not sleep:
    `rest` says how long the step must still take and the coordinator awaits it (its event loop must not
    block: requests arriving meanwhile are timestamped and replies sent)."""

    party = "server"
    step_s = 0.0  # heterogeneity.server_step_s: what every server step costs beside its FLOPs

    def rest(self, real_s: float, shapes: list[tuple[int, int, int]]) -> float:
        """Seconds one server step must still take after `real_s` of compute, as the clock prices it: `step_s`,
        and for each client step it serves, (first, batch, seq), blocks [first, L) and the head, forward and
        backward (several: one joined step, `federation.server_batch`, their FLOPs together)."""
        self.steps += len(shapes)
        flops = sum(self.cost.train_flops(first, self.cost.n_layer, b, t, head=True) for first, b, t in shapes)
        return self._wait(real_s, self.step_s + flops / (self.device.tflops * 1e12)) - real_s

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in super().summary().items() if k not in ("up_mbps", "down_mbps", "latency_ms")}
