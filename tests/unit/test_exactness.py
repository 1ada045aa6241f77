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
    cfg = setup.cfg
    lora.CutRankMask(setup.peft, setup.family, cfg.lora.r_cut, tail_cut(cfg, setup.n_layer)).set(cfg.split.cut)
    idx = IidPartitioner(n_clients=1, seed=cfg.federation.seed).partition([len(e) for e in setup.train])[0]
    stream = BatchStream([setup.train[i] for i in idx], cfg.train.batch_size, setup.pad_id,
                         derive_seed(cfg.federation.seed, "stream", 0))
    params = list(lora.lora_parameters(setup.peft).values())
    opt = make_optimizer(params, cfg.train.lr, cfg.train.weight_decay)
    setup.peft.train()
    losses = []
    for _ in range(steps):
        batch = stream.next()
        logits = setup.peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        stats = token_loss(logits, batch["labels"])
        opt.zero_grad()
        (stats.loss_sum / stats.n_tokens).backward()
        opt.step()
        losses.append(stats.loss_sum.item() / stats.n_tokens)
    return losses, lora.adapter_state_dict(setup.peft)


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
    assert max(abs(a - b) for a, b in zip(split_losses, ref_losses)) <= 1e-5
    diff = max((split_sd[k] - ref_sd[k]).abs().max().item() for k in ref_sd)
    assert diff <= 1e-5, f"{family} {shape}: max |LoRA split - unsplit| = {diff}"
    moved = max((ref_sd[k] - v).abs().max().item() for k, v in initial.items())
    assert moved > 1e-3, "training must actually change the adapters for this test to mean anything"
