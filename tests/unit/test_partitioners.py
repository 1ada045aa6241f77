"""Partitioners: disjoint, covering, seeded, min size, alpha controls skew (property tests)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitft.data.partitioners import (
    CategoryDirichletPartitioner,
    IidPartitioner,
    LengthDirichletPartitioner,
    Samples,
    histogram,
    length_buckets,
    mean_js_distance,
)
from splitft.errors import UserError

lengths_st = st.lists(st.integers(1, 400), min_size=20, max_size=300)


def _check_cover(parts, n):
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n)), "every sample exactly once"


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, n_clients=st.integers(1, 6), alpha=st.floats(0.05, 100), seed=st.integers(0, 10**6),
       kind=st.sampled_from(["iid", "length", "category"]))
def test_partitions_are_disjoint_covering_and_deterministic(lengths, n_clients, alpha, seed, kind):
    samples = Samples(lengths, [str(x % 4) for x in lengths])
    k = min(3, len(set(lengths)))
    make = {"iid": lambda: IidPartitioner(n_clients, seed),
            "length": lambda: LengthDirichletPartitioner(n_clients, alpha, k, seed=seed, min_size=0),
            "category": lambda: CategoryDirichletPartitioner(n_clients, alpha, min_size=0, seed=seed)}[kind]
    parts = make().partition(samples)
    assert len(parts) == n_clients
    _check_cover(parts, len(lengths))
    assert parts == make().partition(samples)


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in IidPartitioner(7, 0).partition(Samples(list(range(100))))]
    assert max(sizes) - min(sizes) <= 1


def _js(alpha: float, seed: int) -> float:
    lengths = np.random.default_rng(0).integers(10, 500, 3000).tolist()
    p = LengthDirichletPartitioner(5, alpha, n_buckets=5, seed=seed)
    samples = Samples(lengths)
    return mean_js_distance(histogram(p.partition(samples), p.buckets(samples)))


def test_alpha_controls_skew():
    small = np.mean([_js(0.1, s) for s in range(5)])
    large = np.mean([_js(1000.0, s) for s in range(5)])
    assert small > 0.5 and large < 0.05, (small, large)


def test_quantile_buckets_are_balanced_and_edges_are_respected():
    lengths = list(range(100))
    assert np.bincount(length_buckets(lengths, 4)).tolist() == [25, 25, 25, 25]
    assert np.bincount(length_buckets(lengths, 99, edges=[10, 50])).tolist() == [10, 40, 50]


def test_min_partition_size_redraws_then_fails_with_advice():
    samples = Samples(list(range(200)))
    parts = LengthDirichletPartitioner(4, 0.5, 4, min_size=20, seed=1).partition(samples)
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(UserError, match="raise data.alpha"):
        LengthDirichletPartitioner(10, 0.01, 4, min_size=15, seed=1).partition(samples)


@pytest.mark.parametrize("make, message", [
    (lambda: LengthDirichletPartitioner(3, alpha=0.0).partition(Samples([1, 2, 3, 4, 5])), "alpha"),
    (lambda: IidPartitioner(5).partition(Samples([1, 2])), "exceeds the 2 samples"),
    (lambda: LengthDirichletPartitioner(2, n_buckets=5).partition(Samples([1, 1, 2, 2])), "distinct"),
    (lambda: IidPartitioner(2).partition(Samples([])), "empty"),
    (lambda: CategoryDirichletPartitioner(2).partition(Samples([1, 2, 3])), "category_column"),
    (lambda: length_buckets([1, 2, 3], 2, edges=[5, 3]), "ascending"),
])
def test_bad_input_raises_user_errors(make, message):
    with pytest.raises(UserError, match=message):
        make()


def test_js_distance_bounds():
    assert mean_js_distance(np.array([[5, 5], [10, 10]])) == pytest.approx(0.0)
    assert mean_js_distance(np.array([[5, 0], [0, 5]])) == pytest.approx(1.0)


def test_natural_gives_each_client_whole_categories_balanced_by_size():
    from splitft.data.partitioners import NaturalPartitioner

    cats = [f"m{i % 9}" for i in range(200)] + ["big"] * 40
    samples = Samples([10] * len(cats), cats)
    parts = NaturalPartitioner(n_clients=3, seed=1).partition(samples)
    owners = {c: {k for k, p in enumerate(parts) if any(cats[i] == c for i in p)} for c in set(cats)}
    assert all(len(o) == 1 for o in owners.values()), "a category never splits between clients"
    assert sorted(i for p in parts for i in p) == list(range(len(cats)))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 40, sizes  # greedy balance: within the largest category
    assert parts == NaturalPartitioner(n_clients=3, seed=1).partition(samples), "deterministic"
    with pytest.raises(UserError, match="10 categories for 11 clients"):
        NaturalPartitioner(n_clients=11).partition(samples)
    with pytest.raises(UserError, match="needs data.category_column"):
        NaturalPartitioner(n_clients=2).partition(Samples([1, 2, 3]))
