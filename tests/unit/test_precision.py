"""The three dtypes decided in one place (`precision.py`): what auto picks and why, what is refused and how it
says so, and float16's loss scaling."""

import pytest
import torch

from splitft.errors import UserError
from splitft.precision import EMULATED_BF16, FP32, LossScaler, Precision, resolve

CPU = torch.device("cpu")
AVX512_BF16 = {"avx2", "avx512f", "avx512_bf16"}
AMX = {"avx512f", "amx_tile", "amx_bf16"}
NO_BF16 = {"avx2", "avx512f"}


@pytest.fixture(autouse=True)
def _native_only(monkeypatch):
    monkeypatch.delenv(EMULATED_BF16, raising=False)


@pytest.mark.parametrize("flags, want", [(AVX512_BF16, torch.bfloat16), (AMX, torch.bfloat16),
                                         (NO_BF16, torch.float32)])
def test_auto_computes_in_bf16_where_the_cpu_has_bf16_instructions_and_stores_as_it_computes(flags, want):
    p = resolve("auto", "auto", CPU, flags)
    assert (p.compute, p.storage) == (want, want)
    assert p.why.startswith("auto: ") and ("has" in p.why)
    assert ("neither AMX-BF16 nor AVX512-BF16" in p.why) == (want == torch.float32)


def test_float32_storage_may_compute_in_bf16():
    p = resolve("bfloat16", "float32", CPU, AVX512_BF16)
    assert (p.compute, p.storage, p.why) == (torch.bfloat16, torch.float32, "bfloat16")
    assert p.record() == {"compute_dtype": "bfloat16", "storage_dtype": "float32", "why": "bfloat16"}


def test_float32_is_no_autocast_at_all():
    assert FP32.autocast().__class__.__name__ == "nullcontext" and not FP32.scaled
    x = torch.randn(3, 4)
    with FP32.autocast():
        assert (x @ x.T).dtype == torch.float32


def test_bf16_on_a_cpu_without_bf16_instructions_is_one_line_naming_the_cpu_and_auto():
    with pytest.raises(UserError) as e:
        resolve("bfloat16", "auto", CPU, NO_BF16)
    text = str(e.value)
    assert "\n" not in text and text.startswith("train.compute_dtype=bfloat16: ")
    assert "neither AMX-BF16 nor AVX512-BF16 (cpu)" in text and "train.compute_dtype=auto (float32 here)" in text


def test_bf16_on_such_a_cpu_runs_emulated_when_asked_to(monkeypatch):
    monkeypatch.setenv(EMULATED_BF16, "1")
    assert resolve("bfloat16", "auto", CPU, NO_BF16).compute == torch.bfloat16


def test_float16_on_a_cpu_is_refused_with_the_reason():
    with pytest.raises(UserError, match=r"train.compute_dtype=float16: refused on a CPU, where float16 matrix work is "
                                        r"emulated \(slower than float32\)"):
        resolve("float16", "float32", CPU, AVX512_BF16)


def test_16_bit_storage_under_float32_compute_is_refused_naming_why_compute_is_float32():
    with pytest.raises(UserError, match=r"model.dtype=bfloat16: 16-bit frozen weights need 16-bit compute, but "
                                        r"train.compute_dtype is float32 here \(auto: .* has neither"):
        resolve("auto", "bfloat16", CPU, NO_BF16)


def _net():
    torch.manual_seed(0)
    w1, w2 = torch.randn(8, 16, requires_grad=True), torch.randn(16, 4, requires_grad=True)
    x = torch.randn(5, 8)
    return w1, w2, x


def test_a_disabled_scaler_is_a_plain_backward():
    w1, w2, x = _net()
    loss = (x @ w1 @ w2).pow(2).mean()
    assert LossScaler(enabled=False).backward(loss, None, [w1, w2])
    g1, g2 = w1.grad.clone(), w2.grad.clone()
    w1.grad = w2.grad = None
    (x @ w1 @ w2).pow(2).mean().backward()
    assert torch.equal(w1.grad, g1) and torch.equal(w2.grad, g2)


def test_the_scaler_retries_an_overflowing_backward_at_half_the_scale_and_unscales():
    """float16 activations: at 2^16 the scaled gradients overflow (Inf), at a lower scale they are finite; the
    gradients come back unscaled, equal to float32 ones to float16 precision, accumulated into .grad."""
    w1, w2, x = _net()
    ref = [torch.autograd.grad((x @ w1 @ w2).pow(2).sum() * 40, [w1, w2])[i] for i in range(2)]
    scaler = LossScaler(enabled=True, scale=2.0 ** 16, growth=2)
    out = (x.half() @ w1.half() @ w2.half()).float().pow(2).sum() * 40
    assert scaler.backward(out, None, [w1, w2, x])  # x: a leaf the graph does not reach, skipped
    assert scaler.scale < 2.0 ** 16 and scaler.good == 1
    for w, r in zip((w1, w2), ref, strict=True):
        assert w.grad.dtype == torch.float32 and torch.allclose(w.grad, r, rtol=2e-2, atol=1e-2)
    assert x.grad is None
    before = scaler.scale
    scaler.backward((x @ w1 @ w2).sum(), None, [w1])
    assert scaler.scale == 2 * before and scaler.good == 0, "two finite backwards in a row double the scale"
    state = scaler.state_dict()
    other = LossScaler(enabled=True)
    other.load_state_dict(state)
    assert other.state_dict() == state


def test_a_gradient_that_is_nan_at_every_scale_is_reported_and_not_accumulated():
    w = torch.ones(3, requires_grad=True)
    out = (w * torch.tensor([1.0, float("nan"), 1.0])).sum()
    assert not LossScaler(enabled=True).backward(out, None, [w])
    assert w.grad is None


def test_precision_objects_compare_by_their_dtypes():
    assert Precision() == FP32 and Precision(torch.bfloat16) != FP32
