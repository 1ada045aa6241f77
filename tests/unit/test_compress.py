"""Activation codecs at the cut: exact byte sizes, error bounds, tiny gradients kept, the same bytes and values
in process and on the wire, hostile encodings refused, and gradients passed straight through."""

import pytest
import torch

from splitft.build import build_setup, split_client
from splitft.transport import wire
from splitft.transport.base import ForwardRequest, StepReply
from splitft.transport.compress import CODECS, NONE
from splitft.transport.inproc import InProcTransport
from tests.conftest import tiny_config

B, T, H = 2, 5, 32
LOSSY = [c for c in CODECS if c != "none"]
NBYTES = {"none": 4 * B * T * H, "fp16": 2 * B * T * H + 4, "bf16": 2 * B * T * H,
          "int8_token": B * T * H + 4 * B * T, "int8_channel": B * T * H + 4 * H}
# worst error per element relative to the max |x| its scale covers (round to nearest: half a step)
BOUND = {"fp16": 2.0 ** -11, "bf16": 2.0 ** -8, "int8_token": 0.5 / 127, "int8_channel": 0.5 / 127}


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
    covered = {"int8_token": x.abs().amax(-1, keepdim=True), "int8_channel": x.abs().amax((0, 1)),
               "fp16": x.abs().amax(), "bf16": x.abs()}[name]
    assert ((y - x).abs() <= BOUND[name] * covered * 1.0001 + 1e-12).all()
    assert not torch.equal(y, x), "a lossy codec that loses nothing is not being applied"


@pytest.mark.parametrize("name", LOSSY)
def test_zeros_and_tiny_gradients_survive(name):
    c = CODECS[name]
    assert torch.equal(c.roundtrip(torch.zeros(B, T, H))[0], torch.zeros(B, T, H))
    g = _acts() * 1e-10  # grad_activations of a mean loss over many tokens can be this small
    assert (g.half() == 0).all(), "a plain fp16 cast would flush them to zero"
    y = c.roundtrip(g)[0]
    assert ((y - g).abs() <= 0.01 * g.abs().amax()).all()


@pytest.mark.parametrize("name", list(CODECS))
def test_the_wire_carries_exactly_what_the_in_process_transport_counts_and_decodes(name):
    c, x = CODECS[name], _acts()
    req = ForwardRequest(0, 0, 0, 2, x, torch.ones(B, T, dtype=torch.uint8), torch.full((B, T), 7, dtype=torch.int32))
    env = wire.encode_step(req, c.encode(x))
    shape = wire.StepShape(H, torch.float32, 64, 260, (2, 4), c)
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
        wire.decode_step(env, wire.StepShape(H, torch.float32, 64, 260, (2, 4), c))


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
    t = InProcTransport(lossy_server, codec=c)
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
