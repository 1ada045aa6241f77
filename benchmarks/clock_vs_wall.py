"""The virtual clock against reality: the same config as `splitft simulate` (virtual seconds per round) and as
`splitft launch --emulate` (wall seconds per round of a loopback deployment whose server and clients pace
themselves to their devices), for each serving order x round budget.

    python benchmarks/clock_vs_wall.py [--model tiny|smollm2] [--scenario default3|mix5] [--rounds N]
                                       [--wall-budget S]
Emulated devices are slow enough for this machine to honor on 2 shared cores (the profiles ask for more time
than the real work takes). `default3`: a phone, a laptop and a workstation; `mix5`: four laptops and a phone 10x
slower than them. Tiny model: the tiers of those names 10,000x slower in compute, same links, B=2 x 128 tokens.
SmolLM2-135M: B=2 x 64 tokens, a server of 0.05 TFLOP/s (~1.3 s a step; its real step here is ~0.8 s), laptops
of 0.0025 TFLOP/s with 20/100 Mbit/s links (~1.7 s a step), a phone 10x slower (~16 s a step). Fixed cut 2.

A deployment's round is the wall time between two aggregations on the server (round 0, which includes the
processes' start and the clients' evaluation of the pretrained model, is left out; evaluation runs only before
round 0 and after the last: metrics.eval_every is set past the run). Goal (issue "heterogeneous clients for
real"): within 10% per round.

--wall-budget S (the README's "what a user chooses from" table): each combination runs as many rounds as fit in
S seconds of training by the simulator's clock (a 2-round simulation prices them; at least 2), so every
combination trains for about the same wall time; the table adds training tokens per wall second (rounds 1..N-1,
deployed), steps per client per round, the training wall time (round 0's virtual time + the deployed rounds
after it) and the deployed federation's eval ppl at the end.
Writes benchmarks/results/clock_vs_wall_<model>_<scenario>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from _common import MODELS, cli, record

from splitft.records import read_records

TINY = {
    "tiers": "heterogeneity.tiers=[{name: phone_e, tflops: 0.00005, up_mbps: 10, down_mbps: 50, latency_ms: 40},"
             " {name: laptop_e, tflops: 0.0002, up_mbps: 50, down_mbps: 200, latency_ms: 20},"
             " {name: workstation_e, tflops: 0.001, up_mbps: 500, down_mbps: 1000, latency_ms: 5},"
             " {name: phone10_e, tflops: 0.00002, up_mbps: 10, down_mbps: 50, latency_ms: 40}]",
    "common": ["data.max_samples=160", "data.max_length=128", "train.batch_size=2", "federation.local_steps=3",
               "lora.r=4", "lora.r_cut=4", "lora.alpha=8", "split.cut_max=3", "heterogeneity.server_tflops=50"],
}
SMOLLM2 = {
    "tiers": "heterogeneity.tiers=[{name: phone_e, tflops: 0.0005, up_mbps: 5, down_mbps: 20, latency_ms: 40},"
             " {name: laptop_e, tflops: 0.0025, up_mbps: 20, down_mbps: 100, latency_ms: 20},"
             " {name: workstation_e, tflops: 0.005, up_mbps: 100, down_mbps: 500, latency_ms: 5},"
             " {name: phone10_e, tflops: 0.00025, up_mbps: 2, down_mbps: 10, latency_ms: 40}]",
    "common": ["data.max_length=64", "train.batch_size=2", "federation.local_steps=4",
               "heterogeneity.server_tflops=0.05"],
}
SETUPS = {"tiny": TINY, "smollm2": SMOLLM2}
SCENARIOS = {
    "default3": ["federation.n_clients=3", "heterogeneity.devices=[phone_e,laptop_e,workstation_e]"],
    "mix5": ["federation.n_clients=5", "heterogeneity.devices=[phone10_e,laptop_e,laptop_e,laptop_e,laptop_e]"],
}
COMMON = ["split.policy=fixed", "split.cut=2", "heterogeneity.profile=list", "metrics.eval_every=1000",
          "metrics.progress=false", "metrics.checkpoint_every=0"]
COMBOS = [("plan", "steps"), ("plan", "time"), ("arrival", "steps"), ("arrival", "time")]


def _rounds(out: Path) -> list[dict]:
    return [r for r in read_records(out / "metrics.jsonl") if r["kind"] == "round" and r.get("round", -1) >= 0]


def _settings(model: str, scenario: str, order: str, budget: str) -> list[str]:
    s = SETUPS[model]
    return [f"model.source={MODELS[model]}", *COMMON, *s["common"], s["tiers"], *SCENARIOS[scenario],
            f"federation.order={order}", f"federation.round_budget={budget}"]


def rounds_within(over: list[str], wall_budget: float, tmp: Path) -> int:
    """How many rounds fit in `wall_budget` seconds by the simulator's clock: round 0 (uncalibrated under a time
    budget) and round 1 (steady) priced by a 2-round simulation."""
    out = tmp / "probe"
    cli("simulate", "--config", "configs/default.yaml", *over, "federation.rounds=2", f"metrics.out_dir={out}",
        timeout_s=3600)
    first, steady = (r["round_virtual_s"] for r in _rounds(out))
    shutil.rmtree(out, ignore_errors=True)
    return max(2, 1 + int((wall_budget - first) // steady))


def one(model: str, scenario: str, rounds: int, order: str, budget: str, tmp: Path,
        wall_budget: float | None) -> dict:
    over = _settings(model, scenario, order, budget)
    if wall_budget:
        rounds = rounds_within(over, wall_budget, tmp)
    over.append(f"federation.rounds={rounds}")
    sim, dep = tmp / f"sim_{order}_{budget}", tmp / f"dep_{order}_{budget}"
    cli("simulate", "--config", "configs/default.yaml", *over, f"metrics.out_dir={sim}", timeout_s=3600)
    n = int(SCENARIOS[scenario][0].split("=")[1])
    cli("launch", "--config", "configs/default.yaml", "--clients", str(n), "--emulate", *over,
        f"metrics.out_dir={dep}", timeout_s=3600)
    for i in range(n):  # launch goes on without a failed client; a benchmark must not
        if not (dep / f"client_{i}.json").is_file():
            log = (dep / "logs" / f"client_{i}.log").read_text()[-3000:]
            raise SystemExit(f"client {i} of {order}+{budget} failed:\n{log}")
    sim_rounds, dep_rounds = _rounds(sim), _rounds(dep)
    virtual = [r["round_virtual_s"] for r in sim_rounds]
    stamps = [r["wall_time"] for r in dep_rounds]
    wall = [b - a for a, b in zip(stamps, stamps[1:], strict=True)]  # rounds 1 .. rounds-1
    ratios = [w / v for w, v in zip(wall, virtual[1:], strict=True)]
    emulation = [_read(dep / f"client_{i}.json")["emulation"] for i in range(n)]
    server = _read(dep / "server.json")["emulation"]
    row = {"order": order, "budget": budget, "rounds": rounds, "virtual_s": [round(v, 3) for v in virtual[1:]],
           "wall_s": [round(w, 3) for w in wall], "wall_over_virtual": [round(x, 3) for x in ratios],
           "worst_error": round(max(abs(x - 1) for x in ratios), 3),
           # a miss is most often a step flipped at a time budget's edge: the steps each side ran, rounds 1..
           "steps_simulated": [r["steps_by_client"] for r in sim_rounds[1:]],
           "steps_deployed": [r["steps_by_client"] for r in dep_rounds[1:]],
           "steps_slower_than_profile": sum(e["slower_than_profile"] for e in emulation),
           "server_steps_slower_than_profile": server["slower_than_profile"]}
    if wall_budget:
        row.update(_throughput(dep_rounds, wall, virtual[0], _read(dep / "summary.json")))
    return row


def _throughput(dep_rounds: list[dict], wall: list[float], round0_virtual_s: float, summary: dict) -> dict:
    later = dep_rounds[1:]
    steps = {c: [r["steps_by_client"][c] for r in later] for c in later[0]["steps_by_client"]}
    return {"wall_s_per_round": round(statistics.mean(wall), 2),
            "train_tokens_per_wall_s": round(sum(r["train_tokens"] for r in later) / sum(wall), 1),
            "steps_per_round": {c: round(statistics.mean(v), 2) for c, v in steps.items()},
            "training_wall_s": round(round0_virtual_s + sum(wall), 1),
            "initial_eval_ppl": summary["initial_eval_ppl"], "final_eval_ppl": summary["final_eval_ppl"]}


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(SETUPS), default="tiny")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="default3")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--wall-budget", type=float, default=None, metavar="S",
                   help="run each combination for the rounds that fit in S training seconds (overrides --rounds)")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="keep each run's directory (logs, records) under DIR instead of a temporary one")
    p.add_argument("--combos", default=",".join(f"{o}+{b}" for o, b in COMBOS),
                   help="comma-separated subset of " + ",".join(f"{o}+{b}" for o, b in COMBOS))
    args = p.parse_args()
    combos = [tuple(c.split("+")) for c in args.combos.split(",") if c]
    if not combos or any(c not in COMBOS for c in combos) or args.rounds < 2 or (args.wall_budget or 1) <= 0:
        p.error("--combos: order+budget pairs from the list; --rounds >= 2; --wall-budget > 0")
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="clock_vs_wall_"))
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for order, budget in combos:
            rows.append(one(args.model, args.scenario, args.rounds, order, budget, tmp, args.wall_budget))
            print(rows[-1], flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.wall_budget and ("plan", "steps") in combos:
        ref = next(r for r in rows if (r["order"], r["budget"]) == ("plan", "steps"))
        for r in rows:
            r["tokens_per_wall_s_vs_plan_steps"] = round(r["train_tokens_per_wall_s"]
                                                         / ref["train_tokens_per_wall_s"], 2)
            r["eval_ppl_vs_plan_steps"] = round(r["final_eval_ppl"] / ref["final_eval_ppl"] - 1, 4)
    columns = ["order", "budget", "rounds", "virtual_s", "wall_s", "wall_over_virtual", "worst_error",
               "steps_slower_than_profile", "server_steps_slower_than_profile"]
    if args.wall_budget:
        columns += ["steps_per_round", "train_tokens_per_wall_s", "tokens_per_wall_s_vs_plan_steps",
                    "training_wall_s", "final_eval_ppl", "eval_ppl_vs_plan_steps"]
    setup = SETUPS[args.model]
    record(f"clock_vs_wall_{args.model}_{args.scenario}",
           {"model": MODELS[args.model], "scenario": SCENARIOS[args.scenario], "common": COMMON + setup["common"],
            "tiers": setup["tiers"], "rounds": args.rounds, "wall_budget_s": args.wall_budget}, rows, columns)


if __name__ == "__main__":
    main()
