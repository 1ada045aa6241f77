"""A deployed party's model: every block's seeded LoRA, base weights only for the blocks it runs.

A server and each client open the same model file; `hold` reads the weights under some module paths onto the
device (`weights.materialize`), `drop` gives them back (`weights.release`). Which paths a party holds follows from
its cut (`client_paths`, `server_paths`); the policy decides the cut, this only applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import lora
from . import loader
from .families import Family, hf_of
from .split import Compute
from .weights import WeightFile, held_bytes, materialize, release


def return_freed_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc's malloc_trim; elsewhere nothing), so
    what was freed does not count in the peak of what comes next."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class TokenIds:
    """What a deployed client keeps of its tokenizer once its data is tokenized: the ids batching needs."""

    pad_token_id: int | None
    eos_token_id: int | None


@dataclass
class PartialModel:
    """A deployed party's model: seeded rank-r LoRA on every block (the server's store needs every block's initial
    adapters), base weights only where `hold` read them (`model.weights`); the rest stays on `meta`. The tokenizer
    is read when first asked for (a server never asks)."""

    peft: torch.nn.Module
    family: Family
    source: str
    device: torch.device
    weights: WeightFile
    compute: Compute
    fingerprint: str = ""
    """`loader.fingerprint` of the model: what a server and its clients compare at the handshake."""
    _tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = loader.load_tokenizer(self.source)
        return self._tokenizer

    def drop_tokenizer(self) -> TokenIds:
        """Let the tokenizer go once the data is tokenized (SmolLM2's: ~50 MB of small allocations for 49,152 words
        and their merges), its memory back to the OS before any block is read; returns the ids batching needs."""
        ids = TokenIds(self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)
        self._tokenizer = None
        return_freed_memory()
        return ids

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype of the frozen weights it holds."""
        return self.compute.precision.storage

    @property
    def n_layer(self) -> int:
        return len(self.family.blocks(hf_of(self.peft)))

    def blocks(self, layers: range) -> list[str]:
        return [f"{self.family.layers_path}.{i}" for i in layers]

    def hold(self, paths: list[str]) -> None:
        """Read the base weights under `paths` (HF module paths) onto the device; their adapters follow. What the
        reading freed (float32 chunks, file pages) goes back to the OS before training peaks on top of it."""
        materialize(self.peft, self.weights, paths, self.device, self.dtype)
        lora.follow_base_layers(self.peft)
        return_freed_memory()

    def drop(self, paths: list[str]) -> None:
        release(self.peft, paths)

    def client_paths(self, cut: int, tail_cut: int | None = None) -> list[str]:
        """What a client at `cut` runs: embeddings and blocks [0, cut) (all of it when cut = n_layer); under a
        U-shaped split also blocks [tail_cut, L), the final norm and the head."""
        if cut >= self.n_layer:
            return [""]
        tail = [] if tail_cut is None else [*self.blocks(range(tail_cut, self.n_layer)), *self.family.head_paths]
        return [*self.family.embed_paths, *self.blocks(range(cut)), *tail]

    def server_paths(self, first: int, tail_cut: int | None = None) -> list[str]:
        """What a server serving cuts >= `first` runs: blocks [first, L), final norm, head (a head tied to the
        embeddings brings the embedding matrix with it); under a U-shaped split blocks [first, tail_cut) only."""
        if tail_cut is not None:
            return self.blocks(range(first, tail_cut))
        return [*self.blocks(range(first, self.n_layer)), *self.family.head_paths]

    def held_gb(self) -> float:
        return held_bytes(self.peft) / 1e9
