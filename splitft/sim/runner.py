"""Run a whole federation in one process over the in-process transport and write a run directory.

    splitft simulate --config configs/default.yaml federation.rounds=2
writes <out_dir>/config.yaml, metrics.jsonl, summary.json and adapter/ (loadable with
`peft.PeftModel.from_pretrained(base_model, "<out_dir>/adapter")`).
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import lora
from ..client import SplitClient
from ..config import Config, save_config, validate_against_model
from ..data.datasets import BatchStream, Example, load_examples, resolve_path, split_eval
from ..data.partitioners import partitioner_for, samples_of
from ..errors import UserError
from ..federation import Federation
from ..metrics import MetricsLogger
from ..model import loader
from ..model.families import Family, family_for
from ..model.split import ClientPart, ServerPart
from ..server import SplitServer
from ..transport.inproc import InProcTransport

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"model.device: '{name}' requested but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def build(cfg: Config) -> Setup:
    """Validate against model metadata, load model + data, wrap LoRA with the rank map. No training.

    Raises:
        UserError: anything wrong with the model source, the data or a config value that needs the model.
    """
    meta = loader.read_meta(cfg.model.source)
    validate_against_model(cfg, meta.n_layer, meta.max_positions)
    resolve_path(cfg.data.path)  # a missing data file fails before the weights load
    device = resolve_device(cfg.model.device)
    seed_everything(cfg.federation.seed)
    loaded = loader.load(cfg.model.source, DTYPES[cfg.model.dtype], cfg.federation.seed)
    examples, stats = load_examples(cfg.data, loaded.tokenizer, cfg.federation.seed)
    train, held_out = split_eval(examples, cfg.data.eval_fraction, cfg.data.max_eval_samples)
    parts = partitioner_for(cfg).partition(samples_of(train))
    family = family_for(loaded.model.config.model_type)
    ranks = {i: lora.rank_for(i, cfg.split.cut, cfg.lora.r, cfg.lora.r_cut) for i in range(meta.n_layer)}
    torch.manual_seed(cfg.federation.seed)  # LoRA A init
    peft = lora.wrap(loaded.model.to(device), family, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                     targets=cfg.lora.targets or family.lora_targets, ranks=ranks)
    return Setup(cfg, peft, family, loaded.tokenizer, train, held_out, stats, device, parts)


def build_federation(setup: Setup, logger: MetricsLogger, on_step: Any = None) -> Federation:
    """Server part, N clients (each with its partition and a client part), in-process transport."""
    cfg, fed = setup.cfg, setup.cfg.federation
    parts = setup.parts
    server_part = ServerPart(setup.peft, setup.family, cfg.split.cut)
    opt_kw = dict(lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, max_grad_norm=cfg.train.max_grad_norm)
    server = SplitServer(server_part, lora.adapter_state_dict(ClientPart(setup.peft, setup.family, cfg.split.cut)
                                                              .module), **opt_kw)
    clients = {}
    for cid, idx in enumerate(parts):
        stream = BatchStream([setup.train[i] for i in idx], cfg.train.batch_size, setup.pad_id, fed.seed + 7919 * cid)
        clients[cid] = SplitClient(cid, ClientPart(setup.peft, setup.family, cfg.split.cut), stream, **opt_kw)
    logger.log("setup", partition_sizes=[len(p) for p in parts], **setup.data_stats, eval_samples=len(setup.eval),
               n_layer=server_part.n_layer, family=setup.family.name, device=str(setup.device))
    return Federation(server, clients, InProcTransport(server), eval_examples=setup.eval,
                      batch_size=cfg.train.batch_size, pad_id=setup.pad_id, local_steps=fed.local_steps,
                      clients_per_round=fed.clients_per_round, seed=fed.seed, logger=logger, on_step=on_step)


def export_adapter(setup: Setup, federation: Federation, path: Path) -> None:
    """Global client adapters + server adapters into the full PeftModel, saved in PEFT's format."""
    merged = {**federation.server.global_adapters(setup.cfg.split.cut), **federation.server.adapters()}
    lora.load_adapter_state_dict(setup.peft, merged)
    setup.peft.save_pretrained(str(path))


def refuse_existing_run(cfg: Config) -> None:
    """Checked before any model loads, so a name clash costs nothing and overwrites nothing."""
    out = Path(cfg.metrics.out_dir)
    if (out / "metrics.jsonl").exists():
        raise UserError(f"metrics.out_dir: '{out}' already holds a run; choose a new metrics.out_dir "
                        f"(nothing was overwritten)")


def prepare_run_dir(cfg: Config) -> Path:
    refuse_existing_run(cfg)
    out = Path(cfg.metrics.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return out


def run_simulation(cfg: Config) -> dict[str, Any]:
    """Build, train `federation.rounds` rounds, evaluate, export; returns the summary also written to disk."""
    from tqdm import tqdm

    refuse_existing_run(cfg)
    setup = build(cfg)
    out = prepare_run_dir(cfg)
    logger = MetricsLogger(out / "metrics.jsonl")
    total = cfg.federation.rounds * cfg.federation.local_steps * (cfg.federation.clients_per_round
                                                                  or cfg.federation.n_clients)
    bar = tqdm(total=total, desc="split steps", unit="step", disable=not cfg.metrics.progress, file=sys.stderr)
    fed = build_federation(setup, logger, on_step=lambda r: (bar.update(1), bar.set_postfix(loss=f"{r['loss']:.3f}")))
    rounds = [logger.log("round", round=-1, **fed.evaluate(-1))]  # the pretrained model, before any step
    bar.write(f"round -1 (pretrained): eval_ppl={rounds[0]['eval_ppl']:.2f}")
    for r in range(cfg.federation.rounds):
        due = (r + 1) % cfg.metrics.eval_every == 0 or r == cfg.federation.rounds - 1
        rec = fed.run_round(r, evaluate=due)
        rounds.append(rec)
        bar.write(_round_line(rec))
    bar.close()
    export_adapter(setup, fed, out / "adapter")
    summary = _summary(rounds, fed, logger.elapsed())
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.close()
    return summary


def _round_line(rec: dict[str, Any]) -> str:
    line = f"round {rec['round']}: train_loss={rec['train_loss']:.4f}"
    if "eval_ppl" in rec:
        line += f" eval_ppl={rec['eval_ppl']:.2f} eval_acc={rec['eval_acc']:.3f}"
    return line + f" bytes_up={rec['bytes_up'] / 1e6:.1f}MB bytes_down={rec['bytes_down'] / 1e6:.1f}MB"


def _summary(rounds: list[dict[str, Any]], fed: Federation, wall: float) -> dict[str, Any]:
    evals = [r for r in rounds if "eval_ppl" in r]
    return {"initial_eval_ppl": evals[0]["eval_ppl"], "final_eval_ppl": evals[-1]["eval_ppl"],
            "final_eval_acc": evals[-1]["eval_acc"], "rounds": len(rounds) - 1,
            "bytes": fed.transport.counter.totals(), "wall_time_s": round(wall, 2)}
