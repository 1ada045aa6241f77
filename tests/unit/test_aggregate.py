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


def test_a_rank_cut_payload_is_averaged_per_component_and_the_rest_keeps_the_base():
    """Block held at rank 2 by client a (its cut layer, r_cut=1) and rank 2 by client b: component 0 is the
    mean of both, component 1 comes from b alone; B tensors slice along dim 1."""
    base = {"x.lora_A.w": torch.zeros(2, 3), "x.lora_B.w": torch.zeros(3, 2)}
    a = {"x.lora_A.w": torch.full((1, 3), 4.0), "x.lora_B.w": torch.full((3, 1), 4.0)}
    b = {"x.lora_A.w": torch.ones(2, 3), "x.lora_B.w": torch.ones(3, 2)}
    out = layerwise_fedavg([a, b], [1, 3], base)
    assert torch.equal(out["x.lora_A.w"], torch.tensor([[1.75] * 3, [1.0] * 3]))  # (1*4 + 3*1) / 4, then b
    assert torch.equal(out["x.lora_B.w"], torch.tensor([[1.75, 1.0]] * 3))


def test_components_nobody_trained_keep_the_base_value():
    base = {"x.lora_A.w": torch.arange(6.0).reshape(3, 2)}
    a = {"x.lora_A.w": torch.full((1, 2), 9.0)}
    out = layerwise_fedavg([a], [5], base)
    assert torch.equal(out["x.lora_A.w"], torch.tensor([[9.0, 9.0], [2.0, 3.0], [4.0, 5.0]]))


def test_zero_weight_copies_do_not_count_when_others_have_weight():
    base = {"w": torch.zeros(2)}
    out = layerwise_fedavg([{"w": torch.tensor([8.0, 8.0])}, {"w": torch.tensor([2.0, 2.0])}], [0, 2], base)
    assert torch.equal(out["w"], torch.tensor([2.0, 2.0]))


def test_a_slice_that_is_not_leading_is_refused():
    import pytest

    with pytest.raises(AssertionError, match="leading slice"):
        layerwise_fedavg([{"w": torch.zeros(3, 2)}], [1], {"w": torch.zeros(2, 2)})
