"""Rank map, scaling convention, rank pattern applied by PEFT, adapter-only state dicts."""

import pytest
import torch

from splitft import lora
from splitft.model.families import family_for
from splitft.model.loader import load


def test_the_cut_layer_is_the_last_client_block_and_the_first_server_block():
    assert lora.cut_layers(2) == (1, 2) and lora.cut_layers(1) == (0, 1)


def _peft(family="llama"):
    m = load(f"tiny:{family}").model
    fam = family_for(m.config.model_type)
    return lora.wrap(m, fam, r=4, alpha=8, dropout=0.0, targets=fam.lora_targets), fam


def _lora_module(peft, fam, layer):
    return next(m for n, m in peft.named_modules() if hasattr(m, "lora_A") and lora.layer_of(n, fam) == layer
                and "default" in m.lora_A)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_masked_cut_layer_computes_alpha_over_r_times_leading_components(family):
    """y = W x + (alpha / r) * B[:, :k] A[:k] x on blocks cut-1 and cut; every other block uses all r."""
    peft, fam = _peft(family)
    torch.manual_seed(0)
    for p in lora.lora_parameters(peft).values():
        p.data.normal_()
    lora.CutRankMask(peft, fam, r_cut=2).set(2)  # blocks 1 and 2 masked to 2 of 4 components
    for layer, k in [(0, 4), (1, 2), (2, 2), (3, 4)]:
        mod = _lora_module(peft, fam, layer)
        a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
        x = torch.randn(3, a.shape[1])
        delta = mod(x) - mod.base_layer(x)
        assert mod.scaling["default"] == 8 / 4 == 2.0  # alpha / stored r, also on the masked cut layer
        assert torch.allclose(delta, 2.0 * x @ a[:k].T @ b[:, :k].T, atol=1e-5), (layer, k)


def test_masked_components_get_no_gradient():
    peft, fam = _peft()
    for p in lora.lora_parameters(peft).values():
        p.data.normal_()
    lora.CutRankMask(peft, fam, r_cut=1).set(1)
    ids = torch.randint(0, 200, (2, 6))
    peft(input_ids=ids).logits.sum().backward()
    mod = _lora_module(peft, fam, 1)
    grad_a, grad_b = mod.lora_A["default"].weight.grad, mod.lora_B["default"].weight.grad
    assert grad_a[1:].abs().sum() == 0 and grad_b[:, 1:].abs().sum() == 0
    assert mod.lora_A["default"].weight.grad[0].abs().sum() > 0
    full = _lora_module(peft, fam, 3)
    assert full.lora_B["default"].weight.grad[:, 1:].abs().sum() > 0


def test_cut_payload_carries_r_cut_components_of_the_last_client_block_only():
    peft, fam = _peft()
    sd = lora.adapter_state_dict(peft)
    client = {n: t for n, t in sd.items() if lora.layer_of(n, fam) < 2}
    payload = lora.cut_payload(client, fam, cut=2, r_cut=1)
    for n, t in payload.items():
        want = 1 if lora.layer_of(n, fam) == 1 else 4
        assert t.shape[lora.rank_dim(n)] == want and torch.equal(t, client[n].narrow(lora.rank_dim(n), 0, want))
    block1 = sum(t.numel() for n, t in client.items() if lora.layer_of(n, fam) == 1)
    assert lora.active_lora_numel(client, fam, 2, 1) == sum(t.numel() for t in client.values()) - block1 * 3 // 4


def test_payload_round_trip_restores_the_leading_components_and_keeps_the_rest():
    peft, fam = _peft()
    for p in lora.lora_parameters(peft).values():
        p.data.normal_()
    before = lora.adapter_state_dict(peft)
    payload = {n: t * 3 for n, t in lora.cut_payload(before, fam, cut=2, r_cut=1).items()}
    lora.load_adapter_state_dict(peft, payload)
    after = lora.adapter_state_dict(peft)
    for n, t in after.items():
        d, k = lora.rank_dim(n), payload[n].shape[lora.rank_dim(n)]
        assert torch.equal(t.narrow(d, 0, k), payload[n])
        assert torch.equal(t.narrow(d, k, t.shape[d] - k), before[n].narrow(d, k, t.shape[d] - k))


def test_only_lora_is_trainable_and_exported():
    peft, _ = _peft()
    trainable = {n for n, p in peft.named_parameters() if p.requires_grad}
    sd = lora.adapter_state_dict(peft)
    assert trainable == set(sd) and all(lora.is_lora_name(n) for n in sd)


def test_load_adapter_state_dict_is_in_place_and_checks_shapes():
    peft, _ = _peft()
    sd = {k: torch.full_like(v, 0.5) for k, v in lora.adapter_state_dict(peft).items()}
    params = dict(peft.named_parameters())
    before = {k: params[k] for k in sd}
    lora.load_adapter_state_dict(peft, sd)
    assert all(before[k] is params[k] and torch.all(params[k] == 0.5) for k in sd)
    bad = dict(sd)
    k0 = next(iter(bad))
    bad[k0] = torch.zeros(1)
    with pytest.raises(AssertionError, match="shape"):
        lora.load_adapter_state_dict(peft, bad)


def test_unknown_targets_fail_with_the_family_default_in_the_message():
    m = load("tiny:llama").model
    with pytest.raises(ValueError, match="q_proj"):
        lora.wrap(m, family_for("llama"), r=4, alpha=8, dropout=0.0, targets=["nonexistent"])
