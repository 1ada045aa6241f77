"""Cut policies against each other and an oracle: predicted seconds per round (the virtual clock's model) for a
suite of federations on SmolLM2-135M's shapes (configs/experiment.yaml: batch 4 x 128 tokens, 2 local steps,
r=16, r_cut=8, cuts in [1, 8]), no training.

    python benchmarks/cut_policies.py [--model smollm2|tiny]
Scenarios: the default 3 devices; the experiment's 5 clients; 20 clients drawn from the tiers on a 1 TFLOP/s
server; 10 workstations + 10 phones on 1 TFLOP/s; 50 log-normal clients on 5 TFLOP/s; 5 phones on 2 Mbit/s
uplinks; and the two server-bound ones again with any cut allowed (split.cut_max=0). Goals (issue "a cut policy
that pays off"): makespan within 2% of the oracle everywhere, never more than 2% slower than the best fixed cut,
>= 1.10x faster than fixed cut 2 where the server is the bottleneck.
Writes benchmarks/results/cut_policies_<model>.json.
"""

from __future__ import annotations

import argparse
import time

from _common import MODELS, ROOT, record

from splitft.build import Setup, build_model, compute_of, load
from splitft.devices import client_profiles
from splitft.sim.methods import client_stats, cut_bounds, round_costs
from splitft.sim.plan import plan_policies

PHONE_2MBIT = "heterogeneity.tiers=[{name: phone2, tflops: 0.5, memory_gb: 0.35, up_mbps: 2, down_mbps: 50, " \
              "latency_ms: 40}]"
SCENARIOS = {
    "default 3 devices": ["federation.n_clients=3", "heterogeneity.devices=[phone,laptop,workstation]"],
    "experiment 5 clients": [],
    "20 tiers, 1 TFLOP/s server": ["federation.n_clients=20", "heterogeneity.profile=tiers",
                                   "heterogeneity.server_tflops=1"],
    "10 workstations + 10 phones, 1 TFLOP/s": [
        "federation.n_clients=20", "heterogeneity.devices=[" + ",".join(["workstation"] * 10 + ["phone"] * 10) + "]",
        "heterogeneity.server_tflops=1"],
    "50 log-normal, 5 TFLOP/s": ["federation.n_clients=50", "heterogeneity.profile=lognormal",
                                 "heterogeneity.server_tflops=5"],
    "5 phones on 2 Mbit/s uplinks": [PHONE_2MBIT, "heterogeneity.devices=[phone2,phone2,phone2,phone2,phone2]"],
}
SERVER_BOUND = ("20 tiers, 1 TFLOP/s server", "10 workstations + 10 phones, 1 TFLOP/s")
# The server-bound pair again with split.cut_max=0 (any cut up to n_layer - 1 instead of the experiment's 8):
# how much of the gain the cap on client blocks costs.
SCENARIOS.update({f"{name}, any cut": [*SCENARIOS[name], "split.cut_max=0"] for name in SERVER_BOUND})
POLICIES = ("fixed-1", "fixed-2", "fixed-4", "fixed-best", "resource", "splitft", "makespan", "oracle")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    args = ap.parse_args()
    base = [f"model.source={MODELS[args.model]}", "metrics.out_dir=out/bench/cut_policies"]
    if args.model == "tiny":  # 4 blocks: cuts in [1, 3]
        base += ["split.cut_max=3"]
    cfg = load(ROOT / "configs" / "experiment.yaml", base)
    peft, family, tokenizer, device = build_model(cfg)  # the model's shape, loaded once
    rows = []
    for name, overrides in SCENARIOS.items():
        cfg = load(ROOT / "configs" / "experiment.yaml", base + overrides)
        setup = Setup(cfg, peft, family, tokenizer, [], [], {}, device, [], compute_of(cfg))
        stats = client_stats(dict(enumerate(client_profiles(cfg.heterogeneity, cfg.federation.n_clients,
                                                            cfg.federation.seed))))
        start = time.perf_counter()
        result = plan_policies(round_costs(setup), cut_bounds(setup), stats, cfg.split)["policies"]
        seconds = time.perf_counter() - start
        t = {p: result[p]["round_s"] if p in result else None for p in POLICIES}  # tiny: no fixed-4
        rows.append({"scenario": name, "clients": len(stats), "server_tflops": cfg.heterogeneity.server_tflops,
                     **{f"{p}_s": t[p] for p in POLICIES}, "oracle_exact": result["oracle"]["exact"],
                     "makespan_vs_oracle": t["makespan"] / t["oracle"],
                     "makespan_vs_best_fixed": t["makespan"] / t["fixed-best"],
                     "speedup_vs_fixed_2": t["fixed-2"] / t["makespan"], "plan_wall_s": seconds,
                     "makespan_cuts": ",".join(str(result["makespan"]["cuts"][c])
                                               for c in sorted(result["makespan"]["cuts"], key=int))})
    goals = {"makespan within 2% of the oracle": all(r["makespan_vs_oracle"] <= 1.02 for r in rows),
             "never more than 2% slower than the best fixed cut": all(r["makespan_vs_best_fixed"] <= 1.02
                                                                       for r in rows),
             ">= 1.10x fixed-2 where the server binds (cut_max 8)": all(
                 r["speedup_vs_fixed_2"] >= 1.10 for r in rows if r["scenario"] in SERVER_BOUND),
             ">= 1.10x fixed-2 where the server binds (any cut)": all(
                 r["speedup_vs_fixed_2"] >= 1.10 for r in rows if r["scenario"].endswith("any cut"))}
    for goal, met in goals.items():
        print(f"goal: {goal}: {'met' if met else 'NOT met'}", flush=True)
    record(f"cut_policies_{args.model}", {"config": "configs/experiment.yaml", "model": MODELS[args.model],
                                         "scenarios": SCENARIOS, "goals": goals},
           rows, ["scenario", "clients", "server_tflops", *(f"{p}_s" for p in POLICIES), "oracle_exact",
                  "makespan_vs_oracle", "speedup_vs_fixed_2", "plan_wall_s"])


if __name__ == "__main__":
    main()
