"""Serving order x round budget in the simulation: what each of plan/arrival x steps/time does to a
heterogeneous federation's virtual time, training throughput and quality.

    python benchmarks/serving_order.py [--model smollm2|tiny] [--scenario mix5|default3] [--rounds N]
Scenarios: `mix5`, five clients where one phone is 10x slower than four laptops (0.2 vs 2 TFLOP/s; the phone's
links), split.policy=fixed at cut 2 so only the serving order differs; `default3`, the default config's phone,
laptop and workstation. Per combination: virtual seconds per round, training tokens per virtual second of the
whole federation, steps per client per round, eval ppl by round with the virtual time it was reached, the eval
ppl at the virtual time plan+steps took in all (the last evaluation reached by then), and the virtual time it
took to reach plan+steps' final ppl within 2%. Every combination runs the same number of rounds. This is the simulator's
side only, on the real tiers; `clock_vs_wall.py --model smollm2 --wall-budget S` runs the same comparison as
emulated deployments (on devices this machine can honor) next to the simulator.
Writes benchmarks/results/serving_order_<model>_<scenario>.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import MODELS, ROOT, record

from splitft.build import load
from splitft.records import read_records
from splitft.sim.runner import run_simulation, sim_problems

SLOW = ("heterogeneity.tiers=[{name: slowphone, tflops: 0.2, memory_gb: 4, up_mbps: 10, down_mbps: 50, "
        "latency_ms: 40}]")
SCENARIOS = {
    "mix5": ["federation.n_clients=5", SLOW, "heterogeneity.devices=[slowphone,laptop,laptop,laptop,laptop]",
             "split.policy=fixed", "split.cut=2"],
    "default3": [],
}
COMBOS = [("plan", "steps"), ("plan", "time"), ("arrival", "steps"), ("arrival", "time")]


def run(model: str, scenario: str, rounds: int, order: str, budget: str, out: Path) -> dict:
    cfg = load(ROOT / "configs" / "default.yaml",
               [f"model.source={MODELS[model]}", *(["split.cut_max=3"] if model == "tiny" else []),
                *SCENARIOS[scenario], f"federation.rounds={rounds}",
                f"federation.order={order}", f"federation.round_budget={budget}", "metrics.progress=false",
                "metrics.checkpoint_every=0", f"metrics.out_dir={out}"], sim_problems)
    start = time.perf_counter()
    summary = run_simulation(cfg)
    wall = time.perf_counter() - start
    records = read_records(out / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    rounds_ = [r for r in records if r["kind"] == "round" and r["round"] >= 0]
    per_client = {}
    for s in steps:
        per_client[s["client_id"]] = per_client.get(s["client_id"], 0) + 1
    return {"order": order, "budget": budget, "virtual_s_per_round": summary["virtual_time_s"] / len(rounds_),
            "tokens_per_virtual_s": sum(s["n_tokens"] for s in steps) / summary["virtual_time_s"],
            "steps_per_client_round": {str(c): n / len(rounds_) for c, n in sorted(per_client.items())},
            "eval_ppl_by_virtual_s": [(r["virtual_time"], r["eval_ppl"]) for r in rounds_ if "eval_ppl" in r],
            "initial_eval_ppl": summary["initial_eval_ppl"], "final_eval_ppl": summary["final_eval_ppl"],
            "virtual_time_s": summary["virtual_time_s"], "wall_s": round(wall, 1)}


def summarize(rows: list[dict]) -> float:
    """Adds to each row its throughput relative to plan+steps, its eval ppl at the virtual time plan+steps took
    in all, and the virtual seconds it took to reach plan+steps' final ppl (+2%); returns that time."""
    ref = next(r for r in rows if (r["order"], r["budget"]) == ("plan", "steps"))
    horizon, target = ref["virtual_time_s"], ref["final_eval_ppl"] * 1.02
    for r in rows:
        reached = [ppl for t, ppl in r["eval_ppl_by_virtual_s"] if t <= horizon * (1 + 1e-6)]
        r["eval_ppl_at_plan_steps_time"] = reached[-1] if reached else r["initial_eval_ppl"]
        r["tokens_per_s_vs_plan_steps"] = r["tokens_per_virtual_s"] / ref["tokens_per_virtual_s"]
        r["virtual_s_to_plan_steps_ppl"] = next((t for t, ppl in r["eval_ppl_by_virtual_s"] if ppl <= target), None)
    return horizon


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="mix5")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="serving_order_"))
    rows = []
    try:
        for order, budget in COMBOS:
            rows.append(run(args.model, args.scenario, args.rounds, order, budget, tmp / f"{order}_{budget}"))
            print(f"{order}+{budget}: {rows[-1]['virtual_s_per_round']:.1f} virtual s/round, "
                  f"{rows[-1]['tokens_per_virtual_s']:.0f} tokens/s, ppl {rows[-1]['final_eval_ppl']:.2f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    horizon = summarize(rows)
    record(f"serving_order_{args.model}_{args.scenario}",
           {"model": MODELS[args.model], "scenario": SCENARIOS[args.scenario], "rounds": args.rounds,
            "plan_steps_virtual_s": horizon}, rows,
           ["order", "budget", "virtual_s_per_round", "tokens_per_virtual_s", "tokens_per_s_vs_plan_steps",
            "virtual_s_to_plan_steps_ppl", "eval_ppl_at_plan_steps_time", "final_eval_ppl", "wall_s"])


if __name__ == "__main__":
    main()
