"""A codec per client (codec.up=auto): the hand-computed choice, the quality budget, the decision
records, and a simulation where the phone's uplink gets 4 bits and the workstation's stays lossless."""

import pytest

from splitft.policy import ClientStats, CutBounds
from splitft.policy.codecs import CodecChoice, CodecOption, options_within
from splitft.policy.fixed import FixedPolicy
from splitft.policy.makespan import RoundCosts
from splitft.records import read_records
from splitft.sim.runner import run_simulation
from tests.conftest import tiny_config

OPTIONS = [CodecOption("none", 32, 8_000_000, 0.0), CodecOption("int8_token", 8, 2_000_000, 0.001),
           CodecOption("int4_group", 4, 1_000_000, 0.006)]
STATS = [ClientStats(0, speed=1.0, up_mbps=8.0), ClientStats(1, speed=1.0, up_mbps=8000.0)]


def _choice(budget):
    """2 clients at cut 1 of a 4-block model: forward 1 s, backward 1 s; a server of 1,000 TFLOP/s (3 ms)."""
    costs = RoundCosts(client_flops=(0.0, 2e12, 4e12, 6e12), server_flops=(0.0, 3e12, 2e12, 1e12),
                       lora_bytes=(0, 0, 0, 0), step_bytes_up=8_000_000, step_bytes_down=0, local_steps=1,
                       server_tflops=1000.0)
    return CodecChoice(FixedPolicy(CutBounds(4), 1), costs, options_within(OPTIONS, budget))


def test_the_slow_uplink_gets_the_fewest_bytes_and_the_fast_one_stays_lossless_by_hand():
    """Client 0's uplink: 8 Mbit/s = 1 MB/s, so none 8 s, int8 2 s, int4 1 s; client 1's 1,000x faster.
    All on int4: client 0 takes 1 + 1 + 0.003 + 1 = 3.003 s, the round T*. Client 0 with int8: 4.003 s > 1.02 T*;
    client 1 lossless: 1 + 0.008 + 0.003 + 1 = 2.011 s, under T*."""
    d = _choice(0.01).assign(STATS, {}, 0)
    assert d.cuts == {0: 1, 1: 1} and d.codecs == {0: "int4_group", 1: "none"}
    assert d.why[0]["fastest_codecs_round_s"] == pytest.approx(3.003)
    assert d.why[1]["codec_round_s"] == pytest.approx(3.003) and d.why[0]["codec_bytes_up"] == 1_000_000


def test_a_codec_over_the_quality_budget_is_never_chosen():
    """Budget 0.5%: int4 (+0.6% measured) is out; client 0 gets int8, and the round is what int8 allows."""
    choice = _choice(0.005)
    choice.excluded = {"int4_group": 0.006}
    d = choice.assign(STATS, {}, 0)
    assert d.codecs == {0: "int8_token", 1: "none"}
    assert d.why[0]["fastest_codecs_round_s"] == pytest.approx(4.003)
    assert d.why[0]["over_ppl_budget"] == {"int4_group": 0.006}


def test_options_within_keep_none_and_order_by_loss():
    assert [o.name for o in options_within(OPTIONS, 0.0)] == ["none"]
    assert [o.name for o in options_within(OPTIONS, 1.0)] == ["none", "int8_token", "int4_group"]


def test_a_simulation_gives_the_phone_4_bits_and_records_why(tmp_path):
    cfg = tiny_config(tmp_path, "llama", "federation.n_clients=3", "heterogeneity.devices=[phone,laptop,workstation]",
                      "heterogeneity.profile=list", "split.policy=fixed", "codec.up=auto",
                      "codec.max_ppl_cost=0.05", "codec.down=int8_token")
    run_simulation(cfg)
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    costs = next(r for r in records if r["kind"] == "codec_costs")
    assert costs["ppl_cost"]["none"] == 0.0 and set(costs["ppl_cost"]) >= {"bf16", "int8_token", "int4_group"}
    decision = next(r for r in records if r["kind"] == "cut_decision")
    assert decision["codecs"]["0"].startswith("int4") and decision["codecs"]["2"] == "none"
    assert decision["why"]["0"]["codec_rule"] == "least lossy within tolerance"
    up = {c: sum(r["bytes_up"] for r in records if r["kind"] == "step" and r["client_id"] == c) for c in (0, 2)}
    assert up[0] < up[2] / 4, "the phone's activations cross in 4 bits, the workstation's in 32"
