"""Shared helpers: tiny random-init models of every family, tiny configs, small data files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitft.config import Config, load_config
from splitft.model.families import FAMILIES as SPECS

FAMILIES = list(SPECS)  # every family's tests run on its own tiny model (`Family.tiny`)


def tiny_config(tmp_path: Path, family: str = "llama", *overrides: str) -> Config:
    """A config on `tiny:<family>` and the builtin data, small enough to train in seconds."""
    base = [f"model.source=tiny:{family}", "data.max_samples=120", "data.max_length=200", "federation.n_clients=2",
            "federation.rounds=2", "federation.local_steps=2", "train.batch_size=2", "data.max_eval_samples=8",
            "lora.r=4", "lora.r_cut=4", "lora.alpha=8", "split.cut=2", "metrics.progress=false",
            f"metrics.out_dir={tmp_path / 'run'}"]
    return load_config(None, base + list(overrides))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    rows = [{"prompt": f"Say {w}.", "response": f"{w} {w}!"} for w in
            ["alas", "anon", "hark", "fie", "prithee", "forsooth", "marry", "zounds", "sirrah", "ay"] * 3]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


def tiny_split_server(first: int = 2, lr: float = 0.1, tail_cut: int | None = None):
    """(peft model, SplitServer holding blocks [first, L)) of tiny:llama at rank 4: a server to send requests to.
    With `tail_cut`, a U-shaped split's server: blocks [first, tail_cut)."""
    from splitft import lora
    from splitft.model.families import family_for
    from splitft.model.loader import load
    from splitft.model.split import ServerPart
    from splitft.server import SplitServer

    fam = family_for("llama")
    peft = lora.wrap(load("tiny:llama").model, fam, r=4, alpha=8, dropout=0.0, targets=fam.lora_targets)
    return peft, SplitServer(ServerPart(peft, fam, first, tail_cut=tail_cut), lora.adapter_state_dict(peft), fam,
                             lr=lr)
