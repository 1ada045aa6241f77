"""What both ends of the gRPC session agree on: the one method and the frame size limits. One long-lived
bidirectional stream per client (`grpc_server.py` serves it, `grpc_client.py` opens it) carries `pb.Frame`s;
a frame holds one chunk of a protobuf envelope (`wire.py`).
"""

from __future__ import annotations

from ..config import TransportConfig

SERVICE = "splitft.SplitFT"
METHOD = f"/{SERVICE}/Session"


def frame_options(t: TransportConfig) -> list[tuple[str, int]]:
    frame = t.chunk_bytes + 4096  # one frame = one chunk + the Frame header
    return [("grpc.max_send_message_length", frame), ("grpc.max_receive_message_length", frame)]
