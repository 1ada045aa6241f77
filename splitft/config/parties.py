"""The sections a deployment's parties read apart, one per audience: `transport` (the wire, both sides, values
may differ), `server` (the deployed server only), `client` (a deployed client only), `codec` (what crosses,
every party alike), `measure` (what a client reports). See `audience.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .audience import CLIENT, EACH, SERVER, SHARED, SIMULATION


@dataclass
class TransportConfig:
    """The wire, read by the server and each client alike (their values may differ)."""

    AUDIENCE: ClassVar[dict[str, str]] = {"*": EACH}
    address: str = "127.0.0.1:50051"
    """host:port the server listens on and clients connect to."""
    chunk_kb: int = 1024
    """Frames carry at most this much of a serialized message; gRPC's message limit is set to match."""
    max_message_mb: int = 64
    """Largest message (all frames of it) either side accepts; larger ones are refused."""

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_kb * 1024

    @property
    def max_bytes(self) -> int:
        return self.max_message_mb << 20


@dataclass
class ServerConfig:
    """Read by the deployed server only: who may connect, its TLS identity, when it gives up on a client."""

    AUDIENCE: ClassVar[dict[str, str]] = {"*": SERVER}
    tokens_file: str = ""
    """File with one secret token per line, line i for client i (`splitft launch` writes one)."""
    tls_cert: str = ""
    tls_key: str = ""
    """PEM certificate and key; both empty = plaintext (loopback tests only)."""
    tls_client_ca: str = ""
    """Mutual TLS: accept only clients whose certificate this PEM CA signed (needs tls_cert)."""
    dead_after_s: float = 120.0
    """A selected client silent this long (no heartbeat, no request) is dropped from the round."""
    round_timeout_s: float = 1800.0
    """A selected client that has not pushed this long after its round began is dropped (straggler); the round
    aggregates over the survivors."""


@dataclass
class ClientConfig:
    """Read by a deployed client only: its token, whom it trusts, how it keeps its connection."""

    AUDIENCE: ClassVar[dict[str, str]] = {"*": CLIENT}
    token_env: str = "SPLITFT_TOKEN"
    """The environment variable holding this client's token (never on the command line)."""
    tls_root: str = ""
    """PEM certificate of the CA (or the self-signed server certificate) to trust."""
    tls_cert: str = ""
    tls_key: str = ""
    """PEM certificate and key presented to a mutual-TLS server (needs tls_root)."""
    timeout_s: float = 3600.0
    """Per-call deadline; a reply that takes longer (the server stuck or gone) ends the client."""
    heartbeat_s: float = 5.0
    """Send a heartbeat this often, also while computing, so the server knows it is alive."""
    reconnect_s: float = 300.0
    """After a broken connection (or a server not up yet), keep reconnecting, with backoff up to 10 s between
    tries, for this long before giving up; resends are idempotent (keys), and a server restarted with
    `splitft server --resume` is rejoined where it stands."""


@dataclass
class CodecConfig:
    """How tensors cross between client and server, in simulation and deployment alike; the server and every
    client must use the same codecs (the handshake compares)."""

    AUDIENCE: ClassVar[dict[str, str]] = {"*": SHARED, "allow_lossy_grad": EACH, "max_ppl_cost": SIMULATION}
    up: str = "none"
    """Activations (and, under split.shape=u, grad_hidden) from client to server: none (float32, lossless) | fp16 |
    bf16 | int8_token | int8_channel | int4_token | int4_group (splitft/transport/compress.py), whatever
    model.dtype and train.compute_dtype are; or auto: the cut policy picks each client's codec with its cut, among
    those within codec.max_ppl_cost (simulation). Lossy codecs pass gradients straight through."""
    down: str = "none"
    """grad_activations (and, under U, hidden) from server to client: the same codecs; a 4-bit one needs
    codec.allow_lossy_grad (published results lose quality with gradients below 8 bits)."""
    entropy: str = "none"
    """Lossless coding of every codec's values on top of it: none | zstd | lz4 (pip install 'splitft[compress]');
    bytes are counted at their compressed size."""
    allow_lossy_grad: bool = False
    """Allow a codec of fewer than 8 bits on a gradient (codec.down; codec.up under a U-shaped split)."""
    max_ppl_cost: float = 0.01
    """codec.up=auto: the most a client's codec may raise the held-out perplexity, relative (0.01 = 1%), as
    measured at setup on the pretrained model with the activations at the reference cut encoded."""


@dataclass
class MeasureConfig:
    """What a deployed client reports to the server's cut policy (a simulation uses `heterogeneity` instead)."""

    AUDIENCE: ClassVar[dict[str, str]] = {"*": CLIENT}

    memory_gb: float = 0.0
    """Most memory (GB) the client gives to its part; 0 = what the machine has free (RAM, or CUDA memory)."""
    profile: str = ""
    """A device tier name (phone, laptop, workstation or one of heterogeneity.tiers): report its numbers instead
    of measured ones, for reproducible runs; empty = measure."""
    ewma: float = 0.3
    """Weight of the newest step in the smoothed compute and link measurements (0 < ewma <= 1)."""
