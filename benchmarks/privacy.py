"""The privacy/quality frontier on SmolLM2: what a curious server recovers at each cut and defense (`splitft
privacy`), and what each defense costs in eval ppl over the default run length.

    python benchmarks/privacy.py [--model smollm2|tiny] [--cuts 1,2,4,8] [--noise 0,1] [--tails 1,4]
                                 [--defenses none,keep=0.5,keep=0.25,clip=1+noise=3] [--samples 8]
Runs `splitft privacy --config configs/default.yaml split.policy=fixed ... --ppl-cost --json` (every ppl cost at
the same fixed cut 2, as benchmarks/label_inference.py; training runs under
out/bench/privacy/<model>/privacy/, reused when finished) and writes its object, plus the machine, to
benchmarks/results/privacy_<model>.json (`inversion`: {cut, attack, noise, recovery, ppl_cost}; `labels_u`: {tail,
defense, attack, recovery, ppl_cost}) and the frontier to benchmarks/results/privacy_<model>.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

from _common import MODELS, RESULTS, ROOT, machine, table


def frontier_png(result: dict, path) -> None:
    """Left: token recovery per cut (best attack) with and without activation noise. Right: label recovery (best
    gradient attack) against ppl cost per tail and defense, the goal's corner shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (inv, lab) = plt.subplots(1, 2, figsize=(11, 4.2))
    for noise in sorted({r["noise"] for r in result["inversion"]}):
        best = {}
        for r in result["inversion"]:
            if r["noise"] == noise:
                best[r["cut"]] = max(best.get(r["cut"], 0), r["recovery"])
        cost = next(r.get("ppl_cost", 0) for r in result["inversion"] if r["noise"] == noise)
        inv.plot(sorted(best), [best[c] for c in sorted(best)], marker="o",
                 label=f"privacy.noise={noise:g} (ppl {cost:+.1%})")
    inv.set(xlabel="cut (client blocks)", ylabel="tokens recovered (best attack)", ylim=(0, 1),
            title="inversion of the activations")
    inv.legend()
    lab.axvspan(-1, 0.03, ymax=0.25, color="green", alpha=0.1, label="goal: <= 25% at <= 3%")
    for tail in sorted({r["tail"] for r in result["labels_u"]}):
        pts = {}
        for r in result["labels_u"]:
            if r["tail"] == tail and r["attack"] != "prior":
                pts[r["defense"]] = (r.get("ppl_cost", 0), max(pts.get(r["defense"], (0, 0))[1], r["recovery"]))
        xs, ys = zip(*pts.values(), strict=True)
        lab.scatter(xs, ys, label=f"tail {tail}")
        for name, (x, y) in pts.items():
            lab.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    prior = max(r["recovery"] for r in result["labels_u"] if r["attack"] == "prior")
    lab.axhline(prior, color="gray", ls="--", lw=1, label=f"server's own prediction ({prior:.0%})")
    lab.set(xlabel="eval ppl cost (relative)", ylabel="labels recovered (best gradient attack)", ylim=(0, 1),
            xlim=(-0.02, max(0.1, max(r.get("ppl_cost", 0) for r in result["labels_u"]) + 0.03)),
            title="U-shaped split: labels from grad_hidden")
    lab.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--cuts", default="1,2,4,8")
    ap.add_argument("--noise", default="0,1")
    ap.add_argument("--tails", default="1,4")
    ap.add_argument("--defenses", default="none,keep=0.5,keep=0.25,clip=1+noise=3")
    ap.add_argument("--samples", default="8")
    args = ap.parse_args()
    out = ROOT / "out" / "bench" / "privacy" / args.model
    cmd = [sys.executable, "-m", "splitft.cli", "privacy", "--config", "configs/default.yaml",
           f"model.source={MODELS[args.model]}", "metrics.progress=false", f"metrics.out_dir={out}",
           "split.policy=fixed", "split.cut_max=0", "metrics.checkpoint_every=0",
           "--cuts", args.cuts, "--noise", args.noise, "--tails", args.tails, "--defenses", args.defenses,
           "--samples", args.samples, "--ppl-cost", "--json"]
    if args.model == "tiny":  # 4 blocks: cuts up to 3; a short run
        cmd[7:7] = ["split.cut=1", "data.max_samples=200", "federation.rounds=1"]
    started = datetime.datetime.now()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if res.returncode:
        raise SystemExit(f"splitft privacy failed:\n{res.stderr[-3000:]}")
    result = json.loads(res.stdout)
    result.update(benchmark=f"privacy_{args.model}", date=started.isoformat(timespec="seconds"), machine=machine(),
                  command=" ".join(cmd[2:]), wall_s=round((datetime.datetime.now() - started).total_seconds()))
    print(table(result["inversion"], ["cut", "attack", "noise", "recovery", "ppl_cost"]))
    print(table(result["labels_u"], ["tail", "defense", "attack", "recovery", "labelled_rows_acc",
                                     "final_eval_ppl", "ppl_cost"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"privacy_{args.model}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    frontier_png(result, RESULTS / f"privacy_{args.model}.png")
    print(f"wrote {path.relative_to(ROOT)} and its .png", flush=True)


if __name__ == "__main__":
    main()
