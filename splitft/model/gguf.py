"""A GGUF file read lean: its scalar metadata and tensor index, and one tensor at a time, dequantized in row
chunks straight into the dtype the weights are stored at.

`gguf.GGUFReader` (and transformers, which uses it) turns every metadata array into numpy objects: SmolLM2's
49,152 tokens and 48,900 merges cost a ~0.17 GB transient, paid by every process at every read of the header.
Here arrays are skipped (their length read, their bytes not), so the header costs what its scalars cost:

    f = GGUFFile(path)                          # ~30 ms: header, scalar metadata, tensor offsets; data memory-mapped
    f.meta["llama.block_count"]                 # 30
    w = f.tensor("token_embd.weight", torch.bfloat16)   # (V, H): 2 B/element; fp32 only 256 rows at a time
The model's config and tokenizer, which need those arrays, are converted once by transformers in a child
process and cached (`loader.gguf_folder`): a party's own peak never holds the conversion.
"""

from __future__ import annotations

import functools
import math
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

MAGIC = b"GGUF"
ROWS = 256
"""Rows dequantized at a time: SmolLM2's (49152, 576) embedding passes through float32 0.6 MB at a time."""

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """Not a GGUF file, or one cut short (the message says where)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]
    """numpy order (outermost first): GGUF lists them innermost first."""
    qtype: int
    """A `gguf.GGMLQuantizationType` value (checked against GGML_QUANT_SIZES when the index is read)."""
    offset: int
    """Absolute byte offset of the data in the file."""
    nbytes: int


class _Cursor:
    """Reads little-endian values from a memory-mapped buffer, failing cleanly at its end."""

    def __init__(self, buf: np.memmap):
        self.buf, self.view, self.pos = buf, memoryview(cast(Any, buf)), 0  # a memmap is a buffer

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError(f"the file ends at byte {len(self.buf)}, a value needs bytes up to {self.pos + n}")
        self.pos += n

    def take(self, n: int) -> bytes:
        start = self.pos
        self.skip(n)
        return self.view[start:self.pos].tobytes()

    def scalar(self, kind: int) -> Any:
        fmt = _SCALARS.get(kind)
        if fmt is None:
            raise GGUFError(f"unknown metadata value type {kind} at byte {self.pos}")
        start = self.pos
        self.skip(struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.view, start)[0]

    def string(self) -> str:
        return self.take(self.scalar(10)).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        """A metadata value; an array is skipped and stands as ('array', item type, count)."""
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            return self.scalar(kind)
        item, count = self.scalar(4), self.scalar(10)
        if item == _STRING:  # SmolLM2: 49,152 tokens and 48,900 merges, each stepped over, none copied
            for _ in range(count):
                self.skip(self.scalar(10))
        elif item in _SCALARS:
            self.skip(count * struct.calcsize(_SCALARS[item]))
        else:
            raise GGUFError(f"unsupported array of type {item} at byte {self.pos}")
        return ("array", item, count)


def open_gguf(path: str | Path) -> GGUFFile:
    """`GGUFFile(path)`, parsed once per file version in a process (a party reads the header for the model's shape,
    then for its weights)."""
    st = Path(path).stat()
    return _parsed(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _parsed(path: str, size: int, mtime_ns: int) -> GGUFFile:
    return GGUFFile(path)


class GGUFFile:
    """The header, scalar metadata and tensor index of a GGUF file; tensors read on demand (`tensor`)."""

    def __init__(self, path: str | Path):
        from gguf import GGML_QUANT_SIZES

        self.path = Path(path)
        try:
            self.buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
            raise GGUFError(f"cannot map the file: {e}") from None
        c = _Cursor(self.buf)
        if c.take(4) != MAGIC:
            raise GGUFError("no GGUF magic at its start")
        version, n_tensors, n_kv = c.scalar(4), c.scalar(10), c.scalar(10)
        if version < 2:
            raise GGUFError(f"GGUF version {version} is too old (2 or later)")
        self.meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = c.string()
            self.meta[key] = c.value(c.scalar(4))
        infos = []
        for _ in range(n_tensors):
            name, n_dims = c.string(), c.scalar(4)
            dims = tuple(c.scalar(10) for _ in range(n_dims))
            infos.append((name, dims, c.scalar(4), c.scalar(10)))
        align = int(self.meta.get("general.alignment", 32))
        start = -(-c.pos // align) * align
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, qtype, offset in infos:
            if qtype not in GGML_QUANT_SIZES:
                raise GGUFError(f"tensor '{name}' has unknown type {qtype}")
            block, size = GGML_QUANT_SIZES[qtype]
            nbytes = math.prod(dims) // block * size
            if start + offset + nbytes > len(self.buf):
                raise GGUFError(f"tensor '{name}' ends past the file's end (is it complete?)")
            self.tensors[name] = TensorInfo(name, tuple(reversed(dims)), qtype, start + offset, nbytes)

    @property
    def arch(self) -> str:
        return str(self.meta.get("general.architecture", ""))

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as gguf's `dequantize` takes them: (rows..., bytes per row) uint8, or the float
        values themselves for unquantized types; a view into the mapped file, nothing read yet."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        t = self.tensors[name]
        data = self.buf[t.offset:t.offset + t.nbytes]
        kind = GGMLQuantizationType(t.qtype)
        floats = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
        if kind in floats:
            return data.view(floats[kind]).reshape(t.dims)
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(t.qtype)]
        return data.reshape(*t.dims[:-1], t.dims[-1] // block * size)

    def tensor(self, name: str, dtype: torch.dtype,
               process: Callable[[np.ndarray], np.ndarray] | None = None) -> torch.Tensor:
        """The tensor dequantized to `dtype`, ROWS rows at a time (float32 never holds more than that), or whole
        when `process` must see it whole (transformers' per-architecture fix-ups, e.g. llama's q/k row order)."""
        from gguf import GGMLQuantizationType, dequantize

        t = self.tensors[name]
        raw, kind = self.raw(name), GGMLQuantizationType(t.qtype)
        if process is not None:
            out = torch.from_numpy(np.array(process(dequantize(raw, kind)), np.float32)).to(dtype)
        else:
            out = torch.empty(t.dims, dtype=dtype)
            flat, rows = out.view(-1, t.dims[-1]), raw.reshape(-1, raw.shape[-1])
            for i in range(0, rows.shape[0], ROWS):
                flat[i:i + ROWS] = torch.from_numpy(np.array(dequantize(rows[i:i + ROWS], kind), np.float32))
        self._forget(t)
        return out

    def _forget(self, t: TensorInfo) -> None:
        """Let the kernel drop the file pages just read from this process's RSS (they are clean and read once:
        SmolLM2's Q4_1 embedding is 18 MB of pages a client would otherwise keep counted until it exits)."""
        mm = getattr(self.buf, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        start = t.offset - t.offset % mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, start, t.offset + t.nbytes - start)
