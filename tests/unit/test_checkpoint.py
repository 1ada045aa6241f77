"""Checkpoint/resume and simulated dropout: a run interrupted after round r and resumed from its checkpoint ends
bit-identical to an uninterrupted one (adaptive cuts and dropout included); checkpoint files are refused when
they point outside the run."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from splitft import checkpoint
from splitft.build import build_setup
from splitft.client import SplitClient
from splitft.errors import UserError
from splitft.metrics import NullLogger
from splitft.records import read_records
from splitft.schedule import plan_dropouts
from splitft.sim.federation import Federation
from splitft.sim.methods import build_federation
from splitft.sim.runner import run_simulation
from tests.conftest import tiny_config
from tests.unit.test_adaptivity import ADAPTIVE

RUN = [*ADAPTIVE, "federation.rounds=4", "federation.dropout=0.3", "metrics.checkpoint_every=1", "privacy.noise=0.1"]


def _rounds(out):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in read_records(out / "metrics.jsonl")
            if r["kind"] in ("round", "cut_decision", "step")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("whole"), "llama", *RUN)
    run_simulation(cfg)
    return cfg.metrics.out_dir


def _interrupt_in_round_2(cfg, monkeypatch):
    real = Federation.run_round

    def crash_in_round_2(self, round_, evaluate):
        if round_ == 2:
            self.run_round = None
            raise KeyboardInterrupt  # e.g. Ctrl-C or a killed job, after the checkpoint of round 1
        return real(self, round_, evaluate)

    monkeypatch.setattr(Federation, "run_round", crash_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg)
    monkeypatch.undo()
    out = Path(cfg.metrics.out_dir)
    assert (out / "checkpoints" / "latest").read_text().strip() == "round_1"
    res = subprocess.run([sys.executable, "-m", "splitft.cli", "simulate", "--resume", str(out)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return out


def _same_run(uninterrupted, out):
    whole = load_file(f"{uninterrupted}/adapter/adapter_model.safetensors")
    resumed = load_file(out / "adapter" / "adapter_model.safetensors")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert _rounds(Path(uninterrupted)) == _rounds(out), "the same records, losses, bytes, cuts and drops"


def test_an_interrupted_run_resumed_from_its_checkpoint_ends_bit_identical(uninterrupted, tmp_path, monkeypatch):
    out = _interrupt_in_round_2(tiny_config(tmp_path, "llama", *RUN), monkeypatch)
    _same_run(uninterrupted, out)
    rounds = read_records(out / "metrics.jsonl", "round")
    assert [r["round"] for r in rounds] == [-1, 0, 1, 2, 3]
    assert any(r.get("dropped") for r in rounds), "the seed should drop someone in 4 rounds at p=0.3"
    assert len({tuple(r["cuts"].values()) for r in rounds[1:]}) > 1, "cuts moved, so recut state was restored"


def test_a_u_shaped_run_resumes_bit_identical_with_its_tails(tmp_path, monkeypatch):
    u = [*RUN, "split.shape=u", "split.tail=1", "split.cut_max=2", "federation.order=arrival", "privacy.grad_clip=1",
         "privacy.grad_noise=1", "privacy.grad_keep=0.5"]  # grad_hidden's keep and noise draw from the client's
    # generator, saved with it
    whole = tiny_config(tmp_path / "whole", "llama", *u)
    run_simulation(whole)
    _same_run(whole.metrics.out_dir, _interrupt_in_round_2(tiny_config(tmp_path, "llama", *u), monkeypatch))
    steps = read_records(tmp_path / "run" / "metrics.jsonl", "step")
    assert all(s["hidden_down"] == s["grad_hidden_up"] > 0 for s in steps)


def test_a_run_with_joined_server_steps_resumes_bit_identical(tmp_path, monkeypatch):
    """federation.server_batch=4 with adaptive cuts, dropout and noise: joined steps of clients at different cuts
    resume from a round checkpoint exactly as they ran."""
    joined = [*RUN, "federation.server_batch=4"]
    whole = tiny_config(tmp_path / "whole", "llama", *joined)
    run_simulation(whole)
    _same_run(whole.metrics.out_dir, _interrupt_in_round_2(tiny_config(tmp_path, "llama", *joined), monkeypatch))
    steps = read_records(tmp_path / "run" / "metrics.jsonl", "step")
    mixed = {}
    for s in steps:
        mixed.setdefault((s["round"], s["server_step"]), set()).add(s["cut"])
    assert any(len(cuts) > 1 for cuts in mixed.values()), "some server step joined clients at different cuts"


def test_a_run_choosing_codecs_per_client_resumes_bit_identical(tmp_path, monkeypatch):
    """codec.up=auto with zstd on top: the clients' codecs are part of the federation's state."""
    auto = [*RUN, "codec.up=auto", "codec.down=int8_token", "codec.entropy=zstd",
            "codec.max_ppl_cost=0.05"]
    whole = tiny_config(tmp_path / "whole", "llama", *auto)
    run_simulation(whole)
    _same_run(whole.metrics.out_dir, _interrupt_in_round_2(tiny_config(tmp_path, "llama", *auto), monkeypatch))
    decisions = read_records(tmp_path / "run" / "metrics.jsonl", "cut_decision")
    assert len({v for d in decisions for v in d["codecs"].values()}) > 1, "clients on different codecs"


def test_resuming_a_copied_run_writes_only_into_the_copy(tmp_path, monkeypatch):
    """The copy's config.yaml names the original's out_dir (relative, here): a resume must not touch it."""
    import shutil

    from splitft.sim.runner import resume_simulation

    monkeypatch.chdir(tmp_path)
    _interrupted(tmp_path, "metrics.out_dir=orig")
    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    before = {p.relative_to(tmp_path / "orig"): p.read_bytes() for p in (tmp_path / "orig").rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path / "copy")  # and from another working directory
    resume_simulation(tmp_path / "copy")
    after = {p.relative_to(tmp_path / "orig"): p.read_bytes() for p in (tmp_path / "orig").rglob("*") if p.is_file()}
    assert before == after, "the original run was modified"
    assert (tmp_path / "copy" / "summary.json").is_file() and not (tmp_path / "copy" / "orig").exists()


def test_resume_refuses_a_finished_run_overrides_and_a_tampered_pointer(uninterrupted, tmp_path):
    res = subprocess.run([sys.executable, "-m", "splitft.cli", "simulate", "--resume", uninterrupted, "x.y=1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "drop --config and overrides" in res.stderr
    with pytest.raises(UserError, match="already finished"):
        run_simulation(tiny_config(tmp_path, "llama", *RUN, f"metrics.out_dir={uninterrupted}"), resume=True)
    run = tmp_path / "evil"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("../../etc\n")
    with pytest.raises(UserError, match="not a checkpoint folder"):
        run_simulation(tiny_config(tmp_path, "llama", f"metrics.out_dir={run}"), resume=True)


def test_dropped_clients_do_not_push_and_the_round_aggregates_over_the_rest(uninterrupted):
    records = read_records(Path(uninterrupted) / "metrics.jsonl")
    for r in (r for r in records if r["kind"] == "round" and r["round"] >= 0):
        gone = {int(c) for c in r["dropped"]}
        assert r["clients"] == sorted(set(map(int, r["cuts"])) - gone)
        steps = [s for s in records if s["kind"] == "step" and s["round"] == r["round"]]
        for c, at in r["dropped"].items():
            assert sorted(s["step"] for s in steps if s["client_id"] == int(c)) == list(range(at))


def test_dropout_draws_are_seeded_and_independent_of_selection():
    a = plan_dropouts(3, [0, 1, 2, 3], 4, 0.5, seed=7)
    assert a == plan_dropouts(3, [0, 1, 2, 3], 4, 0.5, seed=7) and all(0 <= s < 4 for s in a.values())
    assert plan_dropouts(3, [0, 1, 2, 3], 4, 0.0, seed=7) == {}
    hits = sum(len(plan_dropouts(r, list(range(10)), 2, 0.3, seed=1)) for r in range(200))
    assert 0.25 < hits / 2000 < 0.35


class _CountingClient(SplitClient):
    """A client with a field of its own (batches trained), which it keeps in its own state_dict."""

    batches = 0

    def train_step(self, transport, round_, step):
        self.batches += 1
        return super().train_step(transport, round_, step)

    def state_dict(self):
        return {**super().state_dict(), "batches": self.batches}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.batches = state["batches"]


class _ForgetfulClient(_CountingClient):
    """The same field, left out of its state_dict: nothing else may carry it through a checkpoint."""

    def state_dict(self):
        return SplitClient.state_dict(self)

    def load_state_dict(self, state):
        SplitClient.load_state_dict(self, state)


@pytest.mark.parametrize("cls, survives", [(_CountingClient, True), (_ForgetfulClient, False)])
def test_a_new_client_field_survives_resume_only_through_the_clients_own_state_dict(tmp_path, cls, survives):
    cfg = tiny_config(tmp_path, "llama", *ADAPTIVE)

    def federation():
        fed = build_federation(build_setup(cfg), NullLogger())
        for client in fed.clients.values():
            client.__class__ = cls
        return fed

    fed = federation()
    fed.run_round(0, evaluate=False)
    assert {c.batches for c in fed.clients.values()} == {cfg.federation.local_steps}
    checkpoint.save(tmp_path, 0, {"federation": fed.state_dict()})
    resumed = federation()
    resumed.load_state_dict(checkpoint.load(tmp_path)["federation"])
    assert {c.batches for c in resumed.clients.values()} == {cfg.federation.local_steps if survives else 0}
    assert {c: cl.cut for c, cl in resumed.clients.items()} == {c: cl.cut for c, cl in fed.clients.items()}


def test_a_state_round_trips_through_the_files_with_tensors_apart_from_json(tmp_path):
    state = {"a": {"w": torch.arange(6.0).reshape(2, 3), "n": 3, "names": ["x"]}, "rng": torch.tensor([1, 2])}
    folder = checkpoint.save(tmp_path, 7, state)
    assert set(load_file(folder / "state.safetensors")) == {"a/w", "rng"}
    back = checkpoint.load(tmp_path)
    assert back["a"]["n"] == 3 and back["a"]["names"] == ["x"] and torch.equal(back["a"]["w"], state["a"]["w"])


def _state_json(folder):
    import json

    return json.loads((folder / "state.json").read_text())


def _put_json(folder, state):
    import json

    (folder / "state.json").write_text(json.dumps(state))


def _tensors(folder, change):
    from safetensors.torch import save_file

    t = load_file(folder / "state.safetensors")
    change(t)
    save_file(t, str(folder / "state.safetensors"))


def _first_client_lora(t):
    return next(k for k in t if "/clients/" in k and "/lora/" in k)


TAMPER = {
    "truncated": lambda f: (f / "state.safetensors").write_bytes((f / "state.safetensors").read_bytes()[:500]),
    "empty": lambda f: (f / "state.safetensors").write_bytes(b""),
    "pickled": lambda f: (f / "state.safetensors").write_bytes(__import__("pickle").dumps({"x": 1})),
    "garbled header": lambda f: (f / "state.safetensors").write_bytes(
        b"\xff" * 8 + (f / "state.safetensors").read_bytes()[8:]),
    "missing keys": lambda f: _put_json(f, {k: v for k, v in _state_json(f).items() if k != "federation"}),
    "missing metrics.jsonl": lambda f: (f.parents[1] / "metrics.jsonl").unlink(),
    "round 99": lambda f: _put_json(f, {**_state_json(f), "round": 99}),
    "metrics_lines 1e9": lambda f: _put_json(f, {**_state_json(f), "metrics_lines": 10 ** 9}),
    "wall_time text": lambda f: _put_json(f, {**_state_json(f), "wall_time": "soon"}),
    "NaN in a LoRA": lambda f: _tensors(f, lambda t: t[_first_client_lora(t)].view(-1).__setitem__(0, float("nan"))),
    "float64": lambda f: _tensors(f, lambda t: t.__setitem__(_first_client_lora(t), t[_first_client_lora(t)].double())),
    "wrong shape": lambda f: _tensors(f, lambda t: t.__setitem__(_first_client_lora(t), torch.zeros(3, 5))),
    "a client's LoRA missing": lambda f: _tensors(f, _drop_a_clients_lora),
    "a cut that disagrees": lambda f: _put_json(f, _with_cut(_state_json(f), 3)),
    "json garbage": lambda f: (f / "state.json").write_text("{not json"),
    "metrics_lines lower than its rounds": lambda f: _put_json(f, {**_state_json(f), "metrics_lines": 3}),
    "data position beyond the data": lambda f: _put_json(f, _with_order(_state_json(f), [10 ** 6])),
    "config.yaml edited: lora.r": lambda f: _edit_config(f.parents[1], "  r: 4\n", "  r: 8\n"),
    "config.yaml edited: lora.targets": lambda f: _edit_config(f.parents[1], "targets: []", "targets: [q_proj]"),
}
MESSAGES = ("damaged", "no checkpoint", "does not fit this run's config and data")


def _with_order(state, order):
    first = next(iter(state["federation"]["clients"]))
    state["federation"]["clients"][first]["stream"]["order"] = order
    return state


def _edit_config(run, old, new):
    text = (run / "config.yaml").read_text()
    assert old in text, text
    (run / "config.yaml").write_text(text.replace(old, new, 1))


def _files(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _drop_a_clients_lora(t):
    prefix = _first_client_lora(t).split("/lora/")[0] + "/lora/"
    for k in [k for k in t if k.startswith(prefix)]:
        del t[k]


def _with_cut(state, cut):
    first = next(iter(state["federation"]["clients"]))
    state["federation"]["clients"][first]["cut"] = cut
    return state


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    return _interrupted(tmp_path_factory.mktemp("interrupted"))


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_a_tampered_checkpoint_is_refused_as_damaged_in_one_line(interrupted, tmp_path, capsys, how):
    import shutil

    from splitft.cli import main

    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    folder = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    TAMPER[how](folder)
    before = _files(run)
    capsys.readouterr()
    assert main(["simulate", "--resume", str(run)]) == 2  # any exception but a UserError fails the test here
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("splitft: error:")]
    assert len(errors) == 1 and any(m in errors[0] for m in MESSAGES), errors
    assert _files(run) == before, "a refused resume must leave every file of the run as it was"


def test_a_checkpoint_of_another_run_is_refused_and_changes_nothing(interrupted, tmp_path, capsys):
    """Same shapes, another seed: copied into this run's directory, it would resume as a silent mix of two."""
    import shutil

    from splitft.cli import main

    other = _interrupted(tmp_path / "other", "federation.seed=7")
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(other / "checkpoints", run / "checkpoints")
    before = _files(run)
    capsys.readouterr()
    assert main(["simulate", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "belongs to another run" in err and err.count("splitft: error:") == 1, err
    assert _files(run) == before


def _interrupted(tmp_path, *overrides):
    """A 3-round tiny run stopped in round 1, with its checkpoint of round 0."""
    cfg = tiny_config(tmp_path, "llama", *RUN[:-3], "federation.rounds=3", "metrics.checkpoint_every=1", *overrides)
    real = Federation.run_round

    def crash_in_round_1(self, round_, evaluate):
        if round_ == 1:
            raise KeyboardInterrupt
        return real(self, round_, evaluate)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(Federation, "run_round", crash_in_round_1)
        run_simulation(cfg)
    return Path(cfg.metrics.out_dir)


def test_a_run_another_process_is_running_is_not_resumed_beside_it(interrupted, tmp_path, capsys):
    """Seen: a `--resume` started while the first process still trained, and both finished into one directory."""
    import shutil

    from splitft.cli import main
    from splitft.rundir import RunLock

    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    before = _files(run)
    with RunLock(run) as running:  # the first process, still at work
        running.take()
        capsys.readouterr()
        assert main(["simulate", "--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert "another process is running this run right now" in err and err.count("splitft: error:") == 1, err
    assert _files(run) == before
