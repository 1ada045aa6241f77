"""What keeping the labels on the client costs: split.shape=vanilla vs u on the default config.

    python benchmarks/split_shape.py [--model smollm2|tiny] [--tails 1,2] [--deploy]
Each shape trains configs/default.yaml (SmolLM2, a phone, a laptop and a workstation, SplitFT's adaptive cuts)
from the same seed. Per shape: bytes per training step by kind (the four crossings), virtual seconds per round
(the clock), wall seconds per round of the simulation on this machine, the clients' largest estimated memory,
and the final eval ppl. With --deploy, the same config also runs as `splitft launch` (a server and three client
processes on loopback) and its wall seconds per round (between aggregations, round 0 and evaluation rounds
included) and final ppl are added. Writes benchmarks/results/split_shape_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil

from _common import MODELS, ROOT, cli, record

from splitft.records import read_records

KINDS = ("activations_up", "labels_up", "hidden_down", "grad_hidden_up", "grad_activations_down")


def _per_round(stamps: list[float]) -> float:
    """Mean seconds between consecutive cumulative stamps (the first measured from 0)."""
    return stamps[-1] / len(stamps)


def one(model: str, shape: list[str], deploy: bool, reuse: bool = False) -> dict:
    name = "vanilla" if not shape else f"u, tail {shape[1].split('=')[1]}"
    over = [f"model.source={MODELS[model]}", *shape, "metrics.progress=false", "metrics.checkpoint_every=0"]
    if model == "tiny":
        over.append("split.cut_max=0")
    if shape:  # the phone's 0.35 GB does not hold a tail block and the head's logits: run it anyway, and say so
        over.append("split.allow_over_memory=true")
    out = ROOT / "out" / "bench" / "split_shape" / model / name.replace(", ", "_").replace(" ", "")
    print(f"== {name}", flush=True)
    if not (reuse and (out / "sim" / "summary.json").is_file() and (not deploy or (out / "dep" / "summary.json")
                                                                     .is_file())):
        shutil.rmtree(out, ignore_errors=True)  # our own scratch runs
        cli("simulate", "--config", "configs/default.yaml", *over, f"metrics.out_dir={out / 'sim'}")
        if deploy:
            cli("launch", "--config", "configs/default.yaml", "--clients", "3", *over,
                f"metrics.out_dir={out / 'dep'}")
    s = json.loads((out / "sim" / "summary.json").read_text())
    steps = read_records(out / "sim" / "metrics.jsonl", "step")
    per_step = {k: s["bytes"][k] / len(steps) / 1e3 for k in KINDS}
    row = {"shape": name, **{f"{k}_KB": v for k, v in per_step.items()},
           "step_KB": sum(per_step.values()), "virtual_s_per_round": s["virtual_time_s"] / s["rounds"],
           "sim_wall_s_per_round": _per_round(list(s["wall_time_by_round"].values())),
           "client_memory_gb": max(c["memory_gb_needed"] for c in s["clients"].values()),
           "cuts": [list(r.values()) for r in s["cuts_by_round"].values()],
           "final_eval_ppl": s["final_eval_ppl"], "steps": len(steps)}
    over_memory = read_records(out / "sim" / "metrics.jsonl", "setup")[0]["over_memory"]
    row["over_memory"] = {c: f"{o['device']}: {o['memory_gb_needed']} of {o['memory_gb_budget']} GB"
                          for c, o in over_memory.items()}
    if deploy:
        rounds = [r for r in read_records(out / "dep" / "metrics.jsonl") if r["kind"] == "round" and r["round"] >= 0]
        stamps = [r["wall_time"] for r in rounds if "wall_time" in r]
        dep = json.loads((out / "dep" / "summary.json").read_text())
        row.update(deploy_wall_s_per_round=(stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1),
                   deploy_final_eval_ppl=dep.get("final_eval_ppl"))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--tails", default="1", help="comma-separated split.tail values to run under u")
    ap.add_argument("--deploy", action="store_true", help="also run each shape as a loopback deployment")
    ap.add_argument("--reuse", action="store_true", help="read a shape's runs from out/bench if they finished")
    args = ap.parse_args()
    shapes = [[]] + [["split.shape=u", f"split.tail={t}"] for t in args.tails.split(",")]
    rows = [one(args.model, shape, args.deploy, args.reuse) for shape in shapes]
    base = rows[0]
    for r in rows:
        r["step_bytes_vs_vanilla"] = r["step_KB"] / base["step_KB"]
        r["virtual_vs_vanilla"] = r["virtual_s_per_round"] / base["virtual_s_per_round"]
        r["ppl_vs_vanilla"] = r["final_eval_ppl"] / base["final_eval_ppl"]
    columns = ["shape", "activations_up_KB", "labels_up_KB", "hidden_down_KB", "grad_hidden_up_KB",
               "grad_activations_down_KB", "step_bytes_vs_vanilla", "virtual_s_per_round", "virtual_vs_vanilla",
               "sim_wall_s_per_round", *(["deploy_wall_s_per_round"] if args.deploy else []), "client_memory_gb",
               "final_eval_ppl", "ppl_vs_vanilla", "over_memory"]
    record(f"split_shape_{args.model}", {"config": "configs/default.yaml", "model": MODELS[args.model],
                                         "shapes": shapes, "deploy": args.deploy}, rows, columns)


if __name__ == "__main__":
    main()
