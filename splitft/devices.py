"""Named device tiers: what a phone, a laptop and a workstation can give a federation (compute, memory, link).

The simulator draws its clients' devices from them (`sim/profiles.py`); a deployed client can report a tier's
numbers instead of measuring its own (`measure.profile`, for reproducible runs). The numbers are illustrative
orders of magnitude (effective training throughput, not peak FLOP/s), sized so that memory binds the cut of a
135M-parameter model on the smallest tier; define your own in `heterogeneity.tiers`.
"""

from __future__ import annotations

from .config import DeviceConfig, HeterogeneityConfig

TIERS: dict[str, DeviceConfig] = {
    "phone": DeviceConfig("phone", 0.5, 0.35, 10.0, 50.0, 40.0),
    "laptop": DeviceConfig("laptop", 2.0, 2.0, 50.0, 200.0, 20.0),
    "workstation": DeviceConfig("workstation", 20.0, 16.0, 500.0, 1000.0, 5.0),
}


def all_tiers(cfg: HeterogeneityConfig) -> dict[str, DeviceConfig]:
    """The builtin tiers with the config's own added or replacing them (by name)."""
    return {**TIERS, **{d.name: d for d in cfg.tiers}}
