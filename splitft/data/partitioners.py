"""Split sample indices among clients: disjoint, covering every sample once, reproducible from a seed.

Each partitioner is a small class with `partition(lengths) -> list[list[int]]` (one index list per client),
picked by name from `PARTITIONERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UserError


def _check_counts(n_samples: int, n_clients: int) -> None:
    if n_samples == 0:
        raise UserError("data: the dataset is empty; nothing to partition")
    if n_clients > n_samples:
        raise UserError(f"federation.n_clients={n_clients} exceeds the {n_samples} samples; "
                        f"lower n_clients or add data")


@dataclass
class IidPartitioner:
    """Shuffle, then deal indices round-robin: sizes differ by at most one."""

    n_clients: int
    seed: int = 0

    def partition(self, lengths: Sequence[int]) -> list[list[int]]:
        _check_counts(len(lengths), self.n_clients)
        order = np.random.default_rng(self.seed).permutation(len(lengths))
        return [sorted(order[c :: self.n_clients].tolist()) for c in range(self.n_clients)]


PARTITIONERS: dict[str, type] = {"iid": IidPartitioner}
