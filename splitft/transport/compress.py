"""Activation codecs at the cut: the form activations and grad_activations take on the wire.

    c = codec_of("int4_group", "zstd")  # a codec, then optionally a lossless coder (entropy.py) on its values
    packed = c.encode(x)               # x (B, T, H), any float dtype, any device
    y = c.decode(packed, x.dtype)      # (B, T, H); y is x itself for `none` on float32 activations
    packed.nbytes()                    # what crosses: values (as coded) + scales (the byte counters use this)

Each direction has its own codec (`codec.up`: activations, and grad_hidden under a U-shaped split;
`codec.down`: grad_activations, and hidden under U). The codec alone decides what crosses, whatever
the storage and compute dtypes (`precision.py`); activations arrive, and grad_activations return, in the storage
dtype of the frozen weights (the residual stream's).
Bytes for one (B, T, H) tensor (SmolLM2-135M, B=4, T=256, H=576: fp32 = 2.36 MB):
    none          float32                            4*B*T*H           (lossless for float32, bfloat16 and
                                                                        float16 activations alike)
    fp16          float16 of x/s, s = max|x|         2*B*T*H + 4       (the scale keeps tiny gradients from
                                                                        underflowing fp16's 6e-8 floor)
    bf16          bfloat16                           2*B*T*H           (fp32's range, 8 bits of mantissa)
    int8_token    round(x/s), s per token (B,T,1)    B*T*H + 4*B*T     s = max over H of |x| / 127
    int8_channel  round(x/s), s per channel (H,)     B*T*H + 4*H       s = max over B, T of |x| / 127
    int4_token    4 bits, rotated, s per token       B*T*H/2 + 4*B*T   0.127x of fp32 at H=576
    int4_group    4 bits, rotated, s per 32 values   B*T*H/2 + B*T*H/16  (bfloat16 scales) 0.141x
Scales travel as float32 (int4_group's as bfloat16: 2 bytes per 32 values instead of 4). Lossy codecs use a
straight-through estimator: the server differentiates the loss w.r.t. the decoded activations and the client
applies that gradient to its own activations as if decode(encode(x)) were x. Rounding is to nearest
(deterministic), so a run with a codec is reproducible.

The 4-bit codecs first rotate each group of 32 hidden units by an orthonormal Hadamard matrix (R = R^T = R^-1,
so decoding rotates back). LLM residual streams have a few outlier channels (SmolLM2 at cut 2: max |x| 32 in one
channel against a median channel max of 5); a scale shared with an outlier leaves the other values 1-2 levels of
16. The rotation spreads each outlier over its group: relative error of int4 per 32 values 0.16 -> 0.08, and the
pretrained model's held-out ppl +8.2% -> +1.6% with the activations at cut 2 quantized (16 samples; int4 per
token without rotation: +268%). Rounding is to nearest: half the squared error of stochastic rounding (step^2/12
against step^2/6; not measured apart here), and deterministic.
Values are stored as q + 8 in [1, 15], two per byte (even index in the low nibble); H is padded with zeros to a
multiple of 32, so the wire values are (B, T, ceil(H/32)*16) uint8 and the receiver, who knows H, drops the pad.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..registry import Registry
from .base import tensor_nbytes
from .entropy import ENTROPY, NO_ENTROPY, Entropy, entropy_problems

INT8_MAX = 127.0
INT4_MAX = 7.0
GROUP = 32
"""Hidden units per rotation and per int4_group scale (a power of two, for the Hadamard matrix)."""


def tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's C-order little-endian bytes, as the wire carries them (bfloat16 as its raw bits)."""
    t = t.detach().contiguous().cpu()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()


@dataclass
class Packed:
    """One tensor as it crosses: `values` in the codec's wire dtype and shape, `scale` or None, the decoded
    tensor's `shape` (B, T, H), and `coded`: the values' bytes after the lossless coder `coding` (None: none)."""

    codec: str
    values: torch.Tensor
    scale: torch.Tensor | None = None
    shape: tuple[int, ...] = ()
    coded: bytes | None = None
    coding: str = ""

    def nbytes(self) -> int:
        values = tensor_nbytes(self.values) if self.coded is None else len(self.coded)
        return values + tensor_nbytes(self.scale)


@dataclass(frozen=True)
class Codec:
    name: str
    wire_dtype: torch.dtype
    scale: str = ""
    """'' (none) | tensor (one scale) | token (one per (b, t)) | channel (one per hidden unit)."""
    bits: int = 32
    """Bits per value: the guard on lossy gradients (< 8 needs codec.allow_lossy_grad) and the order of loss."""
    entropy: Entropy = field(default=NO_ENTROPY)
    scale_dtype: torch.dtype = torch.float32

    @property
    def wire_name(self) -> str:
        """What the envelope names: the codec, and its lossless coder when there is one (`int4_group+zstd`)."""
        return self.name if self.entropy is NO_ENTROPY else f"{self.name}+{self.entropy.name}"

    def with_entropy(self, entropy: Entropy) -> Codec:
        return replace(self, entropy=entropy)

    def encode(self, x: torch.Tensor) -> Packed:
        values, scale = self._quantize(x.detach())
        if self.entropy is NO_ENTROPY:
            return Packed(self.wire_name, values, scale, tuple(x.shape))
        return Packed(self.wire_name, values, scale, tuple(x.shape), self.entropy.compress(tensor_bytes(values)),
                      self.entropy.name)

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.scale:  # float32 activations under `none` cross as they are (no copy)
            return x.to(self.wire_dtype), None
        x32 = x.float()
        s = self._scale(x32)
        q = x32 / s
        if self.wire_dtype == torch.int8:
            q = q.round().clamp_(-INT8_MAX, INT8_MAX)
        return q.to(self.wire_dtype), s

    def _scale(self, x32: torch.Tensor) -> torch.Tensor:
        """float32 scales of `scale_shape`; an all-zero slice gets scale 1 (its values are 0 either way), a slice
        holding NaN or Inf a NaN or Inf scale (which the receiver refuses: never a silent 0)."""
        top = INT8_MAX if self.wire_dtype == torch.int8 else 1.0
        a = x32.abs()
        if self.scale == "tensor":
            a = a.amax().reshape(1)
        elif self.scale == "token":
            a = a.amax(dim=-1, keepdim=True)
        else:  # channel
            a = a.flatten(0, -2).amax(dim=0)
        return torch.where(a == 0, torch.ones_like(a), a / top)

    def decode(self, p: Packed, dtype: torch.dtype) -> torch.Tensor:
        if p.scale is None:
            return p.values.to(dtype)
        return (p.values.float() * p.scale.to(p.values.device)).to(dtype)

    def wire_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The values' shape on the wire for a tensor of `shape` (B, T, H)."""
        return shape

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The scale tensor's shape for a tensor of `shape` (B, T, H), None when this codec sends no scale."""
        return {"": None, "tensor": (1,), "token": (*shape[:-1], 1), "channel": (shape[-1],)}[self.scale]

    def nbytes(self, x: torch.Tensor) -> int:
        """Bytes `encode(x)` puts on the wire before lossless coding, from the shape alone: values plus scales
        (an upper bound on what a lossless coder sends, which the cost model predicts with)."""
        shape = tuple(x.shape)
        values = math.prod(self.wire_shape(shape)) * self.wire_dtype.itemsize
        scale = self.scale_shape(shape)
        return values + (0 if scale is None else math.prod(scale) * self.scale_dtype.itemsize)

    def encoded_nbytes(self, x: torch.Tensor) -> int:
        """Bytes `encode(x)` puts on the wire: `nbytes`, or under a lossless coder the coded size (encodes x)."""
        return self.nbytes(x) if self.entropy is NO_ENTROPY else self.encode(x).nbytes()

    def roundtrip(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(what the other side decodes, bytes that crossed): the in-process transport's view of the wire.
        Lossless coding changes the bytes, not the values: the decode is that of the codec's values."""
        p = self.encode(x)
        return self.decode(p, x.dtype), p.nbytes()


CPU = torch.device("cpu")


@functools.cache
def hadamard(n: int, device: torch.device = CPU) -> torch.Tensor:
    """The orthonormal (n, n) Hadamard matrix, n a power of two (Sylvester): symmetric and its own inverse."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).to(device)


@dataclass(frozen=True)
class Int4Codec(Codec):
    """4-bit values in [-7, 7] after a Hadamard rotation of each group of GROUP hidden units, two per byte."""

    wire_dtype: torch.dtype = torch.uint8
    bits: int = 4

    def _padded(self, h: int) -> int:
        return -(-h // GROUP) * GROUP

    def wire_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*shape[:-1], self._padded(shape[-1]) // 2)

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        per = 1 if self.scale == "token" else self._padded(shape[-1]) // GROUP
        return (*shape[:-1], per)

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x32 = x.float()
        pad = self._padded(x.shape[-1]) - x.shape[-1]
        if pad:
            x32 = torch.nn.functional.pad(x32, (0, pad))
        g = x32.unflatten(-1, (-1, GROUP)) @ hadamard(GROUP, x.device)  # (B, T, Hp/32, 32)
        top = g.abs().amax(dim=-1) if self.scale == "group" else g.abs().flatten(-2).amax(dim=-1, keepdim=True)
        s = torch.where(top == 0, torch.ones_like(top), top / INT4_MAX).to(self.scale_dtype)  # NaN stays NaN
        q = (g / s.float().unsqueeze(-1)).round().clamp_(-INT4_MAX, INT4_MAX) + 8
        q = q.flatten(-2).to(torch.uint8)  # (B, T, Hp) in [1, 15]
        return q[..., 0::2] | (q[..., 1::2] << 4), s

    def decode(self, p: Packed, dtype: torch.dtype) -> torch.Tensor:
        v = p.values
        q = torch.stack([v & 0x0F, v >> 4], dim=-1).flatten(-2).float() - 8  # (B, T, Hp)
        g = q.unflatten(-1, (-1, GROUP))
        assert p.scale is not None, "int4 packs carry their scales"
        g = g * p.scale.to(v.device).float().unsqueeze(-1)  # (B, T, Hp/32 or 1, 1)
        x = (g @ hadamard(GROUP, v.device)).flatten(-2)
        return x[..., :p.shape[-1]].to(dtype)


NONE = Codec("none", torch.float32)
CODECS = Registry("codec.up", {c.name: c for c in (
    NONE, Codec("fp16", torch.float16, "tensor", 16), Codec("bf16", torch.bfloat16, bits=16),
    Codec("int8_token", torch.int8, "token", 8), Codec("int8_channel", torch.int8, "channel", 8),
    Int4Codec("int4_token", scale="token"), Int4Codec("int4_group", scale="group", scale_dtype=torch.bfloat16))})
AUTO = "auto"
"""codec.up=auto: the cut policy picks each client's codec with its cut."""
LOSSY_GRAD_BITS = 8
"""Fewer bits than this on a gradient need codec.allow_lossy_grad."""


def codec_of(name: str, entropy: str = NO_ENTROPY.name) -> Codec:
    """The registered codec `name` (`auto`: none, until the policy picks) with the lossless coder `entropy`."""
    c = CODECS[NONE.name if name == AUTO else name]
    return c if entropy == NO_ENTROPY.name else c.with_entropy(ENTROPY[entropy])


def codecs_of(c: Any) -> tuple[Codec, Codec]:
    """(up, down) of a `config.CodecConfig`: each direction's codec with the lossless coder."""
    return codec_of(c.up, c.entropy), codec_of(c.down, c.entropy)


def codec_problems(cfg: Any) -> list[str]:
    """One line per bad transport codec setting: an unknown codec or coder, a coder not installed, a gradient
    below 8 bits without codec.allow_lossy_grad (codec.down; codec.up too under a U-shaped split, where it
    carries grad_hidden). Checked at config load, before any weights."""
    t, names = cfg.codec, ", ".join(CODECS)
    p = [] if t.up in CODECS or t.up == AUTO else [f"codec.up: must be one of {names}, {AUTO}; got '{t.up}'"]
    if t.down not in CODECS:
        p.append(f"codec.down: must be one of {names}; got '{t.down}'")
    p += ENTROPY.problems(cfg) or entropy_problems(cfg)
    if t.up == AUTO and cfg.split.shape == "u":
        p.append("codec.up=auto chooses codecs for the vanilla split; under split.shape=u codec.up also "
                 "carries grad_hidden: name one codec (e.g. int8_token)")
    gradients = {"codec.down": t.down}
    if cfg.split.shape == "u":
        gradients["codec.up"] = t.up  # grad_hidden goes up
    for key, name in gradients.items():
        if name in CODECS and CODECS[name].bits < LOSSY_GRAD_BITS and not t.allow_lossy_grad:
            p.append(f"{key}={name} puts gradients in {CODECS[name].bits} bits (below {LOSSY_GRAD_BITS} they cost "
                     f"quality); use int8_token or wider, or set codec.allow_lossy_grad=true to allow it")
    return p
