"""Named device tiers: what a phone, a laptop and a workstation can give a federation (compute, memory, link).

The simulator draws its clients' devices from them (`client_profiles`, heterogeneity.profile); a deployed client
can report a tier's numbers instead of measuring its own (`measure.profile`, for reproducible runs), or pace
itself to the device the config gives it (`splitft client --emulate`).

    heterogeneity.profile=tiers      each client drawn uniformly from phone / laptop / workstation
    heterogeneity.profile=list       heterogeneity.devices=[phone,laptop,workstation,...], one per client
The numbers are illustrative orders of magnitude (effective training throughput, not peak FLOP/s), sized so
that memory binds the cut of a 135M-parameter model on the smallest tier; define your own in
`heterogeneity.tiers`.
"""

from __future__ import annotations

import dataclasses
import math
import random

from .config import DeviceConfig, HeterogeneityConfig
from .registry import Registry
from .seeding import derive_seed

TIERS: dict[str, DeviceConfig] = {
    "phone": DeviceConfig("phone", 0.5, 0.35, 10.0, 50.0, 40.0),
    "laptop": DeviceConfig("laptop", 2.0, 2.0, 50.0, 200.0, 20.0),
    "workstation": DeviceConfig("workstation", 20.0, 16.0, 500.0, 1000.0, 5.0),
}


def all_tiers(cfg: HeterogeneityConfig) -> dict[str, DeviceConfig]:
    """The builtin tiers with the config's own added or replacing them (by name)."""
    return {**TIERS, **{d.name: d for d in cfg.tiers}}


def scaled(d: DeviceConfig, compute: float, link: float) -> DeviceConfig:
    """`d` with its throughput times `compute` and both link bandwidths times `link`."""
    return dataclasses.replace(d, tflops=d.tflops * compute, up_mbps=d.up_mbps * link, down_mbps=d.down_mbps * link)


def _homogeneous(cfg: HeterogeneityConfig, n: int, rng: random.Random) -> list[DeviceConfig]:
    return [all_tiers(cfg)["laptop"]] * n


def _tiers(cfg: HeterogeneityConfig, n: int, rng: random.Random) -> list[DeviceConfig]:
    tiers = all_tiers(cfg)
    return [tiers[rng.choice(["phone", "laptop", "workstation"])] for _ in range(n)]


def _lognormal(cfg: HeterogeneityConfig, n: int, rng: random.Random) -> list[DeviceConfig]:
    """Laptop numbers times exp(N(0, spread^2)), drawn apart for compute and for the link."""
    laptop = all_tiers(cfg)["laptop"]
    return [scaled(laptop, math.exp(rng.gauss(0, cfg.spread)), math.exp(rng.gauss(0, cfg.spread))) for _ in range(n)]


def _listed(cfg: HeterogeneityConfig, n: int, rng: random.Random) -> list[DeviceConfig]:
    tiers = all_tiers(cfg)
    return [tiers[name] for name in cfg.devices]


PROFILES = Registry("heterogeneity.profile", {"homogeneous": _homogeneous, "tiers": _tiers,
                                              "lognormal": _lognormal, "list": _listed})


def client_profiles(cfg: HeterogeneityConfig, n_clients: int, seed: int) -> list[DeviceConfig]:
    """One profile per client id 0..n-1, deterministic in (cfg, seed); `cfg` passed `device_problems`."""
    return PROFILES[cfg.profile](cfg, n_clients, random.Random(derive_seed(seed, "devices")))
