"""Everything built from a config before training starts, shared by every method: model + LoRA, tokenizer,
data, partition. Nothing here trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import lora
from ..config import Config, validate_against_model
from ..data.datasets import Example, load_examples, resolve_path, split_eval
from ..data.partitioners import partitioner_for, samples_of
from ..errors import UserError
from ..model import loader
from ..model.families import Family, family_for
from ..seeding import seed_everything

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"model.device: '{name}' requested but no CUDA device is available; use auto or cpu")
    return torch.device(name)


@dataclass
class Setup:
    """Everything built from a config before training starts (shared by the simulation and baselines)."""

    cfg: Config
    peft: torch.nn.Module
    family: Family
    tokenizer: Any
    train: list[Example]
    eval: list[Example]
    data_stats: dict[str, int]
    device: torch.device
    parts: list[list[int]]
    """Indices into `train`, one list per client."""

    @property
    def n_layer(self) -> int:
        return len(self.peft.base_model.model.get_submodule(self.family.layers_path))

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def build_model(cfg: Config, meta: Any = None) -> tuple[torch.nn.Module, Family, Any, torch.device]:
    """The model with seeded rank-r LoRA, its family, tokenizer and device: all a server needs (no data).

    Raises:
        UserError: a bad model source, or a config value that does not fit the model.
    """
    meta = meta or loader.read_meta(cfg.model.source)
    validate_against_model(cfg, meta.n_layer, meta.max_positions)
    device = resolve_device(cfg.model.device)
    seed_everything(cfg.federation.seed)
    loaded = loader.load(cfg.model.source, DTYPES[cfg.model.dtype], cfg.federation.seed)
    family = family_for(loaded.model.config.model_type)
    torch.manual_seed(cfg.federation.seed)  # LoRA A init: the same on every process of a deployment
    peft = lora.wrap(loaded.model.to(device), family, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                     targets=cfg.lora.targets or family.lora_targets)
    return peft, family, loaded.tokenizer, device


def build(cfg: Config) -> Setup:
    """Model (`build_model`) + data + partition. No training.

    Raises:
        UserError: anything wrong with the model source, the data or a config value that needs the model.
    """
    meta = loader.read_meta(cfg.model.source)
    validate_against_model(cfg, meta.n_layer, meta.max_positions)
    resolve_path(cfg.data.path)  # a missing data file fails before the weights load
    peft, family, tokenizer, device = build_model(cfg, meta)
    examples, stats = load_examples(cfg.data, tokenizer, cfg.federation.seed)
    train, held_out = split_eval(examples, cfg.data.eval_fraction, cfg.data.max_eval_samples)
    parts = partitioner_for(cfg).partition(samples_of(train))
    return Setup(cfg, peft, family, tokenizer, train, held_out, stats, device, parts)

