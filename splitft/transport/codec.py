"""Tensors and messages <-> wire bytes for network transports: protobuf envelopes carrying raw tensor bytes
(dtype + shape + C-order little-endian data; never pickle), chunked into frames, validated on the way in.

    frames = to_frames(encode_step(req), seq, chunk_bytes)      # sender
    env = Reassembler(max_bytes).add(frame) -> Envelope | None  # receiver, frame by frame
    req = decode_step(env, expect)                              # raises WireError on anything malformed
Decoding never trusts the peer: dtypes come from a whitelist, byte counts must match shapes, sizes are capped,
activations must be finite. Errors are `WireError` values the server returns to that client as ERROR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .base import LABEL_DTYPE, MASK_DTYPE, AdapterUpdate, ForwardRequest, StepReply
from .proto import splitft_pb2 as pb

Envelope = pb.Envelope
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                                  "uint8": torch.uint8, "int32": torch.int32}
NAMES = {v: k for k, v in DTYPES.items()}
NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16,  # bfloat16: raw bits
         torch.uint8: np.uint8, torch.int32: np.int32}


class WireError(ValueError):
    """A message that cannot be accepted; the text goes back to the sender."""


# --- tensors ---------------------------------------------------------------------------------------------


def tensor_to_pb(name: str, t: torch.Tensor) -> pb.Tensor:
    t = t.detach().contiguous().cpu()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16: ship the bits
    return pb.Tensor(name=name, dtype=NAMES[t.dtype], shape=list(t.shape), data=raw.numpy().tobytes())


def tensor_from_pb(m: pb.Tensor, max_numel: int) -> torch.Tensor:
    """Raises WireError on an unknown dtype, a negative or oversized shape, or a byte count that does not match."""
    if m.dtype not in DTYPES:
        raise WireError(f"tensor '{m.name}': dtype '{m.dtype}' not accepted (one of {', '.join(DTYPES)})")
    if any(d < 0 for d in m.shape) or len(m.shape) > 4:
        raise WireError(f"tensor '{m.name}': bad shape {list(m.shape)}")
    numel = math.prod(m.shape)  # Python ints: a hostile shape cannot overflow to a small product
    dtype = DTYPES[m.dtype]
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if numel > max_numel or len(m.data) != numel * itemsize:
        raise WireError(f"tensor '{m.name}': {len(m.data)} bytes do not hold shape {list(m.shape)} of {m.dtype}")
    arr = np.frombuffer(m.data, dtype=np.dtype(NUMPY[dtype]).newbyteorder("<")).reshape(tuple(m.shape)).copy()
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _tensors(env: Envelope, max_numel: int) -> dict[str, torch.Tensor]:
    out = {}
    for m in env.tensors:
        if m.name in out:
            raise WireError(f"tensor '{m.name}' appears twice")
        out[m.name] = tensor_from_pb(m, max_numel)
    return out


# --- messages ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepShape:
    """What the server accepts from one client: its cut, hidden size and dtype, and a cap on B*T."""

    hidden: int
    dtype: torch.dtype
    max_tokens: int
    cut_range: tuple[int, int]
    """[first, n_layer): cuts the server part can serve."""


def encode_step(req: ForwardRequest) -> Envelope:
    return Envelope(kind=Envelope.STEP, client_id=req.client_id, round=req.round, step=req.step, cut=req.cut,
                    train=req.train, tensors=[tensor_to_pb("activations", req.activations),
                                              tensor_to_pb("attention_mask", req.attention_mask),
                                              tensor_to_pb("labels", req.labels)])


def decode_step(env: Envelope, shape: StepShape) -> ForwardRequest:
    """Raises WireError unless activations (B, T, hidden) of the server's dtype, finite, with a uint8 mask and
    int32 labels of shape (B, T), B*T <= max_tokens, and a cut the server serves."""
    t = _tensors(env, shape.max_tokens * shape.hidden)
    if set(t) != {"activations", "attention_mask", "labels"}:
        raise WireError(f"STEP needs activations, attention_mask, labels; got {sorted(t)}")
    acts, mask, labels = t["activations"], t["attention_mask"], t["labels"]
    lo, hi = shape.cut_range
    if not lo <= env.cut < hi:
        raise WireError(f"cut {env.cut} is not served here (server serves cuts in [{lo}, {hi}))")
    if acts.dim() != 3 or acts.shape[2] != shape.hidden or acts.dtype != shape.dtype:
        raise WireError(f"activations must be (B, T, {shape.hidden}) {NAMES[shape.dtype]}, got "
                        f"{tuple(acts.shape)} {NAMES[acts.dtype]}")
    if mask.dtype != MASK_DTYPE or labels.dtype != LABEL_DTYPE or mask.shape != acts.shape[:2] \
            or labels.shape != acts.shape[:2]:
        raise WireError("attention_mask must be uint8 and labels int32, both (B, T) like the activations")
    if acts.shape[0] * acts.shape[1] > shape.max_tokens or acts.numel() == 0:
        raise WireError(f"batch of {acts.shape[0]}x{acts.shape[1]} tokens outside (0, {shape.max_tokens}]")
    if not torch.isfinite(acts).all():
        raise WireError("activations contain NaN or Inf")
    return ForwardRequest(env.client_id, env.round, env.step, env.cut, acts, mask, labels, env.train)


def encode_reply(reply: StepReply, env: Envelope) -> Envelope:
    out = Envelope(kind=Envelope.STEP_REPLY, client_id=env.client_id, round=env.round, step=env.step,
                   loss_sum=reply.loss_sum, n_tokens=reply.n_tokens, n_correct=reply.n_correct)
    if reply.grad_activations is not None:
        out.tensors.append(tensor_to_pb("grad_activations", reply.grad_activations))
    return out


def decode_reply(env: Envelope, max_numel: int) -> StepReply:
    t = _tensors(env, max_numel)
    return StepReply(env.loss_sum, int(env.n_tokens), int(env.n_correct), t.get("grad_activations"))


def encode_adapters(kind: int, client_id: int, round_: int, adapters: dict[str, torch.Tensor],
                    n_samples: int = 0, cut: int = 0) -> Envelope:
    return Envelope(kind=kind, client_id=client_id, round=round_, n_samples=n_samples, cut=cut,
                    tensors=[tensor_to_pb(n, t) for n, t in adapters.items()])


def decode_push(env: Envelope, expected: dict[str, torch.Size], max_numel: int) -> AdapterUpdate:
    """Raises WireError unless every tensor is a known LoRA name whose shape fits the global one, all finite."""
    adapters = _tensors(env, max_numel)
    for name, t in adapters.items():
        full = expected.get(name)
        if full is None or t.dim() != len(full) or any(a > b for a, b in zip(t.shape, full)):
            raise WireError(f"adapter '{name}' {tuple(t.shape)} does not match this model")
        if not torch.isfinite(t).all():
            raise WireError(f"adapter '{name}' contains NaN or Inf")
    if env.n_samples <= 0:
        raise WireError(f"PUSH needs n_samples > 0, got {env.n_samples}")
    return AdapterUpdate(env.client_id, env.round, adapters, int(env.n_samples))


def payload_nbytes(env: Envelope) -> int:
    """Tensor payload bytes of an envelope (the in-process accounting); the rest is envelope overhead."""
    return sum(len(m.data) for m in env.tensors)


# --- frames -----------------------------------------------------------------------------------------------


def to_frames(env: Envelope, seq: int, chunk_bytes: int) -> list[pb.Frame]:
    data = env.SerializeToString()
    count = max(1, -(-len(data) // chunk_bytes))
    return [pb.Frame(seq=seq, index=i, count=count, data=data[i * chunk_bytes:(i + 1) * chunk_bytes])
            for i in range(count)]


class Reassembler:
    """Frames of one stream -> envelopes; refuses a message larger than `max_bytes` before buffering it."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.seq: int | None = None
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, frame: pb.Frame) -> Envelope | None:
        """The completed envelope, or None while more frames are due. Raises WireError (and resets)."""
        try:
            return self._add(frame)
        except WireError:
            self.seq, self.parts, self.size = None, [], 0
            raise

    def _add(self, frame: pb.Frame) -> Envelope | None:
        if self.seq is None:
            if frame.index != 0 or frame.count == 0:
                raise WireError(f"frame {frame.index}/{frame.count} does not start a message")
            self.seq, self.count = frame.seq, frame.count
        elif frame.seq != self.seq or frame.index != len(self.parts) or frame.count != self.count:
            raise WireError("frames out of order")
        self.size += len(frame.data)
        if self.size > self.max_bytes:
            raise WireError(f"message larger than the {self.max_bytes} byte limit (transport.max_message_mb)")
        self.parts.append(frame.data)
        if len(self.parts) < self.count:
            return None
        data, self.seq, self.parts, self.size = b"".join(self.parts), None, [], 0
        env = Envelope()
        try:
            env.ParseFromString(data)
        except Exception as e:  # protobuf raises DecodeError (and others on hostile bytes)
            raise WireError(f"malformed envelope: {e}") from None
        return env
