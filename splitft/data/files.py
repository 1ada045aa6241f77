"""Rows from a user's data files: a .jsonl read line by line (a bad line is a counted row, never a crash), .json,
.csv, .parquet and .txt through `datasets`, a folder of shards of one type, a `save_to_disk` folder, or the
builtin data (a packaged file, or builtin:python_stdlib made from this interpreter's standard library).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import UserError
from .stdlib import stdlib_folder, stdlib_rows

FILE_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
BUILTIN_DATA = {"shakespeare_dialogue": "shakespeare_dialogue.jsonl"}
STDLIB = "builtin:python_stdlib"
"""Builtin data made on the machine from what it has (`stdlib.py`), not shipped as a file."""


@dataclass
class Row:
    where: str
    """'<file> row <n>' (1-based: the line of a .jsonl), for messages about it."""
    values: dict[str, Any]
    problem: str | None = None
    """Why the line holds no row at all (not JSON, not an object)."""


def resolve_path(path: str) -> Path:
    """Local file or folder for `data.path` (builtin:<name> lives inside the installed package)."""
    if path == STDLIB:
        return stdlib_folder()
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        if name not in BUILTIN_DATA:
            raise UserError(f"data.path: unknown builtin dataset '{name}'; known: "
                            f"{', '.join([*BUILTIN_DATA, STDLIB.split(':')[1]])}")
        return Path(str(resources.files("splitft.data") / "assets" / BUILTIN_DATA[name]))
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if not p.is_file():
        raise UserError(f"data.path: file '{path}' not found")
    if p.suffix not in FILE_TYPES:
        raise UserError(f"data.path: unsupported file type '{p.suffix}'; use one of {', '.join(FILE_TYPES)}, a "
                        f"folder of them, or a folder written by datasets' save_to_disk")
    return p


def _shards(folder: Path, path: str) -> list[Path]:
    """The data files of a folder: every file of one supported type, in name order."""
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in FILE_TYPES)
    kinds = {f.suffix for f in files}
    if not files:
        raise UserError(f"data.path: folder '{path}' holds no readable shard ({', '.join(FILE_TYPES)} files) and "
                        f"was not written by datasets' save_to_disk (no dataset_info.json)")
    if len(kinds) > 1:
        raise UserError(f"data.path: folder '{path}' mixes file types {sorted(kinds)}; keep shards of one type")
    return files


def _read_jsonl(file: Path) -> list[Row]:
    """JSON lines read line by line, so a bad line is named by its number (blank lines are skipped)."""
    rows = []
    with open(file, encoding="utf-8-sig", errors="replace") as f:  # -sig: a byte-order mark is not row 1's
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{file.name} row {n}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                rows.append(Row(where, {}, f"is not JSON ({e.msg} at column {e.colno}); fix the line"))
                continue
            rows.append(Row(where, value) if isinstance(value, dict) else
                        Row(where, {}, f"is a JSON {type(value).__name__}, not an object of columns"))
    return rows


def _read_with_datasets(files: list[Path], path: str) -> list[Row]:
    """.json, .csv, .parquet and .txt through `datasets` (no cache written next to the data)."""
    import datasets

    datasets.disable_progress_bars()
    rows = []
    for file in files:
        try:
            ds = datasets.load_dataset(FILE_TYPES[file.suffix], data_files=str(file), split="train")
        except Exception as e:  # datasets raises many types for unreadable files
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise UserError(f"data.path: cannot read '{file if len(files) > 1 else path}': {reason}") from None
        rows += [Row(f"{file.name} row {n}", r) for n, r in enumerate(ds.to_list(), 1)]
    return rows


def _read_saved(folder: Path, path: str) -> list[Row]:
    """A folder written by `Dataset.save_to_disk` (a DatasetDict: its `train` split)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"data.path: cannot read the saved dataset '{path}': {reason}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise UserError(f"data.path: the saved dataset '{path}' has splits {list(ds)} and no 'train'")
        ds = ds["train"]
    return [Row(f"{folder.name} row {n}", r) for n, r in enumerate(ds.to_list(), 1)]


def read_rows(cfg: DataConfig) -> list[Row]:
    """Every row of `data.path`: a file, a folder of shards, a save_to_disk folder, or builtin:python_stdlib."""
    if cfg.path == STDLIB:
        return [Row(f"python_stdlib row {n}", r) for n, r in enumerate(stdlib_rows()[0], 1)]
    path = resolve_path(cfg.path)
    saved = path.is_dir() and any((path / m).is_file() for m in ("dataset_info.json", "dataset_dict.json"))
    files = [] if saved else _shards(path, cfg.path) if path.is_dir() else [path]
    if files and all(f.stat().st_size == 0 for f in files):
        raise UserError(f"data.path: '{cfg.path}' holds no samples")
    if saved:
        rows = _read_saved(path, cfg.path)
    elif files[0].suffix == ".jsonl":
        rows = [r for f in files for r in _read_jsonl(f)]
    else:
        rows = _read_with_datasets(files, cfg.path)
    if not rows:
        raise UserError(f"data.path: '{cfg.path}' holds no samples")
    return rows


def columns_in(rows: list[Row]) -> set[str]:
    """The columns of the data: those of its first row that is an object."""
    return next((set(r.values) for r in rows if r.problem is None), set())
