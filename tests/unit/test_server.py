"""The server's aggregation rule with mixed cuts and a reduced cut-layer rank, against hand-computed values."""

from collections import Counter

import pytest
import torch

from splitft import lora
from splitft.model.families import family_for
from splitft.model.loader import load
from splitft.model.split import ServerPart
from splitft.server import SplitServer
from splitft.transport.base import AdapterUpdate


def _const(sd, fam, values: dict[int, float], rank: dict[int, int] | None = None):
    """Adapters of the blocks in `values`, every element = that block's value, rank components cut per `rank`."""
    out = {}
    for n, t in sd.items():
        j = lora.layer_of(n, fam)
        if j in values:
            k = (rank or {}).get(j, t.shape[lora.rank_dim(n)])
            out[n] = torch.full_like(t.narrow(lora.rank_dim(n), 0, k), values[j])
    return out


@pytest.fixture
def server():
    m = load("tiny:llama").model  # 4 blocks
    fam = family_for("llama")
    peft = lora.wrap(m, fam, r=4, alpha=8, dropout=0.0, targets=fam.lora_targets)
    sd = lora.adapter_state_dict(peft)
    srv = SplitServer(ServerPart(peft, fam, 1, r_cut=2), _const(sd, fam, {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}), fam,
                      r_cut=2, lr=0.1)
    lora.load_adapter_state_dict(srv.part.module, _const(sd, fam, {1: 10.0, 2: 20.0, 3: 30.0}))
    return srv, sd, fam


def _block(view, fam, j, comps):
    """The set of values of block j's rank components `comps` over all its A and B tensors."""
    vals = set()
    for n, t in view.items():
        if lora.layer_of(n, fam) == j:
            vals |= {round(v, 4) for v in t.narrow(lora.rank_dim(n), comps.start, len(comps)).flatten().tolist()}
    return vals


def test_blocks_held_by_clients_and_server_merge_by_samples_per_component(server):
    srv, sd, fam = server
    # client 0: cut 1 (block 0 is its cut layer, 2 of 4 components), 4 samples;
    # client 1: cut 3 (blocks 0-2, block 2 at 2 components), 2 samples.
    srv.push_adapters(AdapterUpdate(0, 0, _const(sd, fam, {0: 1.0}, rank={0: 2}), 4))
    srv.push_adapters(AdapterUpdate(1, 0, _const(sd, fam, {0: 2.0, 1: 3.0, 2: 4.0}, rank={2: 2}), 2))
    srv.served = Counter({1: 4, 3: 2})  # the server trained for client 0 (cut 1) and client 1 (cut 3)
    assert srv.aggregate() == [0, 1]
    view = srv.global_view(4)
    lo, hi = range(0, 2), range(2, 4)
    # block 0: comps 0-1 (4*1 + 2*2) / 6; comps 2-3 only client 1 trained them
    assert _block(view, fam, 0, lo) == {round(8 / 6, 4)} and _block(view, fam, 0, hi) == {2.0}
    # block 1: server trained it only as client 0's first server block (rank 2, 4 samples); client 1 fully
    assert _block(view, fam, 1, lo) == {round((2 * 3 + 4 * 10) / 6, 4)} and _block(view, fam, 1, hi) == {3.0}
    # block 2: server trained all components for client 0 (cut 1 < 2); client 1 held it at rank 2
    assert _block(view, fam, 2, lo) == {round((2 * 4 + 4 * 20) / 6, 4)} and _block(view, fam, 2, hi) == {20.0}
    # block 3: no client holds it -> the server's copy, untouched
    assert _block(view, fam, 3, range(0, 4)) == {30.0}
    # the merged blocks 1-2 now live in the server part too (what clients with cut <= 2 are served with)
    live = srv.adapters()
    assert _block(live, fam, 2, lo) == _block(view, fam, 2, lo) and srv.served == Counter()


def test_a_client_pulls_its_blocks_with_the_cut_layer_at_r_cut(server):
    srv, sd, fam = server
    pulled = srv.global_adapters(3)
    assert {lora.layer_of(n, fam) for n in pulled} == {0, 1, 2}
    for n, t in pulled.items():
        want = 2 if lora.layer_of(n, fam) == 2 else 4
        assert t.shape[lora.rank_dim(n)] == want
    assert _block(pulled, fam, 2, range(0, 2)) == {20.0}  # block 2 lives on the server (first = 1)


def test_fixed_cut_single_client_merge_is_bit_identical_to_its_update(server):
    srv, sd, fam = server
    upd = {n: torch.randn_like(t) for n, t in _const(sd, fam, {0: 0.0}).items()}
    srv.push_adapters(AdapterUpdate(0, 0, upd, 3))
    srv.aggregate()
    view = srv.global_view(1)
    assert all(torch.equal(view[n], t) for n, t in upd.items())


def test_a_step_that_overflows_is_refused_and_changes_nothing():
    """Finite activations so large the forward overflows must not reach AdamW (it would make the shared LoRA NaN)."""
    from splitft.server import NonFiniteStep
    from splitft.transport.base import ForwardRequest
    from tests.conftest import tiny_split_server

    _, srv = tiny_split_server()
    before = {n: t.clone() for n, t in srv.adapters().items()}
    acts = torch.randn(1, 4, 32)
    acts[0, 0, 0] = 2.5e38  # found by tests/unit/test_fuzz.py: the forward is finite, the LoRA gradients are NaN
    req = ForwardRequest(0, 0, 0, 2, acts, torch.ones(1, 4, dtype=torch.uint8), torch.ones(1, 4, dtype=torch.int32))
    with pytest.raises(NonFiniteStep, match="not applied"):
        srv.step(req)
    after = srv.adapters()
    assert all(torch.equal(before[n], after[n]) for n in before) and not srv.opt.state and not srv.served
    srv.step(ForwardRequest(0, 0, 0, 2, torch.randn(1, 4, 32), req.attention_mask, req.labels))  # still serves
    assert all(torch.isfinite(t).all() for t in srv.adapters().values())


def test_an_evaluation_mid_round_sees_the_global_model_not_the_rounds_steps():
    """A deployed client evaluates the model it pulled while others already train: the server answers an
    evaluation request with the adapters of the last aggregation, and leaves its live LoRA and AdamW as they were."""
    import torch

    from splitft.transport.base import ForwardRequest
    from tests.conftest import tiny_split_server

    _, server = tiny_split_server()
    g = torch.Generator().manual_seed(0)

    def req(train):
        return ForwardRequest(0, 0, 0, 2, torch.randn(2, 5, 32, generator=g), torch.ones(2, 5, dtype=torch.uint8),
                              torch.full((2, 5), 7, dtype=torch.int32), train)

    probe = req(False)
    before = server.step(probe)
    server.step(req(True))
    live = server.adapters()
    moments = [v.clone() for st in server.opt.state.values() for v in st.values() if torch.is_tensor(v)]
    during = server.step(probe)
    assert during.loss_sum == before.loss_sum, "evaluated with the global model, not the moved one"
    assert all(torch.equal(live[n], t) for n, t in server.adapters().items())
    assert all(torch.equal(a, b) for a, b in zip(moments, [v for st in server.opt.state.values()
                                                           for v in st.values() if torch.is_tensor(v)], strict=True))
    server.aggregate()
    assert server.step(probe).loss_sum != before.loss_sum, "after aggregation the new global model is evaluated"
