"""Run directories, shared by both runtimes: refuse to overwrite a run, write the resolved config, export
the final adapters in PEFT's format, and write files so that a crash never leaves half of one.

    <out_dir>/config.yaml     the resolved config (every key), written before anything runs
    <out_dir>/metrics.jsonl   one JSON record per line (metrics.py)
    <out_dir>/adapter/        the global adapters, loadable with peft.PeftModel.from_pretrained(base, path)
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Self

import torch

from . import lora
from .config import Config, load_config, save_config
from .errors import UserError
from .metrics import MetricsLogger, run_identity


def refuse_existing_run(cfg: Config) -> None:
    """Checked before any model loads, so a name clash or an unusable folder costs nothing and overwrites
    nothing: the folder must be (or become) a directory this process can write, without a run or a config.yaml
    of its own (the run would write its resolved config over it)."""
    out = Path(cfg.metrics.out_dir)
    if (out / "metrics.jsonl").exists():
        raise UserError(f"metrics.out_dir: '{out}' already holds a run; choose a new metrics.out_dir, or "
                        f"{_way_on(out)} (nothing was overwritten)")
    if (out / "config.yaml").exists():
        raise UserError(f"metrics.out_dir: '{out}' holds a config.yaml, which the run would overwrite with its "
                        "resolved config; choose a new metrics.out_dir (nothing was overwritten)")
    existing = next(p for p in [out, *out.absolute().parents] if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == out else f"lies below the file '{existing}'"
        raise UserError(f"metrics.out_dir: '{out}' {where}; choose a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"metrics.out_dir: cannot write into '{existing}' (permission denied); choose another "
                        "metrics.out_dir")


def _way_on(out: Path) -> str:
    """How the run in `out` goes on: resumed by the command that began it, or (no checkpoint) not at all."""
    if (out / "summary.json").exists():
        return f"see it with `splitft report {out}` (that run finished)"
    if not (out / "checkpoints" / "latest").exists():
        return (f"delete '{out}' to start again (that run stopped before its first checkpoint, so it cannot be "
                "resumed)")
    runtime = (run_identity(out / "metrics.jsonl") or {}).get("runtime")
    if runtime in ("simulate", "server"):
        return f"continue that run with `splitft {runtime} --resume {out}`"
    return f"continue that run with `splitft simulate --resume {out}` (`splitft server --resume` for a deployment)"


class RunLock:
    """This process's hold on the run directory it runs in: an advisory lock (flock) on the directory itself, so
    taking it writes nothing, and the kernel lets it go when the process ends, even by kill -9. A second process
    that starts or resumes a run in a directory another one holds is refused; both would write into it (seen: a
    `--resume` started beside the first process, still training, and both finished into one metrics.jsonl).

        with RunLock(out) as lock:
            lock.take()  # once the directory exists; released when the block ends
    """

    def __init__(self, out: Path):
        self.out = out
        self.fd: int | None = None

    def take(self) -> None:
        import fcntl

        try:
            fd = os.open(self.out, os.O_RDONLY)
        except OSError:  # not a directory (yet): what follows says what is wrong with it
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError(f"'{self.out}': another process is running this run right now; wait for it to end or "
                            "stop it first (nothing was changed)") from None
        self.fd = fd

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor lets the lock go
            self.fd = None


def open_records(cfg: Config, runtime: str) -> tuple[MetricsLogger, str]:
    """A new run's metrics.jsonl, opened with its `run` record: a fresh run id, and the command (`runtime`:
    simulate or server) that began it and that resumes it."""
    run_id = secrets.token_hex(8)
    logger = MetricsLogger(Path(cfg.metrics.out_dir) / "metrics.jsonl")
    logger.log("run", run_id=run_id, runtime=runtime)
    return logger, run_id


def prepare_run_dir(cfg: Config) -> Path:
    refuse_existing_run(cfg)
    out = Path(cfg.metrics.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    except OSError as e:
        raise UserError(f"metrics.out_dir: cannot write '{out}': {e.strerror}") from None
    return out


def write_json(path: Path, obj: Any) -> None:
    """Written under a temporary name and renamed: a crash leaves the old file or none, never half of one (a
    half-written summary.json made --resume refuse the run as finished)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def run_config(run_dir: str | Path) -> Config:
    """The config a run was started with, to resume it: its own config.yaml, with metrics.out_dir set to
    `run_dir` itself, so a resume writes only into the directory it was given (a copied run directory names
    the original's out_dir, and a relative out_dir means another folder from another working directory)."""
    cfg_file = Path(run_dir) / "config.yaml"
    if not cfg_file.is_file():
        raise UserError(f"--resume: '{run_dir}' is not a run directory (no config.yaml)")
    cfg = load_config(str(cfg_file), [])
    cfg.metrics.out_dir = str(run_dir)
    return cfg


def export_adapter(peft: Any, adapters: dict[str, torch.Tensor], path: Path) -> None:
    """Load `adapters` (every block's, full rank) into the PeftModel and save it in PEFT's format."""
    lora.load_adapter_state_dict(peft, adapters)
    peft.save_pretrained(str(path))


def truncate_lines(path: Path, lines: int) -> Path:
    """Keep the first `lines` lines of a text file (a metrics file cut back to a checkpoint), atomically."""
    kept = path.read_text().splitlines(keepends=True)[:lines]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
    return path
