"""`builtin:python_stdlib`: plain-text code from the standard library of the running interpreter, built offline on
any machine (no download): every .py file under the stdlib folder but site-packages and test suites, in path
order, cut into samples at line boundaries (at most CHUNK_CHARS characters, a longer line alone), comments and
docstrings kept. Each row is {"text": code, "module": its top-level module or package}, so that clients can be
"organizations" holding different code (data.partitioner=natural or dirichlet with data.category_column=module).

    rows, source = stdlib_rows()     # source: {"python": "3.11.7", "files": 691, "sha256": "..."} for the record
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Any

CHUNK_CHARS = 1500
"""Characters per sample at most (about 400-600 SmolLM2 tokens of Python); lines are never split."""
SKIPPED = {"site-packages", "test", "tests", "__pycache__"}
"""Folders left out: third-party packages, and the test suites (a third of the library, and repetitive)."""


def stdlib_folder() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not SKIPPED & set(p.relative_to(root).parts[:-1]))


def _chunks(text: str) -> list[str]:
    """`text` cut at line boundaries into pieces of at most CHUNK_CHARS characters (a longer line stays whole)."""
    out, piece = [], ""
    for line in text.splitlines(keepends=True):
        if piece and len(piece) + len(line) > CHUNK_CHARS:
            out.append(piece)
            piece = ""
        piece += line
    if piece.strip():
        out.append(piece)
    return [c for c in out if c.strip()]


@lru_cache(maxsize=1)
def stdlib_rows() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every sample of the running interpreter's standard library, and what identifies it: the interpreter
    version, the number of files and a sha256 over their paths and bytes (a run on another Python says so)."""
    root = stdlib_folder()
    digest, rows = hashlib.sha256(), []
    files = _files(root)
    for path in files:
        data = path.read_bytes()
        rel = path.relative_to(root)
        digest.update(str(rel).encode() + b"\0" + data)
        module = rel.parts[0].removesuffix(".py")
        rows += [{"text": chunk, "module": module} for chunk in _chunks(data.decode("utf-8", errors="replace"))]
    return rows, {"python": platform.python_version(), "files": len(files), "sha256": digest.hexdigest()}
