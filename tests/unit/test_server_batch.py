"""One server step for several clients (`SplitServer.forward_backward` / `update`, `federation.server_batch`):
the joined step's LoRA gradient is the token-weighted mean of the separate steps' gradients, each client gets the
grad_activations of its own mean loss, clients at different cuts join the forward at their own cut with their own
cut-layer rank, and a client whose step is not finite stays out of the update without spoiling the others'."""

import pytest
import torch

from splitft import lora
from splitft.loss import IGNORE
from splitft.model.families import family_for
from splitft.model.loader import load
from splitft.model.split import Compute, ServerPart
from splitft.server import NonFiniteStep, SplitServer
from splitft.transport.base import ForwardRequest

TOL = {"rtol": 1e-4, "atol": 1e-6}
"""float32, the same math in another summation order (batched matmuls, padded attention, the loss summed across
requests before the backward): agreement to about 1e-6 relative, checked at 1e-4."""


def _server(compute: Compute | None = None, r_cut: int | None = 2) -> SplitServer:
    """tiny:llama (4 blocks, H 32) at rank 4, the server holding blocks [1, 4), cut layers at r_cut."""
    fam = family_for("llama")
    torch.manual_seed(0)
    peft = lora.wrap(load("tiny:llama").model, fam, r=4, alpha=8, dropout=0.0, targets=fam.lora_targets)
    for p in lora.lora_parameters(peft).values():  # B starts at zero: give both factors values, so every
        torch.nn.init.normal_(p, std=0.2)           # component (and a wrong mask) shows in the gradients
    part = ServerPart(peft, fam, 1, r_cut=r_cut, compute=compute or Compute())
    return SplitServer(part, lora.adapter_state_dict(peft), fam, r_cut=r_cut, lr=0.01)


def _request(cid: int, cut: int, b: int, t: int, pad: int = 0) -> ForwardRequest:
    """Client `cid` at `cut`: (b, t, 32) activations, the last `pad` positions of row 0 padding, the first two
    positions a prompt (no loss)."""
    g = torch.Generator().manual_seed(100 + cid)
    mask = torch.ones(b, t, dtype=torch.uint8)
    labels = torch.randint(0, 64, (b, t), generator=g, dtype=torch.int32)
    labels[:, :2] = IGNORE
    if pad:
        mask[0, -pad:] = 0
        labels[0, -pad:] = IGNORE
    return ForwardRequest(cid, 0, 0, cut, torch.randn(b, t, 32, generator=g), mask, labels)


def _grads(srv: SplitServer) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in srv.params]


MIXED = [(0, 1, 2, 6, 0), (1, 2, 3, 9, 3), (2, 1, 1, 4, 0), (3, 3, 2, 7, 2)]
"""(client, cut, B, T, padding of row 0): cuts 1, 2, 1, 3; three lengths; padding inside a request."""


@pytest.mark.parametrize("compute", [Compute(), Compute(checkpointing=True, loss_chunk=5)],
                         ids=["plain", "checkpointing+chunked-loss"])
def test_a_joined_step_is_the_token_weighted_mean_of_the_separate_steps(compute):
    srv = _server(compute)
    reqs = [_request(*spec) for spec in MIXED]
    alone = []
    for r in reqs:  # each request's own forward_backward: gradients of its own mean loss, no update
        [reply] = srv.forward_backward([r])
        alone.append((reply, _grads(srv)))
        srv.opt.zero_grad(set_to_none=True)
    joined = srv.forward_backward(reqs)
    total = sum(reply.n_tokens for reply, _ in alone)
    for (one, _), both in zip(alone, joined, strict=True):
        assert (both.n_tokens, both.n_correct) == (one.n_tokens, one.n_correct)
        assert both.loss_sum == pytest.approx(one.loss_sum, rel=1e-5)
        torch.testing.assert_close(both.grad_activations, one.grad_activations, **TOL)  # its own mean loss
    mean = [sum(g[k] * reply.n_tokens for reply, g in alone) / total for k in range(len(srv.params))]
    for got, want in zip(_grads(srv), mean, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    assert any(g.abs().max() > 0 for g in mean)
    srv.update()
    assert srv.moved and all(p.grad is None for p in srv.params)
    assert dict(srv.served) == {1: 3, 2: 3, 3: 2}, "samples served per cut, for the aggregation's weights"


def test_the_cut_layer_rank_is_per_row():
    """Rows of cut 1 pass block 2 at full rank, rows of cut 2 enter there at r_cut: the joined step masks each
    row as its own step does (without per-row masks the cut-2 request's gradients would differ)."""
    srv = _server()
    a, b = _request(0, 1, 2, 5), _request(1, 2, 2, 5)
    [one] = srv.forward_backward([b])
    srv.opt.zero_grad(set_to_none=True)
    _, both = srv.forward_backward([a, b])
    torch.testing.assert_close(both.grad_activations, one.grad_activations, **TOL)
    unmasked = _server(r_cut=None)
    [full] = unmasked.forward_backward([b])
    assert not torch.allclose(full.grad_activations, one.grad_activations, **TOL), "the mask matters here"


def test_a_step_of_one_equals_step_to_the_bit():
    srv, ref = _server(), _server()
    req = _request(0, 2, 2, 6, 1)
    [got] = srv.step_batch([req])
    want = ref.step(req)
    assert torch.equal(got.grad_activations, want.grad_activations) and got.loss_sum == want.loss_sum
    assert all(torch.equal(srv.adapters()[n], t) for n, t in ref.adapters().items())


def test_a_non_finite_request_stays_out_and_the_others_step():
    srv, ref = _server(), _server()
    good = [_request(0, 1, 2, 6), _request(2, 2, 1, 4)]
    bad = _request(1, 1, 1, 5)
    bad.activations[0, 0, 0] = 2.5e38  # the forward is finite, the LoRA gradients are NaN (see test_server.py)
    outs = srv.step_batch([good[0], bad, good[1]])
    assert isinstance(outs[1], NonFiniteStep) and "client 1" in str(outs[1])
    want = ref.step_batch(good)
    for got, exp in zip([outs[0], outs[2]], want, strict=True):
        torch.testing.assert_close(got.grad_activations, exp.grad_activations, **TOL)
    for n, t in ref.adapters().items():
        torch.testing.assert_close(srv.adapters()[n], t, **TOL)
    assert dict(srv.served) == {1: 2, 2: 1}, "the refused step's samples are not counted"


def test_a_batch_of_only_non_finite_requests_changes_nothing():
    srv = _server()
    before = {n: t.clone() for n, t in srv.adapters().items()}
    bad = _request(1, 1, 1, 5)
    bad.activations[0, 0, 0] = 2.5e38
    worse = _request(2, 2, 1, 5)
    worse.activations.fill_(float("nan"))
    assert all(isinstance(o, NonFiniteStep) for o in srv.step_batch([bad, worse]))
    assert all(torch.equal(before[n], t) for n, t in srv.adapters().items())
    assert not srv.opt.state and not srv.moved
