"""`splitft partition`: show how a config splits the data among clients, without loading model weights.

    splitft partition --config configs/default.yaml data.partitioner=length_dirichlet data.alpha=0.1 --png p.png
prints per client the sample count and its histogram over token-length buckets (or categories for
`dirichlet`), the mean Jensen-Shannon distance between clients (0 = IID), and optionally saves a heat map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import BY_CATEGORY, Config
from ..model.loader import load_tokenizer
from .datasets import load_examples, split_eval
from .files import resolve_path
from .partitioners import (
    Samples,
    category_buckets,
    histogram,
    length_buckets,
    mean_js_distance,
    partitioner_for,
    samples_of,
)


def _display_buckets(cfg: Config, samples: Samples) -> tuple[np.ndarray, list[str]]:
    """Bucket id per sample and a label per bucket: categories for `dirichlet`, length ranges otherwise."""
    if cfg.data.partitioner in BY_CATEGORY:
        return category_buckets(samples.categories or [])
    ids = length_buckets(samples.lengths, cfg.data.n_buckets, cfg.data.bucket_edges)
    lengths = np.asarray(samples.lengths)
    labels = [f"{lengths[ids == b].min()}-{lengths[ids == b].max()}" for b in range(int(ids.max()) + 1)]
    return ids, labels


def describe(cfg: Config) -> dict[str, Any]:
    """Partition the training split exactly as `simulate` would and return counts per client and bucket."""
    resolve_path(cfg.data.path)  # a missing data file fails before the tokenizer loads
    examples, _ = load_examples(cfg.data, load_tokenizer(cfg.model.source), cfg.federation.seed)
    train, _ = split_eval(examples, cfg.data.eval_fraction, cfg.data.max_eval_samples)
    samples = samples_of(train)
    parts = partitioner_for(cfg.data, cfg.federation.n_clients, cfg.federation.seed).partition(samples)
    d = cfg.data
    ids, labels = _display_buckets(cfg, samples)
    hist = histogram(parts, ids)
    return {"partitioner": d.partitioner, "alpha": d.alpha, "buckets": labels, "sizes": [len(p) for p in parts],
            "histogram": hist.tolist(), "mean_js_distance": mean_js_distance(hist)}


WIDE = 12
"""More buckets than this (e.g. the 201 modules of builtin:python_stdlib) print as a summary per client."""


def format_table(info: dict[str, Any]) -> str:
    wide = len(info["buckets"]) > WIDE
    heads = ["client", "samples"] + (["categories", "largest three (samples)"] if wide else info["buckets"])
    rows = [[str(c), str(n)] + (_summary(h, info["buckets"]) if wide else [str(v) for v in h])
            for c, (n, h) in enumerate(zip(info["sizes"], info["histogram"], strict=True))]
    widths = [max(len(r[i]) for r in [heads] + rows) for i in range(len(heads))]
    lines = ["  ".join(x.rjust(w) for x, w in zip(r, widths, strict=True)) for r in [heads] + rows]
    kind = "categories" if info["partitioner"] in BY_CATEGORY else "token-length buckets"
    shown = f"{len(info['buckets'])} {kind}, summarised; --json or --png for all" if wide else f"{kind} as columns"
    lines.append(f"partitioner={info['partitioner']} alpha={info['alpha']} ({shown}); "
                 f"mean Jensen-Shannon distance between clients: {info['mean_js_distance']:.3f} (0 = IID)")
    return "\n".join(lines)


def _summary(counts: list[int], names: list[str]) -> list[str]:
    """How many buckets a client holds samples of, and its three largest."""
    top = sorted(((n, name) for n, name in zip(counts, names, strict=True) if n), reverse=True)[:3]
    return [str(sum(1 for n in counts if n)), ", ".join(f"{name} ({n})" for n, name in top)]


def save_heatmap(info: dict[str, Any], path: str | Path) -> None:
    """Clients x buckets heat map of the share of each client's samples in each bucket."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = np.asarray(info["histogram"], dtype=float)
    share = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    wide = len(info["buckets"]) > WIDE  # no room for a count in each cell or a name under each column
    fig, ax = plt.subplots(figsize=(14 if wide else 1.2 + 0.9 * len(info["buckets"]), 1.5 + 0.45 * len(hist)))
    im = ax.imshow(share, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for (i, j), v in ([] if wide else np.ndenumerate(hist)):
        ax.text(j, i, str(int(v)), ha="center", va="center", color="white" if share[i, j] < 0.6 else "black",
                fontsize=8)
    is_cat = info["partitioner"] in BY_CATEGORY
    if wide:
        ax.set_xticks([])
    else:
        ax.set_xticks(range(len(info["buckets"])), info["buckets"], rotation=45 if is_cat else 0,
                      ha="right" if is_cat else "center")
    ax.set_yticks(range(len(hist)), [f"client {c} ({n})" for c, n in enumerate(info["sizes"])])
    ax.set_xlabel(f"{len(info['buckets'])} categories (names: --json)" if wide else
                  "category" if is_cat else "sample length bucket (tokens)")
    ax.set_title(f"{info['partitioner']} alpha={info['alpha']}: share of each client's samples "
                 f"(JS distance {info['mean_js_distance']:.2f})", fontsize=9)
    fig.colorbar(im, ax=ax, label="share of client's samples")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
