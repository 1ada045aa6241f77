"""LoRA on both sides of the cut: per-layer rank map, PEFT wrapping, and adapter-only state dicts.

The rank map is the SplitFT rule: the last client block (`cut - 1`) and the first server block (`cut`) use
`r_cut`; every other block uses `r`. Scaling follows PEFT: a module of rank r_i computes
    y = W x + (alpha / r_i) * B A x,      A: (r_i, d_in), B: (d_out, r_i), B initialised to 0,
so `alpha` is absolute and a lower-rank module gets a larger scale (`scaling()` is the one place it lives).
Adapters (the unit of exchange and aggregation) are dicts {full parameter name: tensor} with LoRA tensors only.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn

from .model.families import Family

_LORA_KEY = re.compile(r"\.lora_[AB]\.")


def rank_for(layer: int, cut: int, r: int, r_cut: int) -> int:
    """LoRA rank of block `layer` when the client holds blocks [0, cut): r_cut at the cut layer, r elsewhere."""
    return r_cut if layer in (cut - 1, cut) else r


def scaling(alpha: float, rank: int) -> float:
    """The factor on B A x for a module of this rank (PEFT convention, `use_rslora=False`)."""
    return alpha / rank


def layer_of(name: str, family: Family) -> int | None:
    """Global block index in a parameter/module name, or None for non-block names (embeddings, head)."""
    m = re.search(rf"(?:^|\.){re.escape(family.layers_path)}\.(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else None


def target_module_names(model: nn.Module, family: Family, targets: Iterable[str]) -> list[str]:
    """Names of the modules (inside the HF model) that LoRA wraps: block modules whose name ends in a target."""
    targets = tuple(targets)
    return [
        n for n, _ in model.named_modules()
        if layer_of(n, family) is not None and any(n == t or n.endswith("." + t) for t in targets)
    ]


def build_rank_pattern(model: nn.Module, family: Family, targets: Iterable[str], ranks: dict[int, int]) -> dict[str, int]:
    """PEFT `rank_pattern`: exact (escaped) module name -> rank, for blocks whose rank is in `ranks`."""
    return {
        re.escape(n): ranks[layer_of(n, family)]  # type: ignore[index]
        for n in target_module_names(model, family, targets)
        if layer_of(n, family) in ranks
    }


def wrap(model: nn.Module, family: Family, *, r: int, alpha: float, dropout: float,
         targets: Iterable[str], ranks: dict[int, int] | None = None) -> nn.Module:
    """Inject LoRA into every block of `model` (a PeftModel comes back); only LoRA weights stay trainable.

    Args:
        r: default rank; `ranks` overrides it per block index (e.g. from `rank_for`).
        alpha: absolute LoRA alpha; each module scales by alpha / its own rank.
        targets: module-name suffixes to wrap (family defaults when the config leaves them empty).

    Raises:
        ValueError: no module matches the targets.
    """
    from peft import LoraConfig, get_peft_model

    targets = tuple(targets)
    names = target_module_names(model, family, targets)
    if not names:
        raise ValueError(f"lora.targets {list(targets)} match no module of this {family.name} model; "
                         f"the default for this family is {list(family.lora_targets)}")
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
        rank_pattern=build_rank_pattern(model, family, targets, ranks or {}), bias="none",
        fan_in_fan_out=family.fan_in_fan_out, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_lora_name(name: str) -> bool:
    return bool(_LORA_KEY.search(name))


def adapter_state_dict(part: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA tensors of a (part of a) PeftModel, keyed by full parameter name; detached clones."""
    return {n: p.detach().clone() for n, p in part.named_parameters() if is_lora_name(n)}


def load_adapter_state_dict(part: nn.Module, sd: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Copy `sd` into the LoRA parameters of `part` in place (optimizer references stay valid).

    Args:
        strict: every LoRA parameter of `part` must be in `sd` (extra keys in `sd` are always ignored,
            since a global adapter covers blocks this part does not hold).
    """
    params = dict(part.named_parameters())
    missing = [n for n in params if is_lora_name(n) and n not in sd]
    assert not (strict and missing), f"adapter state misses {len(missing)} LoRA tensors, e.g. {missing[:2]}"
    with torch.no_grad():
        for name, tensor in sd.items():
            if name in params:
                p = params[name]
                assert p.shape == tensor.shape, f"{name}: shape {tuple(tensor.shape)} != {tuple(p.shape)}"
                p.copy_(tensor.to(p.device, p.dtype))


def lora_params(part: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in part.named_parameters() if is_lora_name(n) and p.requires_grad]


def state_nbytes(sd: dict[str, torch.Tensor]) -> int:
    """Raw tensor bytes of an adapter state dict (what crosses the network, before any envelope)."""
    return sum(t.numel() * t.element_size() for t in sd.values())
