"""The three dtypes of a run, each decided in one place, and the one precision context every forward runs in.

    storage  model.dtype          the frozen base weights as held in memory: float32 | bfloat16 | float16 | auto
                                  (auto: the compute dtype when that is 16-bit, else float32)
    compute  train.compute_dtype  what every forward and backward of every party runs in, under autocast:
                                  float32 | bfloat16 | float16 | auto. LoRA weights and AdamW state stay float32
                                  (masters); the loss is computed in float32 whatever the compute dtype
    wire     codec.up and         what crosses the cut, each direction (none = float32, lossless for every
             codec.down           compute and storage dtype; bf16, fp16, int8, int4: see transport/compress.py)

    p = resolve(cfg.train.compute_dtype, cfg.model.dtype, device)   # before any weight loads; UserError if unfit
    with p.autocast():                                               # `model/split.py`: every part's forward
        ...
`auto` picks bfloat16 on a CUDA device with bf16 and on a CPU whose flags show AMX-BF16 or AVX512-BF16 (bf16
matrix instructions), float32 otherwise. float32 compute runs no autocast at all: bit-identical to a run that
never heard of precision. float16 (CUDA only) needs loss scaling, `LossScaler`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .registry import Registry

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPUTE_DTYPES = Registry("train.compute_dtype", {**DTYPES, "auto": None})
STORAGE_DTYPES = Registry("model.dtype", {**DTYPES, "auto": None})
NAMES = {v: k for k, v in DTYPES.items()}
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""/proc/cpuinfo flags of bf16 matrix instructions: with either, bf16 autocast beats float32 on a CPU."""
EMULATED_BF16 = "SPLITFT_ALLOW_EMULATED_BF16"
"""Set to 1 to allow train.compute_dtype=bfloat16 on a CPU without bf16 instructions (emulated: slower than
float32; for tests that must run bf16 on any machine)."""


@dataclass(frozen=True)
class Precision:
    """The resolved dtypes of one party, and why they are what they are."""

    compute: torch.dtype = torch.float32
    storage: torch.dtype = torch.float32
    device_type: str = "cpu"
    why: str = "float32"

    def autocast(self) -> ContextManager[Any]:
        """The context every forward runs in: autocast to the compute dtype, or nothing at float32."""
        if self.compute == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute)

    @property
    def scaled(self) -> bool:
        """float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none."""
        return self.compute == torch.float16

    def record(self) -> dict[str, str]:
        """What a run's setup record and log say about its dtypes."""
        return {"compute_dtype": NAMES[self.compute], "storage_dtype": NAMES[self.storage], "why": self.why}


FP32 = Precision()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo does not exist); read once per process (every part a
    re-cut builds resolves its precision)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "this CPU"


def bf16_support(device: torch.device, flags: AbstractSet[str] | None = None) -> tuple[bool, str]:
    """(whether `device` runs bf16 matrix work natively, a phrase saying why)."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        return ok, f"CUDA device {name} {'supports' if ok else 'lacks'} bf16"
    have = sorted((cpu_flags() if flags is None else flags) & set(CPU_BF16_FLAGS))
    if have:
        return True, f"{cpu_name()} has {'/'.join(f.upper().replace('_', '-') for f in have)}"
    return False, f"{cpu_name()} has neither AMX-BF16 nor AVX512-BF16"


def choose_compute(name: str, device: torch.device, flags: AbstractSet[str] | None = None) -> tuple[torch.dtype, str]:
    """The compute dtype for `train.compute_dtype=name` on `device`, and why.

    Raises:
        UserError: bfloat16 on a device without bf16 instructions, float16 on a CPU.
    """
    if name == "auto":
        ok, why = bf16_support(device, flags)
        return (torch.bfloat16, f"auto: {why}") if ok else (torch.float32, f"auto: {why}")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError("train.compute_dtype=float16: refused on a CPU, where float16 matrix work is emulated (slower "
                        "than float32) and its gradients need loss scaling for no gain; use bfloat16 or auto")
    if dtype == torch.bfloat16 and os.environ.get(EMULATED_BF16) != "1":
        ok, why = bf16_support(device, flags)
        if not ok:
            raise UserError(f"train.compute_dtype=bfloat16: {why} ({device.type}), so bf16 would be emulated, slower "
                            f"than float32; use train.compute_dtype=auto (float32 here) or float32")
    return dtype, name


def choose_storage(name: str, compute: torch.dtype, compute_why: str) -> torch.dtype:
    """The storage dtype of the frozen weights for `model.dtype=name` given the compute dtype.

    Raises:
        UserError: 16-bit storage under float32 compute (autocast has no float32 target: every matmul would mix).
    """
    if name == "auto":
        return compute
    dtype = DTYPES[name]
    if dtype != torch.float32 and compute == torch.float32:
        raise UserError(f"model.dtype={name}: 16-bit frozen weights need 16-bit compute, but train.compute_dtype is "
                        f"float32 here ({compute_why}); use model.dtype=auto (float32 here) or float32")
    return dtype


def resolve(compute: str, storage: str, device: torch.device, flags: AbstractSet[str] | None = None) -> Precision:
    """The run's `Precision` on `device` from `train.compute_dtype` and `model.dtype` (names already checked).

    Raises:
        UserError: a dtype the device cannot run well, or storage narrower than compute allows (one line each).
    """
    dtype, why = choose_compute(compute, device, flags)
    return Precision(dtype, choose_storage(storage, dtype, why), device.type, why)


class LossScaler:
    """float16 compute only: back-propagates `seed x scale`, so that small gradients do not flush to zero in
    float16, then divides the gradients by the scale. A backward with an Inf/NaN gradient is run again at half the
    scale (the step is never skipped: both sides of the cut must apply the same steps); after `growth` finite ones
    in a row the scale doubles. Disabled (bf16, fp32): a plain `backward`, nothing else.
    """

    TRIES = 24  # 2^16 halved 24 times is 2^-8: a gradient still Inf there is a real one (NonFiniteStep)

    def __init__(self, enabled: bool, scale: float = 2.0 ** 16, growth: int = 2000):
        self.enabled, self.scale, self.growth, self.good = enabled, scale, growth, 0

    def backward(self, root: torch.Tensor, seed: torch.Tensor | None, leaves: Sequence[torch.Tensor]) -> bool:
        """Accumulate d(root)/d(leaf) . seed into each leaf's `.grad` (leaves the graph does not reach are skipped);
        returns False when the gradients are not finite at any scale (then nothing was accumulated)."""
        if not self.enabled:
            root.backward(seed)
            return True
        seed = torch.ones_like(root) if seed is None else seed
        leaves = [t for t in leaves if t.requires_grad]
        for _ in range(self.TRIES):
            grads = torch.autograd.grad(root, leaves, seed * self.scale, retain_graph=True, allow_unused=True)
            found = [(t, g) for t, g in zip(leaves, grads, strict=True) if g is not None]
            if all(bool(g.isfinite().all()) for _, g in found):
                for t, g in found:
                    g = g / self.scale
                    t.grad = g if t.grad is None else t.grad + g
                self._finite()
                return True
            self.scale, self.good = self.scale / 2, 0
        return False

    def _finite(self) -> None:
        self.good += 1
        if self.good >= self.growth:
            self.scale, self.good = self.scale * 2, 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "good": self.good}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale, self.good = float(state["scale"]), int(state["good"])
