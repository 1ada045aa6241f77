"""Mechanism only: cut a LoRA-wrapped causal LM into a client part and a server part, keeping global names.

A part is a copy of the whole PeftModel in which every module it does not hold is replaced by `Absent`
(a parameter-free stand-in). Names therefore stay those of the full model (`...layers.7.self_attn...`), so
aggregation is a merge keyed by name and adapters load back into the full model unchanged. Frozen base
weights are shared between the parts and the source model (no copy); LoRA weights are copied per part.

    vanilla (split.shape=vanilla):
    client: embeddings + blocks [0, cut)            -> activations (B, T, H)
    server: blocks [first, L) + final norm + LM head, entered at the caller's cut >= first
    U-shaped (split.shape=u, tail_cut = L - tail):
    client: embeddings + blocks [0, cut)            -> activations (B, T, H)
            and blocks [tail_cut, L) + final norm + LM head: hidden (B, T, H) -> logits, loss (labels stay here)
    server: blocks [first, tail_cut), entered at the caller's cut >= first -> hidden (B, T, H)
    full:   everything (the no-split baselines: FedAvg-LoRA and centralized LoRA)
With `r_cut`, a part masks its cut layers to r_cut LoRA components (`lora.CutRankMask`): a client part at its
own cut (and its first tail block), the server part at the cut of each request it serves (and its last block).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..lora import CutRankMask, lora_parameters
from .families import Family


class Absent(nn.Module):
    """Stand-in for a module held by the other side; calling it is a bug in the split mechanism."""

    def forward(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("this part does not hold that module")


def _copy_sharing_frozen(model: nn.Module) -> nn.Module:
    """Deep copy that shares frozen parameters and buffers with `model` and copies trainable (LoRA) ones."""
    memo = {id(b): b for b in model.buffers()}
    memo.update({id(p): p for p in model.parameters() if not p.requires_grad})
    return copy.deepcopy(model, memo)


def _remove(hf: nn.Module, path: str) -> None:
    parent, _, attr = path.rpartition(".")
    owner = hf.get_submodule(parent) if parent else hf
    if getattr(owner, attr, None) is not None:
        setattr(owner, attr, Absent())


def _hf(peft_model: nn.Module) -> nn.Module:
    """The `*ForCausalLM` inside a PeftModel (`base_model.model`)."""
    return peft_model.base_model.model


class _Part:
    """Common state of both parts: the trimmed PeftModel copy and which blocks it holds."""

    def __init__(self, peft_model: nn.Module, family: Family, layers: list[int], drop_paths: tuple[str, ...]):
        self.family = family
        self.layers = layers
        self.module = _copy_sharing_frozen(peft_model)
        hf = _hf(self.module)
        blocks = hf.get_submodule(family.layers_path)
        self.n_layer = len(blocks)
        for i in range(self.n_layer):
            if i not in layers:
                blocks[i] = Absent()
        for path in drop_paths:
            _remove(hf, path)

    @property
    def hf(self) -> nn.Module:
        return _hf(self.module)

    def lora_parameters(self) -> list[nn.Parameter]:
        return list(lora_parameters(self.module).values())

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)


class ClientPart(_Part):
    """Embeddings + blocks [0, cut) with their LoRA adapters; under a U-shaped split (`tail_cut`) also blocks
    [tail_cut, L), the final norm and the LM head."""

    def __init__(self, peft_model: nn.Module, family: Family, cut: int, r_cut: int | None = None,
                 tail_cut: int | None = None):
        n_layer = len(_hf(peft_model).get_submodule(family.layers_path))
        end = n_layer if tail_cut is None else tail_cut
        assert 1 <= cut < end <= n_layer, f"cut={cut} must be in [1, {end - 1}]"
        tail = list(range(end, n_layer))
        super().__init__(peft_model, family, [*range(cut), *tail], family.head_paths if not tail else ())
        self.cut, self.tail_cut = cut, tail_cut
        if r_cut is not None:
            CutRankMask(self.module, family, r_cut, tail_cut).set(cut)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) -> activations (B, T, H) after block cut-1 (no final norm)."""
        hf, fam = self.hf, self.family
        hidden = fam.embed(hf, input_ids, attention_mask)
        ctx = fam.context(hf, hidden, attention_mask)
        for i in range(self.cut):
            hidden = fam.run_block(hf, i, hidden, ctx)
        return hidden

    def tail_forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """U-shaped split: hidden (B, T, H) after the server's block tail_cut-1 -> logits (B, T, V)."""
        assert self.tail_cut is not None, "only a U-shaped client part holds a tail"
        hf, fam = self.hf, self.family
        ctx = fam.context(hf, hidden, attention_mask)
        for i in range(self.tail_cut, self.n_layer):
            hidden = fam.run_block(hf, i, hidden, ctx)
        return fam.head(hf, hidden)


class ServerPart(_Part):
    """Blocks [first, L) + final norm + LM head with their LoRA adapters; serves any client cut >= first. Under a
    U-shaped split (`tail_cut`) only blocks [first, tail_cut): the clients hold the rest and the loss."""

    def __init__(self, peft_model: nn.Module, family: Family, first: int, r_cut: int | None = None,
                 tail_cut: int | None = None):
        n_layer = len(_hf(peft_model).get_submodule(family.layers_path))
        end = n_layer if tail_cut is None else tail_cut
        assert 1 <= first < end, f"server first block {first} must be in [1, {end - 1}]"
        drop = family.embed_paths + (family.head_paths if tail_cut is not None else ())
        super().__init__(peft_model, family, list(range(first, end)), drop)
        self.first, self.end, self.tail_cut = first, end, tail_cut
        self.mask = CutRankMask(self.module, family, r_cut, tail_cut) if r_cut is not None else None

    def forward(self, activations: torch.Tensor, attention_mask: torch.Tensor, cut: int) -> torch.Tensor:
        """activations (B, T, H) from a client holding [0, cut) -> logits (B, T, V); under a U-shaped split the
        hidden states (B, T, H) after block tail_cut-1 (no final norm), for the client's tail."""
        assert self.first <= cut < self.end, f"client cut {cut} outside server range [{self.first}, {self.end})"
        if self.mask is not None:
            self.mask.set(cut)
        hf, fam = self.hf, self.family
        ctx = fam.context(hf, activations, attention_mask)
        hidden = activations
        for i in range(cut, self.end):
            hidden = fam.run_block(hf, i, hidden, ctx)
        return hidden if self.tail_cut is not None else fam.head(hf, hidden)


class FullPart(_Part):
    """The whole model with its LoRA adapters, trained where the data is (no split)."""

    def __init__(self, peft_model: nn.Module, family: Family):
        n_layer = len(_hf(peft_model).get_submodule(family.layers_path))
        super().__init__(peft_model, family, list(range(n_layer)), ())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) -> logits (B, T, V)."""
        return full_forward(self.module, self.family, input_ids, attention_mask)


def full_forward(peft_model: nn.Module, family: Family, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """Unsplit logits through the same family code path (used by baselines and equivalence tests)."""
    hf = _hf(peft_model)
    hidden = family.embed(hf, input_ids, attention_mask)
    ctx = family.context(hf, hidden, attention_mask)
    for i in range(len(hf.get_submodule(family.layers_path))):
        hidden = family.run_block(hf, i, hidden, ctx)
    return family.head(hf, hidden)
