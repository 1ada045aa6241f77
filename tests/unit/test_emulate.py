"""The Pacer of `--emulate`: it sleeps what the profile needs beyond the real time, never a negative time."""

import pytest

from splitft.config import DeviceConfig
from splitft.cost import CostModel
from splitft.deploy.emulate import Pacer


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
