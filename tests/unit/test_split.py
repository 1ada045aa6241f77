"""Split forward == full forward for every family and every cut; names and frozen weights are kept."""

import pytest
import torch

from splitft import lora
from splitft.model.families import family_for
from splitft.model.loader import load
from splitft.model.split import Absent, ClientPart, ServerPart, full_forward
from tests.conftest import FAMILIES


def _wrapped(family: str):
    m = load(f"tiny:{family}").model
    fam = family_for(m.config.model_type)
    peft = lora.wrap(m, fam, r=4, alpha=8, dropout=0.0, targets=fam.lora_targets)
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero B so LoRA changes the output
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return peft, fam


def _batch():
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_split_forward_equals_hf_forward_for_every_cut(family):
    peft, fam = _wrapped(family)
    peft.eval()
    ids, mask = _batch()
    ref = peft(input_ids=ids, attention_mask=mask).logits
    full = full_forward(peft, fam, ids, mask)
    # Our family code vs HF's own forward: equal up to float reassociation (GPT-Neo differs by ~2e-7).
    assert (full - ref).abs().max().item() <= 1e-6
    for cut in range(1, 4):
        client, server = ClientPart(peft, fam, cut), ServerPart(peft, fam, cut)
        acts = client.forward(ids, mask)
        assert acts.shape == (3, 11, 32)
        assert torch.equal(server.forward(acts, mask, cut), full), f"{family} cut={cut}: split != unsplit"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_parts_keep_global_names_and_share_frozen_weights(family):
    peft, fam = _wrapped(family)
    full = dict(peft.named_parameters(remove_duplicate=False))  # tied lm_head/embeddings appear under both names
    client, server = ClientPart(peft, fam, 1), ServerPart(peft, fam, 1)
    c_names = {n for n, _ in client.module.named_parameters()}
    s_names = {n for n, _ in server.module.named_parameters()}
    assert c_names <= set(full) and s_names <= set(full)
    c_layers = {lora.layer_of(n, fam) for n in c_names} - {None}
    s_layers = {lora.layer_of(n, fam) for n in s_names} - {None}
    assert c_layers == {0} and s_layers == {1, 2, 3}
    for n, p in client.module.named_parameters():
        if not p.requires_grad:
            assert p is full[n], "frozen base weights must be shared, not copied"
        else:
            assert p is not full[n] and torch.equal(p, full[n]), "LoRA weights are copied per part"
    assert isinstance(client.hf.get_submodule(fam.layers_path)[2], Absent)


def test_server_serves_any_cut_at_or_after_its_first_block():
    peft, fam = _wrapped("llama")
    peft.eval()
    ids, mask = _batch()
    ref = full_forward(peft, fam, ids, mask)
    server = ServerPart(peft, fam, 1)
    for cut in (1, 2, 3):
        assert torch.equal(server.forward(ClientPart(peft, fam, cut).forward(ids, mask), mask, cut), ref)
    with pytest.raises(AssertionError):
        ServerPart(peft, fam, 2).forward(torch.zeros(3, 11, 32), mask, 1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cut, tail", [(1, 1), (1, 2), (2, 1)])
def test_u_shaped_parts_compose_to_the_full_forward(family, cut, tail):
    """Client head -> server middle -> client tail == the unsplit forward; the server holds neither the
    embeddings nor the head, and no block of the client's."""
    peft, fam = _wrapped(family)
    peft.eval()
    ids, mask = _batch()
    ref = full_forward(peft, fam, ids, mask)
    tail_cut = 4 - tail
    client, server = ClientPart(peft, fam, cut, tail_cut=tail_cut), ServerPart(peft, fam, cut, tail_cut=tail_cut)
    hidden = server.forward(client.forward(ids, mask), mask, cut)
    assert hidden.shape == (3, 11, 32), "the server sends hidden states, not logits"
    assert torch.equal(client.tail_forward(hidden, mask), ref), f"{family} cut={cut} tail={tail}"
    s_layers = {lora.layer_of(n, fam) for n, _ in server.module.named_parameters()}
    c_layers = {lora.layer_of(n, fam) for n, _ in client.module.named_parameters()} - {None}
    assert s_layers == set(range(cut, tail_cut)), "no embeddings, no head, only the middle"
    assert c_layers == {*range(cut), *range(tail_cut, 4)}
    with pytest.raises(AssertionError):
        server.forward(torch.zeros(3, 11, 32), mask, tail_cut)  # a cut inside the tail is not served
