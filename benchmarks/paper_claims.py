"""The SplitFT paper's claims, tested on SmolLM2-135M-Instruct with seeds and 95% intervals.

    python benchmarks/paper_claims.py [--model smollm2|tiny] [--parts quality,tables,deploy] [--seeds 0,1,2]
                                      [--partitions iid,length] [--datasets shakespeare,python_stdlib]
                                      [--rounds 30] [--table-rounds 10] [--deploy-rounds 6] [--generate 16]
                                      [--out DIR]
Parts (each run is a normal run directory under --out, reused when finished, so parts can run in parallel
processes and a last call with every part only composes the table):
- quality: splitft, makespan and sfl-fixed for every seed (fedlora and centralized, references, for the first)
  on the builtin Shakespeare dialogue, IID and length-Dirichlet alpha = 0.1 (`splitft experiment --seeds`,
  ROUGE-L on --generate held-out prompts): final eval ppl, overfitting (final minus best eval ppl), virtual
  time to the partition's target ppl (the worst final ppl among the three's runs), paired against sfl-fixed
  seed by seed;
- tables: the paper's Table I (fixed cut 1, 2, 4, 8: a phone's compute per step, bytes, ppl) and Table II
  (cut 2, r_cut 1, 2, 4, 8, 16: bytes, ppl) on Shakespeare and on builtin:python_stdlib, one seed.
- deploy: splitft and sfl-fixed as `splitft launch --emulate`, seed 0, IID, the devices 1,000x slower (so 2
  cores can honor them): wall seconds to the worse final ppl of the two, beside the simulated virtual time.
The federation is configs/experiment.yaml's (5 clients: phone, phone, laptop, laptop, workstation; a 50 TFLOP/s
server; r = 16, r_cut = 8) with 1 local step of batch 4 x <= 64 tokens per round, 32 held-out samples and
compute_dtype=auto, which keeps 30 rounds x (3 methods x 3 seeds + 2) x 2 partitions near two hours on 2 cores.
A claim's verdict: "holds" when the paired 95% interval excludes 0 on the claimed side, "does not hold" when
it excludes 0 on the other, "within noise" when it includes 0.
Writes benchmarks/results/paper_claims_<model>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

from _common import MODELS, ROOT, cli, record, table

from splitft.build import build_model, compute_of
from splitft.config import Config, load_config
from splitft.cuts import cost_model_of
from splitft.devices import client_profiles
from splitft.metrics import interval
from splitft.model.families import hf_of
from splitft.sim.experiment import compare_row, parse_seeds, run_experiment, run_or_reuse, time_to

PARTITIONS = {"iid": ["data.partitioner=iid"],
              "length": ["data.partitioner=length_dirichlet", "data.alpha=0.1", "data.min_partition_size=8"]}
DATASETS = {"shakespeare": "builtin:shakespeare_dialogue", "python_stdlib": "builtin:python_stdlib"}
MODEL = "smollm2"
COMMON = ["federation.local_steps=1", "data.max_length=64", "data.max_eval_samples=32", "train.compute_dtype=auto",
          "model.dtype=auto", "metrics.progress=false", "metrics.checkpoint_every=10"]


EXPERIMENT = str(ROOT / "configs" / "experiment.yaml")


def overrides(out: Path, rounds: int, extra: list[str]) -> list[str]:
    small = ["split.cut_max=3", "data.max_length=256"] if MODEL == "tiny" else []  # 4 blocks, a byte tokenizer
    return [f"model.source={MODELS[MODEL]}", *COMMON, *small, f"federation.rounds={rounds}", f"metrics.out_dir={out}",
            *extra]


def config(out: Path, rounds: int, extra: list[str]) -> Config:
    return load_config(EXPERIMENT, overrides(out, rounds, extra))


CLAIMED = ["splitft", "makespan", "sfl-fixed"]  # every seed
BASELINES = ["fedlora", "centralized"]  # the first seed only: references, not claims (2 cores' time)


def quality(out: Path, partition: str, seeds: list[int], rounds: int, generate: int) -> dict[str, Any]:
    """`splitft experiment --seeds` on one partition (the claimed methods over every seed, the baselines on the
    first); returns its result with every run's eval-ppl curve and the baselines' rows."""
    where = out / f"quality_{partition}"
    cfg = config(where, rounds, PARTITIONS[partition])
    with contextlib.redirect_stdout(io.StringIO()):  # its table is composed below with the verdicts
        run_experiment(cfg, BASELINES, seeds=seeds[:1], generate=generate)
        result = run_experiment(cfg, CLAIMED, seeds=seeds, generate=generate)
    first = str(seeds[0])
    runs = {str(s): {m: where / f"seed_{s}" / m for m in CLAIMED + (BASELINES if str(s) == first else [])}
            for s in seeds}
    summaries = {s: {m: json.loads((d / "summary.json").read_text()) for m, d in by.items()} for s, by in runs.items()}
    result["curves"] = {s: {m: v["eval_ppl_by_round"] for m, v in by.items()} for s, by in summaries.items()}
    for s, by in summaries.items():
        for m in CLAIMED:
            result["runs"][s][m].update(derived(by[m], by["sfl-fixed"]["final_eval_ppl"]))
    result["baselines"] = {}
    for m in BASELINES:  # a row as `compare_row` makes it, against the claimed methods' target ppl
        summary = summaries[first][m]
        if generate:
            summary["answers"] = json.loads((runs[first][m] / f"answers_{generate}.json").read_text())
        result["baselines"][m] = {**compare_row(summary, result["target_ppl"]),
                                  **derived(summary, summaries[first]["sfl-fixed"]["final_eval_ppl"])}
    return result


def derived(summary: dict[str, Any], fixed_final: float) -> dict[str, Any]:
    """A run's overfitting, and its virtual seconds to the final ppl sfl-fixed reached with the same seed (a target
    per seed: the partition-wide one is reached by the worst seed only at its end)."""
    return {"overfit_ppl": overfit(summary["eval_ppl_by_round"]),
            "time_to_fixed_final_s": time_to(summary, fixed_final)}


def overfit(curve: dict[str, float]) -> float:
    """How far the final eval ppl sits above the run's best (0: still improving at the end)."""
    trained = [v for r, v in curve.items() if int(r) >= 0]
    return trained[-1] - min(trained)


def verdict(d: dict[str, Any], better: str) -> str:
    """A paired difference (method - sfl-fixed) against the claim that the method's is `better` (lower|higher)."""
    if d["mean"] is None or d["ci95"] is None:
        return "not measured"
    lo, hi = d["mean"] - d["ci95"], d["mean"] + d["ci95"]
    if lo <= 0 <= hi:
        return "within noise"
    return "holds" if (hi < 0) == (better == "lower") else "does not hold"


def paired(result: dict[str, Any], method: str, key: str) -> dict[str, Any]:
    runs = result["runs"].values()
    return interval([r[method][key] - r["sfl-fixed"][key] for r in runs
                     if r[method].get(key) is not None and r["sfl-fixed"].get(key) is not None])


def stat(res: dict[str, Any], m: str, key: str) -> dict[str, Any]:
    return interval([r[m][key] for r in res["runs"].values() if r[m].get(key) is not None])


def claims(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (claim, partition, adaptive method): both means, the paired difference, the verdict."""
    rows = []
    for part, res in results.items():
        checks = [("lower final eval ppl", "final_eval_ppl", "lower"), ("higher ROUGE-L", "rouge_l", "higher"),
                  ("less overfitting (final - best ppl)", "overfit_ppl", "lower"),
                  ("sooner to the target ppl (virtual s)", "virtual_time_to_target_s", "lower"),
                  ("sooner to sfl-fixed's final ppl, same seed (virtual s)", "time_to_fixed_final_s", "lower"),
                  ("cheaper rounds (virtual s for all rounds)", "virtual_time_s", "lower")]
        for claim, key, better in checks:
            for m in ("splitft", "makespan"):
                d = paired(res, m, key)
                mean = {n: stat(res, n, key)["mean"] for n in (m, "sfl-fixed")}
                never = sum(r[m].get(key) is None for r in res["runs"].values())  # a time never reached
                rows.append({"claim": f"{m}: {claim}", "data": part.removeprefix("quality_"), "method": mean[m],
                             "sfl_fixed": mean["sfl-fixed"], "diff": d["mean"], "ci95": d["ci95"], "n": d["n"],
                             "verdict": f"not shown: {never} seed(s) never reached it" if never else
                             verdict(d, better)})
    return rows


METRICS = ("final_eval_ppl", "overfit_ppl", "virtual_time_to_target_s", "time_to_fixed_final_s", "virtual_time_s",
           "rouge_l", "exact_match", "bytes_up")


def method_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every method's mean +- 95% CI per partition (final ppl, overfitting, time to target, ROUGE-L, bytes)."""
    out = []
    for part, res in results.items():
        for m in CLAIMED:
            row = {"data": part.removeprefix("quality_"), "method": m, "target_ppl": res["target_ppl"]}
            for key in METRICS:
                s = stat(res, m, key)
                row[key], row[f"{key}_ci95"] = s["mean"], s["ci95"]
            row["not_reached"] = sum(r[m]["virtual_time_to_target_s"] is None for r in res["runs"].values())
            out.append(row)
        for m, b in res["baselines"].items():  # one seed: no interval
            out.append({"data": part.removeprefix("quality_"), "method": m, "target_ppl": res["target_ppl"],
                        **{key: b.get(key) for key in METRICS},
                        "not_reached": int(b["virtual_time_to_target_s"] is None)})
    return out


def tables(out: Path, rounds: int, datasets: list[str]) -> list[dict[str, Any]]:
    """Table I (fixed cut 1/2/4/8, r_cut = r) and Table II (cut 2, r_cut 1..16) on each dataset, seed 0, IID."""
    rows = []
    for data in datasets:
        fixed = [f"data.path={DATASETS[data]}", "data.partitioner=iid", "split.policy=fixed", "federation.method=split"]
        base = config(out / f"tables_{data}", rounds, fixed)
        peft, family, _, _ = build_model(base)
        cost = cost_model_of(hf_of(peft), family, compute_of(base))
        phone = client_profiles(base.heterogeneity, base.federation.n_clients, base.federation.seed)[0]
        cuts = [c for c in (1, 2, 4, 8) if c <= base.split.cut_max]
        settings = [(c, base.lora.r) for c in cuts] + [(2, k) for k in (1, 2, 4, 8)]
        for cut, r_cut in settings:
            cfg = config(out / f"tables_{data}" / f"cut{cut}_rcut{r_cut}", rounds,
                         [*fixed, f"split.cut={cut}", f"lora.r_cut={r_cut}"])
            s = run_or_reuse(cfg, f"{data} cut {cut} r_cut {r_cut}")
            b = s["bytes"]
            rows.append({"data": data, "table": "I" if r_cut == base.lora.r else "II", "cut": cut, "r_cut": r_cut,
                         "phone_step_s": cost.train_flops(0, cut, base.train.batch_size, base.data.max_length)
                         / (phone.tflops * 1e12),
                         "phone_memory_gb": s["clients"]["0"]["memory_gb_needed"],
                         "activations_MB": (b["activations_up"] + b["grad_activations_down"]) / 1e6,
                         "lora_MB": (b["lora_up"] + b["lora_down"]) / 1e6,
                         "virtual_time_s": s["virtual_time_s"], "final_eval_ppl": s["final_eval_ppl"]})
        del peft
    return rows


SLOWED = ["heterogeneity.tiers=[{name: phone, tflops: 0.0005, memory_gb: 0.35, up_mbps: 5, down_mbps: 20,"
          " latency_ms: 40}, {name: laptop, tflops: 0.0025, memory_gb: 2, up_mbps: 20, down_mbps: 100,"
          " latency_ms: 20}, {name: workstation, tflops: 0.005, memory_gb: 16, up_mbps: 100, down_mbps: 500,"
          " latency_ms: 5}]", "heterogeneity.server_tflops=0.05", "train.batch_size=2"]
"""The experiment's devices 1,000x slower in compute (clock_vs_wall.py's SmolLM2 tiers) so that 2 shared cores can
honor them: a deployment emulating them runs at the federation's pace, not this machine's."""
DEPLOYED = {"splitft": ["split.policy=splitft"], "sfl-fixed": ["split.policy=fixed", "lora.r_cut=16"]}


def deployed(out: Path, rounds: int) -> list[dict[str, Any]]:
    """splitft and sfl-fixed as `splitft launch --emulate` (a server and 5 client processes on loopback, each
    paced to its slowed device), seed 0, IID: wall seconds to the worse final ppl of the two, beside the same
    config's virtual time in simulation."""
    runs = {}
    for m, extra in DEPLOYED.items():
        where, setting = out / "deployed" / m, [*SLOWED, "data.partitioner=iid", *extra]
        if not (where / "summary.json").is_file():
            shutil.rmtree(where, ignore_errors=True)  # an interrupted launch: start it again
            print(f"== deployed {m}: launching into {where}", flush=True)
            cli("launch", "--config", EXPERIMENT, "--clients", "5", "--emulate", *overrides(where, rounds, setting),
                timeout_s=3600)
        simulated = run_or_reuse(config(out / "deployed" / f"{m}_simulated", rounds, setting), f"simulated {m}")
        runs[m] = (json.loads((where / "summary.json").read_text()), simulated)
    target = max(d["final_eval_ppl"] for d, _ in runs.values())
    return [{"method": m, "target_ppl": target, "deployed_final_ppl": d["final_eval_ppl"],
             "wall_time_to_target_s": time_to(d, target, "wall"), "wall_time_s": d["wall_time_s"],
             "simulated_final_ppl": s["final_eval_ppl"], "virtual_time_to_target_s": time_to(s, target),
             "virtual_time_s": s["virtual_time_s"]} for m, (d, s) in runs.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--parts", default="quality,tables,deploy")
    ap.add_argument("--partitions", default="iid,length")
    ap.add_argument("--datasets", default=",".join(DATASETS), help="of the tables part")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--table-rounds", type=int, default=10)
    ap.add_argument("--generate", type=int, default=16)
    ap.add_argument("--deploy-rounds", type=int, default=6, help="of the deploy part")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench" / "paper_claims")
    args = ap.parse_args()
    global MODEL
    MODEL = args.model
    parts, seeds = args.parts.split(","), parse_seeds(args.seeds)
    results = {}
    if "quality" in parts:
        for p in args.partitions.split(","):
            results[f"quality_{p}"] = quality(args.out, p, seeds, args.rounds, args.generate)
    sweep = tables(args.out, args.table_rounds, args.datasets.split(",")) if "tables" in parts else []
    deploy = deployed(args.out, args.deploy_rounds) if "deploy" in parts else []
    if deploy:
        print(table(deploy, list(deploy[0])), flush=True)
    every = parts == ["quality", "tables", "deploy"] and args.partitions == "iid,length"
    if not every or args.datasets != ",".join(DATASETS):
        print("runs done; the results are written by a call with every part and partition", flush=True)
        return
    methods = method_rows(results)
    print(table(methods, list(methods[0])) + "\n\n" + table(sweep, list(sweep[0])) + "\n", flush=True)
    path = record(f"paper_claims_{MODEL}", {"seeds": seeds, "rounds": args.rounds, "table_rounds": args.table_rounds,
                                           "generate": args.generate, "config": "configs/experiment.yaml",
                                           "overrides": COMMON, "partitions": PARTITIONS,
                                           "deploy_rounds": args.deploy_rounds, "deployed_devices": SLOWED},
                  claims(results), ["claim", "data", "method", "sfl_fixed", "diff", "ci95", "n", "verdict"])
    full = json.loads(path.read_text())
    full.update(methods=methods, tables=sweep, deployed=deploy, curves={p: r["curves"] for p, r in results.items()})
    path.write_text(json.dumps(full, indent=2) + "\n")


if __name__ == "__main__":
    main()
