"""What a deployed client measures for the cut policy, and how the server reads it back without trusting it.

Client side, from its own real work (`Meter`): compute as seconds per block per token of its timed training
steps (forward, backward and update, transfers excluded), the link as the bytes its steps moved over the time
they spent on the wire (round trip minus the time the server held the step), both smoothed (EWMA), and the
memory it can give its part of the model (free RAM, or free CUDA memory on a GPU, plus what its current part
already holds; capped by `measure.memory_gb`). `measure.profile` reports a device tier's numbers instead.

Server side (`stats_of`): a report becomes the policy's `ClientStats`, with every value checked: a missing
measurement keeps the neutral default, a negative, NaN or absurd one is clamped into range and the clamp is
listed in the cut_decision record, never passed on to the policy.
    speed (TFLOP/s) = FLOPs of one block per token / measured seconds per block per token / 1e12
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .devices import all_tiers
from .errors import UserError
from .policy import ClientStats

RANGES = {"s_per_block_token": (1e-10, 10.0), "link_mbps": (1e-3, 1e6), "memory_gb": (0.0, 1e5),
          "tflops": (1e-6, 1e6), "up_mbps": (1e-3, 1e6), "down_mbps": (1e-3, 1e6), "latency_ms": (0.0, 1e5),
          "loss": (0.0, 1e3)}
"""Plausible ranges of reported values; anything outside is clamped (and said so)."""


def ewma(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1 - weight) * old + weight * new


@dataclass
class Meter:
    """A client's smoothed measurements (see the module docstring)."""

    weight: float = 0.3
    s_per_block_token: float | None = None
    link_mbps: float | None = None

    def step(self, compute_s: float, blocks: int, tokens: int, link_s: float = 0.0, link_bytes: int = 0) -> None:
        """One timed training step: its compute over `blocks` blocks and `tokens` (B*T) tokens, and (split
        clients) `link_bytes` moved in `link_s` seconds on the wire."""
        if compute_s > 0 and blocks > 0 and tokens > 0:
            self.s_per_block_token = ewma(self.s_per_block_token, compute_s / (blocks * tokens), self.weight)
        if link_s > 0 and link_bytes > 0:
            self.link_mbps = ewma(self.link_mbps, link_bytes * 8 / link_s / 1e6, self.weight)


def free_memory_gb(device: Any) -> float:
    """Memory free for model weights now: CUDA memory on a GPU, else available RAM."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 1e9
    import psutil

    return psutil.virtual_memory().available / 1e9


def peak_memory() -> dict[str, float]:
    """This process's peak RSS in GB (and peak CUDA memory when a GPU is in use)."""
    import resource
    import sys

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_gb": round(rss / (1e9 if sys.platform == "darwin" else 1e6), 3)}  # bytes on macOS, KiB else
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    return out


def client_report(cfg: Config, meter: Meter, held_gb: float, device: Any) -> dict[str, Any]:
    """What the client tells the policy: its tier's numbers under `measure.profile`, else its measurements and
    the memory it can give its part (free now + what its part holds, capped by `measure.memory_gb`)."""
    m = cfg.measure
    if m.profile:
        tier = all_tiers(cfg.heterogeneity)[m.profile]
        return {"source": f"profile:{m.profile}", "tflops": tier.tflops, "memory_gb": tier.memory_gb,
                "up_mbps": tier.up_mbps, "down_mbps": tier.down_mbps, "latency_ms": tier.latency_ms}
    memory = free_memory_gb(device) + held_gb
    if m.memory_gb > 0:
        memory = min(memory, m.memory_gb)
    out: dict[str, Any] = {"source": "measured", "memory_gb": round(memory, 4)}
    if meter.s_per_block_token is not None:
        out["s_per_block_token"] = meter.s_per_block_token
    if meter.link_mbps is not None:
        out["link_mbps"] = meter.link_mbps
    return out


def check_profile(cfg: Config) -> None:
    """Raises UserError for a `measure.profile` that names no tier."""
    tiers = all_tiers(cfg.heterogeneity)
    if cfg.measure.profile and cfg.measure.profile not in tiers:
        raise UserError(f"measure.profile: unknown tier '{cfg.measure.profile}'; known: {', '.join(sorted(tiers))} "
                        "(or leave it empty to measure)")


def _clamped(report: dict[str, Any], key: str, clamps: dict[str, Any]) -> float | None:
    if key not in report:
        return None
    lo, hi = RANGES[key]
    value = report[key]
    try:
        x = float(value)
    except (TypeError, ValueError):
        clamps[key] = f"{value!r} is not a number: ignored"
        return None
    if math.isnan(x):
        clamps[key] = "NaN: ignored"
        return None
    if not lo <= x <= hi:
        clamps[key] = f"{x:g} clamped to [{lo:g}, {hi:g}]"
        x = min(max(x, lo), hi)
    return x


@dataclass
class Measured:
    """A client's report as the policy sees it: `stats`, where each number came from, what was clamped."""

    stats: ClientStats
    inputs: dict[str, Any] = field(default_factory=dict)
    clamps: dict[str, Any] = field(default_factory=dict)


def stats_of(cid: int, report: dict[str, Any], flops_per_block_token: float) -> Measured:
    """`ClientStats` from a client's last report (neutral defaults where it measured nothing yet); its `loss` is
    the client's mean step loss of its last round."""
    clamps: dict[str, Any] = {}
    get = {k: _clamped(report, k, clamps) for k in RANGES if k in report}
    source = str(report.get("source", "none"))[:64]
    if "tflops" in get and get["tflops"] is not None:
        speed = get["tflops"]
    elif (s := get.get("s_per_block_token")) is not None:
        speed = flops_per_block_token / s / 1e12
    else:
        speed = 1.0  # nothing measured yet: every client alike, so ratios start equal
    link = get.get("link_mbps")
    up = get.get("up_mbps") or link or math.inf
    down = get.get("down_mbps") or link or math.inf
    memory = get.get("memory_gb")
    stats = ClientStats(cid, speed=speed, memory_gb=math.inf if memory is None else memory, loss=get.get("loss"),
                        up_mbps=up, down_mbps=down, latency_ms=get.get("latency_ms") or 0.0)
    inputs = {"source": source, "speed_tflops": speed, "memory_gb": stats.memory_gb, "up_mbps": up,
              "down_mbps": down, **{k: v for k, v in get.items() if k in ("s_per_block_token", "link_mbps")}}
    return Measured(stats, {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in inputs.items()},
                    clamps)
