"""Checkpoint files: I/O only. Each object owns its state (`state_dict()` / `load_state_dict()`); this module
writes one nested state to disk and reads it back, never reaching into the objects.

    <run>/checkpoints/round_<r>/state.safetensors  every tensor of the state, keyed by its path ("server/opt/...")
    <run>/checkpoints/round_<r>/state.json         the rest of the state (numbers, lists, strings), same nesting
    <run>/checkpoints/latest                       "round_<r>", replaced by rename after the folder is complete

A crash while writing leaves the previous checkpoint in force (the folder is written under a temporary name
and renamed, then `latest` is swapped by rename). Never pickle: tensors in safetensors, the rest JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import Mismatch, UserError, reason
from .metrics import run_identity

LATEST = "latest"
SEP = "/"


def split_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors keyed by their path, the rest as a JSON-able tree of the same nesting without the tensors)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: dict[str, Any], path: str) -> dict[str, Any]:
        rest: dict[str, Any] = {}
        for key, value in node.items():
            assert isinstance(key, str) and SEP not in key, f"state key {key!r} under '{path}' must be a str without /"
            if isinstance(value, torch.Tensor):
                tensors[path + key] = value.detach().cpu().contiguous()
            elif isinstance(value, dict):
                rest[key] = walk(value, path + key + SEP)
            else:
                rest[key] = value
        return rest

    return tensors, walk(state, "")


def join_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `split_state`."""
    for path, tensor in tensors.items():
        *parents, leaf = path.split(SEP)
        node = rest
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = tensor
    return rest


def save(run_dir: Path, round_: int, state: dict[str, Any]) -> Path:
    """Write `state` as checkpoints/round_<round_> atomically, point `latest` at it, remove older checkpoints."""
    root = run_dir / "checkpoints"
    root.mkdir(exist_ok=True)
    name = f"round_{round_}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors, rest = split_state(state)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(rest))
    shutil.rmtree(root / name, ignore_errors=True)
    os.replace(tmp, root / name)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, root / LATEST)
    for old in root.glob("round_*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def load(run_dir: Path) -> dict[str, Any]:
    """The state saved by the latest checkpoint of `run_dir`; refuses a `latest` that points outside
    checkpoints/, and a damaged checkpoint (unreadable, not safetensors, a tensor that is float64 or not finite:
    SplitFT never writes one) with one line saying so."""
    root = (run_dir / "checkpoints").resolve()
    try:
        name = (root / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        raise UserError(f"--resume: '{run_dir}' has no checkpoint (checkpoints/latest): it was written with "
                        f"metrics.checkpoint_every=0 or stopped before its first checkpoint, so there is nothing to "
                        f"resume; start the run again with a new metrics.out_dir (or delete '{run_dir}')") from None
    folder = (root / name).resolve()
    if folder.parent != root or not name.startswith("round_"):
        raise UserError(f"--resume: checkpoints/latest names '{name}', which is not a checkpoint folder of this run")
    try:
        rest = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "state.safetensors"))
    except Exception as e:  # OSError, JSON errors, SafetensorError (truncated, garbled, a pickle)
        raise damaged(folder, reason(e)) from None
    for key, t in tensors.items():
        if t.dtype == torch.float64 or (t.is_floating_point() and not torch.isfinite(t).all()):
            raise damaged(folder, f"tensor '{key}' is {'float64' if t.dtype == torch.float64 else 'not finite'}")
    if not isinstance(rest, dict):
        raise damaged(folder, "state.json does not hold an object")
    return join_state(tensors, rest)


def damaged(folder: Path, why: str) -> UserError:
    return UserError(f"--resume: this checkpoint is damaged: {why} (in {folder}); resume from an intact copy or "
                     "start the run again")


def check_position(run_dir: Path, saved: dict[str, Any], last_round: int, first_record: int) -> None:
    """The saved round must lie in [0, last_round], its wall time be seconds, and the metrics.jsonl lines it
    counts exist and hold exactly the `round` records of rounds first_record..round (fewer would resume and
    silently lose records; the runtime writes one per round, the simulation's first for round -1)."""
    folder = run_dir / "checkpoints"
    r, lines, wall = saved.get("round"), saved.get("metrics_lines"), saved.get("wall_time")
    if not isinstance(r, int) or not 0 <= r <= last_round:
        raise damaged(folder, f"round {r!r} outside [0, {last_round}]")
    if not isinstance(wall, (int, float)) or not 0 <= wall < float("inf"):
        raise damaged(folder, f"wall_time {wall!r} is not a number of seconds")
    try:
        held = (run_dir / "metrics.jsonl").read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise damaged(folder, f"metrics.jsonl cannot be read ({reason(e)})") from None
    if not isinstance(lines, int) or not 0 <= lines <= len(held):
        raise damaged(folder, f"it counts {lines!r} lines of metrics.jsonl, which holds {len(held)}")
    rounds = [rec.get("round") for rec in _records(held[:lines]) if rec.get("kind") == "round"]
    if rounds != list(range(first_record, r + 1)):
        raise damaged(folder, f"the first {lines} lines of metrics.jsonl it counts hold the records of rounds "
                              f"{_span(rounds)}, not of rounds {first_record}..{r}")


def _records(lines: list[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append(rec if isinstance(rec, dict) else {})
    return out


def _span(rounds: list[Any]) -> str:
    if not rounds:
        return "none"
    return f"{rounds[0]}..{rounds[-1]} ({len(rounds)} records)"


def check_identity(run_dir: Path, saved: dict[str, Any]) -> None:
    """The checkpoint must be this run's own: its `run` id the one the run directory's records open with. A
    checkpoint copied in from another run (another seed, same shapes) would otherwise resume and finish as a
    silent mix of two trainings."""
    mine, theirs = run_identity(run_dir / "metrics.jsonl"), saved.get("run")
    if mine is None and theirs is None:  # both from before run ids: nothing to compare
        return
    if mine is None or mine.get("run_id") != theirs:
        raise UserError(f"--resume: the checkpoint in {run_dir / 'checkpoints'} belongs to another run (run "
                        f"{theirs or 'unnamed'}; the records in this directory are of run "
                        f"{(mine or {}).get('run_id', 'unnamed')}); resume that run from its own directory, or put "
                        "this run's own checkpoints back (nothing was changed)")


def restore(run_dir: Path, saved: dict[str, Any], state: Callable[[], dict[str, Any]],
            load: Callable[[dict[str, Any]], None]) -> None:
    """Load `saved` into objects built from the config (`load`, their `load_state_dict`), checked before and after
    against their `state` (`check_fits`, `check_restored`); any misfit is one line (`restoring`). The objects may
    be left half-loaded when it raises: they are thrown away with the refused command."""
    with restoring(run_dir):
        check_fits(saved, state())
        load(saved)
        check_restored(saved, state())


def check_fits(saved: dict[str, Any], built: dict[str, Any]) -> None:
    """Before loading: every tensor the checkpoint and the objects built from the config both hold at one path
    must agree in shape and dtype (a checkpoint resumed under an edited config.yaml, lora.r 4 -> 8, otherwise
    loaded into the larger objects as a low-rank payload, and every step then failed)."""
    _same_kinds(_tensors_of(saved), _tensors_of(built))


def check_restored(saved: dict[str, Any], restored: dict[str, Any]) -> None:
    """After loading: the objects' state must hold exactly the checkpoint's tensors, path for path, shape for
    shape (fewer LoRA targets under an edited config would otherwise take part of the state and drop the rest)."""
    have, got = _tensors_of(saved), _tensors_of(restored)
    _same_kinds(have, got)
    if extra := sorted(have.keys() - got.keys()):
        raise Mismatch(f"the checkpoint holds '{extra[0]}' (and {len(extra) - 1} more), which the objects "
                       "config.yaml builds do not have")
    if missing := sorted(got.keys() - have.keys()):
        raise Mismatch(f"the objects config.yaml builds have '{missing[0]}' (and {len(missing) - 1} more), which the "
                       "checkpoint does not hold")


def _same_kinds(have: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """The checkpoint's tensors (`have`) and the objects' (`want`) agree in shape and dtype wherever both are."""
    for path in sorted(have.keys() & want.keys()):
        if _what(have[path]) != _what(want[path]):
            raise Mismatch(f"'{path}' is {_what(have[path])} in the checkpoint and {_what(want[path])} in the objects "
                           "config.yaml builds")


def _tensors_of(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return split_state(state)[0]


def _what(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"


@contextmanager
def restoring(run_dir: Path) -> Iterator[None]:
    """Around `load_state_dict` calls: state that does not fit the config and data (`Mismatch`), or whose keys,
    shapes or values do not fit the objects built from the run's config (a damaged checkpoint), said in one
    line."""
    try:
        yield
    except UserError:
        raise
    except Mismatch as e:
        raise UserError(f"--resume: the checkpoint does not fit this run's config and data: {e}; was config.yaml or "
                        "the data changed since the run began? resume with those it began with (nothing was "
                        "changed)") from None
    except (KeyError, IndexError, TypeError, ValueError, AssertionError, RuntimeError, AttributeError) as e:
        raise damaged(run_dir / "checkpoints", f"{type(e).__name__}: {reason(e)}") from None
