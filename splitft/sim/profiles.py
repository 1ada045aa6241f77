"""Device profiles of simulated clients: compute, memory, link. Named tiers, drawn per client with a seed.

    heterogeneity.profile=tiers      each client drawn uniformly from phone / laptop / workstation
    heterogeneity.profile=list       heterogeneity.devices=[phone,laptop,workstation,...], one per client
The tiers themselves live in `splitft/devices.py` (a deployed client can report one instead of measuring).
"""

from __future__ import annotations

import dataclasses
import math
import random

from ..config import DeviceConfig, HeterogeneityConfig
from ..devices import all_tiers
from ..registry import Registry
from ..seeding import derive_seed

DeviceProfile = DeviceConfig
"""One device's numbers (compute, memory, link; fields documented on `config.DeviceConfig`): a tier in the
config is already a profile, so there is no second list of the same fields to keep in step."""


def scaled(d: DeviceProfile, compute: float, link: float) -> DeviceProfile:
    """`d` with its throughput times `compute` and both link bandwidths times `link`."""
    return dataclasses.replace(d, tflops=d.tflops * compute, up_mbps=d.up_mbps * link, down_mbps=d.down_mbps * link)


def _homogeneous(cfg: HeterogeneityConfig, n: int, rng: random.Random) -> list[DeviceProfile]:
    return [all_tiers(cfg)["laptop"]] * n


def _tiers(cfg: HeterogeneityConfig, n: int, rng: random.Random) -> list[DeviceProfile]:
    tiers = all_tiers(cfg)
    return [tiers[rng.choice(["phone", "laptop", "workstation"])] for _ in range(n)]


def _lognormal(cfg: HeterogeneityConfig, n: int, rng: random.Random) -> list[DeviceProfile]:
    """Laptop numbers times exp(N(0, spread^2)), drawn apart for compute and for the link."""
    laptop = all_tiers(cfg)["laptop"]
    return [scaled(laptop, math.exp(rng.gauss(0, cfg.spread)), math.exp(rng.gauss(0, cfg.spread))) for _ in range(n)]


def _listed(cfg: HeterogeneityConfig, n: int, rng: random.Random) -> list[DeviceProfile]:
    tiers = all_tiers(cfg)
    return [tiers[name] for name in cfg.devices]


PROFILES = Registry("heterogeneity.profile", {"homogeneous": _homogeneous, "tiers": _tiers,
                                              "lognormal": _lognormal, "list": _listed})


def client_profiles(cfg: HeterogeneityConfig, n_clients: int, seed: int) -> list[DeviceProfile]:
    """One profile per client id 0..n-1, deterministic in (cfg, seed); `cfg` passed `device_problems`."""
    return PROFILES[cfg.profile](cfg, n_clients, random.Random(derive_seed(seed, "devices")))


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
    if cfg.server_tflops <= 0 or cfg.spread < 0:
        p.append("heterogeneity.server_tflops must be > 0 and heterogeneity.spread >= 0")
    return p


def server_profile(cfg: HeterogeneityConfig) -> DeviceProfile:
    """The server: its own throughput, no memory limit; links are the clients'."""
    return DeviceProfile("server", cfg.server_tflops, math.inf, math.inf, math.inf, 0.0)
