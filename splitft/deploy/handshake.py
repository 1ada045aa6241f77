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
from ..precision import NAMES, Precision

SETTINGS = ("train.activation_checkpointing", "train.loss_chunk_tokens", "federation.method", "federation.n_clients",
            "federation.rounds", "federation.local_steps", "federation.clients_per_round", "federation.seed",
            "federation.order", "federation.round_budget", "federation.round_time_s", "federation.max_steps_factor",
            "train.batch_size", "data.max_length", "lora.r", "lora.r_cut", "lora.alpha", "lora.dropout",
            "lora.targets", "split.policy", "split.cut", "split.cut_min", "split.cut_max", "transport.codec_up",
            "transport.codec_down", "transport.entropy", "train.schedule", "train.warmup_steps", "privacy.grad_clip",
            "privacy.grad_noise", "privacy.grad_keep")
"""Config keys both sides must hold alike: the model's numerics, the schedule the server plans steps with, the
shapes it accepts, the ranks, each direction's codec and the defenses of grad_hidden (every client of a
federation gives the same protection to its labels). Client-only (data, privacy.noise, measure) and server-only
(tokens, TLS, timeouts) keys may differ. The dtypes are compared as each machine resolved them (`DTYPES`):
`auto` may mean bfloat16 on one machine and float32 on another."""
DTYPES = ("train.compute_dtype", "model.dtype")


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
