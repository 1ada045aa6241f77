"""Split training == unsplit PEFT training: 1 client, same seed and batches, several steps, every family, both
split shapes (vanilla and U, where the client's tail computes the loss)."""

import pytest

from splitft import lora
from splitft.build import build_setup
from splitft.config import tail_cut
from splitft.data.datasets import BatchStream
from splitft.data.partitioners import IidPartitioner
from splitft.loss import token_loss
from splitft.metrics import NullLogger
from splitft.optim import make_optimizer
from splitft.seeding import derive_seed
from splitft.sim.methods import build_federation
from tests.conftest import FAMILIES, tiny_config

STEPS = 3


def _unsplit_training(setup, steps: int):
    """Train the full PeftModel (HF forward, cut layers masked to r_cut) on the exact batches client 0 sees."""
    _mask_cut_layers(setup)
    setup.peft.train()

    def loss_of(batch):
        logits = setup.peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return token_loss(logits, batch["labels"])

    losses = _train_on_client0_batches(setup, steps, list(lora.lora_parameters(setup.peft).values()), loss_of)
    return losses, lora.adapter_state_dict(setup.peft)


def _mask_cut_layers(setup) -> None:
    cfg = setup.cfg
    lora.CutRankMask(setup.peft, setup.family, cfg.lora.r_cut, tail_cut(cfg, setup.n_layer)).set(cfg.split.cut)


def _train_on_client0_batches(setup, steps: int, params, loss_of) -> list[float]:
    """`steps` AdamW steps of `params` on the batches client 0 sees (the 1-client partition, its seeded stream)."""
    cfg = setup.cfg
    idx = IidPartitioner(n_clients=1, seed=cfg.federation.seed).partition([len(e) for e in setup.train])[0]
    stream = BatchStream([setup.train[i] for i in idx], cfg.train.batch_size, setup.pad_id,
                         derive_seed(cfg.federation.seed, "stream", 0))
    opt = make_optimizer(params, cfg.train.lr, cfg.train.weight_decay)
    losses = []
    for _ in range(steps):
        stats = loss_of(stream.next())
        opt.zero_grad()
        (stats.loss_sum / stats.n_tokens).backward()
        opt.step()
        losses.append(stats.loss_sum.item() / stats.n_tokens)
    return losses


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", ["cut=1", "cut=3", "cut=1 u tail=2", "cut=2 u tail=1"])
def test_split_training_equals_unsplit_training(tmp_path, family, shape):
    cut = int(shape.split()[0][4:])
    u = ["split.shape=u", f"split.tail={shape.split()[2][5:]}"] if " u " in shape else []
    cfg = tiny_config(tmp_path, family, "federation.n_clients=1", f"split.cut={cut}", "train.lr=0.01",
                      f"federation.local_steps={STEPS}", "federation.rounds=2", "lora.r_cut=2", *u)
    setup = build_setup(cfg)
    initial = lora.adapter_state_dict(setup.peft)
    fed = build_federation(setup, NullLogger())
    split_losses = []
    fed.on_step = lambda rec: split_losses.append(rec["loss"])
    for r in range(2):
        fed.run_round(r, evaluate=False)
    split_sd = fed.server.global_view(setup.n_layer)

    ref_losses, ref_sd = _unsplit_training(setup, 2 * STEPS)  # setup.peft still holds the initial LoRA
    assert split_sd.keys() == ref_sd.keys()
    assert max(abs(a - b) for a, b in zip(split_losses, ref_losses, strict=True)) <= 1e-5
    diff = max((split_sd[k] - ref_sd[k]).abs().max().item() for k in ref_sd)
    assert diff <= 1e-5, f"{family} {shape}: max |LoRA split - unsplit| = {diff}"
    moved = max((ref_sd[k] - v).abs().max().item() for k, v in initial.items())
    assert moved > 1e-3, "training must actually change the adapters for this test to mean anything"


def _train_split(setup, rounds: int = 2):
    """(per-step losses, every block's global adapters) of `rounds` rounds of the 1-client federation."""
    fed = build_federation(setup, NullLogger())
    losses = []
    fed.on_step = lambda rec: losses.append(rec["loss"])
    for r in range(rounds):
        fed.run_round(r, evaluate=False)
    return losses, fed.server.global_view(setup.n_layer)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


BF16_TOLERANCE = 1e-5
"""bf16 split vs bf16 unsplit PEFT, both under CPU autocast with LoRA fp32: the same ops on the same values (the
activations cross as float32, exact for bf16), so the same bound as fp32."""


def _autocast_forward(model, dtype):
    """`model`'s forward under autocast, its backward and AdamW steps outside it (torch's recommended use: the
    parts do the same; an AdamW step under CPU autocast computes other numbers)."""
    import torch

    forward = model.forward

    def autocast_forward(*args, **kwargs):
        with torch.autocast("cpu", dtype=dtype):
            return forward(*args, **kwargs)

    model.forward = autocast_forward


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", ["cut=2", "cut=1 u tail=1"])
def test_bf16_split_training_equals_bf16_unsplit_training(tmp_path, monkeypatch, family, storage, shape):
    import torch

    from splitft.precision import EMULATED_BF16

    monkeypatch.setenv(EMULATED_BF16, "1")  # on a CI machine without bf16 instructions too
    u = ["split.shape=u", "split.tail=1"] if " u " in shape else []
    cfg = tiny_config(tmp_path, family, "federation.n_clients=1", shape.split()[0].replace("cut", "split.cut"),
                      "train.lr=0.01", f"federation.local_steps={STEPS}", "lora.r_cut=2",
                      "train.compute_dtype=bfloat16", f"model.dtype={storage}", *u)
    setup = build_setup(cfg)
    assert {p.dtype for p in lora.lora_parameters(setup.peft).values()} == {torch.float32}, "LoRA masters fp32"
    assert setup.peft.base_model.model.get_input_embeddings().weight.dtype == getattr(torch, storage)
    split_losses, split_sd = _train_split(setup)
    _autocast_forward(setup.peft, torch.bfloat16)
    ref_losses, ref_sd = _unsplit_training(setup, 2 * STEPS)
    assert max(abs(a - b) for a, b in zip(split_losses, ref_losses, strict=True)) <= 1e-5
    diff = _max_diff(split_sd, ref_sd)
    assert diff <= BF16_TOLERANCE, f"{family} {storage} {shape}: max |LoRA split - unsplit| = {diff}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", ["cut=2", "cut=1 u tail=2"])
def test_activation_checkpointing_changes_no_bit(tmp_path, family, shape):
    """Every held block (client, server, U tail) recomputed in the backward: the same losses and adapters,
    exactly (fp32; dropout's RNG state is restored for the recompute)."""
    u = ["split.shape=u", "split.tail=2"] if " u " in shape else []
    args = [family, "federation.n_clients=1", shape.split()[0].replace("cut", "split.cut"), "train.lr=0.01",
            f"federation.local_steps={STEPS}", "lora.r_cut=2", "lora.dropout=0.1", *u]
    plain = _train_split(build_setup(tiny_config(tmp_path, *args)))
    again = _train_split(build_setup(tiny_config(tmp_path, *args, "train.activation_checkpointing=true")))
    assert plain[0] == again[0] and _max_diff(plain[1], again[1]) == 0.0


def _unsplit_chunked_training(setup, steps: int):
    """The whole model as the no-split baselines train it (`FullPart.loss`: the chunked head loss), cut layers
    masked to r_cut, on client 0's batches."""
    from splitft.build import compute_of
    from splitft.model.split import FullPart

    _mask_cut_layers(setup)
    part = FullPart(setup.peft, setup.family, compute_of(setup.cfg))
    part.train()
    losses = _train_on_client0_batches(setup, steps, part.lora_parameters(),
                                       lambda b: part.loss(b["input_ids"], b["attention_mask"], b["labels"]))
    return losses, lora.adapter_state_dict(part.module)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", ["cut=1", "cut=2 u tail=1"])
def test_split_training_with_the_chunked_loss_equals_unsplit_training_with_it(tmp_path, family, shape):
    """train.loss_chunk_tokens > 0 on both sides of the comparison: split == unsplit to 1e-5, as without it (the
    chunked loss itself equals the whole-logits one to float32 rounding: tests/unit/test_loss.py)."""
    u = ["split.shape=u", "split.tail=1"] if " u " in shape else []
    cfg = tiny_config(tmp_path, family, "federation.n_clients=1", shape.split()[0].replace("cut", "split.cut"),
                      "train.lr=0.01", f"federation.local_steps={STEPS}", "lora.r_cut=2",
                      "train.loss_chunk_tokens=16", *u)
    setup = build_setup(cfg)
    split_losses, split_sd = _train_split(setup)
    ref_losses, ref_sd = _unsplit_chunked_training(setup, 2 * STEPS)
    assert max(abs(a - b) for a, b in zip(split_losses, ref_losses, strict=True)) <= 1e-5
    assert _max_diff(split_sd, ref_sd) <= 1e-5, f"{family} {shape}"
