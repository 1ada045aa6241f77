"""Many clients on one server: `splitft launch` with N client processes of the tiny model on loopback, under
arrival order and a time budget, with `federation.server_batch` 1 and k side by side.

    python benchmarks/many_clients.py [--clients 32] [--k 8] [--rounds 3] [--wait-ms 20]
Each client is its own process (about 0.5 GB resident with torch loaded), holding its own blocks and its own
share of the data; the server serves them by arrival, each round's budget from the clients' reported pace (round
0 runs local_steps). Checked per run: every client finished every round (no dropped round), every step a client
ran was applied by the server exactly once (the server's steps per client and round == the client's), and the
run ended. Reported: wall seconds, the server's peak RSS, server steps vs client steps, and over all clients'
steps the p50 / p99 of a step's wall latency (forward, the wait for and the server's step, backward) and the
clients' median p99. Writes benchmarks/results/many_clients_<N>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import cli, record

TINY = ["model.source=tiny:llama", "data.max_length=128", "train.batch_size=2", "data.max_eval_samples=4",
        "lora.r=4", "lora.r_cut=2", "lora.alpha=8", "train.lr=0.01", "metrics.progress=false", "split.policy=fixed",
        "split.cut=2", "split.cut_max=0",
        "heterogeneity.profile=homogeneous", "federation.order=arrival", "federation.round_budget=time",
        "federation.local_steps=2", "federation.max_steps_factor=2", "server.round_timeout_s=600"]


def run(n: int, k: int, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix="splitft-many-")) / f"k{k}"
    start = time.perf_counter()
    cli("launch", "--config", "configs/default.yaml", "--clients", str(n), *TINY, f"federation.n_clients={n}",
        f"federation.rounds={args.rounds}", f"data.max_samples={24 * n}", f"federation.server_batch={k}",
        f"federation.server_batch_wait_ms={args.wait_ms if k > 1 else 0}", f"metrics.out_dir={out}")
    wall = time.perf_counter() - start
    server = json.loads((out / "server.json").read_text())
    clients = [json.loads((out / f"client_{i}.json").read_text()) for i in range(n)]
    lost = [(r, i) for r, by in enumerate(server["steps_by_round"]) for i in range(n)
            if by.get(str(i)) != clients[i]["steps_by_round"].get(str(r))]
    dropped = {i: c["dropped_rounds"] for i, c in enumerate(clients) if c["dropped_rounds"]}
    walls = sorted(c["step_wall_s"]["p50"] for c in clients)
    p99s = sorted(c["step_wall_s"]["p99"] for c in clients)
    steps = sum(sum(by.values()) for by in server["steps_by_round"])
    return {"clients": n, "server_batch": k, "wait_ms": args.wait_ms if k > 1 else 0, "rounds": server["rounds"],
            "every_round_done": not dropped and server["rounds"] == args.rounds, "steps_mismatched": len(lost),
            "client_steps": steps, "server_steps": sum(server["server_steps_by_round"]),
            "wall_s": round(wall, 1), "server_peak_rss_gb": server.get("peak_rss_gb"),
            "client_p50_median_s": round(statistics.median(walls), 3),
            "client_p99_median_s": round(statistics.median(p99s), 3), "client_p99_max_s": round(p99s[-1], 3),
            "dropped": dropped}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wait-ms", type=float, default=20.0)
    args = ap.parse_args()
    rows = []
    for k in (1, args.k):
        rows.append(run(args.clients, k, args))
        print(json.dumps(rows[-1]), flush=True)
    record(f"many_clients_{args.clients}", vars(args), rows,
           ["clients", "server_batch", "every_round_done", "steps_mismatched", "client_steps", "server_steps",
            "wall_s", "server_peak_rss_gb", "client_p50_median_s", "client_p99_median_s", "client_p99_max_s"])


if __name__ == "__main__":
    main()
