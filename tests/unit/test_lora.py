"""Rank map, scaling convention, rank pattern applied by PEFT, adapter-only state dicts."""

import pytest
import torch

from splitft import lora
from splitft.model.families import family_for
from splitft.model.loader import load


def test_rank_for_gives_r_cut_on_both_sides_of_the_cut():
    assert [lora.rank_for(i, cut=2, r=16, r_cut=8) for i in range(5)] == [16, 8, 8, 16, 16]
    assert [lora.rank_for(i, cut=1, r=16, r_cut=4) for i in range(3)] == [4, 4, 16]


def test_scaling_is_alpha_over_rank():
    assert lora.scaling(32, 16) == 2.0 and lora.scaling(32, 8) == 4.0


def _peft(family="llama", ranks=None):
    m = load(f"tiny:{family}").model
    fam = family_for(m.config.model_type)
    return lora.wrap(m, fam, r=4, alpha=8, dropout=0.0, targets=fam.lora_targets, ranks=ranks), fam


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_per_layer_ranks_and_scaling_reach_the_modules(family):
    peft, fam = _peft(family, ranks={1: 2, 2: 2})
    seen = {}
    for name, module in peft.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "r", {}):
            layer = lora.layer_of(name, fam)
            seen[layer] = (module.r["default"], module.scaling["default"])
            assert module.lora_A["default"].weight.shape[0] == module.r["default"]
    assert seen == {0: (4, 2.0), 1: (2, 4.0), 2: (2, 4.0), 3: (4, 2.0)}


def test_only_lora_is_trainable_and_exported():
    peft, _ = _peft()
    trainable = {n for n, p in peft.named_parameters() if p.requires_grad}
    sd = lora.adapter_state_dict(peft)
    assert trainable == set(sd) and all(lora.is_lora_name(n) for n in sd)
    assert lora.state_nbytes(sd) == sum(t.numel() * 4 for t in sd.values())


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
