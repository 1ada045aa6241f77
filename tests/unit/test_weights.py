"""Only the weights a party runs (`model/weights.py`, `build.open_model`): the same model as a whole load."""

import pytest
import torch

from splitft import lora
from splitft.build import build_model, open_model
from splitft.model.split import ClientPart, ServerPart, full_forward
from tests.conftest import FAMILIES, tiny_config


@pytest.mark.parametrize("family", FAMILIES)
def test_a_partial_model_has_the_whole_loads_lora_and_computes_the_same(tmp_path, family):
    cfg = tiny_config(tmp_path, family, "federation.seed=3")
    pm, (full, fam, _, _) = open_model(cfg), build_model(cfg)
    a, b = lora.adapter_state_dict(pm.peft), lora.adapter_state_dict(full)
    assert a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k]) for k in a), "initial LoRA differs"
    pm.hold(pm.client_paths(2))
    pm.hold(pm.server_paths(2))
    ids = torch.randint(0, 250, (2, 7))
    mask = torch.ones_like(ids)
    out = ServerPart(pm.peft, fam, 2).forward(ClientPart(pm.peft, fam, 2).forward(ids, mask), mask, 2)
    assert torch.equal(out, full_forward(full, fam, ids, mask))


def test_a_client_reads_only_its_blocks_and_frees_those_it_gives_up(tmp_path):
    pm = open_model(tiny_config(tmp_path))
    pm.hold(pm.client_paths(1))
    held = {n for n, p in pm.peft.named_parameters() if p.device.type != "meta" and "lora_" not in n}
    assert held and all("layers.0." in n or "embed_tokens" in n for n in held)
    pm.hold(pm.client_paths(3))
    pm.drop(pm.blocks(range(1, 3)))
    held = {n for n, p in pm.peft.named_parameters() if p.device.type != "meta" and "lora_" not in n}
    assert all("layers.0." in n or "embed_tokens" in n for n in held)


def test_a_random_shape_draws_each_tensor_from_the_seed_and_its_name_alone(tmp_path):
    """random:<shape> (speed and memory benchmarks): a party holding some blocks reads the numbers a whole load
    reads, at the storage dtype, without a model file."""
    from splitft.model.loader import load, open_weights, read_meta
    from splitft.model.weights import materialize

    meta = read_meta("random:smollm2-135m")
    assert (meta.model_type, meta.n_layer, meta.max_positions) == ("llama", 30, 8192)
    loaded, weights = open_weights("random:smollm2-135m", torch.bfloat16, seed=5)
    materialize(loaded.model, weights, ["model.layers.3"], torch.device("cpu"), torch.bfloat16)
    part = dict(loaded.model.named_parameters())
    q = part["model.layers.3.self_attn.q_proj.weight"]
    assert q.dtype == torch.bfloat16 and q.shape == (576, 576) and 0.015 < q.float().std() < 0.025
    assert part["model.layers.4.self_attn.q_proj.weight"].device.type == "meta"
    assert torch.equal(part["model.layers.3.input_layernorm.weight"], torch.ones(576, dtype=torch.bfloat16))
    again, weights = open_weights("random:smollm2-135m", torch.bfloat16, seed=5)
    materialize(again.model, weights, ["model.layers.3"], torch.device("cpu"), torch.bfloat16)
    assert torch.equal(dict(again.model.named_parameters())["model.layers.3.self_attn.q_proj.weight"], q)
    other, weights = open_weights("random:smollm2-135m", torch.bfloat16, seed=6)
    materialize(other.model, weights, ["model.layers.3"], torch.device("cpu"), torch.bfloat16)
    assert not torch.equal(dict(other.model.named_parameters())["model.layers.3.self_attn.q_proj.weight"], q)
    with pytest.raises(Exception, match="unknown random shape 'gpt-9'"):
        read_meta("random:gpt-9")
    assert load("random:smollm2-135m", torch.bfloat16).model.config.vocab_size == 49152


@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_16_bit_storage_keeps_lora_float32_with_the_same_initial_values(tmp_path, monkeypatch, storage):
    """PEFT would cast each adapter to its base layer's dtype (rounding its seeded init); ours stay float32 masters,
    whole model or partial, with exactly the initial adapters of a float32 run."""
    from splitft.precision import EMULATED_BF16

    monkeypatch.setenv(EMULATED_BF16, "1")
    ref = lora.adapter_state_dict(build_model(tiny_config(tmp_path, "llama", "federation.seed=3"))[0])
    cfg = tiny_config(tmp_path, "llama", "federation.seed=3", f"model.dtype={storage}",
                      "train.compute_dtype=bfloat16")  # fp16 storage computes under bf16 autocast on a CPU
    full, pm = build_model(cfg)[0], open_model(cfg)
    pm.hold(pm.client_paths(2))
    for model in (full, pm.peft):
        got = lora.lora_parameters(model)
        assert {p.dtype for p in got.values()} == {torch.float32}
        assert all(torch.equal(got[k].detach().cpu(), ref[k]) for k in ref), "initial LoRA differs from fp32's"
    base = dict(full.named_parameters())["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert base.dtype == getattr(torch, storage)
