"""In-process vs gRPC over loopback (server and clients as separate processes): split steps/s and payload
bytes/s of the same federation, plus the gRPC framing overhead.

    python benchmarks/transport.py [--models tiny,smollm2] [--clients 2] [--codec none] [--codec-down none]
Both runtimes run the same config (fixed cut, same seed, so the same steps and bytes). Throughput is measured
between the end of round 0 and the end of round R-2 from the runs' own round records, so process start,
model loading, the pretrained and final evaluations are left out. The gRPC processes share this machine's
cores with each other (only one computes at a time: steps run in plan order). Writes
benchmarks/results/transport.json.
"""

from __future__ import annotations

import argparse
import json
import shutil

from _common import MODELS, ROOT, record

from splitft.config import load_config
from splitft.deploy.launch import launch
from splitft.records import read_records
from splitft.sim.runner import run_simulation

ROUNDS = {"tiny": 12, "smollm2": 4}


def _window(run_dir, steps_per_round: int) -> dict[str, float]:
    """Steps/s and payload bytes/s over rounds 1 .. R-2 (from the end of round 0 to the end of round R-2)."""
    rounds = [r for r in read_records(run_dir / "metrics.jsonl") if r["kind"] == "round" and r["round"] >= 0]
    first, last = rounds[0], rounds[-2]
    inner = rounds[1:-1]
    secs = last["wall_time"] - first["wall_time"]
    payload = sum(r["bytes_up"] + r["bytes_down"] for r in inner)
    return {"steps_per_s": len(inner) * steps_per_round / secs, "payload_MB_per_s": payload / secs / 1e6,
            "payload_MB_per_step": payload / (len(inner) * steps_per_round) / 1e6, "window_s": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--local-steps", type=int, default=3)
    ap.add_argument("--codec", default="none", help="codec.up")
    ap.add_argument("--codec-down", default="none", help="codec.down")
    args = ap.parse_args()
    rows = []
    for model in args.models.split(","):
        out = ROOT / "out" / "bench" / "transport" / model
        shutil.rmtree(out, ignore_errors=True)  # our own scratch runs
        overrides = [f"model.source={MODELS[model]}", "split.policy=fixed", "split.cut_max=0",
                     "heterogeneity.profile=homogeneous", f"federation.n_clients={args.clients}",
                     f"federation.rounds={ROUNDS[model]}", f"federation.local_steps={args.local_steps}",
                     f"metrics.eval_every={ROUNDS[model]}", "metrics.checkpoint_every=0", "metrics.progress=false",
                     "data.max_eval_samples=8", f"codec.up={args.codec}",
                     f"codec.down={args.codec_down}"]
        steps_per_round = args.clients * args.local_steps
        for kind in ("inproc", "grpc"):
            cfg = load_config(str(ROOT / "configs" / "default.yaml"), [*overrides, f"metrics.out_dir={out / kind}"])
            print(f"== {model} {kind}", flush=True)
            if kind == "inproc":
                run_simulation(cfg)
            else:
                launch(cfg, args.clients)
            row = {"model": model, "transport": kind, **_window(out / kind, steps_per_round)}
            if kind == "grpc":  # serialized frames (envelopes, framing, heartbeats) against tensor payload
                reports = [json.loads((out / kind / f"client_{i}.json").read_text()) for i in range(args.clients)]
                wire = sum(r["wire_up"] + r["wire_down"] for r in reports)
                row["wire_over_payload"] = wire / sum(sum(r["bytes"].values()) for r in reports)
            rows.append(row)
    record("transport", {"models": args.models, "clients": args.clients, "local_steps": args.local_steps,
                         "rounds": ROUNDS, "codec_up": args.codec, "codec_down": args.codec_down,
                         "measured_rounds": "1 .. R-2"},
           rows, ["model", "transport", "steps_per_s", "payload_MB_per_s", "payload_MB_per_step",
                  "wire_over_payload", "window_s"])


if __name__ == "__main__":
    main()
