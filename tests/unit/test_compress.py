"""Activation codecs at the cut: exact byte sizes, error bounds, tiny gradients kept, the same bytes and values
in process and on the wire (lossless coders included), hostile encodings refused, and gradients passed straight
through."""

import pytest
import torch

from splitft.build import build_setup, split_client
from splitft.transport import wire
from splitft.transport.base import ForwardRequest, StepReply
from splitft.transport.compress import CODECS, GROUP, NONE, codec_of, hadamard, tensor_bytes
from splitft.transport.inproc import InProcTransport
from tests.conftest import tiny_config

B, T, H = 2, 5, 32
LOSSY = [c for c in CODECS if c != "none"]
NBYTES = {"none": 4 * B * T * H, "fp16": 2 * B * T * H + 4, "bf16": 2 * B * T * H,
          "int8_token": B * T * H + 4 * B * T, "int8_channel": B * T * H + 4 * H,
          "int4_token": B * T * H // 2 + 4 * B * T, "int4_group": B * T * H // 2 + 2 * B * T * (H // GROUP)}
# worst error per element relative to the max |x| its scale covers (round to nearest: half a step); the 4-bit
# codecs' in the rotated domain, with their bfloat16 scale's rounding (2^-9) on top for int4_group
BOUND = {"fp16": 2.0 ** -11, "bf16": 2.0 ** -8, "int8_token": 0.5 / 127, "int8_channel": 0.5 / 127,
         "int4_token": 0.5 / 7, "int4_group": (0.5 + 7 * 2.0 ** -8) / 7}


def _acts(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, generator=g)
    x[..., 3] *= 40  # an outlier channel, as real residual streams have
    return x


def test_none_is_the_identity_at_model_size():
    x = _acts()
    y, n = NONE.roundtrip(x)
    assert torch.equal(y, x) and y.data_ptr() == x.data_ptr() and n == NBYTES["none"]  # not even a copy


@pytest.mark.parametrize("name", LOSSY)
def test_encoded_sizes_are_exact_and_errors_within_half_a_step(name):
    c, x = CODECS[name], _acts()
    p = c.encode(x)
    assert p.nbytes() == NBYTES[name] and p.values.dtype == c.wire_dtype
    y = c.decode(p, x.dtype)
    assert y.dtype == x.dtype and y.shape == x.shape
    if name.startswith("int4"):  # errors are bounded where the values are quantized: after the rotation
        x, y = (t.unflatten(-1, (-1, GROUP)) @ hadamard(GROUP) for t in (x, y))
    covered = {"int8_token": x.abs().amax(-1, keepdim=True), "int8_channel": x.abs().amax((0, 1)),
               "fp16": x.abs().amax(), "bf16": x.abs(), "int4_group": x.abs().amax(-1, keepdim=True),
               "int4_token": x.abs().amax((-2, -1), keepdim=True)}[name]
    assert ((y - x).abs() <= BOUND[name] * covered * 1.0001 + 1e-12).all()
    assert not torch.equal(y, x), "a lossy codec that loses nothing is not being applied"


@pytest.mark.parametrize("name", LOSSY)
def test_zeros_and_tiny_gradients_survive(name):
    c = CODECS[name]
    assert torch.equal(c.roundtrip(torch.zeros(B, T, H))[0], torch.zeros(B, T, H))
    g = _acts() * 1e-10  # grad_activations of a mean loss over many tokens can be this small
    assert (g.half() == 0).all(), "a plain fp16 cast would flush them to zero"
    y = c.roundtrip(g)[0]
    assert (y - g).norm() <= REL[name] * g.norm(), "tiny values keep their relative precision"


REL = {"fp16": 1e-3, "bf16": 1e-2, "int8_token": 0.02, "int8_channel": 0.01, "int4_token": 0.2, "int4_group": 0.15}
"""Relative L2 error of each codec on `_acts` (an outlier channel 40x the rest)."""


@pytest.mark.parametrize("name", LOSSY)
def test_relative_error_on_outlier_channels(name):
    x = _acts()
    assert (CODECS[name].roundtrip(x)[0] - x).norm() <= REL[name] * x.norm()


def test_the_rotation_spreads_an_outlier_channel():
    """int4 per token without the rotation would give every non-outlier value of a token the same 0 or 1 level
    in 16: the rotation is what makes 4 bits usable on residual streams."""
    x = _acts()
    s = x.abs().amax(-1, keepdim=True) / 7
    plain = (x / s).round().clamp(-7, 7) * s
    rotated = CODECS["int4_token"].roundtrip(x)[0]
    assert (rotated - x).norm() < 0.5 * (plain - x).norm()


@pytest.mark.parametrize("name", ["int4_token", "int4_group"])
@pytest.mark.parametrize("h", [1, 31, 33, 70])
def test_int4_pads_a_hidden_size_that_is_not_a_multiple_of_the_group(name, h):
    c = CODECS[name]
    x = torch.randn(2, 3, h)
    p = c.encode(x)
    padded = -(-h // GROUP) * GROUP
    assert tuple(p.values.shape) == (2, 3, padded // 2) and p.nbytes() == c.nbytes(x)
    y = c.decode(p, x.dtype)
    assert y.shape == x.shape and (y - x).norm() <= 0.2 * x.norm()


def test_int4_packs_two_values_a_byte_low_nibble_first():
    """The layout a receiver in another language would implement: q + 8 in [1, 15], even index low."""
    c = CODECS["int4_group"]
    x = (torch.arange(GROUP, dtype=torch.float32) - 15.5).reshape(1, 1, GROUP) @ hadamard(GROUP)  # rotates back
    p = c.encode(x)
    q = torch.stack([p.values & 15, p.values >> 4], -1).flatten()
    assert q.min() >= 1 and q.max() <= 15
    back = ((q.float() - 8) * p.scale.float().flatten()[0]).reshape(1, 1, GROUP) @ hadamard(GROUP)
    assert torch.allclose(back, c.decode(p, torch.float32), atol=1e-5)


@pytest.mark.parametrize("coder", ["zstd", "lz4"])
@pytest.mark.parametrize("name", ["none", "bf16", "int8_token", "int4_group"])
def test_lossless_coding_changes_the_bytes_not_the_values(name, coder):
    x = _acts().to(torch.bfloat16)
    plain, coded = CODECS[name], codec_of(name, coder)
    p = coded.encode(x)
    assert torch.equal(coded.decode(p, x.dtype), plain.roundtrip(x)[0])
    assert p.coded is not None and p.nbytes() == len(p.coded) + (0 if p.scale is None else
                                                                 p.scale.numel() * p.scale.element_size())
    assert coded.encoded_nbytes(x) == p.nbytes() and coded.nbytes(x) == plain.nbytes(x)
    assert coded.entropy.decompress(p.coded, p.values.numel() * p.values.element_size()) == tensor_bytes(p.values)


@pytest.mark.parametrize("coder", ["none", "zstd", "lz4"])
@pytest.mark.parametrize("name", list(CODECS))
def test_the_wire_carries_exactly_what_the_in_process_transport_counts_and_decodes(name, coder):
    c, x = codec_of(name, coder), _acts()
    req = ForwardRequest(0, 0, 0, 2, x, torch.ones(B, T, dtype=torch.uint8), torch.full((B, T), 7, dtype=torch.int32))
    env = wire.encode_step(req, c.encode(x))
    shape = wire.StepShape(H, torch.float32, 64, 260, (2, 4), c, c)
    got = wire.decode_step(env, shape)
    expect, nbytes = c.roundtrip(x)
    assert torch.equal(got.activations, expect)
    assert sum(len(m.data) for m in env.tensors if m.name.startswith("activations")) == nbytes
    grad = _acts(1) * 1e-6
    reply, down = wire.decode_reply(wire.encode_reply(StepReply(1.0, 3, 1, grad), env, c), req, c)
    assert torch.equal(reply.grad_activations, c.roundtrip(grad)[0]) and down == c.roundtrip(grad)[1]


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.tensors.pop(1), "needs activations, activations_scale"),
    (lambda e: e.tensors[1].shape.__setitem__(2, 2) or e.tensors[1].__setattr__("data", b"\0" * 4 * B * T * 2),
     "activations_scale of shape"),
    (lambda e: e.tensors[1].__setattr__("data", b"\0\0\x80\x7f" + e.tensors[1].data[4:]), "finite float32"),
    (lambda e: e.tensors[0].__setattr__("dtype", "uint8"), "int8 under codec"),
])
def test_hostile_int8_encodings_are_refused(mutate, message):
    c, x = CODECS["int8_token"], _acts()
    req = ForwardRequest(0, 0, 0, 2, x, torch.ones(B, T, dtype=torch.uint8), torch.full((B, T), 7, dtype=torch.int32))
    env = wire.encode_step(req, c.encode(x))
    mutate(env)
    with pytest.raises(wire.WireError, match=message):
        wire.decode_step(env, wire.StepShape(H, torch.float32, 64, 260, (2, 4), c, c))


def _zstd(raw: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdCompressor().compress(raw)


@pytest.mark.parametrize("name, mutate, message", [
    ("int4_group", lambda e: e.tensors[0].shape.__setitem__(2, H) or e.tensors[0].__setattr__(
        "data", b"\0" * B * T * H), r"must be \(2, 5, 16\) uint8"),
    ("int4_group", lambda e: e.tensors[1].__setattr__("dtype", "float32") or e.tensors[1].__setattr__(
        "data", e.tensors[1].data * 2), "finite bfloat16 activations_scale"),
    ("int4_token", lambda e: e.tensors[0].__setattr__("dtype", "int8"), "uint8 under codec"),
    ("int4_group+zstd", lambda e: e.tensors[0].__setattr__("coding", ""), "coded '' under codec"),
    ("int4_group+zstd", lambda e: e.tensors[1].__setattr__("coding", "zstd"), "coded 'zstd'"),
    ("int4_group+zstd", lambda e: e.tensors[0].__setattr__("coding", "lz4"), "coded 'lz4'"),
    ("int4_group+zstd", lambda e: e.tensors[0].__setattr__("coding", "gzip"), "coded 'gzip' under codec"),
    ("int4_group+zstd", lambda e: e.tensors[0].__setattr__("data", e.tensors[0].data[:-3]), "zstd"),
    ("int4_group+zstd", lambda e: e.tensors[0].__setattr__("data", e.tensors[0].data + b"junk"), "trailing"),
    # a bomb: 64 MB of zeros in 2 KB, declared as they are; refused from the frame's header, before decoding
    ("int4_group+zstd", lambda e: e.tensors[0].__setattr__("data", _zstd(bytes(64 << 20))), "declares 67108864"),
    ("int4_group+lz4", lambda e: e.tensors[0].__setattr__("data", e.tensors[0].data + b"\0" * 9), "lz4"),
])
def test_hostile_int4_and_coded_encodings_are_refused(name, mutate, message):
    codec, _, coder = name.partition("+")
    c, x = codec_of(codec, coder or "none"), _acts()
    req = ForwardRequest(0, 0, 0, 2, x, torch.ones(B, T, dtype=torch.uint8), torch.full((B, T), 7, dtype=torch.int32))
    env = wire.encode_step(req, c.encode(x))
    mutate(env)
    with pytest.raises(wire.WireError, match=message):
        wire.decode_step(env, wire.StepShape(H, torch.float32, 64, 260, (2, 4), c, c))


def test_nan_activations_are_refused_by_every_codec():
    x = _acts()
    x[0, 1, 2] = float("nan")
    req = ForwardRequest(0, 0, 0, 2, x, torch.ones(B, T, dtype=torch.uint8), torch.full((B, T), 7, dtype=torch.int32))
    for name in CODECS:
        c = CODECS[name]
        with pytest.raises(wire.WireError, match="NaN|finite"):
            wire.decode_step(wire.encode_step(req, c.encode(x)), wire.StepShape(H, torch.float32, 64, 260, (2, 4), c,
                                                                                c))


class Recorder:
    """A server that keeps what it received and answers a fixed grad_activations."""

    def __init__(self, grad):
        self.grad, self.seen = grad, []

    def step(self, req):
        self.seen.append(req.activations)
        return StepReply(1.0, 1, 0, self.grad(req.activations))


def _lora_grads(client):
    return {n: p.grad.clone() for n, p in client.part.module.named_parameters() if p.grad is not None}


def test_in_process_codec_counts_encoded_bytes_and_passes_gradients_straight_through(tmp_path):
    """The client applies the decoded grad_activations to its own activations as is (d decode(encode(x))/dx := I):
    its LoRA gradients equal those of an uncompressed client that was sent the same decoded gradient."""
    c = CODECS["int8_token"]
    setup = build_setup(tiny_config(tmp_path, "llama"))
    grad = lambda a: torch.randn(a.shape, generator=torch.Generator().manual_seed(3)) * 1e-5  # noqa: E731
    lossy_server, plain_server = Recorder(grad), Recorder(lambda a: c.roundtrip(grad(a))[0])
    lossy, plain = split_client(setup, 0, 2), split_client(build_setup(tiny_config(tmp_path, "llama")), 0, 2)
    t = InProcTransport(lossy_server, up=c, down=c)
    lossy.train_step(t, 0, 0)
    plain.train_step(InProcTransport(plain_server), 0, 0)
    sent = plain_server.seen[0]
    assert torch.equal(lossy_server.seen[0], c.roundtrip(sent)[0]), "the server sees what the wire would carry"
    ga, gb = _lora_grads(lossy), _lora_grads(plain)
    assert ga and ga.keys() == gb.keys() and all(torch.equal(ga[n], gb[n]) for n in ga)
    n_tok = sent.shape[0] * sent.shape[1]
    assert t.counter.bytes[0]["activations_up"] == sent.numel() + 4 * n_tok
    assert t.counter.bytes[0]["grad_activations_down"] == sent.numel() + 4 * n_tok + 24  # + loss scalars


@pytest.mark.parametrize("name", sorted(CODECS))
def test_the_size_of_an_encoding_is_known_from_the_shape(name):
    x = torch.randn(3, 7, 16, dtype=torch.bfloat16)
    assert CODECS[name].nbytes(x) == CODECS[name].encode(x).nbytes()
