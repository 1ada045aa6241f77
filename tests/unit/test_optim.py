"""The lr schedule: transformers' factors step by step, the same lr on both sides of the cut, step records."""

import pytest
import torch

from splitft.optim import LrSchedule
from splitft.records import read_records
from splitft.sim.runner import run_simulation
from tests.conftest import tiny_config


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 3])
def test_the_schedule_is_transformers_schedule_counted_across_rounds(kind, warmup):
    import transformers

    total, lr = 5 * 4, 0.01
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    make = {"constant": transformers.get_constant_schedule_with_warmup,
            "linear": transformers.get_linear_schedule_with_warmup,
            "cosine": transformers.get_cosine_schedule_with_warmup}[kind]
    hf = make(opt, warmup, total) if kind != "constant" else make(opt, warmup)
    ours = LrSchedule(lr, kind, warmup, steps_per_round=4, rounds=5)
    for r in range(5):
        for s in range(4):
            assert ours.at(r, s) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15), (r, s)
            opt.step()
            hf.step()
    assert ours.at(9, 0) == ours.at(4, 3), "steps past the last (a time budget's extras) keep the last lr"


def test_constant_without_warmup_is_the_lr_itself():
    assert all(LrSchedule(3e-4).at(r, s) == 3e-4 for r in range(3) for s in range(5))


def test_both_sides_of_the_cut_step_at_the_scheduled_lr_and_step_records_carry_it(tmp_path):
    cfg = tiny_config(tmp_path, "llama", "train.schedule=cosine", "train.warmup_steps=1", "train.lr=0.01")
    run_simulation(cfg)
    steps = read_records(tmp_path / "run" / "metrics.jsonl", "step")
    want = LrSchedule(0.01, "cosine", 1, cfg.federation.local_steps, cfg.federation.rounds)
    assert [s["lr"] for s in steps] == [want.at(s["round"], s["step"]) for s in steps]
    assert steps[0]["lr"] == 0.0 and 0 < steps[-1]["lr"] < max(s["lr"] for s in steps) == 0.01


def test_the_server_takes_the_lr_of_the_step_it_serves():
    from splitft.transport.base import LABEL_DTYPE, MASK_DTYPE, ForwardRequest
    from tests.conftest import tiny_split_server

    peft, server = tiny_split_server(first=2, lr=0.1)
    server.schedule = LrSchedule(0.1, "linear", 0, steps_per_round=2, rounds=2)
    acts = torch.randn(1, 5, peft.base_model.model.config.hidden_size)
    mask, labels = torch.ones(1, 5, dtype=MASK_DTYPE), torch.randint(0, 100, (1, 5), dtype=LABEL_DTYPE)
    server.step(ForwardRequest(0, 1, 1, 2, acts, mask, labels))
    assert server.opt.param_groups[0]["lr"] == pytest.approx(0.1 * (4 - 3) / 4)
