"""The four methods on a heterogeneous federation (configs/experiment.yaml: SmolLM2-135M, 5 clients on phone /
laptop / workstation profiles, length-based non-IID data): virtual and wall time to a target perplexity, final
perplexity, bytes.

    python benchmarks/methods.py [--model smollm2|tiny] [--target-ppl P] [overrides ...]
Runs `splitft experiment` (splitft, sfl-fixed, fedlora, centralized) into out/bench/methods/<model>; the target
is, unless given, the worst final perplexity of the four (so each method's time to reach it is defined).
Writes benchmarks/results/methods_<model>.json.
"""

from __future__ import annotations

import argparse
import shutil

from _common import MODELS, ROOT, record

from splitft.config import load_config
from splitft.sim.experiment import METHODS, run_experiment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--target-ppl", type=float, default=None)
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. federation.rounds=4")
    args = ap.parse_args()
    out = ROOT / "out" / "bench" / "methods" / args.model
    shutil.rmtree(out, ignore_errors=True)  # our own scratch runs
    cfg = load_config(str(ROOT / "configs" / "experiment.yaml"),
                      [f"model.source={MODELS[args.model]}", "metrics.progress=false", "metrics.checkpoint_every=0",
                       f"metrics.out_dir={out}", *args.overrides])
    result = run_experiment(cfg, list(METHODS), args.target_ppl)
    rows = [{"method": name, **{k: v for k, v in r.items() if k != "clients_over_memory"},
             "bytes_total_MB": (r["bytes_up"] + r["bytes_down"]) / 1e6,
             "clients_over_memory": ",".join(r["clients_over_memory"]) or None}
            for name, r in result["methods"].items()]
    record(f"methods_{args.model}", {"config": "configs/experiment.yaml", "overrides": args.overrides,
                                     "target_ppl": result["target_ppl"]},
           rows, ["method", "final_eval_ppl", "virtual_time_to_target_s", "wall_time_to_target_s", "virtual_time_s",
                  "wall_time_s", "bytes_total_MB", "clients_over_memory", "cuts"])


if __name__ == "__main__":
    main()
