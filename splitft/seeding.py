"""Seeds: one rule to derive the seed of every random stream from `federation.seed`, and the global RNGs.

    rng = random.Random(derive_seed(seed, "plan", round_))   # a stream per (purpose, key...)
Each stream a run draws from (round plans, dropouts, a client's batch order, its activation noise, device
draws) gets its own seed from (seed, purpose, keys), so streams never share a seed by accident (with the old
`seed * 1_000_003 + round` and `seed + 7919 * client` they could), and every process of a deployment derives
the same ones. Stable across processes and Python versions (a hash of the text, not Python's `hash`).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, cast

import numpy as np
import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed for the stream named by `keys` under `seed` (fits random, NumPy and torch generators)."""
    text = "/".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model init draws from torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def global_rng_state() -> dict[str, Any]:
    """The global generators' states: torch's as a tensor, Python's and NumPy's as JSON-able lists."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    return {"torch": torch.get_rng_state(), "random": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), pos, has_gauss, cached]}


def load_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def random_state(rng: random.Random) -> list:
    """A `random.Random`'s state as a JSON-able list."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def load_random_state(rng: random.Random, saved: list) -> None:
    rng.setstate((saved[0], tuple(saved[1]), saved[2]))
