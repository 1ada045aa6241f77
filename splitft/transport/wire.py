"""The wire format of network transports: messages <-> protobuf envelopes carrying raw tensor bytes (dtype +
shape + C-order little-endian data; never pickle), validated on the way in (`frames.py` chunks them).

    frames = to_frames(encode_step(req, codec.encode(acts)), seq, chunk_bytes)  # sender (frames.py)
    env = Reassembler(max_bytes).add(frame) -> Envelope | None                  # receiver, frame by frame
    req = decode_step(env, expect)                       # raises WireError on anything malformed
Every message has its encoder and its decoder, one pair per verb of `transport.base.Transport`:
    STEP        encode_step / decode_step          client -> server  ForwardRequest
    STEP_REPLY  encode_reply / decode_reply        server -> client  StepReply
    PUSH        encode_push / decode_push          client -> server  AdapterUpdate
    PULL        encode_pull / decode_pull          client -> server  (client_id, cut, round, report)
    ADAPTERS    encode_adapters / decode_adapters  server -> client  Pulled: this round's cut and its adapters
    DONE        encode_done / decode_done          client -> server  (client_id, report)
    HELLO       encode_hello / decode_hello        client -> server  (client_id, terms), first on a connection
    WELCOME     encode_welcome / decode_welcome    server -> client  where the federation stands
    BACKWARD    encode_backward / decode_backward  client -> server  BackwardRequest (U-shaped split)
Under a U-shaped split a STEP carries no labels, its STEP_REPLY carries `hidden` (no loss), and the step ends
with BACKWARD (grad_hidden) answered by a STEP_REPLY with grad_activations (`decode_backward_reply`).
PUSH, PULL and DONE carry the client's `report`, a small JSON object (what it measured, its evaluation); HELLO
and WELCOME carry theirs in the same field.
    ACK, ERROR  ack / error                        server -> client  (ERROR: the refusal's text)
Activations and grad_activations travel as each direction's codec (compress.py) encodes them: the tensor
`activations` in the codec's wire dtype and shape ((B, T, H), or (B, T, H/2) bytes for the 4-bit codecs) and,
for scaled codecs, `activations_scale`; with `codec.entropy` the values' bytes are compressed (the tensor's
`coding` names the coder). The envelope names the codec (`int4_group+zstd`) and each side accepts only the one
it expects in that direction (`codec.up` for requests, `codec.down` for replies). Decoding never trusts
the peer: dtypes come from a whitelist, byte counts must match shapes, sizes are capped, a compressed tensor must
decode to exactly the bytes its shape declares (never more: no decompression bombs), scales and decoded
activations must be finite. Errors are `WireError` values the server returns to that client as ERROR.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from ..loss import IGNORE
from .base import LABEL_DTYPE, MASK_DTYPE, AdapterUpdate, BackwardRequest, ForwardRequest, Pulled, StepReply
from .compress import NONE, Codec, Packed
from .entropy import NO_ENTROPY
from .pbtensor import NAMES, Envelope, WireError, tensor_to_pb, tensors_of
from .proto import splitft_pb2 as pb

MAX_REPORT = 64 * 1024
"""Bytes of a client's JSON report (measurements and evaluation: a few hundred bytes in practice)."""


# --- messages ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepShape:
    """What the server accepts from one client: its cut, hidden size, a cap on B*T, the vocabulary size (labels
    index the logits), and the codecs of each direction; `dtype` is what activations decode to (the frozen
    weights' storage dtype)."""

    hidden: int
    dtype: torch.dtype
    max_tokens: int
    vocab: int
    cut_range: tuple[int, int]
    """[first, end): cuts the server part can serve."""
    codec_up: Codec = NONE
    """What requests (activations; grad_hidden under U) must be encoded with."""
    codec_down: Codec = NONE
    """What replies (grad_activations; hidden under U) are encoded with."""
    u: bool = False
    """A U-shaped split: requests carry no labels (the server would refuse them), replies carry `hidden`."""


def packed_to_pb(role: str, p: Packed) -> list[pb.Tensor]:
    """`role` (the values, compressed when the codec has a lossless coder) and, for scaled codecs,
    `<role>_scale`."""
    out = [tensor_to_pb(role, p.values, p.coded, p.coding)]
    return out if p.scale is None else out + [tensor_to_pb(f"{role}_scale", p.scale)]


def packed_from_pb(t: dict[str, torch.Tensor], role: str, c: Codec, dtype: torch.dtype,
                   shape: tuple[int, ...]) -> torch.Tensor:
    """The decoded tensor of `shape` (B, T, H) and `dtype`. Raises WireError unless the values have the codec's
    wire dtype and shape for it, the scale the codec's dtype and shape, and all decode finite."""
    values, scale = t[role], t.get(f"{role}_scale")
    want, want_shape = c.wire_dtype, c.wire_shape(shape)
    if tuple(values.shape) != want_shape or values.dtype != want:
        raise WireError(f"{role} must be {want_shape} {NAMES[want]} under codec '{c.name}', got "
                        f"{tuple(values.shape)} {NAMES[values.dtype]}")
    scale_shape = c.scale_shape(shape)
    if scale_shape is not None and (scale is None or scale.dtype != c.scale_dtype
                                    or tuple(scale.shape) != scale_shape or not torch.isfinite(scale).all()):
        raise WireError(f"codec '{c.name}' needs a finite {NAMES[c.scale_dtype]} {role}_scale of shape "
                        f"{scale_shape}")
    out = c.decode(Packed(c.wire_name, values, scale, shape), dtype)
    if not torch.isfinite(out).all():
        raise WireError(f"{role} contain NaN or Inf")
    return out


def _expect_tensors(t: dict[str, torch.Tensor], kind: str, names: set[str], c: Codec, role: str) -> None:
    """Exactly `names` (and the role's scale under a scaled codec)."""
    if c.scale:
        names = names | {f"{role}_scale"}
    if set(t) != names:
        raise WireError(f"{kind} under codec '{c.name}' needs {', '.join(sorted(names))}; got {sorted(t)}")


def _check_codec(env: Envelope, c: Codec, role: str, key: str) -> None:
    """The envelope names the codec this side expects, and only the `role` tensor is compressed, by its coder
    (checked before anything is decompressed)."""
    if (env.codec or NONE.name) != c.wire_name:
        raise WireError(f"{role} encoded with codec '{env.codec[:40] or NONE.name}', but this side expects "
                        f"'{c.wire_name}': set {key} (and codec.entropy) the same on the server and every client")
    coding = "" if c.entropy is NO_ENTROPY else c.entropy.name
    for m in env.tensors:
        if m.coding != (coding if m.name == role else ""):
            raise WireError(f"tensor '{m.name[:40]}' coded '{m.coding[:20]}' under codec '{c.wire_name}'")


def encode_step(req: ForwardRequest, acts: Packed | None = None) -> Envelope:
    """`acts`: the activations as the codec encoded them (None: as they are, codec `none`)."""
    acts = acts or NONE.encode(req.activations)
    labels = [] if req.labels is None else [tensor_to_pb("labels", req.labels)]  # none under a U-shaped split
    return Envelope(kind=Envelope.STEP, client_id=req.client_id, round=req.round, step=req.step, cut=req.cut,
                    train=req.train, codec=acts.codec,
                    tensors=[*packed_to_pb("activations", acts), tensor_to_pb("attention_mask", req.attention_mask),
                             *labels])


def decode_step(env: Envelope, shape: StepShape) -> ForwardRequest:
    """Raises WireError unless activations (B, T, hidden) in the server's codec_up (decoding to the server's dtype,
    finite), a 0/1 uint8 mask and int32 labels (token ids or -100) of shape (B, T), B*T <= max_tokens, and a cut
    the server serves."""
    c = shape.codec_up
    _check_codec(env, c, "activations", "codec.up")
    t = tensors_of(env, shape.max_tokens * shape.hidden)
    if shape.u and "labels" in t:
        raise WireError("this server runs a U-shaped split (split.shape=u): labels stay on the client; start the "
                        "client with the server's split.shape")
    _expect_tensors(t, "STEP", {"activations", "attention_mask"} | (set() if shape.u else {"labels"}), c,
                    "activations")
    mask, labels = t["attention_mask"], t.get("labels")
    lo, hi = shape.cut_range
    if not lo <= env.cut < hi:
        raise WireError(f"cut {env.cut} is not served here (server serves cuts in [{lo}, {hi}))")
    full = _hidden_shaped(t["activations"], "activations", shape)
    if mask.dtype != MASK_DTYPE or tuple(mask.shape) != full[:2] or mask.max() > 1:
        raise WireError("attention_mask must be 0/1 uint8 of shape (B, T) like the activations")
    if labels is not None and (labels.dtype != LABEL_DTYPE or tuple(labels.shape) != full[:2]
                               or not ((labels == IGNORE) | ((labels >= 0) & (labels < shape.vocab))).all()):
        raise WireError(f"labels must be int32 (B, T) like the activations, with labels in [0, {shape.vocab}) or "
                        f"{IGNORE}")
    acts = packed_from_pb(t, "activations", c, shape.dtype, full)
    return ForwardRequest(env.client_id, env.round, env.step, env.cut, acts, mask, labels, env.train)


def _hidden_shaped(values: torch.Tensor, role: str, shape: StepShape) -> tuple[int, int, int]:
    """(B, T, hidden): the decoded shape of a request's `values` (its wire shape is the codec's for it, checked
    when decoding). Raises WireError unless they are 3-d with 0 < B*T <= max_tokens."""
    if values.dim() != 3:
        raise WireError(f"{role} must be (B, T, {shape.hidden}) as the codec encodes it, got {tuple(values.shape)}")
    b, t = values.shape[:2]
    if b * t > shape.max_tokens or b * t == 0:
        raise WireError(f"batch of {b}x{t} tokens outside (0, {shape.max_tokens}]")
    return b, t, shape.hidden


def encode_backward(req: BackwardRequest, grad: Packed) -> Envelope:
    """`grad`: grad_hidden as the codec encoded it."""
    return Envelope(kind=Envelope.BACKWARD, client_id=req.client_id, round=req.round, step=req.step, train=True,
                    codec=grad.codec, tensors=packed_to_pb("grad_hidden", grad))


def decode_backward(env: Envelope, shape: StepShape) -> BackwardRequest:
    """Raises WireError unless this server runs a U-shaped split and grad_hidden is (B, T, hidden) in its codec,
    finite (its shape is checked against the step in flight by the server)."""
    if not shape.u:
        raise WireError("BACKWARD is a U-shaped split's message; this server runs split.shape=vanilla")
    c = shape.codec_up
    _check_codec(env, c, "grad_hidden", "codec.up")
    t = tensors_of(env, shape.max_tokens * shape.hidden)
    _expect_tensors(t, "BACKWARD", {"grad_hidden"}, c, "grad_hidden")
    full = _hidden_shaped(t["grad_hidden"], "grad_hidden", shape)
    return BackwardRequest(env.client_id, env.round, env.step, packed_from_pb(t, "grad_hidden", c, shape.dtype, full))


def encode_reply(reply: StepReply, env: Envelope, c: Codec = NONE) -> Envelope:
    """grad_activations (hidden, under U) go back encoded by `c`, the server's codec_down."""
    out = Envelope(kind=Envelope.STEP_REPLY, client_id=env.client_id, round=env.round, step=env.step,
                   loss_sum=reply.loss_sum, n_tokens=reply.n_tokens, n_correct=reply.n_correct, codec=c.wire_name,
                   server_s=reply.server_s)
    if reply.grad_activations is not None:
        out.tensors.extend(packed_to_pb("grad_activations", c.encode(reply.grad_activations)))
    if reply.hidden is not None:
        out.tensors.extend(packed_to_pb("hidden", c.encode(reply.hidden)))
    return out


def decode_reply(env: Envelope, req: ForwardRequest, c: Codec = NONE) -> tuple[StepReply, int]:
    """(reply with grad_activations decoded to the activations' dtype, grad bytes as encoded). Raises WireError
    unless a training reply holds grad_activations of the request's shape in codec `c` (the client's codec_down),
    an eval reply none."""
    acts = req.activations
    full = tuple(acts.shape)
    role = "hidden" if req.labels is None else "grad_activations"
    if env.tensors:  # an eval reply holds none
        _check_codec(env, c, role, "codec.down")
    t = tensors_of(env, acts.numel())
    if req.labels is None:  # U-shaped: the hidden states for the tail, train or eval
        _expect_tensors(t, "STEP_REPLY (U-shaped)", {"hidden"}, c, "hidden")
        hidden = packed_from_pb(t, "hidden", c, acts.dtype, full)
        return StepReply(0.0, 0, 0, server_s=env.server_s, hidden=hidden), payload_nbytes(env)
    if not req.train:
        _expect_tensors(t, "STEP_REPLY (eval)", set(), NONE, "grad_activations")
        return StepReply(env.loss_sum, int(env.n_tokens), int(env.n_correct), server_s=env.server_s), 0
    _expect_tensors(t, "STEP_REPLY", {"grad_activations"}, c, "grad_activations")
    grad = packed_from_pb(t, "grad_activations", c, acts.dtype, full)
    return StepReply(env.loss_sum, int(env.n_tokens), int(env.n_correct), grad, env.server_s), payload_nbytes(env)


def decode_backward_reply(env: Envelope, req: BackwardRequest, c: Codec = NONE) -> tuple[StepReply, int]:
    """(reply with grad_activations, their bytes as encoded). Raises WireError unless grad_activations of
    grad_hidden's shape in codec `c`."""
    _check_codec(env, c, "grad_activations", "codec.down")
    t = tensors_of(env, req.grad_hidden.numel())
    _expect_tensors(t, "STEP_REPLY (backward)", {"grad_activations"}, c, "grad_activations")
    grad = packed_from_pb(t, "grad_activations", c, req.grad_hidden.dtype, tuple(req.grad_hidden.shape))
    return StepReply(0.0, 0, 0, grad, env.server_s), payload_nbytes(env)


def _encode_tensors(kind: Any, client_id: int, round_: int, adapters: dict[str, torch.Tensor],
                    **fields: Any) -> Envelope:
    return Envelope(kind=kind, client_id=client_id, round=round_, tensors=[tensor_to_pb(n, t) for n, t in
                                                                           adapters.items()], **fields)


def encode_report(report: dict[str, Any] | None) -> str:
    return json.dumps(report or {})


def decode_report(env: Envelope) -> dict[str, Any]:
    """The client's report (a JSON object of at most MAX_REPORT bytes); its values are the receiver's to check."""
    if len(env.report) > MAX_REPORT:
        raise WireError(f"report of {len(env.report)} bytes exceeds {MAX_REPORT}")
    try:
        report = json.loads(env.report or "{}")
    except ValueError:
        raise WireError("report is not JSON") from None
    if not isinstance(report, dict):
        raise WireError("report must be a JSON object")
    return report


def encode_push(update: AdapterUpdate) -> Envelope:
    return _encode_tensors(Envelope.PUSH, update.client_id, update.round, update.adapters, n_samples=update.n_samples,
                           report=encode_report(update.report))


def decode_push(env: Envelope, expected: dict[str, torch.Size], max_numel: int) -> AdapterUpdate:
    """Raises WireError unless every tensor is a known LoRA name whose shape fits the global one, all finite."""
    adapters = tensors_of(env, max_numel)
    for name, t in adapters.items():
        full = expected.get(name)
        if full is None or t.dim() != len(full) or any(a > b for a, b in zip(t.shape, full, strict=True)):
            raise WireError(f"adapter '{name}' {tuple(t.shape)} does not match this model")
        if not torch.isfinite(t).all():
            raise WireError(f"adapter '{name}' contains NaN or Inf")
    if env.n_samples <= 0:
        raise WireError(f"PUSH needs n_samples > 0, got {env.n_samples}")
    return AdapterUpdate(env.client_id, env.round, adapters, int(env.n_samples), decode_report(env))


def encode_pull(client_id: int, cut: int, round_: int, report: dict[str, Any] | None = None) -> Envelope:
    return Envelope(kind=Envelope.PULL, client_id=client_id, cut=cut, round=round_, report=encode_report(report))


def decode_pull(env: Envelope) -> tuple[int, int, int, dict[str, Any]]:
    """(client_id, cut, round, report). Raises WireError on tensors in a PULL or a cut below 1."""
    if env.tensors or env.cut < 1:
        raise WireError(f"PULL carries no tensors and a cut >= 1, got {len(env.tensors)} tensors and cut {env.cut}")
    return env.client_id, env.cut, env.round, decode_report(env)


def encode_adapters(client_id: int, round_: int, pulled: Pulled) -> Envelope:
    """The reply to a PULL: the client's cut for the round, the adapters of its blocks, and in `report` its
    round's time budget, if any."""
    env = _encode_tensors(Envelope.ADAPTERS, client_id, round_, pulled.adapters, cut=pulled.cut)
    if pulled.budget_s is not None:
        env.report = encode_report({"budget_s": pulled.budget_s, "max_steps": pulled.max_steps})
    return env


def decode_adapters(env: Envelope, max_numel: int) -> Pulled:
    """The pulled cut, adapters and budget. Raises WireError unless the reply is ADAPTERS with a cut >= 1, each
    name once within size, and a budget (if any) of finite positive seconds and a step cap >= 1."""
    if env.kind != Envelope.ADAPTERS or env.cut < 1:
        raise WireError(f"expected ADAPTERS with a cut >= 1 in reply to a PULL, got kind {env.kind}, cut {env.cut}")
    extra = decode_report(env)
    budget, cap = extra.get("budget_s"), extra.get("max_steps")
    if budget is not None and not (isinstance(budget, (int, float)) and 0 < budget < 1e7 and isinstance(cap, int)
                                   and cap >= 1):
        raise WireError(f"a round budget needs seconds in (0, 1e7) and max_steps >= 1, got {budget!r}, {cap!r}")
    return Pulled(env.cut, tensors_of(env, max_numel), budget, cap if budget is not None else None)


def encode_done(client_id: int, report: dict[str, Any] | None = None) -> Envelope:
    return Envelope(kind=Envelope.DONE, client_id=client_id, report=encode_report(report))


def decode_done(env: Envelope) -> tuple[int, dict[str, Any]]:
    return env.client_id, decode_report(env)


def encode_hello(client_id: int, terms: dict[str, Any]) -> Envelope:
    return Envelope(kind=Envelope.HELLO, client_id=client_id, report=encode_report(terms))


def decode_hello(env: Envelope) -> tuple[int, dict[str, Any]]:
    """(client_id, the client's terms). Raises WireError on tensors in a HELLO."""
    if env.tensors:
        raise WireError("HELLO carries no tensors")
    return env.client_id, decode_report(env)


def encode_welcome(env: Envelope, standing: dict[str, Any]) -> Envelope:
    return Envelope(kind=Envelope.WELCOME, client_id=env.client_id, report=encode_report(standing))


def decode_welcome(env: Envelope) -> dict[str, Any]:
    """Raises WireError unless a WELCOME with the round (an int >= 0) and the run and server ids."""
    if env.kind != Envelope.WELCOME:
        raise WireError(f"expected WELCOME in reply to HELLO, got kind {env.kind}")
    standing = decode_report(env)
    if not isinstance(standing.get("round"), int) or standing["round"] < 0 or not all(
            isinstance(standing.get(k), str) for k in ("run", "server")):
        raise WireError("WELCOME needs a round >= 0 and the run and server ids")
    return standing


def ack(env: Envelope) -> Envelope:
    """The reply to a PUSH or DONE that was accepted."""
    return Envelope(kind=Envelope.ACK, client_id=env.client_id, round=env.round)


def error(env: Envelope, text: str) -> Envelope:
    """The reply to a request that was refused (state unchanged); `text` says why."""
    return Envelope(kind=Envelope.ERROR, client_id=env.client_id, round=env.round, step=env.step, error=text)


def payload_nbytes(env: Envelope, prefix: str = "") -> int:
    """Tensor payload bytes of an envelope (the in-process accounting), of the tensors whose name starts with
    `prefix` (e.g. "activations": values + scales); the rest is envelope overhead."""
    return sum(len(m.data) for m in env.tensors if m.name.startswith(prefix))
