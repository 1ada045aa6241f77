"""FedAvg keyed by name, checked against hand-computed values."""

import torch

from splitft.aggregate import layerwise_fedavg


def test_weighted_mean_by_samples():
    a = {"l0.A": torch.tensor([1.0, 2.0])}
    b = {"l0.A": torch.tensor([3.0, 6.0])}
    out = layerwise_fedavg([a, b], [1, 3])  # (1*[1,2] + 3*[3,6]) / 4
    assert torch.allclose(out["l0.A"], torch.tensor([2.5, 5.0]))


def test_names_are_averaged_over_their_holders_only():
    a = {"l0": torch.tensor([2.0]), "l1": torch.tensor([10.0])}
    b = {"l0": torch.tensor([4.0])}  # b does not hold block 1
    out = layerwise_fedavg([a, b], [1, 1])
    assert out["l0"].item() == 3.0 and out["l1"].item() == 10.0


def test_single_update_comes_back_bit_identical():
    x = {"w": torch.randn(7, 5)}
    assert torch.equal(layerwise_fedavg([x], [13])["w"], x["w"])


def test_zero_weights_fall_back_to_uniform_and_dtype_is_kept():
    a, b = {"w": torch.tensor([1.0], dtype=torch.bfloat16)}, {"w": torch.tensor([3.0], dtype=torch.bfloat16)}
    out = layerwise_fedavg([a, b], [0, 0])
    assert out["w"].dtype == torch.bfloat16 and out["w"].item() == 2.0
