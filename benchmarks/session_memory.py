"""What one session can make a `splitft server` hold: the server's peak RSS above its resting RSS while it
refuses, or answers, the largest message a client may send (transport.max_message_mb).

    python benchmarks/session_memory.py [--max-message-mb 64]
One `splitft server` process (tiny model, loopback); each case resets the kernel's peak-RSS mark
(/proc/<pid>/clear_refs) and reads VmHWM after it. Cases: a wrong token; a session that opens with a
max-size message instead of its HELLO (refused at its first 64 KB); two such sessions at once; a greeted
session's max-size message (decoded in full before the endpoint refuses it: the cost of any large request);
two greeted sessions at once. Writes benchmarks/results/session_memory.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from _common import record

from splitft.config import TransportConfig
from splitft.deploy.launch import free_port
from splitft.transport import wire
from splitft.transport.base import AdapterUpdate
from splitft.transport.frames import Reassembler, to_frames
from splitft.transport.grpc_client import _Connection

TINY = ["model.source=tiny:llama", "data.max_samples=60", "data.max_length=64", "federation.n_clients=2",
        "federation.rounds=1", "train.batch_size=2", "lora.r=4", "lora.r_cut=4", "split.cut=2",
        "split.policy=fixed", "heterogeneity.profile=homogeneous"]
TOKENS = ("a" * 32, "b" * 32)
TERMS: dict = {}


def _status(pid: int) -> dict[str, float]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    st = dict(line.split(":", 1) for line in lines if ":" in line)
    return {k: int(st[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def _terms() -> dict:
    """The terms the server's own clients greet with (it refuses others at the HELLO)."""
    from splitft.build import open_model
    from splitft.config import load_config
    from splitft.deploy.handshake import terms_of

    cfg = load_config(None, TINY)
    pm = open_model(cfg)
    return {**terms_of(cfg, pm.fingerprint, pm.compute.precision), "process": "benchmark"}


def _session(address: str, opts: TransportConfig, token: str, greet: bool, replies: list[str]) -> None:
    """One session: (HELLO, its WELCOME, then) a max-size PUSH; waits for the server's answer or its close."""
    conn = _Connection(address, 0, token, opts, None)
    reasm = Reassembler(1 << 30)

    def answer() -> None:
        while True:
            item = conn.inbox.get(timeout=120)
            if item is None or not hasattr(item, "ByteSize"):
                replies.append(f"closed: {getattr(item, 'code', lambda: '')()}")
                return
            if (env := reasm.add(item)) is not None:
                replies.append(env.error or wire.Envelope.Kind.Name(env.kind))
                return

    if greet:
        conn.outbox.put(to_frames(wire.encode_hello(0, TERMS), 0, opts.chunk_bytes)[0])
        answer()
        replies.pop()  # its WELCOME; the answer to the large message is what the table shows
    numel = (opts.max_bytes - 4096) // 4  # the envelope's header fits under the limit
    for frame in to_frames(wire.encode_push(AdapterUpdate(0, 0, {"x": torch.zeros(numel)}, 1)), 1,
                                opts.chunk_bytes):
        conn.outbox.put(frame)
    answer()
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-message-mb", type=int, default=64)
    args = ap.parse_args()
    opts = TransportConfig(max_message_mb=args.max_message_mb)
    TERMS.update(_terms())
    tmp = Path(tempfile.mkdtemp(prefix="session_memory_"))
    (tmp / "tokens.txt").write_text("".join(t + "\n" for t in TOKENS))
    address = f"127.0.0.1:{free_port()}"
    log = (tmp / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "splitft.cli", "server", *TINY, f"transport.address={address}",
                               f"transport.max_message_mb={args.max_message_mb}", "server.round_timeout_s=3600",
                               f"server.tokens_file={tmp / 'tokens.txt'}", f"metrics.out_dir={tmp / 'run'}"],
                              stdout=log, stderr=subprocess.STDOUT)
    rows = []
    try:
        while "listening" not in (tmp / "server.log").read_text():
            if server.poll() is not None:
                raise SystemExit((tmp / "server.log").read_text())
            time.sleep(0.2)
        time.sleep(2.0)
        cases = [("wrong token", 1, False, "c" * 32), ("max-size message before HELLO", 1, False, TOKENS[0]),
                 ("two of them at once", 2, False, TOKENS[0]), ("greeted, then a max-size message", 1, True, TOKENS[0]),
                 ("two greeted sessions at once", 2, True, TOKENS[0])]
        for name, n, greet, token in cases:
            Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # reset the peak mark to the current RSS
            time.sleep(0.5)
            rest = _status(server.pid)["VmRSS"]
            replies: list[str] = []
            threads = [threading.Thread(target=_session, args=(address, opts, token, greet, replies))
                       for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(0.5)
            peak = _status(server.pid)["VmHWM"]
            rows.append({"case": name, "sessions": n, "rest_rss_mb": round(rest, 1), "peak_rss_mb": round(peak, 1),
                         "peak_above_rest_mb": round(peak - rest, 1),
                         "x_max_message": round((peak - rest) / args.max_message_mb, 2), "answer": replies[-1][:90]})
            print(rows[-1], flush=True)
    finally:
        server.kill()
    record("session_memory", {"max_message_mb": args.max_message_mb, "model": "tiny:llama", "transport": "loopback"},
           rows, ["case", "sessions", "rest_rss_mb", "peak_above_rest_mb", "x_max_message", "answer"])


if __name__ == "__main__":
    main()
