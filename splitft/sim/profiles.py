"""Device profiles of simulated clients as the simulator checks and uses them; the tiers and the per-client
draw (`client_profiles`, heterogeneity.profile) live in `splitft/devices.py`, since a deployed client reports or
emulates the same device.
"""

from __future__ import annotations

import math

from ..config import DeviceConfig, HeterogeneityConfig
from ..devices import all_tiers

DeviceProfile = DeviceConfig
"""One device's numbers (compute, memory, link; fields documented on `config.DeviceConfig`): a tier in the
config is already a profile, so there is no second list of the same fields to keep in step."""


def device_problems(cfg: HeterogeneityConfig, n_clients: int) -> list[str]:
    """Tier names and numbers of the heterogeneity section (the profile name is PROFILES' to check)."""
    p = []
    names = set(all_tiers(cfg))
    if cfg.profile == "list" and len(cfg.devices) != n_clients:
        p.append(f"heterogeneity.devices: profile=list needs one tier name per client ({n_clients}), "
                 f"got {len(cfg.devices)}")
    for name in cfg.devices:
        if name not in names:
            p.append(f"heterogeneity.devices: unknown tier '{name}'; known: {', '.join(sorted(names))}")
    for d in cfg.tiers:
        if min(d.tflops, d.memory_gb, d.up_mbps, d.down_mbps) <= 0 or d.latency_ms < 0:
            p.append(f"heterogeneity.tiers[{d.name}]: tflops, memory_gb, up_mbps, down_mbps must be > 0 and "
                     f"latency_ms >= 0")
    if cfg.server_tflops <= 0 or cfg.spread < 0 or cfg.server_step_s < 0:
        p.append("heterogeneity.server_tflops must be > 0, heterogeneity.spread >= 0 and "
                 f"heterogeneity.server_step_s >= 0, got {cfg.server_tflops}, {cfg.spread} and {cfg.server_step_s}")
    return p


def server_profile(cfg: HeterogeneityConfig) -> DeviceProfile:
    """The server: its own throughput, no memory limit; links are the clients'."""
    return DeviceProfile("server", cfg.server_tflops, math.inf, math.inf, math.inf, 0.0)
