"""A tensor on the wire: a protobuf `Tensor` of dtype name, shape and C-order little-endian bytes (never pickle),
optionally compressed by a lossless coder; decoded against a whitelist of dtypes, capped sizes and exact byte
counts. Shared by every message of `wire.py`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..precision import DTYPES as FLOAT_DTYPES
from .compress import tensor_bytes
from .entropy import ENTROPY, NO_ENTROPY, EntropyError
from .proto import splitft_pb2 as pb

Envelope = pb.Envelope
DTYPES: dict[str, torch.dtype] = {**FLOAT_DTYPES, "uint8": torch.uint8, "int8": torch.int8, "int32": torch.int32}
"""Dtypes a tensor may have on the wire: the float ones (activations, adapters), the int8 and int4 (uint8) codecs',
masks, labels."""
NAMES = {v: k for k, v in DTYPES.items()}
CODED_KINDS = (Envelope.STEP, Envelope.STEP_REPLY, Envelope.BACKWARD)
CODED_ROLES = ("activations", "grad_activations", "hidden", "grad_hidden")
"""The tensors `codec.entropy` may compress: a codec's values, in the messages that carry them."""
NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16,  # bfloat16: raw bits
         torch.uint8: np.uint8, torch.int8: np.int8, torch.int32: np.int32}


class WireError(ValueError):
    """A message that cannot be accepted; the text goes back to the sender."""


def tensor_to_pb(name: str, t: torch.Tensor, coded: bytes | None = None, coding: str = "") -> pb.Tensor:
    """`coded`: t's bytes as the lossless coder `coding` compressed them (None: t's raw bytes)."""
    data = tensor_bytes(t) if coded is None else coded  # numpy has no bfloat16: its raw bits
    return pb.Tensor(name=name, dtype=NAMES[t.dtype], shape=list(t.shape), data=data, coding=coding)


def tensor_from_pb(m: pb.Tensor, max_numel: int) -> torch.Tensor:
    """Raises WireError on an unknown dtype or coder, a negative or oversized shape, or a byte count that does not
    match (a compressed tensor: its bytes once decompressed, decoded no further than the shape's size)."""
    if m.dtype not in DTYPES:
        raise WireError(f"tensor '{m.name}': dtype '{m.dtype}' not accepted (one of {', '.join(DTYPES)})")
    if any(d < 0 for d in m.shape) or len(m.shape) > 4:
        raise WireError(f"tensor '{m.name}': bad shape {list(m.shape)}")
    numel = math.prod(m.shape)  # Python ints: a hostile shape cannot overflow to a small product
    dtype = DTYPES[m.dtype]
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if numel > max_numel:
        raise WireError(f"tensor '{m.name}': shape {list(m.shape)} has more elements than the {max_numel} this "
                        "message may carry")
    data = decompressed(m, numel * itemsize) if m.coding else m.data
    if len(data) != numel * itemsize:
        raise WireError(f"tensor '{m.name}': {len(data)} bytes do not hold shape {list(m.shape)} of {m.dtype}")
    arr = np.frombuffer(data, dtype=np.dtype(NUMPY[dtype]).newbyteorder("<")).reshape(tuple(m.shape)).copy()
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def decompressed(m: pb.Tensor, size: int) -> bytes:
    """The raw bytes of a compressed tensor: exactly `size` (from its checked shape), or WireError."""
    coder = ENTROPY.get(m.coding)
    if coder is None or coder is NO_ENTROPY or not coder.available():
        raise WireError(f"tensor '{m.name}': coding '{m.coding[:20]}' not accepted here")
    try:
        return coder.decompress(m.data, size)
    except EntropyError as e:
        raise WireError(f"tensor '{m.name}': {e}") from None


def tensors_of(env: Envelope, max_numel: int) -> dict[str, torch.Tensor]:
    """The envelope's tensors by name. A compressed one is decompressed only when its coding was checked against
    the codec expected (`_check_codec`); anything else compressed is refused first."""
    out = {}
    for m in env.tensors:
        if m.name in out:
            raise WireError(f"tensor '{m.name}' appears twice")
        if m.coding and not (env.kind in CODED_KINDS and m.name in CODED_ROLES):
            raise WireError(f"tensor '{m.name[:40]}' is compressed ('{m.coding[:20]}'): only a codec's values are")
        out[m.name] = tensor_from_pb(m, max_numel)
    return out
