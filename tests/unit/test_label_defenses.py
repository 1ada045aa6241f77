"""Defenses of a U-shaped split's labels (privacy.grad_clip, privacy.grad_noise): the numerics of clipping and
noise on grad_hidden, nothing changed when off, the argmax attack of benchmarks/label_inference.py defeated on a
tiny model, and bad settings refused."""

import pytest
import torch

from splitft.build import build_setup, load, split_client, split_server
from splitft.config import ConfigError
from splitft.transport.base import BackwardRequest
from splitft.transport.inproc import InProcTransport
from tests.conftest import tiny_config

U = ("split.shape=u", "split.tail=1")


def _client(tmp_path, clip=0.0, noise=0.0, keep=1.0):
    setup = build_setup(tiny_config(tmp_path, "llama", *U, f"privacy.grad_clip={clip}", f"privacy.grad_noise={noise}",
                                    f"privacy.grad_keep={keep}"))
    return setup, split_client(setup, 0, 2)


def _grad(seed=0):
    g = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(seed))
    g[0, 1] *= 50  # a label row that stands out
    g[1, 4:] = 0  # padding: rows of exactly zero
    return g


def test_clipping_bounds_every_row_and_keeps_its_direction(tmp_path):
    _, client = _client(tmp_path, clip=1.0)
    g = _grad()
    norms = g.norm(dim=-1)
    bound = norms[norms > 0].median()
    out = client._defended(g)
    new = out.norm(dim=-1)
    assert (new <= bound * (1 + 1e-6)).all() and new[0, 1] == pytest.approx(float(bound), rel=1e-6)
    assert torch.allclose(out[0, 1] / new[0, 1], g[0, 1] / norms[0, 1], atol=1e-6), "direction kept"
    small = norms <= bound
    assert torch.equal(out[small], g[small]), "rows under the bound pass unchanged"


def test_noise_has_the_configured_norm_and_hides_zero_rows(tmp_path):
    _, client = _client(tmp_path, noise=2.0)
    g = torch.zeros(4, 64, 32)
    g[:, :32] = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = g.norm(dim=-1)[g.norm(dim=-1) > 0].median()
    noise = client._defended(g) - g
    assert noise.norm(dim=-1).mean() == pytest.approx(2.0 * float(ref), rel=0.05)
    assert (client._defended(g)[:, 32:].norm(dim=-1) > 0).all(), "padding rows are no longer exactly zero"


def test_keep_sends_that_share_of_the_rows_and_zeros_for_the_rest(tmp_path):
    _, client = _client(tmp_path, keep=0.25)
    g = torch.randn(8, 128, 32, generator=torch.Generator().manual_seed(2))
    out = client._defended(g)
    kept = out.norm(dim=-1) > 0
    assert abs(float(kept.float().mean()) - 0.25) < 0.03
    assert torch.equal(out[kept], g[kept]) and (out[~kept] == 0).all(), "a row is sent whole or not at all"
    _, again = _client(tmp_path / "again", keep=0.25)
    assert torch.equal(again._defended(g), out), "the draw is the client's own seeded stream"


def test_without_defenses_grad_hidden_leaves_as_it_is(tmp_path):
    _, client = _client(tmp_path)
    g = _grad()
    assert client._defended(g) is g


class Curious(InProcTransport):
    def backward(self, req: BackwardRequest):
        self.seen = req.grad_hidden
        return super().backward(req)


def _recovery(tmp_path, clip, noise):
    """Top-1 of the server's argmax attack (label_inference.py) on client 0's first training step."""
    setup, client = _client(tmp_path, clip, noise)
    wire = Curious(split_server(setup.cfg, setup.peft, setup.family, 2, setup.compute))
    req = client.begin_step(0, 0)
    labels = client._tail_batch[1]
    client.finish_step(client.exchange(wire, req))
    head = setup.peft.base_model.model.get_output_embeddings().weight.detach()
    guess = (-(wire.seen[:, :-1].float() @ head.float().T)).argmax(-1)
    target, mask = labels[:, 1:], labels[:, 1:] != -100
    return float((guess == target)[mask].float().mean())


def test_clipping_and_noise_defeat_the_argmax_attack_on_a_tiny_model(tmp_path):
    bare = _recovery(tmp_path / "bare", 0.0, 0.0)
    defended = _recovery(tmp_path / "defended", 1.0, 10.0)
    assert bare > 0.8 and defended < bare / 3, (bare, defended)


@pytest.mark.parametrize("overrides, message", [
    (["split.shape=u", "split.tail=1", "privacy.grad_clip=-1"], "privacy.grad_clip: must be a number >= 0"),
    (["split.shape=u", "split.tail=1", "privacy.grad_noise=.nan"], "privacy.grad_noise: must be a finite number"),
    (["privacy.grad_noise=1"], "privacy.grad_noise: protects grad_hidden, which only a U-shaped split sends"),
])
def test_bad_defense_settings_are_one_line_each(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load(None, overrides)
    assert len(e.value.problems) == 1
