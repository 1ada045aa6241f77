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
Every forward of every part runs here, so how a part computes (`Compute`: precision, activation checkpointing,
the loss's head chunks) is applied here once, for clients, servers, U tails and the no-split baselines alike.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..lora import CutRankMask, lora_parameters
from ..loss import TokenStats, head_loss, token_loss
from ..precision import FP32, Precision
from .families import Family, hf_of


@dataclass(frozen=True)
class Compute:
    """How a part computes (train.compute_dtype, train.activation_checkpointing, train.loss_chunk_tokens).

    Attributes:
        precision: every forward runs under its autocast (nothing at float32: bit-identical to no precision).
        checkpointing: while gradients are recorded, each block keeps only its input (B, T, H) and runs its
            forward again in the backward (`torch.utils.checkpoint`, RNG state restored: exact).
        loss_chunk: label tokens the LM head takes at a time in the loss (`loss.head_loss`); 0: whole logits.
    """

    precision: Precision = FP32
    checkpointing: bool = False
    loss_chunk: int = 0


class Joining(NamedTuple):
    """One client's step as the server part takes it: activations (B, T, H), attention_mask (B, T), its cut, and
    labels (B, T)."""

    activations: torch.Tensor
    attention_mask: torch.Tensor
    cut: int
    labels: torch.Tensor


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """(B, T, ...) right-padded with zeros to (B, width, ...): pad positions have mask 0 and no label."""
    if t.shape[1] == width:
        return t
    return torch.cat([t, t.new_zeros((t.shape[0], width - t.shape[1], *t.shape[2:]))], dim=1)


class Absent(nn.Module):
    """Stand-in for a module held by the other side; calling it is a bug in the split mechanism."""

    def forward(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("this part does not hold that module")


def _copy_sharing_frozen(model: nn.Module, skip: list[nn.Module]) -> nn.Module:
    """Deep copy that shares frozen parameters and buffers with `model` and copies trainable (LoRA) ones; the
    modules in `skip` (the copy drops them next) are not copied at all: a cut-1 client would otherwise copy every
    block's LoRA (7 MB for SmolLM2) to throw 29 blocks' of it away."""
    memo: dict[int, Any] = {id(b): b for b in model.buffers()}
    memo.update({id(p): p for p in model.parameters() if not p.requires_grad})
    memo.update({id(m): m for m in skip})
    return copy.deepcopy(model, memo)


def _owner(hf: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent, _, attr = path.rpartition(".")
    return (hf.get_submodule(parent) if parent else hf), attr


def _at(hf: nn.Module, path: str) -> nn.Module | None:
    """The module at `path` (None for an absent optional one, e.g. OPT's project_in)."""
    return getattr(*_owner(hf, path), None)


def _remove(hf: nn.Module, path: str) -> None:
    if _at(hf, path) is not None:
        setattr(*_owner(hf, path), Absent())


class _Part:
    """Common state of both parts: the trimmed PeftModel copy and which blocks it holds."""

    def __init__(self, peft_model: nn.Module, family: Family, layers: list[int], drop_paths: tuple[str, ...],
                 compute: Compute = Compute()):
        self.family, self.compute = family, compute
        self.layers = layers
        source = hf_of(peft_model)
        dropped = [b for i, b in enumerate(family.blocks(source)) if i not in layers]
        dropped += [m for m in map(lambda path: _at(source, path), drop_paths) if m is not None]
        self.module = _copy_sharing_frozen(peft_model, dropped)
        hf = hf_of(self.module)
        blocks = family.blocks(hf)
        self.n_layer = len(blocks)
        for i in range(self.n_layer):
            if i not in layers:
                blocks[i] = Absent()
        for path in drop_paths:
            _remove(hf, path)

    @property
    def hf(self) -> nn.Module:
        return hf_of(self.module)

    def lora_parameters(self) -> list[nn.Parameter]:
        return list(lora_parameters(self.module).values())

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def _run(self, hidden: torch.Tensor, ctx: dict, layers: range) -> torch.Tensor:
        """hidden (B, T, H) through blocks `layers`; with checkpointing (and gradients recorded) each block keeps
        only its input for the backward, where its forward runs again."""
        hf, fam = self.hf, self.family
        again = self.compute.checkpointing and torch.is_grad_enabled()
        for i in layers:
            hidden = checkpoint(fam.run_block, hf, i, hidden, ctx, use_reentrant=False) if again else \
                fam.run_block(hf, i, hidden, ctx)
        return hidden

    def _loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> TokenStats:
        """Final norm, LM head and next-token loss (float32) of hidden (B, T, H) after the last block."""
        hf, fam, chunk = self.hf, self.family, self.compute.loss_chunk
        with self.compute.precision.autocast():
            if chunk:
                return head_loss(fam.final_norm(hf, hidden), fam.lm_head(hf), labels, chunk)
            logits = fam.head(hf, hidden)
        return token_loss(logits, labels)


class ClientPart(_Part):
    """Embeddings + blocks [0, cut) with their LoRA adapters; under a U-shaped split (`tail_cut`) also blocks
    [tail_cut, L), the final norm and the LM head."""

    def __init__(self, peft_model: nn.Module, family: Family, cut: int, r_cut: int | None = None,
                 tail_cut: int | None = None, compute: Compute = Compute()):
        n_layer = len(family.blocks(hf_of(peft_model)))
        end = n_layer if tail_cut is None else tail_cut
        assert 1 <= cut < end <= n_layer, f"cut={cut} must be in [1, {end - 1}]"
        tail = list(range(end, n_layer))
        super().__init__(peft_model, family, [*range(cut), *tail], family.head_paths if not tail else (), compute)
        self.cut, self.tail_cut = cut, tail_cut
        if r_cut is not None:
            CutRankMask(self.module, family, r_cut, tail_cut).set(cut)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) -> activations (B, T, H) after block cut-1 (no final norm), in the
        storage dtype (the residual stream's: autocast computes the blocks' matmuls at the compute dtype)."""
        hf, fam = self.hf, self.family
        with self.compute.precision.autocast():
            hidden = fam.embed(hf, input_ids, attention_mask)
            return self._run(hidden, fam.context(hf, hidden, attention_mask), range(self.cut))

    def _tail(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        assert self.tail_cut is not None, "only a U-shaped client part holds a tail"
        with self.compute.precision.autocast():
            ctx = self.family.context(self.hf, hidden, attention_mask)
            return self._run(hidden, ctx, range(self.tail_cut, self.n_layer))

    def tail_forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """U-shaped split: hidden (B, T, H) after the server's block tail_cut-1 -> logits (B, T, V)."""
        hidden = self._tail(hidden, attention_mask)
        with self.compute.precision.autocast():
            return self.family.head(self.hf, hidden)

    def tail_loss(self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> TokenStats:
        """U-shaped split: the loss of hidden (B, T, H) from the server, through this client's tail and head."""
        return self._loss(self._tail(hidden, attention_mask), labels)


class ServerPart(_Part):
    """Blocks [first, L) + final norm + LM head with their LoRA adapters; serves any client cut >= first. Under a
    U-shaped split (`tail_cut`) only blocks [first, tail_cut): the clients hold the rest and the loss."""

    def __init__(self, peft_model: nn.Module, family: Family, first: int, r_cut: int | None = None,
                 tail_cut: int | None = None, compute: Compute = Compute()):
        n_layer = len(family.blocks(hf_of(peft_model)))
        end = n_layer if tail_cut is None else tail_cut
        assert 1 <= first < end, f"server first block {first} must be in [1, {end - 1}]"
        drop = family.embed_paths + (family.head_paths if tail_cut is not None else ())
        super().__init__(peft_model, family, list(range(first, end)), drop, compute)
        self.first, self.end, self.tail_cut = first, end, tail_cut
        self.mask = CutRankMask(self.module, family, r_cut, tail_cut) if r_cut is not None else None

    def hidden(self, activations: torch.Tensor, attention_mask: torch.Tensor, cut: int) -> torch.Tensor:
        """activations (B, T, H) from a client holding [0, cut) -> hidden states (B, T, H) after the server's last
        block (no final norm): under a U-shaped split, what goes to the client's tail."""
        return self._hidden_from_cuts([(activations, attention_mask, cut)])

    def _hidden_from_cuts(self, rows: list[tuple[torch.Tensor, torch.Tensor, int]]) -> torch.Tensor:
        """Clients' (activations (B_i, T_i, H), attention_mask (B_i, T_i), cut), in order of cut -> hidden states
        (sum B_i, max T_i, H) after the server's last block: the rows of the lowest cut run alone up to the next
        cut, then those rows join them (concatenated along B, right-padded to the longest T), and so on; each
        row's cut layer at r_cut for its own cut (`CutRankMask.set_rows`). One client: its blocks [cut, end)."""
        width = max(acts.shape[1] for acts, _, _ in rows)
        cuts = [cut for acts, _, cut in rows for _ in range(acts.shape[0])]  # one per row of B
        assert self.first <= cuts[0] and cuts[-1] < self.end, (
            f"client cut {sorted(set(cuts))} outside server range [{self.first}, {self.end})")
        if self.mask is not None:
            self.mask.set_rows(cuts)
        hidden: torch.Tensor | None = None
        mask: torch.Tensor | None = None
        with self.compute.precision.autocast():
            for g, (acts, m, cut) in enumerate(rows):
                acts, m = _pad(acts, width), _pad(m, width)
                hidden = acts if hidden is None else torch.cat([hidden, acts.to(hidden.dtype)])
                mask = m if mask is None else torch.cat([mask, m])
                last = self.end if g + 1 == len(rows) else rows[g + 1][2]
                if last > cut:  # the next client joins at a later cut: run the blocks between
                    ctx = self.family.context(self.hf, hidden, mask)
                    hidden = self._run(hidden, ctx, range(cut, last))
        assert hidden is not None
        return hidden

    def forward(self, activations: torch.Tensor, attention_mask: torch.Tensor, cut: int) -> torch.Tensor:
        """activations (B, T, H) -> logits (B, T, V); under a U-shaped split the hidden states (`hidden`)."""
        hidden = self.hidden(activations, attention_mask, cut)
        if self.tail_cut is not None:
            return hidden
        with self.compute.precision.autocast():
            return self.family.head(self.hf, hidden)

    def loss(self, activations: torch.Tensor, attention_mask: torch.Tensor, cut: int,
             labels: torch.Tensor) -> TokenStats:
        """Vanilla split: the next-token loss of a client's activations (B, T, H) through blocks [cut, L) and the
        head (`_loss`: float32, the head `Compute.loss_chunk` tokens at a time)."""
        assert self.tail_cut is None, "under a U-shaped split the clients' tails compute the loss"
        return self._loss(self.hidden(activations, attention_mask, cut), labels)

    def joined_loss(self, rows: list[Joining]) -> list[TokenStats]:
        """Vanilla split: several clients' losses from one forward of the server blocks ("join at your cut").

        Rows are taken in order of their cut; the rows of the lowest cut c0 run alone through blocks [c0, c1),
        then the rows of cut c1 join them (concatenated along B) and all run [c1, c2), and so on to the last
        block (`_hidden_from_cuts`). Each client's activations (B_i, T_i, H) are right-padded to the longest T with
        zeros and mask 0 (causal attention: a real position never sees a later pad, so a row computes what it
        would alone, up to the matmuls' summation order). Each row's cut layer is masked to r_cut for its own cut
        only. Then each client's hidden states, unpadded, take the head and the loss apart. One client alone is
        exactly `loss`."""
        assert self.tail_cut is None, "under a U-shaped split the clients' tails compute the loss"
        if len(rows) == 1:
            (acts, mask, cut, labels), = rows
            return [self.loss(acts, mask, cut, labels)]
        order = sorted(range(len(rows)), key=lambda i: rows[i].cut)  # stable: equal cuts keep their order
        hidden = self._hidden_from_cuts([rows[i][:3] for i in order])
        out: list[TokenStats | None] = [None] * len(rows)
        start = 0
        for i in order:
            b, t = rows[i].activations.shape[:2]
            out[i] = self._loss(hidden[start:start + b, :t], rows[i].labels)
            start += b
        return out  # type: ignore[return-value]


class FullPart(_Part):
    """The whole model with its LoRA adapters, trained where the data is (no split)."""

    def __init__(self, peft_model: nn.Module, family: Family, compute: Compute = Compute()):
        n_layer = len(family.blocks(hf_of(peft_model)))
        super().__init__(peft_model, family, list(range(n_layer)), (), compute)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hf, fam = self.hf, self.family
        with self.compute.precision.autocast():
            hidden = fam.embed(hf, input_ids, attention_mask)
            return self._run(hidden, fam.context(hf, hidden, attention_mask), range(self.n_layer))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) -> logits (B, T, V)."""
        hidden = self._hidden(input_ids, attention_mask)
        with self.compute.precision.autocast():
            return self.family.head(self.hf, hidden)

    def loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> TokenStats:
        """The next-token loss of a batch through the whole model (the no-split baselines)."""
        return self._loss(self._hidden(input_ids, attention_mask), labels)


def full_forward(peft_model: nn.Module, family: Family, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """Unsplit logits through the same family code path, on a model as it is (no part, no copy): the reference of
    the equivalence tests."""
    hf = hf_of(peft_model)
    hidden = family.embed(hf, input_ids, attention_mask)
    ctx = family.context(hf, hidden, attention_mask)
    for i in range(len(family.blocks(hf))):
        hidden = family.run_block(hf, i, hidden, ctx)
    return family.head(hf, hidden)
