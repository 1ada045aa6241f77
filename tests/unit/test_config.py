"""Config: file + dotted overrides, typed coercion, all errors at once, every shipped config loads."""

from pathlib import Path

import pytest
import yaml

from splitft.build import load
from splitft.config import ConfigError, load_config, save_config, validate_against_model
from splitft.sim.runner import run_simulation, sim_problems

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(None, ["split.cut=4", "--federation.rounds=7", "train.lr=1e-3", "lora.targets=[q_proj]"])
    assert cfg.split.cut == 4 and cfg.federation.rounds == 7 and cfg.train.lr == 1e-3
    assert cfg.lora.targets == ["q_proj"] and cfg.lora.r == 16


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["split.cutt=3", "train.lr=fast", "federation.rounds=0"])
    msg = str(e.value)
    assert "split.cutt: unknown key" in msg and "valid keys here: allow_over_memory, cut, cut_max" in msg
    assert "train.lr: expected float" in msg
    assert len(e.value.problems) == 2  # range checks run once types are right


def test_range_errors_say_how_to_fix():
    with pytest.raises(ConfigError, match=r"federation.rounds: must be > 0"):
        load_config(None, ["federation.rounds=0"])
    with pytest.raises(ConfigError, match=r"split.cut: must be >= 1"):
        load_config(None, ["split.cut=0"])
    with pytest.raises(ConfigError, match=r"transport.codec: must be one of none, fp16, bf16, int8_token"):
        load(None, ["transport.codec=int4"])


def test_each_registry_checks_its_own_names_all_reported_with_the_other_problems(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(None, ["model.dtype=fp8", "data.partitioner=zipf", "split.policy=greedy", "transport.codec=int4",
                    "federation.rounds=0", "federation.method=swarm", "heterogeneity.profile=zoo"], sim_problems)
    assert [p.split(":")[0] for p in e.value.problems] == [
        "federation.rounds", "model.dtype", "transport.codec", "data.partitioner", "split.policy",
        "federation.method", "heterogeneity.profile"]
    assert "model.dtype: must be one of float32, bfloat16, float16, got 'fp8'" in e.value.problems
    cfg = load_config(None, ["data.partitioner=zipf"])  # a config built without the registries' checks ...
    with pytest.raises(ConfigError, match="data.partitioner: must be one of iid, length_dirichlet, dirichlet"):
        run_simulation(cfg)  # ... is checked by the runtime before anything loads


def test_model_dependent_checks():
    cfg = load_config(None, ["split.cut=30", "data.max_length=9000"])
    with pytest.raises(ConfigError) as e:
        validate_against_model(cfg, n_layer=30, max_positions=8192)
    assert "split.cut: must be in [1, 29]" in str(e.value) and "exceeds the model's context" in str(e.value)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["split.cut=3"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    assert yaml.safe_load(path.read_text())
    load_config(path)
