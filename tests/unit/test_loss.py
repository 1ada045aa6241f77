"""The chunked head loss (`loss.head_loss`) is the whole-logits loss (`token_loss(head(hidden))`) without the
(B, T, V) logits: the same values and gradients up to float32 rounding, for any chunk size."""

import pytest
import torch

from splitft.loss import IGNORE, head_loss, token_loss


def _case(seed: int = 0, b: int = 3, t: int = 40, h: int = 16, v: int = 300):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(h, v, bias=False)
    head.weight.data = torch.randn(v, h, generator=g) * 0.5
    head.weight.requires_grad_(False)
    hidden = torch.randn(b, t, h, generator=g)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, : t // 3] = IGNORE  # a prompt
    labels[1, t - 5:] = IGNORE  # padding
    return head, hidden, labels


def _mean_loss_and_grad(fn, hidden):
    h = hidden.clone().requires_grad_(True)
    stats = fn(h)
    (stats.loss_sum / stats.n_tokens).backward()
    return stats, h.grad


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_chunked_loss_equals_the_whole_logits_loss_values_and_gradients(chunk):
    head, hidden, labels = _case()
    ref, ref_grad = _mean_loss_and_grad(lambda h: token_loss(head(h), labels), hidden)
    got, grad = _mean_loss_and_grad(lambda h: head_loss(h, head, labels, chunk), hidden)
    assert (got.n_tokens, got.n_correct) == (ref.n_tokens, ref.n_correct) and got.n_tokens > 50
    assert got.loss_sum.dtype == torch.float32
    assert torch.allclose(got.loss_sum, ref.loss_sum, rtol=1e-6)
    assert torch.allclose(grad, ref_grad, rtol=1e-5, atol=1e-8), (grad - ref_grad).abs().max()
    assert (grad[:, : 40 // 3 - 1] == 0).all(), "positions without a label get no gradient"


def test_another_seed_than_the_mean_rescales_the_gradient():
    head, hidden, labels = _case(1)
    h1, h2 = hidden.clone().requires_grad_(True), hidden.clone().requires_grad_(True)
    token_loss(head(h1), labels).loss_sum.mul(3.0).backward()
    head_loss(h2, head, labels, 16).loss_sum.mul(3.0).backward()
    assert torch.allclose(h2.grad, h1.grad, rtol=1e-5, atol=1e-5)  # |grad| up to ~6: float32 rounding


def test_without_gradients_it_only_measures():
    head, hidden, labels = _case(2)
    with torch.no_grad():
        got = head_loss(hidden, head, labels, 5)
    ref = token_loss(head(hidden), labels)
    assert got.loss_sum.grad_fn is None and torch.allclose(got.loss_sum, ref.loss_sum, rtol=1e-6)
    assert (got.n_tokens, got.n_correct) == (ref.n_tokens, ref.n_correct)


def test_a_batch_without_labels_has_zero_loss_and_zero_gradient():
    head, hidden, labels = _case(3)
    labels[:] = IGNORE
    h = hidden.clone().requires_grad_(True)
    stats = head_loss(h, head, labels, 8)
    (stats.loss_sum / max(stats.n_tokens, 1)).backward()
    assert stats.n_tokens == 0 and stats.loss_sum.item() == 0.0 and (h.grad == 0).all()


def test_under_bf16_autocast_it_follows_the_whole_logits_loss_to_bf16_precision():
    head, hidden, labels = _case(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, ref_grad = _mean_loss_and_grad(lambda h: token_loss(head(h), labels), hidden)
        got, grad = _mean_loss_and_grad(lambda h: head_loss(h, head, labels, 32), hidden)
    assert got.loss_sum.dtype == torch.float32, "the loss is float32 whatever the compute dtype"
    assert torch.allclose(got.loss_sum, ref.loss_sum, rtol=1e-5)
    assert torch.allclose(grad, ref_grad, rtol=1e-2, atol=1e-4)
