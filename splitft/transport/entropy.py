"""Lossless coding of what a codec puts on the wire (`codec.entropy`): none | zstd | lz4.

    coder = ENTROPY["zstd"]
    blob = coder.compress(raw)             # raw: the codec's values as bytes (C order, little-endian)
    raw = coder.decompress(blob, len(raw)) # exactly that many bytes, or EntropyError
The receiver knows how many bytes a tensor holds from its shape and dtype (the wire checks both against its
limits first), so `decompress` is told the size and never produces more: a frame that declares another size, or
would decode to more, is refused before any buffer of the wrong size is allocated (no decompression bombs).
Both coders are maintained libraries (python-zstandard, python-lz4), installed with `pip install
'splitft[compress]'` (the dev install has them); a config naming one that is not installed is refused before
weights load. Measured with zstd on SmolLM2's default run (benchmarks/codecs.py): float32 activations of bfloat16
weights to 0.42x (their low 16 bits are zero), int8_token gradients by 28%, int4_group values and scales by 23%;
lz4 saves 16-19% on the latter two.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..registry import Registry

ZSTD_LEVEL = 3
"""zstd's default level (its speed/size trade-off; other levels were not measured here)."""


class EntropyError(ValueError):
    """A coded blob that does not decode to exactly the size its tensor's shape declares."""


@dataclass(frozen=True)
class Entropy:
    name: str
    package: str = ""
    """The module that does the work ('' = none); `pip_name` installs it."""
    pip_name: str = ""

    def available(self) -> bool:
        if not self.package:
            return True
        try:
            importlib.import_module(self.package)
        except ImportError:
            return False
        return True

    def compress(self, raw: bytes) -> bytes:
        return raw

    def decompress(self, blob: bytes, size: int) -> bytes:
        if len(blob) != size:
            raise EntropyError(f"{len(blob)} bytes where {size} were declared")
        return blob


class Zstd(Entropy):
    def compress(self, raw: bytes) -> bytes:
        return _module("zstandard").ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(raw)

    def decompress(self, blob: bytes, size: int) -> bytes:
        """One frame that states its content size, equal to `size`; the decoder stops at that size."""
        zstd = _module("zstandard")
        try:
            declared = zstd.frame_content_size(blob)
            if declared != size:  # -1 = not stated: refused, so the size is known before decoding
                raise EntropyError(f"zstd frame declares {declared} bytes where {size} were expected")
            d = zstd.ZstdDecompressor().decompressobj()
            raw = d.decompress(blob)
        except zstd.ZstdError as e:
            raise EntropyError(f"zstd: {e}") from None
        if len(raw) != size or not d.eof or d.unused_data:
            raise EntropyError(f"zstd frame decodes to {len(raw)} bytes (expected {size}) or has trailing bytes")
        return raw


class Lz4(Entropy):
    def compress(self, raw: bytes) -> bytes:
        return _module("lz4.block").compress(raw, store_size=False)  # the size travels as the tensor's shape

    def decompress(self, blob: bytes, size: int) -> bytes:
        """An LZ4 block decoded into a buffer of exactly `size` bytes; one that needs more, or fills it only
        partly, is refused."""
        block = _module("lz4.block")
        try:
            raw = block.decompress(blob, uncompressed_size=size)
        except block.LZ4BlockError as e:
            raise EntropyError(f"lz4: {e}") from None
        if len(raw) != size:
            raise EntropyError(f"lz4 block decodes to {len(raw)} bytes where {size} were declared")
        return raw


def _module(name: str) -> Any:
    return importlib.import_module(name)


NO_ENTROPY = Entropy("none")
ENTROPY = Registry("codec.entropy", {e.name: e for e in (
    NO_ENTROPY, Zstd("zstd", "zstandard", "zstandard"), Lz4("lz4", "lz4.block", "lz4"))})


def entropy_problems(cfg: Any) -> list[str]:
    """One line when `codec.entropy` names a coder whose library is not installed (checked at config load,
    before any weights)."""
    e = ENTROPY.get(cfg.codec.entropy)
    if e is None or e.available():
        return []
    return [f"codec.entropy={e.name} needs the {e.pip_name} package, which is not installed: "
            f"pip install {e.pip_name} (or pip install 'splitft[compress]')"]
