"""Only the weights a party runs (`model/weights.py`, `build.open_model`): the same model as a whole load."""

import pytest
import torch

from splitft import lora
from splitft.build import build_model, open_model
from splitft.model.split import ClientPart, ServerPart, full_forward
from tests.conftest import tiny_config


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2", "opt", "gpt_neo"])
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
