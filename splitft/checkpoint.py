"""Checkpoints of a simulated run: everything the next round depends on, so a resumed run ends bit-identical.

    <run>/checkpoints/round_<r>/state.safetensors  server store, server LoRA + AdamW moments, each client's
                                                   LoRA + AdamW moments, torch's RNG state
    <run>/checkpoints/round_<r>/state.json         round, cuts, virtual time, byte counters, data-stream and
                                                   Python/NumPy RNG states, metrics.jsonl length, wall time
    <run>/checkpoints/latest                       "round_<r>", replaced by rename after the folder is complete

A crash while writing leaves the previous checkpoint in force (the folder is written under a temporary name
and renamed, then `latest` is swapped by rename). Never pickle: tensors in safetensors, the rest JSON.
Taken at a round boundary, where no request is in flight: pending updates are empty and `served` is zero.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from . import lora
from .errors import UserError
from .federation import Federation
from .seeding import global_rng_state, load_global_rng_state, load_random_state, random_state
from .server import SplitServer

LATEST = "latest"


def _opt_state(prefix: str, opt: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """AdamW moments and step count of each parameter, keyed '<prefix>opt/<param name>/<key>'."""
    out = {}
    for name, p in named.items():
        for key, value in opt.state.get(p, {}).items():
            out[f"{prefix}opt/{name}/{key}"] = torch.as_tensor(value).detach().clone().cpu()
    return out


def _load_opt_state(prefix: str, opt: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter],
                    tensors: dict[str, torch.Tensor]) -> None:
    opt.state.clear()
    for name, p in named.items():
        keys = {k.rsplit("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{prefix}opt/{name}/")}
        if keys:  # 'step' stays on the CPU, as torch's AdamW keeps it
            opt.state[p] = {k: v.clone() if k == "step" else v.to(p.device, v.dtype).clone() for k, v in keys.items()}


def federation_state(fed: Federation, round_: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, json) of the federation after `round_` (aggregated, evaluated, next cuts applied)."""
    tensors: dict[str, torch.Tensor] = {f"server/store/{n}": t for n, t in fed.server.store.items()}
    if isinstance(fed.server, SplitServer):
        tensors.update({f"server/lora/{n}": t for n, t in fed.server.adapters().items()})
        tensors.update(_opt_state("server/", fed.server.opt, lora.lora_parameters(fed.server.part.module)))
    clients: dict[str, Any] = {}
    for cid, c in fed.clients.items():
        tensors.update({f"client{cid}/lora/{n}": t for n, t in lora.adapter_state_dict(c.part.module).items()})
        tensors.update(_opt_state(f"client{cid}/", c.opt, lora.lora_parameters(c.part.module)))
        if (noise := getattr(c, "noise_state", lambda: None)()) is not None:
            tensors[f"client{cid}/noise_rng"] = noise
        clients[str(cid)] = {"cut": c.cut, "last_loss": c.last_loss, "samples_seen": c.samples_seen,
                             "stream_rng": random_state(c.stream.rng), "stream_order": c.stream.order}
    rng = global_rng_state()
    tensors["rng/torch"] = rng.pop("torch")
    meta = {"round": round_, "virtual_time": fed.virtual_time, "clients": clients,
            "bytes": {str(c): dict(b) for c, b in fed.transport.counter.bytes.items()}, **rng}
    return {k: v.contiguous() for k, v in tensors.items()}, meta


def restore_federation(fed: Federation, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Put a freshly built federation (same config) into the state `federation_state` saved."""
    fed.server.store = {n: t.clone() for n, t in _under(tensors, "server/store/").items()}
    if isinstance(fed.server, SplitServer):
        lora.load_adapter_state_dict(fed.server.part.module, _under(tensors, "server/lora/"))
        _load_opt_state("server/", fed.server.opt, lora.lora_parameters(fed.server.part.module), tensors)
    for cid, c in fed.clients.items():
        saved = meta["clients"][str(cid)]
        if saved["cut"] != c.cut:
            assert fed.adaptivity is not None, "only adaptive runs change cuts"
            fed.adaptivity.recut(cid, saved["cut"])
        lora.load_adapter_state_dict(c.part.module, _under(tensors, f"client{cid}/lora/"))
        _load_opt_state(f"client{cid}/", c.opt, lora.lora_parameters(c.part.module), tensors)
        if f"client{cid}/noise_rng" in tensors:
            c.load_noise_state(tensors[f"client{cid}/noise_rng"], c.device)
        c.last_loss, c.samples_seen = saved["last_loss"], saved["samples_seen"]
        load_random_state(c.stream.rng, saved["stream_rng"])
        c.stream.order = list(saved["stream_order"])
    fed.virtual_time = meta["virtual_time"]
    for cid, kinds in meta["bytes"].items():
        fed.transport.counter.bytes[int(cid)].update(kinds)
    load_global_rng_state({"torch": tensors["rng/torch"], "random": meta["random"], "numpy": meta["numpy"]})


def _under(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}


# --- files ------------------------------------------------------------------------------------------------


def save(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write checkpoints/round_<r> atomically, point `latest` at it, remove older checkpoints."""
    root = run_dir / "checkpoints"
    root.mkdir(exist_ok=True)
    name = f"round_{meta['round']}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta))
    shutil.rmtree(root / name, ignore_errors=True)
    os.replace(tmp, root / name)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, root / LATEST)
    for old in root.glob("round_*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def load(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The latest checkpoint of `run_dir`; refuses a `latest` that points outside checkpoints/."""
    root = (run_dir / "checkpoints").resolve()
    try:
        name = (root / LATEST).read_text().strip()
    except OSError:
        raise UserError(f"--resume: '{run_dir}' has no checkpoint (checkpoints/latest); it was written with "
                        f"metrics.checkpoint_every=0 or stopped before its first checkpoint") from None
    folder = (root / name).resolve()
    if folder.parent != root or not name.startswith("round_"):
        raise UserError(f"--resume: checkpoints/latest names '{name}', which is not a checkpoint folder of this run")
    try:
        meta = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "state.safetensors"))
    except (OSError, ValueError) as e:
        raise UserError(f"--resume: checkpoint '{folder}' cannot be read: {e}") from None
    return tensors, meta
