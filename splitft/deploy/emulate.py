"""Device emulation for one-machine deployments (`splitft client --emulate`, `splitft launch --emulate`): a client
process paces itself to the device profile the config gives it (`devices.client_profiles`, as the simulation
draws it), so a loopback deployment behaves like the heterogeneous federation in the config and the client's
measured resources reflect its emulated device.

A split client paces by wrapping its transport (`PacedTransport`), so `SplitClient.train_step` runs unchanged,
vanilla or U-shaped: the compute between two crossings waits until the profile's time for it has passed (the
forward of [0, cut); under U the tail and head, forward and backward; at the end the backward of [0, cut) and
the update), and each crossing waits for the emulated link: the upload time (latency + bytes at the uplink)
before it sends, the rest of the download time (minus what the real round trip already took) after the reply.
Adapter pulls and pushes wait for their transfer time at the emulated link too.
Emulation can slow a process down, never speed it up: when the real work takes longer than the profile allows
(e.g. several processes on 2 shared cores) it says so in the log and in the client's results
(`slower_than_profile`).

The server (`splitft server --emulate`, and `launch --emulate`) paces each training step it serves to
`heterogeneity.server_tflops`, as the virtual clock charges it: its real compute on a shared machine is neither
the configured server's nor steady, and a federation whose clients are paced but whose server is not would not be
the configured one. Under U its step is two halves, each paced: the forward of [cut, tail) before the hidden
states go down, its backward before grad_activations do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..config import Config, DeviceConfig
from ..cost import CostModel, transfer_s
from ..devices import client_profiles
from ..errors import UserError
from ..transport.base import BackwardRequest, ForwardRequest, StepReply


def emulated_device(cfg: Config, client_id: int) -> DeviceConfig:
    """The device the config gives this client, drawn as the simulation draws it (heterogeneity.profile)."""
    h = cfg.heterogeneity
    if h.profile == "list" and len(h.devices) != cfg.federation.n_clients:
        raise UserError(f"--emulate: heterogeneity.devices names {len(h.devices)} devices for "
                        f"{cfg.federation.n_clients} clients; give one per client")
    try:
        return client_profiles(h, cfg.federation.n_clients, cfg.federation.seed)[client_id]
    except KeyError as e:
        raise UserError(f"--emulate: heterogeneity: unknown device {e}; define it in heterogeneity.tiers") from None


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

    def work(self, real_s: float, first: int, last: int, batch: int, seq: int, head: bool = False,
             share: float = 1.0) -> float:
        """`share` of the training FLOPs of blocks [first, last) (and the head) on a (batch, seq) batch."""
        flops = self.cost.train_flops(first, last, batch, seq, head=head) * share
        return self._wait(real_s, flops / (self.device.tflops * 1e12))

    def half_step(self, real_s: float, cut: int, batch: int, seq: int, whole: bool = False,
                  backward: bool = False) -> float:
        """A forward or a backward of blocks [0, cut) (whole: the whole model and its head, fedlora)."""
        share = (1 - self.cost.forward_share) if backward else self.cost.forward_share
        return self.work(real_s, 0, self.cost.n_layer if whole else cut, batch, seq, head=whole, share=share)

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


class PacedTransport:
    """A split client's transport under --emulate, for one training step: the compute since the last crossing
    waits for the emulated device, each crossing for the emulated link (see the module's docstring). Everything
    else (counters, adapters, evaluation) is the wrapped transport's. `end()` paces the step's last compute and
    returns its paced (compute, link) seconds, what the client then measures and reports."""

    def __init__(self, transport: Any, pacer: Pacer, client_id: int, tail_cut: int | None):
        self.transport, self.pacer, self.id, self.tail_cut = transport, pacer, client_id, tail_cut
        self.mark = time.perf_counter()  # the step's start, then the last reply's arrival
        self.compute_s = self.link_s = 0.0
        self.cut = self.batch = self.seq = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def _compute(self, first: int, last: int, head: bool, share: float) -> None:
        real = time.perf_counter() - self.mark
        self.compute_s += self.pacer.work(real, first, last, self.batch, self.seq, head=head, share=share)

    def _cross(self, up_nbytes: int, send: Callable[[], StepReply]) -> StepReply:
        """Upload time, the real exchange, the rest of the download time (the reply's bytes as counted)."""
        self.link_s += self.pacer.upload(up_nbytes)
        before, sent = self.transport.counter.snapshot([self.id]), time.perf_counter()
        reply = send()
        real = max(time.perf_counter() - sent - reply.server_s, 0.0)
        down = sum(n for kind, n in self.transport.counter.since(before)[self.id].items() if kind.endswith("_down"))
        self.link_s += self.pacer.download(real, down)
        self.mark = time.perf_counter()
        return reply

    def step(self, req: ForwardRequest) -> StepReply:
        """The forward of [0, cut), then the activations' crossing (and, vanilla, grad_activations' return)."""
        self.cut, (self.batch, self.seq) = req.cut, req.activations.shape[:2]
        self._compute(0, req.cut, False, self.pacer.cost.forward_share)
        nbytes = self.transport.up.encoded_nbytes(req.activations) + req.labels_nbytes()
        return self._cross(nbytes, lambda: self.transport.step(req))

    def backward(self, req: BackwardRequest) -> StepReply:
        """U: the tail and head, forward and backward, then grad_hidden's crossing and grad_activations' return."""
        assert self.tail_cut is not None, "only a U-shaped client sends grad_hidden"
        self._compute(self.tail_cut, self.pacer.cost.n_layer, True, 1.0)
        return self._cross(self.transport.up.encoded_nbytes(req.grad_hidden), lambda: self.transport.backward(req))

    def end(self) -> tuple[float, float]:
        """After the step: the backward of [0, cut) and the update; the step's paced compute and link seconds."""
        self._compute(0, self.cut, False, 1 - self.pacer.cost.forward_share)
        self.pacer.step_done()
        return self.compute_s, self.link_s


def server_pacer(server_tflops: float, cost: CostModel, log: Callable[[str], Any],
                 step_s: float = 0.0, tail_cut: int | None = None) -> ServerPacer:
    pacer = ServerPacer(DeviceConfig(name="server", tflops=server_tflops), cost, log, sleep=lambda s: None)
    pacer.step_s, pacer.tail_cut = step_s, tail_cut
    return pacer


class ServerPacer(Pacer):
    """The server's pacer: compute only (the links are the clients', paced on their side). It does not sleep:
    `rest` says how long the step must still take and the coordinator awaits it (its event loop must not
    block: requests arriving meanwhile are timestamped and replies sent)."""

    party = "server"
    step_s = 0.0  # heterogeneity.server_step_s: what every server step costs beside its FLOPs
    tail_cut: int | None = None  # U: the first block of the clients' tail; the server runs [cut, tail_cut)

    def rest(self, real_s: float, shapes: list[tuple[int, int, int]], half: str = "step") -> float:
        """Seconds one server step must still take after `real_s` of compute, as the clock prices it: `step_s`,
        and for each client step it serves, (first, batch, seq), blocks [first, L) and the head, forward and
        backward (several: one joined step, `federation.server_batch`, their FLOPs together). Under U a step is
        two halves: "forward" (`step_s` and the forward of [first, tail_cut)) and "backward" (its backward)."""
        last = self.cost.n_layer if half == "step" else self.tail_cut
        assert last is not None, "only a U-shaped step has halves"
        share = {"step": 1.0, "forward": self.cost.forward_share, "backward": 1 - self.cost.forward_share}[half]
        flops = sum(self.cost.train_flops(first, last, b, t, head=half == "step") for first, b, t in shapes) * share
        self.steps += 0 if half == "forward" else len(shapes)  # a U step counts once, at its end
        fixed = 0.0 if half == "backward" else self.step_s
        return self._wait(real_s, fixed + flops / (self.device.tflops * 1e12)) - real_s

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in super().summary().items() if k not in ("up_mbps", "down_mbps", "latency_ms")}
