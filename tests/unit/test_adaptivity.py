"""Per-client cuts in one federation: policy decisions applied, mixed cuts trained together, baselines built
from the same setup."""

import math

import pytest
import torch

from splitft import lora
from splitft.build import build_setup
from splitft.metrics import MetricsLogger, NullLogger
from splitft.records import read_records
from splitft.sim.methods import build_federation
from tests.conftest import tiny_config

ADAPTIVE = ["federation.n_clients=3", "split.policy=splitft", "split.period=1", "split.gamma=3.0",
            "heterogeneity.profile=list", "heterogeneity.devices=[phone,laptop,workstation]", "lora.r_cut=2",
            "train.lr=0.01"]


def test_resource_cuts_then_clients_with_different_cuts_train_together(tmp_path):
    setup = build_setup(tiny_config(tmp_path, "llama", *ADAPTIVE))
    logger = MetricsLogger(tmp_path / "m.jsonl")
    fed = build_federation(setup, logger)
    # resource start: cut * speed / mean(speed) = 2 * (0.5, 2, 20) / 7.5 -> (0.13, 0.53, 5.3) -> clip to [1, 3]
    assert {c: cl.cut for c, cl in fed.clients.items()} == {0: 1, 1: 1, 2: 3}
    assert fed.server.first == 1
    rec = fed.run_round(0, evaluate=True)
    logger.close()
    steps = read_records(tmp_path / "m.jsonl", "step")
    assert {s["cut"] for s in steps} == {1, 3} and math.isfinite(rec["eval_ppl"])
    assert rec["cuts"] == {"0": 1, "1": 1, "2": 3} and set(rec["next_cuts"]) == {"0", "1", "2"}
    decisions = read_records(tmp_path / "m.jsonl", "cut_decision")
    assert [d["round"] for d in decisions] == [0, 1] and decisions[1]["why"]["0"]["rule"] == "performance"
    assert rec["virtual_time"] > 0 and rec["round_virtual_s"] == rec["virtual_time"]


def test_a_recut_client_pulls_the_global_adapters_of_its_new_blocks_and_keeps_optimizer_state(tmp_path):
    setup = build_setup(tiny_config(tmp_path, "llama", *ADAPTIVE))
    fed = build_federation(setup, NullLogger())
    fed.run_round(0, evaluate=False)
    client = fed.clients[0]
    block0 = [n for n, _ in client.part.module.named_parameters() if lora.is_lora_name(n)]
    state_before = {n: client.opt.state[p]["exp_avg"].clone() for n, p in client.part.module.named_parameters()
                    if n in block0}
    fed.adaptivity.recut(0, 3)
    assert client.cut == 3
    moved = {n: p for n, p in client.part.module.named_parameters() if n in state_before}
    assert all(torch.equal(client.opt.state[p]["exp_avg"], state_before[n]) for n, p in moved.items())
    client.pull(fed.transport, 1)
    want = fed.server.global_adapters(3)
    have = lora.adapter_state_dict(client.part.module)
    for n, t in want.items():
        assert torch.equal(have[n].narrow(lora.rank_dim(n), 0, t.shape[lora.rank_dim(n)]), t)


@pytest.mark.parametrize("method", ["fedlora", "centralized"])
def test_no_split_baselines_train_from_the_same_start(tmp_path, method):
    split = build_federation(build_setup(tiny_config(tmp_path, "llama", *ADAPTIVE)), NullLogger())
    base = build_setup(tiny_config(tmp_path, "llama", *ADAPTIVE, f"federation.method={method}"))
    fed = build_federation(base, NullLogger())
    start = fed.evaluate(-1)
    assert start["eval_loss"] == pytest.approx(split.evaluate(-1)["eval_loss"], abs=1e-5)  # same model, LoRA B=0
    rec = fed.run_round(0, evaluate=True)
    assert rec["eval_loss"] < start["eval_loss"] and rec["bytes"]["activations_up"] == 0
    assert rec["virtual_time"] > 0
    assert (rec["bytes"]["lora_up"] > 0) == (method == "fedlora"), "centralized training sends nothing"
    n_steps = 2 * 3  # local_steps x clients, for both: centralized runs the federation's steps on one trainer
    assert len(fed.clients) == (1 if method == "centralized" else 3)
    assert n_steps == fed.local_steps * len(fed.clients)


TINY_PHONE = ["heterogeneity.tiers=[{name: tinyphone, tflops: 0.5, memory_gb: 0.00001, up_mbps: 10, "
              "down_mbps: 50, latency_ms: 40}]", "heterogeneity.devices=[tinyphone,laptop,workstation]"]


def test_a_client_whose_memory_fits_no_cut_refuses_the_run_before_anything_is_written(tmp_path):
    from splitft.errors import UserError
    from splitft.sim.runner import run_simulation

    cfg = tiny_config(tmp_path, "llama", *ADAPTIVE, *TINY_PHONE)
    with pytest.raises(UserError, match=r"client 0 \(tinyphone\): 1e-05 GB budget, cut 1 needs [0-9.e-]+ GB; "
                                        r".*split.allow_over_memory=true"):
        run_simulation(cfg)
    assert not (tmp_path / "run").exists()


def test_allow_over_memory_runs_it_with_a_warning_in_the_log_and_the_setup_record(tmp_path, capsys):
    from splitft.sim.runner import run_simulation

    cfg = tiny_config(tmp_path, "llama", *ADAPTIVE, *TINY_PHONE, "split.allow_over_memory=true",
                      "federation.rounds=1")
    run_simulation(cfg)
    assert "client 0 (tinyphone) runs over its memory budget" in capsys.readouterr().err
    setup = read_records(tmp_path / "run" / "metrics.jsonl", "setup")[0]
    assert set(setup["over_memory"]) == {"0"} and setup["over_memory"]["0"]["cut"] == 1


def test_a_tail_that_does_not_fit_a_clients_memory_is_one_error_naming_split_tail(tmp_path):
    """The same device fits vanilla's cut 1 (8.2 MB) but not a U-shaped client's two tail blocks and logits."""
    from splitft.errors import UserError
    from splitft.sim.runner import run_simulation

    phone = ["heterogeneity.tiers=[{name: smallphone, tflops: 0.5, memory_gb: 0.012}]",
             "heterogeneity.devices=[smallphone,laptop,workstation]"]
    cfg = tiny_config(tmp_path, "llama", *ADAPTIVE, *phone, "split.cut=1", "split.shape=u", "split.tail=2",
                      "split.cut_max=1")
    with pytest.raises(UserError, match=r"client 0 \(smallphone\): 0.012 GB budget, cut 1 needs 0.017 GB "
                                        r"\(split.tail=2 and the head.s logits are part of it: lower split.tail"):
        run_simulation(cfg)
    assert not (tmp_path / "run").exists()
    run_simulation(tiny_config(tmp_path / "v", "llama", *ADAPTIVE, *phone, "split.cut=1", "split.cut_max=1",
                               "federation.rounds=1"))
