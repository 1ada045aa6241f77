"""Config: file + dotted overrides, typed coercion, all errors at once, every shipped config loads."""

import dataclasses
import sys
from pathlib import Path

import pytest
import yaml

from splitft import config
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
    with pytest.raises(ConfigError, match=r"codec.up: must be one of none, fp16, bf16, int8_token"):
        load(None, ["transport.codec=int4"])


def test_each_registry_checks_its_own_names_all_reported_with_the_other_problems(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(None, ["model.dtype=fp8", "data.partitioner=zipf", "split.policy=greedy", "codec.up=int4",
                    "federation.rounds=0", "federation.method=swarm", "heterogeneity.profile=zoo"], sim_problems)
    assert [p.split(":")[0] for p in e.value.problems] == [
        "federation.rounds", "model.dtype", "data.partitioner", "split.policy", "codec.up",
        "federation.method", "heterogeneity.profile"]
    assert "model.dtype: must be one of float32, bfloat16, float16, auto, got 'fp8'" in e.value.problems
    cfg = load_config(None, ["data.partitioner=zipf"])  # a config built without the registries' checks ...
    with pytest.raises(ConfigError, match="data.partitioner: must be one of iid, length_dirichlet, dirichlet"):
        run_simulation(cfg)  # ... is checked by the runtime before anything loads


def test_an_unknown_tracker_is_one_line_naming_those_known():
    with pytest.raises(ConfigError, match="metrics.report_to: must be none, .*tensorboard.*; got 'tensorbored'"):
        load(None, ["metrics.report_to=tensorbored"])


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


@pytest.mark.parametrize("override, says", [
    ("train.lr=.nan", "train.lr: must be a finite number"),
    ("lora.alpha=.inf", "lora.alpha: must be a finite number"),
    ("privacy.noise=.nan", "privacy.noise: must be a finite number"),
    ("client.timeout_s=.inf", "client.timeout_s: must be a finite number"),
    ("server.dead_after_s=.nan", "server.dead_after_s: must be a finite number"),
    ("heterogeneity.tiers=[{name: fast, tflops: .inf}]", "heterogeneity.tiers[0].tflops: must be a finite number"),
    ("train.weight_decay=-1", "train.weight_decay: must be >= 0"),
    ("train.max_grad_norm=-0.5", "train.max_grad_norm: must be >= 0"),
    ("data.max_samples=-3", "data.max_samples: must be >= 0"),
    ("data.max_eval_samples=-1", "data.max_eval_samples: must be >= 1"),
    ("federation.seed=-1", "federation.seed: must be in [0, 2^32)"),
    ("federation.seed=4294967296", "federation.seed: must be in [0, 2^32)"),
    ("metrics.out_dir=", "metrics.out_dir: must name a directory"),
    ("transport.address=127.0.0.1:99999", "transport.address: expected host:port with a port in 1..65535"),
    ("transport.address=garbage", "transport.address: expected host:port"),
    ("transport.chunk_kb=3000000", "transport.chunk_kb: a frame cannot exceed the largest message"),
    ("data.format=chatml", "data.format: must be one of auto | messages | sharegpt | alpaca"),
    ("data.train_on=everything", "data.train_on: must be one of assistant | last_assistant | all"),
    ("data.truncation=left", "data.truncation: must be one of prompt_left | right"),
    ("train.schedule=exponential", "train.schedule: must be one of constant | linear | cosine"),
    ("train.warmup_steps=-2", "train.warmup_steps: must be >= 0"),
])
def test_careless_values_are_refused_with_the_key_and_the_fix(override, says):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert says in str(e.value)


def test_a_config_file_that_is_not_utf8_or_an_alias_bomb_is_one_short_error(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("federation:\n  rounds: 2 # d\xe9j\xe0\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(latin)
    bomb = tmp_path / "bomb.yaml"
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 9):
        levels.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    bomb.write_text("\n".join(levels) + "\nfederation:\n  rounds: *l8\n")
    assert len(bomb.read_bytes()) < 1000  # 9^9 = 387 million strings once expanded
    with pytest.raises(ConfigError) as e:
        load_config(bomb)
    assert len(str(e.value)) < 2000 and "federation.rounds: expected int" in str(e.value)


@pytest.mark.parametrize("overrides, says", [
    (["split.shape=v"], "split.shape: must be one of vanilla, u"),
    (["split.shape=u", "split.tail=0"], "split.tail: a U-shaped split needs the client to hold at least the last"),
    (["split.shape=u", "federation.method=fedlora"], "split.shape=u splits the model"),
])
def test_bad_split_shapes_say_how_to_fix(overrides, says):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert says in str(e.value)


@pytest.mark.parametrize("overrides, says", [
    (["federation.server_batch=0"], "federation.server_batch must be >= 1"),
    (["federation.server_batch_wait_ms=-5"], "server_batch_wait_ms a number >= 0, got 1 and -5.0"),
    (["federation.server_batch_wait_ms=.nan"], "federation.server_batch_wait_ms: must be a finite number"),
    (["federation.server_batch=2.5"], "federation.server_batch: expected int"),
    (["federation.server_batch=4", "split.shape=u"], "a U-shaped step holds the server until its tail's gradient"),
    (["federation.server_batch=4", "federation.method=fedlora"], "only the vanilla split has"),
])
def test_bad_server_batches_are_one_line_each(overrides, says):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert says in str(e.value)


@pytest.mark.parametrize("overrides, says", [
    (["split.shape=u", "split.tail=29"], "split.tail: 29 of this 30-block model's blocks on the client leave no "
                                         "block for its cut and the server; use split.tail <= 28"),
    (["split.shape=u", "split.tail=27", "split.cut=3"], "split.cut: must be in [1, 2] for this 30-block model "
                                                        "(split.tail=27 puts the client's tail at blocks [3, 30))"),
    (["split.shape=u", "split.tail=25", "split.cut=2", "split.cut_max=6"], "split.cut_max: must be <= 4"),
])
def test_a_tail_that_leaves_the_server_nothing_or_overlaps_the_cut_is_refused(overrides, says):
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError) as e:
        validate_against_model(cfg, n_layer=30, max_positions=None)
    assert says in str(e.value)
    assert "lower" in str(e.value) or "use split.tail" in str(e.value) or "cut_max" in str(e.value)


def test_transport_codec_still_sets_both_directions_with_a_note(capsys, monkeypatch):
    monkeypatch.setattr(config.load, "_NOTED", set())  # once per process: this test may not be the first
    cfg = load(None, ["transport.codec=int8_token"])
    assert (cfg.codec.up, cfg.codec.down) == ("int8_token", "int8_token")
    assert "note: transport.codec is now codec.up and codec.down" in capsys.readouterr().err
    cfg = load(None, ["transport.codec=bf16", "codec.down=none"])  # the new key wins where set
    assert (cfg.codec.up, cfg.codec.down) == ("bf16", "none")
    assert "codec" not in config.to_dict(cfg)["transport"]


TWO = {"codec.up": ("int8_token", "fp16"), "codec.down": ("bf16", "fp16"), "codec.entropy": ("none", "none"),
       "codec.allow_lossy_grad": (True, True), "codec.max_ppl_cost": (0.05, 0.02), "client.heartbeat_s": (2.5, 1.0),
       "client.token_env": ("MY_TOKEN", "OTHER")}
"""Two valid values of a moved key (the old key's, the new key's); the others: a path or a number of seconds."""
PAIRS = {"server.tls_cert": ["server.tls_key=k.pem"], "server.tls_key": ["server.tls_cert=c.pem"],
         "server.tls_client_ca": ["server.tls_cert=c.pem", "server.tls_key=k.pem"],
         "client.tls_cert": ["client.tls_key=k.pem", "client.tls_root=r.pem"],
         "client.tls_key": ["client.tls_cert=c.pem", "client.tls_root=r.pem"]}


@pytest.mark.parametrize("old, new", sorted((o, n[0]) for o, n in config.RENAMED.items() if len(n) == 1))
def test_a_key_of_the_previous_release_still_loads_into_its_new_section_with_a_note(capsys, monkeypatch, old,
                                                                                      new):
    monkeypatch.setattr(config.load, "_NOTED", set())
    section, name = new.split(".")
    default = getattr(getattr(config.Config(), section), name)
    value, other = TWO.get(new) or (("x.pem", "y.pem") if isinstance(default, str) else (75.0, 80.0))
    cfg = load(None, [f"{old}={value}", *PAIRS.get(new, [])])
    assert getattr(getattr(cfg, section), name) == value
    assert f"note: {old} is now {new}; the old key goes in the next release" in capsys.readouterr().err
    assert name not in config.to_dict(cfg)["transport"]
    both = load(None, [f"{old}={value}", f"{new}={other}", *PAIRS.get(new, [])])  # the new key wins where set
    assert getattr(getattr(both, section), name) == other


def test_a_config_the_previous_release_saved_loads_unchanged_with_one_note(tmp_path, capsys, monkeypatch):
    """A run directory's config.yaml of the previous release (every key, the transport section holding them all):
    resuming it gives the same config, with one note line for all the moved keys."""
    monkeypatch.setattr(config.load, "_NOTED", set())
    tree = config.to_dict(config.Config(codec=config.CodecConfig(up="int8_token"),
                                        client=config.ClientConfig(reconnect_s=9.0)))
    for old, (new,) in ((o, n) for o, n in config.RENAMED.items() if len(n) == 1):
        section, name = new.split(".")
        tree["transport"][old.split(".")[1]] = tree[section].pop(name)
    for section in ("codec", "server", "client"):
        assert tree.pop(section) == {}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree))
    cfg = load(tmp_path / "config.yaml")
    assert cfg == config.Config(codec=config.CodecConfig(up="int8_token"), client=config.ClientConfig(reconnect_s=9.0))
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 1 and "transport.codec_up is now codec.up" in notes[0] and "old keys go" in notes[0]


def test_every_key_has_an_audience_and_the_handshake_compares_exactly_the_shared_ones():
    from splitft.deploy.handshake import DTYPES, SETTINGS

    every = [f"{s.name}.{f.name}" for s in dataclasses.fields(config.Config)
             for f in dataclasses.fields(s.default_factory())]
    by_audience = {a: config.keys_for(a) for a in config.AUDIENCES}
    assert sorted(k for keys in by_audience.values() for k in keys) == sorted(every), "each key exactly once"
    assert set(SETTINGS) | set(DTYPES) | {"split.shape", "split.tail"} == set(by_audience[config.SHARED])
    assert {"codec.up", "codec.down", "codec.entropy", "lora.r_cut", "federation.order"} <= set(SETTINGS)
    assert all(k.startswith("server.") for k in every if k.split(".")[0] == "server")
    assert set(config.keys_for(config.SERVER)) >= {f"server.{f.name}" for f in dataclasses.fields(config.ServerConfig)}
    assert set(config.keys_for(config.CLIENT)) >= {f"client.{f.name}" for f in dataclasses.fields(config.ClientConfig)}
    assert "data.path" in by_audience[config.CLIENT] and "federation.dropout" in by_audience[config.SIMULATION]


@pytest.mark.parametrize("overrides, message", [
    (["codec.down=int4_group"], "codec.down=int4_group puts gradients in 4 bits"),
    (["transport.codec=int4_token"], "codec.down=int4_token puts gradients in 4 bits"),
    (["split.shape=u", "codec.up=int4_group"], "codec.up=int4_group puts gradients in 4 bits"),
    (["codec.up=int5"], "codec.up: must be one of .*int4_group, auto; got 'int5'"),
    (["codec.entropy=brotli"], "codec.entropy: must be one of none, zstd, lz4, got 'brotli'"),
    (["codec.max_ppl_cost=-1"], "codec.max_ppl_cost: must be a relative ppl increase >= 0"),
])
def test_bad_codec_settings_are_one_line_each(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load(None, overrides)
    assert len(e.value.problems) == 1


def test_lossy_gradients_are_allowed_when_asked_and_4_bit_activations_up_need_no_opt_in():
    load(None, ["codec.down=int4_group", "codec.allow_lossy_grad=true"])
    load(None, ["codec.up=int4_group", "codec.down=int8_token", "codec.entropy=zstd"])


def test_an_entropy_coder_that_is_not_installed_is_named_with_its_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "lz4.block", None)  # what an import of a missing package raises on
    with pytest.raises(ConfigError, match=r"codec.entropy=lz4 needs the lz4 package.*pip install lz4"):
        load(None, ["codec.entropy=lz4"])
