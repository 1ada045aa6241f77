"""Envelopes <-> frames: a message is sent as chunks of at most `transport.chunk_kb` (gRPC caps one message), and
reassembled frame by frame on the way in, refused as soon as it outgrows its limit (before it is buffered whole).
"""

from __future__ import annotations

from .pbtensor import Envelope, WireError
from .proto import splitft_pb2 as pb


def to_frames(env: Envelope, seq: int, chunk_bytes: int) -> list[pb.Frame]:
    data = env.SerializeToString()
    count = max(1, -(-len(data) // chunk_bytes))
    return [pb.Frame(seq=seq, index=i, count=count, data=data[i * chunk_bytes:(i + 1) * chunk_bytes])
            for i in range(count)]


class Reassembler:
    """Frames of one stream -> envelopes; refuses a message larger than `max_bytes` before buffering it."""

    def __init__(self, max_bytes: int, limit: str = "transport.max_message_mb"):
        self.max_bytes, self.limit = max_bytes, limit  # `limit`: what sets max_bytes, for the refusal
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
            raise WireError(f"message larger than the {self.max_bytes} byte limit ({self.limit})")
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
