"""Client side of the cut: Gaussian noise on the activations that leave (privacy.noise) is sized by their RMS,
passes the gradient straight through, and leaves the global RNG alone."""

import pytest
import torch

from splitft.build import build_setup, split_client
from splitft.transport.base import StepReply
from tests.conftest import tiny_config


class Recorder:
    """A transport that keeps what it was sent and answers a fixed grad_activations."""

    def __init__(self):
        self.sent = []

    def step(self, req):
        self.sent.append(req.activations.clone())
        return StepReply(1.0, 1, 0, torch.ones_like(req.activations))


def _client(tmp_path, noise):
    setup = build_setup(tiny_config(tmp_path, "llama", f"privacy.noise={noise}"))
    return split_client(setup, 0, 2)


def test_noise_is_sized_by_the_rms_and_the_gradient_passes_straight_through(tmp_path):
    clean, noisy = _client(tmp_path / "a", 0.0), _client(tmp_path / "b", 0.5)
    t_clean, t_noisy = Recorder(), Recorder()
    rng_before = torch.get_rng_state()
    clean.train_step(t_clean, 0, 0)
    noisy.train_step(t_noisy, 0, 0)
    assert torch.equal(torch.get_rng_state(), rng_before), "noise draws from the client's own generator"
    a, b = t_clean.sent[0], t_noisy.sent[0]
    rel = (b - a).pow(2).mean().sqrt() / a.pow(2).mean().sqrt()
    assert 0.45 < rel < 0.55
    # the same grad_activations came back to both: the LoRA updates must be identical (noise is a constant shift
    # of what was sent, so d(sent)/d(acts) = I)
    ga = {n: p.grad for n, p in clean.part.module.named_parameters() if p.grad is not None}
    gb = {n: p.grad for n, p in noisy.part.module.named_parameters() if p.grad is not None}
    assert ga.keys() == gb.keys() and ga and all(torch.allclose(ga[n], gb[n]) for n in ga)


def test_a_cut_change_keeps_held_blocks_state_and_loads_the_new_blocks_global_adapters(tmp_path):
    """A deployed client moved from cut 2 to 3 by the server keeps the LoRA values and AdamW state of blocks 0-1,
    reads block 2's base weights from the model file, and takes block 2's global adapters; moved back to 1 it
    drops blocks 1-2 from memory."""
    import torch

    from splitft import lora
    from splitft.build import Setup as BuildSetup
    from splitft.build import client_stream, open_model
    from splitft.client import SplitClient
    from splitft.data.datasets import Example
    from splitft.deploy.join import Holder
    from splitft.transport.base import Pulled, StepReply
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path)
    pm = open_model(cfg)
    holder = Holder(pm, None)
    examples = [Example([1, 2, 3, 4], [1, 2, 3, 4])] * 4
    setup = BuildSetup(cfg, pm.peft, pm.family, pm.tokenizer, examples, [], {}, pm.device, [])
    client = SplitClient(0, holder.part(2), client_stream(setup, 0, [0, 1, 2, 3]), lr=0.1)
    assert pm.held_gb() > 0 and "model.layers.2.self_attn.q_proj.base_layer.weight" not in {
        n for n, p in pm.peft.named_parameters() if p.device.type != "meta"}

    class Fake:  # the server's answers: grads back, then a pull that moves the cut
        counter = None

        def __init__(self, cut, adapters):
            self.cut, self.adapters = cut, adapters

        def step(self, req):
            return StepReply(1.0, 4, 0, torch.ones_like(req.activations))

        def pull_adapters(self, cid, cut, round_, report=None):
            return Pulled(self.cut, self.adapters)

    client.train_step(Fake(2, {}), 0, 0)
    before = {n: t.clone() for n, t in lora.adapter_state_dict(client.part.module).items()}
    moments = {n: client.opt.state[p]["exp_avg"].clone() for n, p in lora.lora_parameters(client.part.module).items()}
    new_block = {n: torch.full_like(t, 0.5) for n, t in lora.adapter_state_dict(pm.peft).items()
                 if lora.layer_of(n, pm.family) == 2}
    client.replace_part(holder.part(3))  # the mechanism a pull with another cut applies, before it loads
    after = lora.adapter_state_dict(client.part.module)
    assert all(torch.equal(after[n], t) for n, t in before.items()), "blocks 0-1 keep their values"
    named = lora.lora_parameters(client.part.module)
    assert all(torch.equal(client.opt.state[named[n]]["exp_avg"], m) for n, m in moments.items())
    client.replace_part(holder.part(2))
    assert client.pull(Fake(3, {**before, **new_block}), 1, recut=holder.part) == 3 and client.cut == 3
    after = lora.adapter_state_dict(client.part.module)
    assert all(torch.equal(after[n], t) for n, t in new_block.items()), "block 2 takes the global adapters"
    client.pull(Fake(1, {n: t for n, t in before.items() if lora.layer_of(n, pm.family) == 0}), 2,
                recut=holder.part)
    held = {n for n, p in pm.peft.named_parameters() if p.device.type != "meta" and "lora_" not in n}
    assert not any(".layers.1." in n or ".layers.2." in n for n in held) and any(".layers.0." in n for n in held)


def test_a_deployed_clients_checkpoint_of_another_run_is_refused_once_that_run_is_under_way(tmp_path):
    """The server serves run B at round 3; this client's checkpoint is of run A: its state would mix two trainings."""
    from splitft import checkpoint
    from splitft.deploy.join import own_checkpoint
    from splitft.errors import UserError

    checkpoint.save(tmp_path, 2, {"round": 2, "run": "aaaa", "client": {"cut": 2}})
    said = []
    assert own_checkpoint(tmp_path, {"run": "aaaa", "round": 3}, said.append)["round"] == 2
    with pytest.raises(UserError, match="is of run aaaa, but the server serves run bbbb, at round 3"):
        own_checkpoint(tmp_path, {"run": "bbbb", "round": 3}, said.append)
    assert own_checkpoint(tmp_path, {"run": "bbbb", "round": 0}, said.append) is None  # a new run, from the start
    assert said and "is of another run" in said[-1]
    assert own_checkpoint(tmp_path / "none", {"run": "bbbb", "round": 3}, said.append) is None
