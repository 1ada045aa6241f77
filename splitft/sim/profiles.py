"""Device profiles of simulated clients: compute, memory, link. Named tiers, drawn per client with a seed.

    heterogeneity.profile=tiers      each client drawn uniformly from phone / laptop / workstation
    heterogeneity.profile=list       heterogeneity.devices=[phone,laptop,workstation,...], one per client
The tier numbers are illustrative orders of magnitude (effective training throughput, not peak FLOP/s), sized
so that memory binds the cut of a 135M-parameter model on the smallest tier; define your own in
`heterogeneity.tiers`.
"""

from __future__ import annotations

import dataclasses
import math
import random

from ..config import DeviceConfig, HeterogeneityConfig
from ..seeding import derive_seed

DeviceProfile = DeviceConfig
"""One device's numbers (compute, memory, link; fields documented on `config.DeviceConfig`): a tier in the
config is already a profile, so there is no second list of the same fields to keep in step."""


def scaled(d: DeviceProfile, compute: float, link: float) -> DeviceProfile:
    """`d` with its throughput times `compute` and both link bandwidths times `link`."""
    return dataclasses.replace(d, tflops=d.tflops * compute, up_mbps=d.up_mbps * link, down_mbps=d.down_mbps * link)


TIERS: dict[str, DeviceProfile] = {
    "phone": DeviceProfile("phone", 0.5, 0.35, 10.0, 50.0, 40.0),
    "laptop": DeviceProfile("laptop", 2.0, 2.0, 50.0, 200.0, 20.0),
    "workstation": DeviceProfile("workstation", 20.0, 16.0, 500.0, 1000.0, 5.0),
}
PROFILES = ("homogeneous", "tiers", "lognormal", "list")


def all_tiers(cfg: HeterogeneityConfig) -> dict[str, DeviceProfile]:
    return {**TIERS, **{d.name: d for d in cfg.tiers}}


def client_profiles(cfg: HeterogeneityConfig, n_clients: int, seed: int) -> list[DeviceProfile]:
    """One profile per client id 0..n-1, deterministic in (cfg, seed). `cfg` is validated (config.py)."""
    tiers = all_tiers(cfg)
    rng = random.Random(derive_seed(seed, "devices"))
    if cfg.profile == "homogeneous":
        return [tiers["laptop"]] * n_clients
    if cfg.profile == "tiers":
        names = ["phone", "laptop", "workstation"]
        return [tiers[rng.choice(names)] for _ in range(n_clients)]
    if cfg.profile == "lognormal":  # laptop numbers times exp(N(0, spread^2)) for compute and for the link
        return [scaled(tiers["laptop"], math.exp(rng.gauss(0, cfg.spread)), math.exp(rng.gauss(0, cfg.spread)))
                for _ in range(n_clients)]
    return [tiers[name] for name in cfg.devices]


def server_profile(cfg: HeterogeneityConfig) -> DeviceProfile:
    """The server: its own throughput, no memory limit; links are the clients'."""
    return DeviceProfile("server", cfg.server_tflops, math.inf, math.inf, math.inf, 0.0)
