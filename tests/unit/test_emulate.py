"""The Pacer of `--emulate`: it sleeps what the profile needs beyond the real time, never a negative time; the
client's PacedTransport paces each compute and crossing of a vanilla or U-shaped step; the server paces U's
halves."""

import pytest
import torch

from splitft.config import DeviceConfig
from splitft.cost import CostModel
from splitft.deploy.emulate import PacedTransport, Pacer
from splitft.transport.base import BackwardRequest, ByteCounter, ForwardRequest, StepReply
from splitft.transport.compress import NONE


def _pacer():
    slept = []
    cost = CostModel(block_params=(100, 100), embed_params=50, head_params=40, d_model=4, n_heads=2, param_bytes=4)
    return Pacer(DeviceConfig("d", tflops=1.0, up_mbps=8.0, down_mbps=8.0, latency_ms=0.0), cost,
                 log=lambda s: None, sleep=slept.append), slept


def test_the_pacer_sleeps_the_shortfall_and_counts_real_work_beyond_the_profile():
    p, slept = _pacer()
    assert p.download(0.25, 1_000_000) == 1.0 and slept == [0.75]  # 1 MB at 8 Mbit/s: 1 s
    assert p.download(1.03, 1_000_000) == 1.03 and slept == [0.75] and p.slower == 0  # within 5%: no sleep
    assert p.download(2.0, 1_000_000) == 2.0 and p.slower == 1


def test_the_server_pacer_charges_its_blocks_and_the_head_at_server_tflops():
    """What the virtual clock charges the server for a step: blocks [cut, L) and the head, forward + backward."""
    from splitft.deploy.emulate import server_pacer

    cost = CostModel(block_params=(100, 100), embed_params=50, head_params=40, d_model=4, n_heads=2, param_bytes=4)
    p = server_pacer(1e-9, cost, log=lambda s: None)  # 1,000 FLOP/s
    target = cost.train_flops(1, 2, 2, 3, head=True) / 1e3
    assert p.rest(0.5, [(1, 2, 3)]) == pytest.approx(target - 0.5)  # awaited by the coordinator
    assert p.summary() == {"device": "server", "tflops": 1e-9, "steps": 1, "real_s": 0.5,
                           "paced_s": round(p.paced_s, 4), "slower_than_profile": 0}


def test_the_server_pacer_charges_a_u_shaped_step_in_two_halves_that_add_up_to_its_middle():
    from splitft.deploy.emulate import server_pacer

    cost = CostModel(block_params=(100, 100, 100), embed_params=50, head_params=40, d_model=4, n_heads=2,
                     param_bytes=4)
    p = server_pacer(1e-9, cost, log=lambda s: None, step_s=0.25, tail_cut=2)  # the server holds [1, 2)
    forward, backward = p.rest(0.0, [(1, 2, 3)], "forward"), p.rest(0.0, [(1, 2, 3)], "backward")
    assert forward + backward == pytest.approx(0.25 + cost.train_flops(1, 2, 2, 3) / 1e3)
    assert forward == pytest.approx(0.25 + cost.train_flops(1, 2, 2, 3) * cost.forward_share / 1e3)
    assert p.steps == 1, "one U-shaped step, counted once"


class _Loopback:
    """A transport whose server answers at once: vanilla with grad_activations, U with hidden states then
    grad_activations; it counts bytes as the real ones do."""

    def __init__(self, u: bool):
        self.u, self.counter, self.up = u, ByteCounter(), NONE

    def step(self, req):
        self.counter.request(req, self.up.encoded_nbytes(req.activations))
        if self.u:
            reply = StepReply(0.0, 0, 0, hidden=torch.zeros_like(req.activations))
        else:
            reply = StepReply(1.0, 5, 0, grad_activations=torch.zeros_like(req.activations))
        self.counter.reply(req, reply, req.activations.numel() * 4)
        return reply

    def backward(self, req):
        reply = StepReply(0.0, 0, 0, grad_activations=torch.zeros_like(req.grad_hidden))
        self.counter.backward(req, req.grad_hidden.numel() * 4, req.grad_hidden.numel() * 4)
        return reply


@pytest.mark.parametrize("u", [False, True])
def test_the_paced_transport_charges_each_compute_and_crossing_of_a_step_as_the_clock_does(u):
    """Real work ~0 s: every second of the step is the profile's. Compute: [0, cut) forward and backward (and
    under U the tail and head); link: each crossing's latency and bytes at the device's rates."""
    cost = CostModel(block_params=(100, 100, 100), embed_params=50, head_params=40, d_model=4, n_heads=2,
                     param_bytes=4)
    slept = []
    device = DeviceConfig("d", tflops=1e-9, up_mbps=8.0, down_mbps=8.0, latency_ms=10.0)
    paced = PacedTransport(_Loopback(u), Pacer(device, cost, lambda s: None, sleep=slept.append), 0,
                           tail_cut=2 if u else None)
    acts = torch.zeros(2, 3, 4)
    labels = None if u else torch.zeros(2, 3, dtype=torch.int32)
    reply = paced.step(ForwardRequest(0, 0, 0, 1, acts, torch.ones(2, 3, dtype=torch.uint8), labels))
    if u:
        paced.backward(BackwardRequest(0, 0, 0, torch.zeros_like(reply.hidden)))
    compute, link = paced.end()
    want_compute = (cost.train_flops(0, 1, 2, 3) + (cost.train_flops(2, 3, 2, 3, head=True) if u else 0)) / 1e3
    kinds = paced.counter.totals()
    up = sum(n for k, n in kinds.items() if k.endswith("_up"))
    down = sum(n for k, n in kinds.items() if k.endswith("_down"))
    crossings = 2 if u else 1  # each: latency up and down; every byte counted at 8 Mbit/s
    assert compute == pytest.approx(want_compute, rel=1e-3)
    assert link == pytest.approx(2 * crossings * 0.010 + (up + down) * 8 / 8e6, rel=1e-3)
    assert paced.pacer.steps == 1
