"""Split sample indices among clients: disjoint, covering every sample once, reproducible from a seed.

Each partitioner is a small class with `partition(samples) -> list[list[int]]` (one sorted index list per
client), picked by name from `PARTITIONERS`. `Samples` carries each sample's token length and, when the data
has one, a category (e.g. the `play` column).

    iid               shuffle and deal round-robin
    length_dirichlet  SplitFT: bucket by token length into K buckets (quantile edges by default, or explicit
                      edges), then spread each bucket over clients with Dirichlet(alpha) proportions
    dirichlet         the same over the values of a categorical column instead of length buckets
    natural           each client gets whole categories (organizations holding different data), balanced by size
Small alpha (0.1) gives highly skewed clients; large alpha approaches IID.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import DataConfig
from ..errors import UserError
from ..registry import Registry

MAX_ATTEMPTS = 100


@dataclass
class Samples:
    lengths: list[int]
    categories: list[str] | None = None

    def __len__(self) -> int:
        return len(self.lengths)


def _check_counts(n_samples: int, n_clients: int) -> None:
    if n_samples == 0:
        raise UserError("data: the dataset is empty; nothing to partition")
    if n_clients > n_samples:
        raise UserError(f"federation.n_clients={n_clients} exceeds the {n_samples} samples; "
                        f"lower n_clients or add data")


def dirichlet_split(buckets: np.ndarray, n_clients: int, alpha: float, seed: int, min_size: int) -> list[list[int]]:
    """Spread each bucket's samples over clients with Dirichlet(alpha) proportions; re-draw until every client
    has at least `min_size` samples (at most MAX_ATTEMPTS draws).

    Args:
        buckets: (N,) int bucket id per sample.

    Raises:
        UserError: no draw met `min_size` (says to raise alpha or lower the client count).
    """
    _check_counts(len(buckets), n_clients)
    if alpha <= 0:
        raise UserError(f"data.alpha: must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    for _ in range(MAX_ATTEMPTS):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for b in np.unique(buckets):
            idx = rng.permutation(np.flatnonzero(buckets == b))
            props = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for c, chunk in enumerate(np.split(idx, cuts)):
                parts[c].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [sorted(p) for p in parts]
    raise UserError(f"data: no Dirichlet(alpha={alpha}) draw in {MAX_ATTEMPTS} attempts gave every one of "
                    f"{n_clients} clients at least data.min_partition_size={min_size} samples; raise data.alpha, "
                    f"lower federation.n_clients or lower data.min_partition_size")


def length_buckets(lengths: Sequence[int], n_buckets: int, edges: Sequence[int] = ()) -> np.ndarray:
    """Bucket id per sample: `edges` (ascending, K-1 inner boundaries) or K quantile buckets of the lengths.

    A sample of length l goes to bucket i when edges[i-1] <= l < edges[i].

    Raises:
        UserError: K > number of distinct lengths, or edges not strictly ascending.
    """
    arr = np.asarray(lengths)
    if edges:
        e = np.asarray(edges)
        if np.any(np.diff(e) <= 0):
            raise UserError(f"data.bucket_edges: must be strictly ascending, got {list(edges)}")
        return np.searchsorted(e, arr, side="right")
    distinct = len(np.unique(arr))
    if n_buckets > distinct:
        raise UserError(f"data.n_buckets={n_buckets} exceeds the {distinct} distinct sample lengths; "
                        f"lower data.n_buckets")
    # Quantile edges; ties can merge quantiles, so buckets are re-numbered densely afterwards.
    inner = np.unique(np.quantile(arr, np.linspace(0, 1, n_buckets + 1)[1:-1], method="higher"))
    return np.unique(np.searchsorted(inner, arr, side="right"), return_inverse=True)[1]


def category_buckets(categories: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Bucket id per sample (dense, in sorted category order) and the category name of each bucket."""
    names, ids = np.unique(np.asarray(categories, dtype=str), return_inverse=True)
    return ids, [str(n) for n in names]


@dataclass
class IidPartitioner:
    """Shuffle, then deal indices round-robin: sizes differ by at most one."""

    n_clients: int
    seed: int = 0

    def partition(self, samples: Samples) -> list[list[int]]:
        _check_counts(len(samples), self.n_clients)
        order = np.random.default_rng(self.seed).permutation(len(samples))
        return [sorted(order[c :: self.n_clients].tolist()) for c in range(self.n_clients)]


@dataclass
class LengthDirichletPartitioner:
    """SplitFT's non-IID split for unlabeled text: length buckets x Dirichlet(alpha) over clients."""

    n_clients: int
    alpha: float = 0.5
    n_buckets: int = 5
    edges: list[int] = field(default_factory=list)
    min_size: int = 1
    seed: int = 0

    def buckets(self, samples: Samples) -> np.ndarray:
        return length_buckets(samples.lengths, self.n_buckets, self.edges)

    def partition(self, samples: Samples) -> list[list[int]]:
        _check_counts(len(samples), self.n_clients)
        return dirichlet_split(self.buckets(samples), self.n_clients, self.alpha, self.seed, self.min_size)


@dataclass
class CategoryDirichletPartitioner:
    """Dirichlet(alpha) over the values of a categorical column (the classic label-skew split)."""

    n_clients: int
    alpha: float = 0.5
    min_size: int = 1
    seed: int = 0

    def buckets(self, samples: Samples) -> np.ndarray:
        if samples.categories is None:
            raise UserError("data.partitioner=dirichlet needs data.category_column naming a column of the data")
        return category_buckets(samples.categories)[0]

    def partition(self, samples: Samples) -> list[list[int]]:
        _check_counts(len(samples), self.n_clients)
        return dirichlet_split(self.buckets(samples), self.n_clients, self.alpha, self.seed, self.min_size)


@dataclass
class NaturalPartitioner:
    """Whole categories per client, as organizations hold their own data: categories largest first (ties in a
    seeded order), each to the client with the fewest samples so far (greedy balancing: the largest client
    exceeds the mean by at most the largest category)."""

    n_clients: int
    min_size: int = 1
    seed: int = 0

    def partition(self, samples: Samples) -> list[list[int]]:
        _check_counts(len(samples), self.n_clients)
        if samples.categories is None:
            raise UserError("data.partitioner=natural needs data.category_column naming a column of the data")
        ids, names = category_buckets(samples.categories)
        if len(names) < self.n_clients:
            raise UserError(f"data.partitioner=natural: {len(names)} categories for {self.n_clients} clients, and "
                            f"each client needs a whole one; lower federation.n_clients or use dirichlet")
        sizes = np.bincount(ids, minlength=len(names))
        order = sorted(np.random.default_rng(self.seed).permutation(len(names)).tolist(), key=lambda b: -sizes[b])
        parts: list[list[int]] = [[] for _ in range(self.n_clients)]
        for b in order:
            c = min(range(self.n_clients), key=lambda c: (len(parts[c]), c))
            parts[c].extend(np.flatnonzero(ids == b).tolist())
        if min(len(p) for p in parts) < self.min_size:
            raise UserError(f"data.partitioner=natural: a client got fewer than data.min_partition_size="
                            f"{self.min_size} samples; lower federation.n_clients")
        return [sorted(p) for p in parts]


Partitioner = IidPartitioner | LengthDirichletPartitioner | CategoryDirichletPartitioner | NaturalPartitioner
PARTITIONERS = Registry("data.partitioner", {"iid": IidPartitioner, "length_dirichlet": LengthDirichletPartitioner,
                                             "dirichlet": CategoryDirichletPartitioner,
                                             "natural": NaturalPartitioner})


def samples_of(examples: Sequence[Any]) -> Samples:
    """Samples (token lengths, categories when every example has one) of tokenized `Example`s."""
    cats = [e.category for e in examples]
    return Samples([len(e) for e in examples], None if None in cats else [str(c) for c in cats])


def partitioner_for(d: DataConfig, n_clients: int, seed: int) -> Partitioner:
    """The partitioner `d.partitioner` names, built from plain values of the data section."""
    values = dict(n_clients=n_clients, seed=seed, alpha=d.alpha, n_buckets=d.n_buckets, edges=list(d.bucket_edges),
                  min_size=d.min_partition_size)
    cls = PARTITIONERS[d.partitioner]
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


def histogram(parts: list[list[int]], buckets: np.ndarray) -> np.ndarray:
    """(n_clients, n_buckets) sample counts."""
    k = int(buckets.max()) + 1 if len(buckets) else 0
    return np.stack([np.bincount(buckets[p], minlength=k) if p else np.zeros(k, int) for p in parts])


def mean_js_distance(hist: np.ndarray) -> float:
    """Mean pairwise Jensen-Shannon distance (base 2, in [0, 1]) between clients' bucket distributions.

    0 = every client has the same distribution (IID); 1 = clients share no bucket.
    """
    p = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        m = a > 0
        return float(np.sum(a[m] * np.log2(a[m] / b[m])))

    dists = []
    for i in range(len(p)):
        for j in range(i + 1, len(p)):
            m = (p[i] + p[j]) / 2
            dists.append(np.sqrt(max(0.5 * kl(p[i], m) + 0.5 * kl(p[j], m), 0.0)))
    return float(np.mean(dists)) if dists else 0.0
