"""What a server and a client must agree on before training, compared when the client connects (HELLO).

A client started with another config would otherwise have every request refused and "skip" every round, or
train on another model: the server states its terms, and a client whose terms differ is refused before it
trains, with one line naming each differing setting and both values.

    terms = terms_of(cfg, pm.fingerprint, precision)   # both sides, from their own config, model file, machine
    problems = differences(server_terms, client_terms) # [] when they agree
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..config.audience import SHARED
from ..config.schema import keys_for
from ..precision import NAMES, Precision

DTYPES = ("train.compute_dtype", "model.dtype")
SETTINGS = tuple(k for k in keys_for(SHARED) if k not in (*DTYPES, "split.shape", "split.tail"))
"""Config keys both sides must hold alike: the schema's `shared` audience (`config/audience.py`), so a new shared
key is compared without an edit here: the model's numerics, the schedule the server plans steps with, the shapes
it accepts, the ranks, each direction's codec and the defenses of grad_hidden (every client of a federation gives
the same protection to its labels). Client-only (data, privacy.noise, measure), server-only (tokens, TLS,
timeouts) and each party's own keys may differ. Compared apart: the model (by fingerprint), the split's shape
(its tail only under U) and the dtypes, as each machine resolved them (`DTYPES`): `auto` may mean bfloat16 on
one machine and float32 on another."""


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def terms_of(cfg: Config, fingerprint: str, precision: Precision) -> dict[str, Any]:
    """`model` is the model's `loader.fingerprint` (the source path may differ between machines); the dtypes are
    those `precision` resolved on this machine, with why."""
    u = cfg.split.shape == "u"  # the tail matters only to a U-shaped split
    return {"model": fingerprint, "model.source": cfg.model.source, "split.shape": cfg.split.shape,
            "split.tail": cfg.split.tail if u else None, **{k: _get(cfg, k) for k in SETTINGS},
            "train.compute_dtype": NAMES[precision.compute], "model.dtype": NAMES[precision.storage],
            "precision.why": precision.why}


def differences(server: dict[str, Any], client: dict[str, Any]) -> list[str]:
    """One phrase per setting that differs, naming both values; the model by its source and fingerprint."""
    out = []
    if server.get("model") != client.get("model"):
        out.append(f"model: the server runs {server.get('model.source')} (fingerprint {server.get('model')}), this "
                   f"client {client.get('model.source')} (fingerprint {client.get('model')})")
    for key in ("split.shape", "split.tail", *SETTINGS):
        if server.get(key) != client.get(key):
            out.append(f"{key}: the server has {server.get(key)!r}, this client {client.get(key)!r}")
    for key in DTYPES:
        if server.get(key) != client.get(key):
            out.append(f"{key}: the server runs {server.get(key)} ({server.get('precision.why')}), this client "
                       f"{client.get(key)} ({client.get('precision.why')}); set {key} to the same dtype everywhere")
    return out
