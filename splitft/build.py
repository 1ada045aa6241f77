"""The composition root: everything both runtimes build from a config, and nothing that trains.

    cfg = load(path, overrides)                   # config + every registry's name check, all problems at once
    meta = check_model(cfg)                       # metadata only: a bad cut or source fails before any weight loads
    setup = build_setup(cfg)                      # model + LoRA, tokenizer, data, held-out slice, partition
    server = split_server(cfg, setup.peft, setup.family, cfg.split.cut, setup.compute)
    client = split_client(setup, cid, cut)        # its partition's batch stream, its noise seed
`sim/` (the simulator) and `deploy/` (server and client processes) both assemble their parties here, so a
simulated client and a deployed one are the same object built the same way; neither runtime imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import lora
from .client import SplitClient
from .config import Check, Config, ConfigError, load_config, tail_cut, validate_against_model
from .data.datasets import (
    BatchStream,
    DataStats,
    Example,
    Rows,
    chat_template_of,
    data_line,
    load_examples,
    parse_rows,
    split_eval,
)
from .data.partitioners import PARTITIONERS, partitioner_for, samples_of
from .errors import UserError
from .model import loader
from .model.families import Family, config_of, family_for, hf_of
from .model.partial import PartialModel, return_freed_memory
from .model.split import ClientPart, Compute, ServerPart
from .optim import LrSchedule
from .policy import POLICIES
from .precision import COMPUTE_DTYPES, STORAGE_DTYPES, Precision, resolve
from .registry import check_names
from .seeding import derive_seed, seed_everything
from .server import SplitServer
from .track import check_tracker
from .transport.compress import codec_problems

REGISTRIES = (STORAGE_DTYPES, COMPUTE_DTYPES, PARTITIONERS, POLICIES)
"""The registries every runtime builds from; a runtime adds its own (the simulator: methods, device profiles)."""


def name_problems(cfg: Config) -> list[str]:
    return check_names(cfg, REGISTRIES) + codec_problems(cfg) + tracker_problems(cfg)


def tracker_problems(cfg: Config) -> list[str]:
    """metrics.report_to must name a tracker whose library is installed."""
    try:
        check_tracker(cfg.metrics.report_to)
    except UserError as e:
        return [str(e)]
    return []


def load(path: str | Path | None, overrides: list[str] | None = None, *checks: Check) -> Config:
    """`load_config` with every registry's name check (and a runtime's `checks`) among its problems."""
    return load_config(path, overrides, (name_problems, *checks))


def check(cfg: Config, *checks: Check) -> None:
    """The same checks for a config built in code (experiment arms, tests), before anything loads.

    Raises:
        ConfigError: every problem found.
    """
    problems = [p for c in (name_problems, *checks) for p in c(cfg)]
    if problems:
        raise ConfigError(problems)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"model.device: '{name}' requested but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def precision_of(cfg: Config) -> Precision:
    """The run's dtypes on this machine's device (`precision.resolve`: auto decided here, and why).

    Raises:
        UserError: a compute dtype the device cannot run well, or 16-bit storage under float32 compute.
    """
    return resolve(cfg.train.compute_dtype, cfg.model.dtype, resolve_device(cfg.model.device))


def compute_of(cfg: Config) -> Compute:
    """How every part of this run computes (`model.split.Compute`), its precision resolved here (`precision_of`)."""
    return Compute(precision_of(cfg), cfg.train.activation_checkpointing, cfg.train.loss_chunk_tokens)


def precision_line(compute: Compute) -> str:
    """What a party's log says about how it computes."""
    p = compute.precision
    r = p.record()
    return (f"computing in {r['compute_dtype']} ({p.why}), frozen weights stored in {r['storage_dtype']}"
            + (", activation checkpointing" if compute.checkpointing else "")
            + (f", loss over {compute.loss_chunk} tokens at a time" if compute.loss_chunk else ""))


def check_model(cfg: Config) -> loader.ModelMeta:
    """The model's metadata, with every config value that depends on it checked (no weights read), and the dtypes
    this machine can run it in.

    Raises:
        UserError: a bad model source, a config value that does not fit the model, or unfit dtypes.
    """
    precision_of(cfg)
    meta = loader.read_meta(cfg.model.source)
    validate_against_model(cfg, meta.n_layer, meta.max_positions)
    return meta


@dataclass
class Setup:
    """Everything built from a config before training starts: model + LoRA, tokenizer, data, partition."""

    cfg: Config
    peft: torch.nn.Module
    family: Family
    tokenizer: Any
    train: list[Example]
    eval: list[Example]
    data_stats: DataStats
    device: torch.device
    parts: list[list[int]]
    """Indices into `train`, one list per client."""
    compute: Compute = Compute()
    """How every part computes: precision, activation checkpointing, the loss's head chunks (`compute_of`)."""

    @property
    def n_layer(self) -> int:
        return len(self.family.blocks(hf_of(self.peft)))

    @property
    def pad_id(self) -> int:
        return pad_id_of(self.tokenizer)

    def data_record(self) -> dict[str, Any]:
        """What became of the data's rows (rows, samples, truncated, dropped by reason), and each client's share."""
        clients = {str(c): {"train_samples": len(p), "truncated": sum(self.train[i].truncated for i in p)}
                   for c, p in enumerate(self.parts)}
        return {**self.data_stats.record(), "train_samples": len(self.train), "eval_samples": len(self.eval),
                "clients": clients}

    def data_line(self) -> str:
        return data_line(self.data_stats, len(self.train), len(self.eval), self.cfg.data)


def pad_id_of(tokenizer: Any) -> int:
    """The padding token id (the tokenizer's pad token, else its end-of-sequence token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def build_model(cfg: Config, checked: loader.ModelMeta | None = None) -> tuple[torch.nn.Module, Family, Any,
                                                                              torch.device]:
    """The model with seeded rank-r LoRA, its family, tokenizer and device: all a server needs (no data).

    Args:
        checked: what `check_model(cfg)` returned, when the caller has already checked the config against the
            model; None checks it here (before any weight loads).
    """
    base, tokenizer, device = load_base(cfg, checked)
    family = family_for(config_of(base).model_type)
    return seeded_lora(cfg, base, family), family, tokenizer, device


def seeded_lora(cfg: Config, base: torch.nn.Module, family: Family) -> torch.nn.Module:
    """`base` wrapped with rank-r LoRA drawn from the run's seed: the same initial adapters on every process of a
    deployment, whether it holds the whole model (`build_model`) or some blocks (`open_model`)."""
    torch.manual_seed(cfg.federation.seed)
    return lora.wrap(base, family, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                     targets=cfg.lora.targets or family.lora_targets)


def open_model(cfg: Config, checked: loader.ModelMeta | None = None) -> PartialModel:
    """The model as `build_model` builds it (same seeded LoRA), with no base weight read yet."""
    if checked is None:
        check_model(cfg)
    device, compute = resolve_device(cfg.model.device), compute_of(cfg)
    seed_everything(cfg.federation.seed)
    loaded, weights = loader.open_weights(cfg.model.source, compute.precision.storage, cfg.federation.seed)
    family = family_for(config_of(loaded.model).model_type)
    for name, buf in loaded.model.named_buffers():  # rotary frequencies etc. are real already: to the device
        owner, _, attr = name.rpartition(".")
        loaded.model.get_submodule(owner)._buffers[attr] = buf.to(device)
    pm = PartialModel(seeded_lora(cfg, loaded.model, family), family, cfg.model.source, device, weights, compute,
                      loader.fingerprint(cfg.model.source, loaded.model.config))
    return_freed_memory()  # what building the skeleton and transformers' GGUF name tables left behind
    return pm


def load_base(cfg: Config, checked: loader.ModelMeta | None = None) -> tuple[torch.nn.Module, Any, torch.device]:
    """The base model (no LoRA) on its device, seeded as every run seeds it (tiny:<family> weights are random),
    and its tokenizer. `checked` as in `build_model`."""
    if checked is None:
        check_model(cfg)
    device = resolve_device(cfg.model.device)
    seed_everything(cfg.federation.seed)
    loaded = loader.load(cfg.model.source, precision_of(cfg).storage, cfg.federation.seed)
    return loaded.model.to(device), loaded.tokenizer, device


def build_setup(cfg: Config) -> Setup:
    """Model (`build_model`) + data + partition. No training.

    Raises:
        UserError: anything wrong with the model source, the data or a config value that needs the model.
    """
    meta = check_model(cfg)
    rows = check_data(cfg)
    peft, family, tokenizer, device = build_model(cfg, meta)
    train, held_out, stats = load_data(cfg, tokenizer, rows)
    parts = partitioner_for(cfg.data, cfg.federation.n_clients, cfg.federation.seed).partition(samples_of(train))
    return Setup(cfg, peft, family, tokenizer, train, held_out, stats, device, parts, compute_of(cfg))


def check_data(cfg: Config) -> Rows:
    """The data parsed; data that cannot train fails here, before any weight loads: a missing or unreadable
    file, columns that fit no format, every row bad, a chat template file that is not there."""
    chat_template_of(cfg.data)
    return parse_rows(cfg.data)


def load_data(cfg: Config, tokenizer: Any,
              rows: Rows | None = None) -> tuple[list[Example], list[Example], DataStats]:
    """(training examples, held-out examples, what became of the rows): the same split for every command."""
    examples, stats = load_examples(cfg.data, tokenizer, cfg.federation.seed, rows=rows)
    train, held_out = split_eval(examples, cfg.data.eval_fraction, cfg.data.max_eval_samples)
    return train, held_out, stats


def cut_rank(cfg: Config) -> int | None:
    """The cut layer's active rank, or None when it equals r (no mask: plain rank-r LoRA)."""
    return cfg.lora.r_cut if cfg.lora.r_cut < cfg.lora.r else None


def optimizer_settings(cfg: Config, steps_per_round: int | None = None) -> dict[str, Any]:
    """AdamW's settings and the lr schedule over the run (`steps_per_round`: optimizer steps of one party per
    round, local_steps unless the method differs: the centralized trainer takes a federation's steps)."""
    t, f = cfg.train, cfg.federation
    schedule = LrSchedule(t.lr, t.schedule, t.warmup_steps, steps_per_round or f.local_steps, f.rounds)
    return dict(lr=t.lr, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, schedule=schedule)


def split_server(cfg: Config, peft: torch.nn.Module, family: Family, first: int, compute: Compute) -> SplitServer:
    """The server of a split method (simulation and deployment alike): blocks [first, L), global store, computing
    as the run's `compute` says (`Setup.compute`, `PartialModel.compute`)."""
    n_layer = len(family.blocks(hf_of(peft)))
    part = ServerPart(peft, family, first, cut_rank(cfg), tail_cut(cfg, n_layer), compute)
    return SplitServer(part, lora.adapter_state_dict(peft), family, r_cut=cut_rank(cfg), **optimizer_settings(cfg))


def client_part(cfg: Config, peft: torch.nn.Module, family: Family, cut: int, compute: Compute) -> ClientPart:
    """A split client's part at `cut` (with its tail under split.shape=u), computing as `compute` says."""
    n_layer = len(family.blocks(hf_of(peft)))
    return ClientPart(peft, family, cut, cut_rank(cfg), tail_cut(cfg, n_layer), compute)


def split_client(setup: Setup, cid: int, cut: int) -> SplitClient:
    """Client `cid` with its partition's batch stream (same order in simulation and deployment)."""
    part = client_part(setup.cfg, setup.peft, setup.family, cut, setup.compute)
    return split_client_with(setup.cfg, cid, part, client_stream(setup, cid, setup.parts[cid]))


def split_client_with(cfg: Config, cid: int, part: ClientPart, stream: BatchStream) -> SplitClient:
    """Client `cid` on a given part and stream, with the run's optimizer settings and its own noise seed (a
    deployed client brings a part read from the model file and a stream over its own data)."""
    client = SplitClient(cid, part, stream, r_cut=cut_rank(cfg), **optimizer_settings(cfg))
    client.set_noise(cfg.privacy.noise, seed=derive_seed(cfg.federation.seed, "noise", cid),
                     grad_clip=cfg.privacy.grad_clip, grad_noise=cfg.privacy.grad_noise,
                     grad_keep=cfg.privacy.grad_keep)
    return client


def client_stream(setup: Setup, cid: int, idx: list[int]) -> BatchStream:
    """Batches of client `cid` over the training examples `idx`, in its own seeded order."""
    cfg = setup.cfg
    return BatchStream([setup.train[i] for i in idx], cfg.train.batch_size, setup.pad_id,
                       derive_seed(cfg.federation.seed, "stream", cid))
