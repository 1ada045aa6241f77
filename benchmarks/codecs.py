"""Activation codecs at the cut: bytes per step and held-out perplexity after the same training, per codec.

    python benchmarks/codecs.py [--model smollm2|tiny] [--codecs none,fp16,bf16,int8_token,int8_channel]
Each codec trains the default config (configs/default.yaml, split.policy=fixed so every run has the same cuts)
from the same seed; only what crosses the cut differs. Bytes are the transport's counts of the encoded
activations (up) and grad_activations (down); eval ppl is measured through the same codec (eval requests cross
the cut too). Writes benchmarks/results/codecs_<model>.json.
"""

from __future__ import annotations

import argparse
import shutil

from _common import MODELS, ROOT, record

from splitft.config import load_config
from splitft.metrics import read_metrics
from splitft.sim.runner import run_simulation
from splitft.transport.base import SCALARS_NBYTES
from splitft.transport.compress import CODECS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--codecs", default=",".join(CODECS))
    args = ap.parse_args()
    same_cuts = ["split.policy=fixed", "split.cut_max=0"]  # every codec's run has the same cuts
    rows = []
    for name in args.codecs.split(","):
        out = ROOT / "out" / "bench" / "codecs" / args.model / name
        shutil.rmtree(out, ignore_errors=True)  # our own scratch runs
        cfg = load_config(str(ROOT / "configs" / "default.yaml"),
                          [f"model.source={MODELS[args.model]}", *same_cuts, f"transport.codec={name}",
                           "metrics.progress=false", "metrics.checkpoint_every=0", f"metrics.out_dir={out}"])
        print(f"== codec {name}", flush=True)
        s = run_simulation(cfg)
        steps = sum(1 for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "step")
        b = s["bytes"]
        rows.append({"codec": name, "activations_up_KB_per_step": b["activations_up"] / steps / 1e3,
                     "grad_down_KB_per_step": (b["grad_activations_down"] - SCALARS_NBYTES * steps) / steps / 1e3,
                     "initial_eval_ppl": s["initial_eval_ppl"], "final_eval_ppl": s["final_eval_ppl"],
                     "wall_time_s": s["wall_time_s"], "steps": steps})
    base = next((r for r in rows if r["codec"] == "none"), rows[0])
    for r in rows:
        r["bytes_vs_none"] = r["activations_up_KB_per_step"] / base["activations_up_KB_per_step"]
        r["final_ppl_vs_none"] = r["final_eval_ppl"] / base["final_eval_ppl"]
    record(f"codecs_{args.model}", {"config": "configs/default.yaml", "model": MODELS[args.model],
                                    "overrides": same_cuts,
                                    "grad_down_excludes": f"{SCALARS_NBYTES}-byte loss scalars"},
           rows, ["codec", "activations_up_KB_per_step", "grad_down_KB_per_step", "bytes_vs_none",
                  "initial_eval_ppl", "final_eval_ppl", "final_ppl_vs_none", "wall_time_s"])


if __name__ == "__main__":
    main()
