"""Client side of the cut: Gaussian noise on the activations that leave (privacy.noise) is sized by their RMS,
passes the gradient straight through, and leaves the global RNG alone."""

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
