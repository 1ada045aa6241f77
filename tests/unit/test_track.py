"""metrics.report_to: a run's round records reach TensorBoard through accelerate's tracker, read back here."""

import pytest

from splitft.build import load
from splitft.config import ConfigError
from splitft.records import read_records
from splitft.sim.runner import run_simulation
from splitft.track import scalars
from tests.conftest import tiny_config


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = [p.parent for p in folder.glob("*/events.out.tfevents.*")]  # hparams have their own, deeper
    acc = EventAccumulator(str(events))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_gets_every_round_record_as_scalars(tmp_path):
    cfg = tiny_config(tmp_path, "llama", "metrics.report_to=tensorboard", "train.schedule=linear")
    run_simulation(cfg)
    rounds = read_records(tmp_path / "run" / "metrics.jsonl", "round")
    events = read_events(tmp_path / "run" / "tensorboard")  # <out_dir>/tensorboard/<run name>/
    assert {"eval/ppl", "eval/loss", "eval/acc", "train/loss", "train/lr", "bytes/activations_up", "cut/client_0",
            "time/virtual_s", "time/wall_s"} <= set(events)
    assert events["eval/ppl"] == pytest.approx({r["round"]: r["eval_ppl"] for r in rounds})
    trained = [r for r in rounds if r["round"] >= 0]
    assert events["train/lr"] == pytest.approx({r["round"]: r["lr"] for r in trained})
    assert events["bytes/activations_up"][1] == trained[-1]["bytes"]["activations_up"]


def test_only_round_and_eval_records_become_scalars():
    assert scalars({"kind": "step", "round": 0, "loss": 1.0}) == {}
    assert scalars({"kind": "eval", "round": 2, "eval_ppl": 3.0, "wall_time": 9.0}) == {"eval/ppl": 3.0}


def test_a_tracker_that_is_not_installed_is_one_line_before_the_run(monkeypatch):
    from accelerate.utils import imports

    monkeypatch.setattr(imports, "is_wandb_available", lambda: False)
    with pytest.raises(ConfigError, match="metrics.report_to=wandb: its library is not installed; pip install wandb"):
        load(None, ["metrics.report_to=wandb"])
