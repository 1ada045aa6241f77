"""The virtual clock against reality: the same config as `splitft simulate` (virtual seconds per round) and as
`splitft launch --emulate` (wall seconds per round of a loopback deployment whose clients pace themselves to
their devices), for each serving order x round budget.

    python benchmarks/clock_vs_wall.py [--scenario default3|mix5] [--rounds N]
Tiny model with emulated devices slow enough for this machine to honor on 2 shared cores (a step of the tiny
model takes milliseconds; the profiles ask for 0.05-2.5 s): `default3` a phone, a laptop and a workstation
(each 10,000x slower in compute than the tiers of the same name, same links), `mix5` four laptops and a phone
10x slower than them. A deployment's round is the wall time between two aggregations on the server (round 0,
which includes the processes' start, is left out; evaluation runs only before round 0 and after the last:
metrics.eval_every is set past the run). Goal (issue "heterogeneous clients for real"): within 10% per round.
Writes benchmarks/results/clock_vs_wall_tiny_<scenario>.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import cli, record

from splitft.metrics import read_metrics

TIERS = ("heterogeneity.tiers=[{name: phone_e, tflops: 0.00005, up_mbps: 10, down_mbps: 50, latency_ms: 40},"
         " {name: laptop_e, tflops: 0.0002, up_mbps: 50, down_mbps: 200, latency_ms: 20},"
         " {name: workstation_e, tflops: 0.001, up_mbps: 500, down_mbps: 1000, latency_ms: 5},"
         " {name: phone10_e, tflops: 0.00002, up_mbps: 10, down_mbps: 50, latency_ms: 40}]")
SCENARIOS = {
    "default3": ["federation.n_clients=3", "heterogeneity.devices=[phone_e,laptop_e,workstation_e]"],
    "mix5": ["federation.n_clients=5", "heterogeneity.devices=[phone10_e,laptop_e,laptop_e,laptop_e,laptop_e]"],
}
COMMON = ["model.source=tiny:llama", "data.max_samples=160", "data.max_length=128", "train.batch_size=2",
          "federation.local_steps=3", "lora.r=4", "lora.r_cut=4", "lora.alpha=8", "split.policy=fixed",
          "split.cut=2", "split.cut_max=3", "heterogeneity.profile=list", "heterogeneity.server_tflops=50",
          "metrics.eval_every=1000", "metrics.progress=false", "metrics.checkpoint_every=0", TIERS]
COMBOS = [("plan", "steps"), ("plan", "time"), ("arrival", "steps"), ("arrival", "time")]


def _rounds(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "round" and r.get("round", -1) >= 0]


def one(scenario: str, rounds: int, order: str, budget: str, tmp: Path) -> dict:
    over = [*COMMON, *SCENARIOS[scenario], f"federation.rounds={rounds}", f"federation.order={order}",
            f"federation.round_budget={budget}"]
    sim, dep = tmp / f"sim_{order}_{budget}", tmp / f"dep_{order}_{budget}"
    cli("simulate", "--config", "configs/default.yaml", *over, f"metrics.out_dir={sim}", timeout_s=1800)
    n = int(SCENARIOS[scenario][0].split("=")[1])
    cli("launch", "--config", "configs/default.yaml", "--clients", str(n), "--emulate", *over,
        f"metrics.out_dir={dep}", timeout_s=1800)
    virtual = [r["round_virtual_s"] for r in _rounds(sim)]
    stamps = [r["wall_time"] for r in _rounds(dep)]
    wall = [b - a for a, b in zip(stamps, stamps[1:])]  # rounds 1 .. rounds-1
    ratios = [w / v for w, v in zip(wall, virtual[1:])]
    for i in range(n):  # launch goes on without a failed client; a benchmark must not
        if not (dep / f"client_{i}.json").is_file():
            log = (dep / "logs" / f"client_{i}.log").read_text()[-3000:]
            raise SystemExit(f"client {i} of {order}+{budget} failed:\n{log}")
    slower = sum(json_field(dep / f"client_{i}.json", "slower_than_profile") for i in range(n))
    return {"order": order, "budget": budget, "virtual_s": [round(v, 3) for v in virtual[1:]],
            "wall_s": [round(w, 3) for w in wall], "wall_over_virtual": [round(x, 3) for x in ratios],
            "worst_error": round(max(abs(x - 1) for x in ratios), 3), "steps_slower_than_profile": slower}


def json_field(path: Path, key: str) -> int:
    import json

    return int(json.loads(path.read_text()).get("emulation", {}).get(key, 0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="default3")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="clock_vs_wall_"))
    rows = []
    try:
        for order, budget in COMBOS:
            rows.append(one(args.scenario, args.rounds, order, budget, tmp))
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record(f"clock_vs_wall_tiny_{args.scenario}", {"scenario": SCENARIOS[args.scenario], "common": COMMON,
                                                    "rounds": args.rounds}, rows,
           ["order", "budget", "virtual_s", "wall_s", "wall_over_virtual", "worst_error",
            "steps_slower_than_profile"])


if __name__ == "__main__":
    main()
