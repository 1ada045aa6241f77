"""LoRA on both sides of the cut: rank map, cut-layer rank masks, PEFT wrapping, adapter-only state dicts.

Rank convention (one place, `scaling`): every LoRA module is stored at rank r and computes
    y = W x + (alpha / r) * B[:, :k] A[:k] x,      A: (r, d_in), B: (d_out, r), B initialised to 0,
with k = r for ordinary blocks and k = r_cut for the cut layer (the last client block `cut - 1` and the first
server block `cut`, `cut_layers`). A U-shaped split (`split.shape=u`) has a second cut where the server hands
the hidden states to the client's tail, `tail_cut` = n_layer - tail: the server's last block `tail_cut - 1` and
the client's first tail block `tail_cut` run at r_cut too (four blocks in all). The cut-layer rank is a mask
over leading components (`CutRankMask`), not a smaller tensor, so one shared server block can serve clients
whose cuts put it at rank r_cut and others at r.
Only the k active components cross the network (`cut_payload`): A[:k] and B[:, :k], a (k/r) share of the bytes.
Scale alpha/r does not change with k, so dropping components never rescales the ones kept: a rank-r_cut
payload padded back to rank r computes the same delta W (round trip exact), and averaging is per component.
Adapters (the unit of exchange and aggregation) are dicts {full parameter name: tensor} with LoRA tensors only.

What this means for a user: the cut layer runs at alpha / r, not alpha / r_cut. A PEFT module trained at rank
r_cut = 8 with alpha = 32 would scale by 4; ours, with r = 16, scales its 8 active components by 2. The adapter a
run exports is stored at rank r with lora_alpha = alpha (and the unused cut-layer components zero), so
`PeftModel.from_pretrained` applies alpha / r everywhere and reproduces the trained model exactly; to continue
training it in plain PEFT at rank r_cut, rescale B by r_cut / r, or keep rank r.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn

from .errors import UserError
from .model.families import Family

_LORA_KEY = re.compile(r"\.lora_[AB]\.")


def cut_layers(cut: int, tail_cut: int | None = None) -> tuple[int, ...]:
    """The cut layer of a client holding blocks [0, cut): its last block `cut - 1` and the server's first `cut`;
    under a U-shaped split also the server's last block `tail_cut - 1` and the client's first tail block
    `tail_cut`. All run at r_cut components; every other block at r."""
    return (cut - 1, cut) if tail_cut is None else (cut - 1, cut, tail_cut - 1, tail_cut)


def client_cut_layers(cut: int, tail_cut: int | None = None) -> tuple[int, ...]:
    """The client's own cut-layer blocks (what its payload cuts to r_cut): `cut - 1`, and `tail_cut` under U."""
    return (cut - 1,) if tail_cut is None else (cut - 1, tail_cut)


def rank_dim(name: str) -> int:
    """Which dim of a LoRA tensor indexes rank components: A is (r, d_in) -> 0, B is (d_out, r) -> 1."""
    return 0 if ".lora_A." in name else 1


def cut_payload(sd: dict[str, torch.Tensor], family: Family, cut: int, r_cut: int,
                tail_cut: int | None = None) -> dict[str, torch.Tensor]:
    """What crosses the network for a client with this cut: its blocks' tensors with its cut-layer blocks
    (`client_cut_layers`) cut to the r_cut active components. Bytes: (r_cut / r) of those blocks' adapters."""
    out, client_side = {}, client_cut_layers(cut, tail_cut)
    for name, t in sd.items():
        if layer_of(name, family) in client_side and t.shape[rank_dim(name)] > r_cut:
            t = t.narrow(rank_dim(name), 0, r_cut)
        out[name] = t
    return out


def mask_cut_layer(sd: dict[str, torch.Tensor], family: Family, cut: int, r_cut: int,
                   tail_cut: int | None = None) -> dict[str, torch.Tensor]:
    """`sd` as a client with this cut uses it: in every cut-layer block, components >= r_cut set to 0 (a rank-r
    module with those components zero computes exactly what `CutRankMask` lets through). Clones."""
    out, masked = {}, cut_layers(cut, tail_cut)
    for name, t in sd.items():
        t = t.clone()
        if layer_of(name, family) in masked:
            t.narrow(rank_dim(name), r_cut, t.shape[rank_dim(name)] - r_cut).zero_()
        out[name] = t
    return out


class CutRankMask:
    """Masks LoRA components >= r_cut of the cut layer (blocks cut-1 and cut, and under U tail_cut-1 and tail_cut)
    of a model or part.

    `set(cut)` moves the mask (the server calls it per request, a client once per cut); `set(None)` clears it.
    A forward hook multiplies each lora_A output (..., r) by a 0/1 vector, so masked components get neither
    output nor gradient. The state lives on the lora_A modules themselves (`_active_rank`), so a deep copy of
    a masked model carries its own independent mask.
    """

    def __init__(self, model: nn.Module, family: Family, r_cut: int, tail_cut: int | None = None):
        self.r_cut, self.tail_cut = r_cut, tail_cut
        self.modules = [(layer_of(n, family), m) for n, m in model.named_modules() if n.endswith(".lora_A.default")]
        for _, module in self.modules:
            if not hasattr(module, "_active_rank"):
                module.register_forward_hook(_mask_hook)
            module._active_rank = None
        self.cut: int | None = None

    def set(self, cut: int | None) -> None:
        if cut == self.cut:  # the server calls this per request; most requests keep the cut
            return
        self.cut = cut
        masked = () if cut is None else cut_layers(cut, self.tail_cut)
        for layer, module in self.modules:
            module._active_rank = self.r_cut if layer in masked else None

    def set_rows(self, cuts: list[int]) -> None:
        """One cut per row of a batch joined from clients at different cuts (`ServerPart.joined_loss`): each row
        masks its own cut layers. A block that runs only the first n rows (those that joined by then: rows go
        in order of cut) reads the first n entries, in the forward and when checkpointing runs it again."""
        if len(set(cuts)) == 1:
            return self.set(cuts[0])
        self.cut = -1  # per-row state: the next `set` rewrites every module
        for layer, module in self.modules:
            rows = [layer in cut_layers(c, self.tail_cut) for c in cuts]
            if all(rows) or not any(rows):  # most blocks: the same for every row, no per-row tensor
                module._active_rank = self.r_cut if rows[0] else None
            else:
                module._active_rank = torch.tensor([self.r_cut if m else _FULL for m in rows])


_FULL = 1 << 30
"""A row's rank in a per-row mask when its block is not one of its cut layers: no component masked."""


def _mask_hook(module: nn.Module, inputs: object, out: torch.Tensor) -> torch.Tensor | None:
    k = getattr(module, "_active_rank", None)
    if isinstance(k, torch.Tensor):  # per row (B,): out (b, T, r) holds the first b rows
        ranks = k[:out.shape[0]].to(out.device)
        keep = (torch.arange(out.shape[-1], device=out.device) < ranks[:, None]).to(out.dtype)  # (b, r)
        return out * keep.view(out.shape[0], *[1] * (out.dim() - 2), out.shape[-1])
    if k is None or k >= out.shape[-1]:
        return None
    keep = out.new_zeros(out.shape[-1])
    keep[:k] = 1
    return out * keep


def active_lora_numel(sd: dict[str, torch.Tensor], family: Family, cut: int, r_cut: int,
                      tail_cut: int | None = None) -> int:
    """LoRA parameters a client with this cut trains and exchanges (its cut layers at r_cut)."""
    return sum(t.numel() for t in cut_payload(sd, family, cut, r_cut, tail_cut).values())


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


def wrap(model: nn.Module, family: Family, *, r: int, alpha: float, dropout: float,
         targets: Iterable[str]) -> nn.Module:
    """Inject rank-r LoRA into every block of `model` (a PeftModel comes back); only LoRA weights stay trainable.

    Args:
        r: stored rank of every module (the cut layer's r_cut is a mask, see `CutRankMask`).
        alpha: LoRA alpha; every module scales by alpha / r.
        targets: module-name suffixes to wrap (family defaults when the config leaves them empty).

    Raises:
        ValueError: no module matches the targets.
    """
    from peft import LoraConfig, get_peft_model

    targets = tuple(targets)
    names = target_module_names(model, family, targets)
    if not names:
        raise UserError(f"lora.targets {list(targets)} match no module of this {family.name} model; "
                        f"the default for this family is {list(family.lora_targets)} (lora.targets=[] uses it)")
    config = LoraConfig(
        r=r, lora_alpha=cast(int, alpha),  # PEFT annotates int; a float alpha scales the same (alpha / r)
        lora_dropout=dropout, target_modules=names, bias="none",
        fan_in_fan_out=family.fan_in_fan_out, task_type="CAUSAL_LM",
    )
    with _adapters_stay_float32():
        peft_model = get_peft_model(model, config)
    for module in peft_model.modules():
        # PEFT casts each LoRA input to the adapter's float32 and keeps that copy for the backward (four per block,
        # 1.2 MB each for SmolLM2 at B x T = 512); under autocast the matmul casts it to the compute dtype anyway,
        # the same values, and at float32 compute there is nothing to cast.
        if hasattr(module, "cast_input_dtype_enabled"):
            cast(Any, module).cast_input_dtype_enabled = False
    return peft_model


def _move_adapter(layer: Any, adapter_name: str, device: torch.device) -> None:
    """Move one adapter of a PEFT layer to `device`, keeping its dtype: LoRA weights are float32 masters whatever
    the frozen base is stored in (PEFT's own move would cast them to a bf16 base's dtype, rounding their init)."""
    for attr in (*layer.adapter_layer_names, *layer.other_param_names):
        group = getattr(layer, attr, None)
        if isinstance(group, (nn.ModuleDict, nn.ParameterDict)) and adapter_name in group:
            group[adapter_name] = group[adapter_name].to(device)


def _base_device(layer: Any) -> torch.device:
    """The device of a PEFT layer's base weight; the CPU while that weight is on `meta` (a block this process
    does not hold, `model.weights`): its adapter's seeded initial values are still needed, by the server's global
    store, so they stay real."""
    weight = getattr(layer.get_base_layer(), "weight", None)
    return torch.device("cpu") if weight is None or weight.device.type == "meta" else weight.device


@contextlib.contextmanager
def _adapters_stay_float32():
    """While PEFT wraps a model, each new adapter goes to its base layer's device (`_base_device`) in float32. The
    random draws are PEFT's own, in the same order: the initial LoRA does not depend on what is held or its dtype."""
    from peft.tuners.lora.model import LoraModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    move, replace = BaseTunerLayer._move_adapter_to_device_of_base_layer, LoraModel._replace_module

    def on_meta(layer: nn.Module) -> bool:
        weight = getattr(getattr(layer, "base_layer", layer), "weight", None)
        return weight is not None and weight.device.type == "meta"

    def guarded_move(self: BaseTunerLayer, adapter_name: str, device: torch.device | None = None) -> None:
        _move_adapter(self, adapter_name, device if device is not None else _base_device(self))

    def guarded_replace(self: LoraModel, parent: nn.Module, child_name: str, new_module: nn.Module,
                        child: nn.Module) -> None:
        if on_meta(child):  # PEFT would move the new adapter to the base weight's device: meta
            setattr(parent, child_name, new_module)
        else:
            replace(self, parent, child_name, new_module, child)

    BaseTunerLayer._move_adapter_to_device_of_base_layer = guarded_move
    LoraModel._replace_module = guarded_replace
    try:
        yield
    finally:
        BaseTunerLayer._move_adapter_to_device_of_base_layer = move
        LoraModel._replace_module = replace


def follow_base_layers(model: nn.Module) -> None:
    """Move every adapter to its base layer's device, in float32 (after `model.weights.materialize` put a layer's
    weights on the model's device)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        weight = getattr(module.get_base_layer(), "weight", None) if isinstance(module, BaseTunerLayer) else None
        if weight is not None and weight.device.type != "meta":
            for adapter in cast(BaseTunerLayer, module).active_adapters:
                _move_adapter(module, adapter, weight.device)


def is_lora_name(name: str) -> bool:
    return bool(_LORA_KEY.search(name))


def lora_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The LoRA parameters of a (part of a) PeftModel, {full name: parameter}: the one way to enumerate them
    (optimizers, checkpoints, adapter exchange)."""
    return {n: p for n, p in module.named_parameters() if is_lora_name(n)}


def adapter_state_dict(part: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA tensors of a (part of a) PeftModel, keyed by full parameter name; detached clones."""
    return {n: p.detach().clone() for n, p in lora_parameters(part).items()}


def load_adapter_state_dict(part: nn.Module, sd: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Copy `sd` into the LoRA parameters of `part` in place (optimizer references stay valid).

    A tensor with fewer rank components than the parameter (a cut-layer payload) fills the leading components;
    the others keep their values.

    Args:
        strict: every LoRA parameter of `part` must be in `sd` (extra keys in `sd` are always ignored,
            since a global adapter covers blocks this part does not hold).
    """
    params = lora_parameters(part)
    missing = [n for n in params if n not in sd]
    assert not (strict and missing), f"adapter state misses {len(missing)} LoRA tensors, e.g. {missing[:2]}"
    with torch.no_grad():
        for name, tensor in sd.items():
            if name in params:
                p: torch.Tensor = params[name]
                if p.shape != tensor.shape:  # a cut-layer payload: leading rank components only
                    d = rank_dim(name)
                    ok = p.dim() == tensor.dim() == 2 and p.shape[1 - d] == tensor.shape[1 - d]
                    assert ok and tensor.shape[d] <= p.shape[d], (
                        f"{name}: shape {tuple(tensor.shape)} does not fit {tuple(p.shape)}")
                    p = p.narrow(d, 0, tensor.shape[d])
                p.copy_(tensor.to(p.device, p.dtype))

