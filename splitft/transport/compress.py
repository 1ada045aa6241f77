"""Activation codecs at the cut: the form activations (up) and grad_activations (down) take on the wire.

    c = CODECS["int8_token"]
    packed = c.encode(x)              # x (B, T, H), any float dtype, any device
    y = c.decode(packed, x.dtype)     # (B, T, H); y is x itself for `none` on float32 activations
    packed.nbytes()                   # what crosses: values + scales (the byte counters use this)

The codec alone decides what crosses, whatever the storage and compute dtypes (`precision.py`); activations
arrive, and grad_activations return, in the storage dtype of the frozen weights (the residual stream's).
Bytes for one (B, T, H) tensor (SmolLM2-135M, B=4, T=256, H=576: fp32 = 2.36 MB):
    none          float32                            4*B*T*H           (lossless for float32, bfloat16 and
                                                                        float16 activations alike)
    fp16          float16 of x/s, s = max|x|         2*B*T*H + 4       (the scale keeps tiny gradients from
                                                                        underflowing fp16's 6e-8 floor)
    bf16          bfloat16                           2*B*T*H           (fp32's range, 8 bits of mantissa)
    int8_token    round(x/s), s per token (B,T,1)    B*T*H + 4*B*T     s = max over H of |x| / 127
    int8_channel  round(x/s), s per channel (H,)     B*T*H + 4*H       s = max over B, T of |x| / 127
Scales travel as float32. Lossy codecs use a straight-through estimator: the server differentiates the loss
w.r.t. the decoded activations and the client applies that gradient to its own activations as if
decode(encode(x)) were x. Rounding is to nearest (deterministic), so a run with a codec is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..registry import Registry
from .base import tensor_nbytes

INT8_MAX = 127.0


@dataclass
class Packed:
    """One tensor as it crosses: `values` in the codec's wire dtype and shape (B, T, H), `scale` float32 or None."""

    codec: str
    values: torch.Tensor
    scale: torch.Tensor | None = None

    def nbytes(self) -> int:
        return tensor_nbytes(self.values) + tensor_nbytes(self.scale)


@dataclass(frozen=True)
class Codec:
    name: str
    wire_dtype: torch.dtype
    scale: str = ""
    """'' (none) | tensor (one scale) | token (one per (b, t)) | channel (one per hidden unit)."""

    def encode(self, x: torch.Tensor) -> Packed:
        x = x.detach()
        if not self.scale:  # float32 activations under `none` cross as they are (no copy)
            return Packed(self.name, x.to(self.wire_dtype))
        x32 = x.float()
        s = self._scale(x32)
        q = x32 / s
        if self.wire_dtype == torch.int8:
            q = q.round().clamp_(-INT8_MAX, INT8_MAX)
        return Packed(self.name, q.to(self.wire_dtype), s)

    def _scale(self, x32: torch.Tensor) -> torch.Tensor:
        """float32 scales of `scale_shape`; an all-zero slice gets scale 1 (its values are 0 either way)."""
        top = INT8_MAX if self.wire_dtype == torch.int8 else 1.0
        a = x32.abs()
        if self.scale == "tensor":
            a = a.amax().reshape(1)
        elif self.scale == "token":
            a = a.amax(dim=-1, keepdim=True)
        else:  # channel
            a = a.flatten(0, -2).amax(dim=0)
        return torch.where(a > 0, a / top, torch.ones_like(a))

    def decode(self, p: Packed, dtype: torch.dtype) -> torch.Tensor:
        if p.scale is None:
            return p.values.to(dtype)
        return (p.values.float() * p.scale.to(p.values.device)).to(dtype)

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The scale tensor's shape for values of `shape` (B, T, H), None when this codec sends no scale."""
        return {"": None, "tensor": (1,), "token": (*shape[:-1], 1), "channel": (shape[-1],)}[self.scale]

    def nbytes(self, x: torch.Tensor) -> int:
        """Bytes `encode(x)` would put on the wire, from the shape alone (values, plus float32 scales)."""
        itemsize = torch.empty(0, dtype=self.wire_dtype).element_size()
        scale = self.scale_shape(tuple(x.shape))
        return x.numel() * itemsize + (0 if scale is None else math.prod(scale) * 4)

    def roundtrip(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(what the other side decodes, bytes that crossed): the in-process transport's view of the wire."""
        p = self.encode(x)
        return self.decode(p, x.dtype), p.nbytes()


NONE = Codec("none", torch.float32)
CODECS = Registry("transport.codec", {c.name: c for c in (
    NONE, Codec("fp16", torch.float16, "tensor"), Codec("bf16", torch.bfloat16),
    Codec("int8_token", torch.int8, "token"), Codec("int8_channel", torch.int8, "channel"))})
