"""Codecs at the cut: bytes per step, held-out perplexity, answers and the federation's round time, per codec pair.

    python benchmarks/codecs.py [--model smollm2|tiny] [--pairs UP/DOWN[+CODER],...] [--generate N]
Each pair trains the default config (configs/default.yaml: 3 clients, a phone, a laptop and a workstation) with
split.policy=fixed (cut 2 for all, so only what crosses the cut differs) from the same seed; UP is
codec.up (activations), DOWN codec.down (grad_activations), CODER codec.entropy. Bytes
are the transport's counts (compressed sizes under a coder); eval ppl is measured through the same codecs (eval
requests cross the cut too); ROUGE-L and exact match are `splitft evaluate --generate N` on the exported adapter
(the first N held-out prompts, greedy); virtual time is the default federation's (the phone's 10 Mbit/s uplink).
`auto` rows let the policy pick each client's codec up (codec.max_ppl_cost=0.01).
Writes benchmarks/results/codecs_<model>.json.
"""

from __future__ import annotations

import argparse
import shutil

from _common import MODELS, ROOT, record

from splitft.config import load_config
from splitft.evaluate import run_answers
from splitft.records import read_records
from splitft.sim.runner import run_simulation
from splitft.transport.base import SCALARS_NBYTES

PAIRS = ("none/none,none/none+zstd,fp16/fp16,bf16/bf16,int8_token/int8_token,int8_channel/int8_channel,"
         "int4_token/int8_token,int4_group/int8_token,int4_group/bf16,int4_group/int8_token+zstd,"
         "int4_group/int8_token+lz4,int4_group/int4_group,auto/int8_token+zstd")


def overrides(pair: str) -> list[str]:
    """UP/DOWN[+CODER] -> the transport settings (a 4-bit DOWN allows lossy gradients: measured, not advised)."""
    codecs, _, coder = pair.partition("+")
    up, down = codecs.split("/")
    lossy = ["codec.allow_lossy_grad=true"] if down.startswith("int4") else []
    return [f"codec.up={up}", f"codec.down={down}", f"codec.entropy={coder or 'none'}",
            *lossy]


def run_pair(model: str, pair: str, generate: int) -> dict:
    out = ROOT / "out" / "bench" / "codecs" / model / pair.replace("/", "-").replace("+", "-")
    shutil.rmtree(out, ignore_errors=True)  # our own scratch runs
    same_cuts = ["split.policy=fixed", "split.cut_max=0"]  # every pair's run has the same cuts
    cfg = load_config(str(ROOT / "configs" / "default.yaml"),
                      [f"model.source={MODELS[model]}", *same_cuts, *overrides(pair), "metrics.progress=false",
                       "metrics.checkpoint_every=0", f"metrics.out_dir={out}"])
    print(f"== {pair}", flush=True)
    s = run_simulation(cfg)
    records = read_records(out / "metrics.jsonl")
    steps = sum(1 for r in records if r["kind"] == "step")
    b, rounds = s["bytes"], s["rounds"]
    chosen = [r.get("codecs") for r in records if r["kind"] == "cut_decision"]
    row = {"pair": pair, "activations_up_KB_per_step": b["activations_up"] / steps / 1e3,
           "grad_down_KB_per_step": (b["grad_activations_down"] - SCALARS_NBYTES * steps) / steps / 1e3,
           "initial_eval_ppl": s["initial_eval_ppl"], "final_eval_ppl": s["final_eval_ppl"],
           "virtual_s_per_round": s["virtual_time_s"] / rounds, "wall_time_s": s["wall_time_s"], "steps": steps,
           "codecs_chosen": chosen[-1] if chosen and chosen[-1] else None}
    if generate:
        scores = run_answers(out, generate, max_new_tokens=64)
        row.update(rouge_l=scores["rouge_l"], exact_match=scores["exact_match"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--pairs", default=PAIRS, help="comma-separated UP/DOWN[+CODER]")
    ap.add_argument("--generate", type=int, default=16, help="held-out prompts answered per run (0: none)")
    args = ap.parse_args()
    rows = [run_pair(args.model, p, args.generate) for p in args.pairs.split(",")]
    base = next((r for r in rows if r["pair"] == "none/none"), rows[0])
    fp32 = base["activations_up_KB_per_step"]  # float32 activations; grads are the same (B, T, H)
    for r in rows:
        r["up_vs_fp32"] = r["activations_up_KB_per_step"] / fp32
        r["step_vs_fp32"] = (r["activations_up_KB_per_step"] + r["grad_down_KB_per_step"]) / (2 * fp32)
        r["final_ppl_vs_none"] = r["final_eval_ppl"] / base["final_eval_ppl"]
        r["round_speedup"] = base["virtual_s_per_round"] / r["virtual_s_per_round"]
    record(f"codecs_{args.model}", {"config": "configs/default.yaml", "model": MODELS[args.model],
                                    "overrides": ["split.policy=fixed", "split.cut_max=0"],
                                    "generate": args.generate, "max_new_tokens": 64,
                                    "grad_down_excludes": f"{SCALARS_NBYTES}-byte loss scalars"},
           rows, ["pair", "activations_up_KB_per_step", "grad_down_KB_per_step", "up_vs_fp32", "step_vs_fp32",
                  "initial_eval_ppl", "final_eval_ppl", "final_ppl_vs_none", "rouge_l", "exact_match",
                  "virtual_s_per_round", "round_speedup", "wall_time_s"])


if __name__ == "__main__":
    main()
