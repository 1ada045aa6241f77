"""`splitft privacy` and its parts (splitft/privacy/): each attack where the answer is known, the privacy floor
read from a table and moving a cut, and bad input refused in one line."""

import json
import re

import pytest
import torch

from splitft.build import build_setup, client_part, load
from splitft.cli import main
from splitft.config import ConfigError
from splitft.data.datasets import batches, load_examples
from splitft.data.files import STDLIB
from splitft.errors import UserError
from splitft.privacy.defenses import noisy_activations
from splitft.privacy.floor import floor_cut
from splitft.privacy.inversion import LearnedInverter, optimized_inversion, recovery
from splitft.privacy.labels import LabelScore, _two_means, score_batch
from splitft.records import read_records
from splitft.sim.runner import run_simulation
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def cut1(tmp_path_factory):
    """tiny:llama's part at cut 1 (one block: nearly the identity plus a residual), held-out and public batches."""
    setup = build_setup(tiny_config(tmp_path_factory.mktemp("inv"), "llama", "data.max_length=48"))
    part = client_part(setup.cfg, setup.peft, setup.family, 1, setup.compute)
    part.train(False)
    public, _ = load_examples(type(setup.cfg.data)(path=STDLIB, max_length=48, max_samples=64), setup.tokenizer, 0)
    held_out = next(batches(setup.eval[:4], 4, setup.pad_id))
    return setup, part, list(batches(public, 8, setup.pad_id)), held_out


def _acts(part, batch, noise=0.0):
    with torch.no_grad():
        acts = part.forward(batch["input_ids"], batch["attention_mask"])
    return noisy_activations(acts, noise, torch.Generator().manual_seed(0)) if noise else acts


def _rate(guess, batch):
    hits, n = recovery(guess, batch["input_ids"], batch["attention_mask"])
    return hits / n


def test_the_learned_inverter_reads_cut_1_back_and_noise_lowers_it(cut1):
    setup, part, public, batch = cut1
    table = setup.peft.base_model.model.get_input_embeddings().weight.detach()
    inverter = LearnedInverter.fit(part, public)
    clear, noisy = (_rate(inverter.invert(_acts(part, batch, n), table), batch) for n in (0.0, 3.0))
    assert clear > 0.9 and noisy < clear - 0.3, (clear, noisy)


def test_the_optimized_inversion_reads_cut_1_back_and_noise_lowers_it(cut1):
    _, part, _, batch = cut1
    mask = batch["attention_mask"]
    clear, noisy = (_rate(optimized_inversion(part, _acts(part, batch, n), mask, steps=150, lr=0.1), batch)
                    for n in (0.0, 3.0))
    assert clear > 0.9 and noisy < clear - 0.3, (clear, noisy)
    assert all(p.grad is None for p in part.lora_parameters()), "the attack leaves the client's adapters alone"


def test_label_attacks_on_known_gradients():
    gen = torch.Generator().manual_seed(0)
    head = torch.randn(50, 16, generator=gen)
    head[7] = 0  # an unused token's zero row must not win the direction score
    labels = torch.randint(0, 50, (2, 6), generator=gen)
    labels[labels == 7] = 8
    labels[1, :3] = -100  # a prompt: no labels
    grad = torch.zeros(2, 6, 16)
    has = (labels[:, 1:] != -100).unsqueeze(-1)
    small = 1e-3 * torch.randn(2, 5, 16, generator=gen)  # a prompt token's row: the loss reaches it by attention
    grad[:, :-1] = torch.where(has, -head[labels[:, 1:].clamp_min(0)], small)
    score = LabelScore()
    score_batch(score, grad, torch.zeros(2, 6, 50), labels, torch.ones(2, 6), head)
    assert score.tokens == 8 and score.recovery("argmax") == 1.0 and score.recovery("direction") == 1.0
    assert score.labelled_rows() == (1.0, 0.8), "the small rows are the unlabelled ones"


def test_two_means_splits_small_from_large_rows_and_zero_rows_are_unlabelled():
    norms = torch.tensor([0.0, 1e-3, 2e-3, 1.5e-3, 1.0, 2.0, 1.2])
    assert _two_means(norms).tolist() == [False, False, False, False, True, True, True]


def _table(path, model="tiny:llama", rows=((1, 0.0, 0.9), (2, 0.0, 0.4), (3, 0.0, 0.1), (1, 1.0, 0.2))):
    path.write_text(json.dumps({"model": model, "inversion": [
        {"cut": c, "attack": a, "noise": n, "recovery": r * (0.5 if a == "optimized" else 1)}
        for c, n, r in rows for a in ("learned", "optimized")]}))
    return str(path)


def test_the_floor_takes_the_smallest_cut_below_it_at_the_configured_noise(tmp_path):
    table = _table(tmp_path / "p.json")
    assert floor_cut(table, "tiny:llama", 0.0, 0.5) == 2
    assert floor_cut(table, "tiny:llama", 0.0, 0.3) == 3
    assert floor_cut(table, "tiny:llama", 1.0, 0.3) == 1
    for args, message in [(("tiny:gpt2", 0.0, 0.5), "measured on tiny:llama"),
                          (("tiny:llama", 0.5, 0.5), "no row at privacy.noise=0.5"),
                          (("tiny:llama", 0.0, 0.05), "no measured cut stays below it")]:
        with pytest.raises(UserError, match=message):
            floor_cut(table, *args)
    with pytest.raises(UserError, match="not found; run `splitft privacy"):
        floor_cut(str(tmp_path / "missing.json"), "tiny:llama", 0.0, 0.5)


@pytest.mark.parametrize("policy", ["fixed", "resource"])
def test_the_privacy_floor_moves_the_cut_and_the_record_says_so(tmp_path, policy):
    table = _table(tmp_path / "p.json")
    cfg = tiny_config(tmp_path, "llama", "split.cut=1", f"split.policy={policy}", "federation.rounds=1",
                      "split.privacy_floor=0.5", f"split.privacy_table={table}")
    run_simulation(cfg)
    decision = read_records(tmp_path / "run" / "metrics.jsonl", "cut_decision")[0]
    assert set(decision["cuts"].values()) == {2}, decision
    assert decision["privacy_floor_cut"] == 2 and decision["at_privacy_floor"] == ["0", "1"]


@pytest.mark.parametrize("overrides, message", [
    (["split.privacy_floor=0.5"], "split.privacy_floor: needs the measured table: run `splitft privacy"),
    (["split.privacy_floor=-0.1", "split.privacy_table=x.json"], "split.privacy_floor: must be in \\[0, 1\\]"),
    (["split.privacy_floor=.nan", "split.privacy_table=x.json"], "split.privacy_floor"),
    (["split.shape=u", "privacy.grad_keep=0"], "privacy.grad_keep: must be in \\(0, 1\\]"),
    (["split.shape=u", "privacy.grad_keep=.nan"], "privacy.grad_keep"),
    (["privacy.grad_keep=0.5"], "privacy.grad_keep: thins grad_hidden, which only a U-shaped split sends"),
])
def test_bad_privacy_settings_are_one_line_each(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load(None, overrides)
    assert len(e.value.problems) == 1


TINY = ["model.source=tiny:llama", "data.max_samples=60", "data.max_length=48", "federation.n_clients=2",
        "train.batch_size=2", "data.max_eval_samples=4", "lora.r=4", "lora.r_cut=4", "split.cut=1",
        "metrics.progress=false"]


def test_the_command_prints_the_documented_json_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "privacy.json"
    code = main(["privacy", *TINY, f"metrics.out_dir={tmp_path / 'run'}", "--cuts", "1,2", "--noise", "0,2",
                 "--defenses", "none,keep=0.25", "--samples", "2", "--steps", "2", "--opt-steps", "20",
                 "--out", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads(out.read_text())
    assert {(r["cut"], r["attack"], r["noise"]) for r in result["inversion"]} == {
        (c, a, n) for c in (1, 2) for a in ("learned", "optimized") for n in (0.0, 2.0)}
    assert {(r["tail"], r["defense"], r["attack"]) for r in result["labels_u"]} == {
        (1, d, a) for d in ("none", "keep=0.25") for a in ("argmax", "direction", "prior")}
    assert all(0 <= r["recovery"] <= 1 for r in result["inversion"] + result["labels_u"])
    got = {(r["defense"], r["attack"]): r["recovery"] for r in result["labels_u"]}
    assert got["none", "argmax"] > 0.8 and got["keep=0.25", "argmax"] < got["none", "argmax"] / 2, got


@pytest.mark.parametrize("args, message", [
    (["--cuts", "0,1"], "--cuts must lie in \\[1, 3\\]"),
    (["--cuts", "1,1"], "--cuts: a non-empty list without repeats"),
    (["--cuts", "a"], "--cuts: a comma-separated list of ints"),
    (["--defenses", "keep=2"], "privacy.grad_keep: must be in"),
    (["--defenses", "drop=1"], "--defenses: 'drop=1'"),
    (["--samples", "0"], "--samples, --steps and --opt-steps must be >= 1"),
    (["data.path=builtin:python_stdlib"], "must not be the client's data"),
])
def test_bad_command_input_is_one_line(tmp_path, capsys, args, message):
    assert main(["privacy", *TINY, f"metrics.out_dir={tmp_path / 'run'}", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("splitft: error:"), err
    assert re.search(message, err[0]), err[0]
