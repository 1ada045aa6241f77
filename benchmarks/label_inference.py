"""How much of the labels a curious server recovers from grad_hidden under split.shape=u.

    python benchmarks/label_inference.py [--model smollm2|tiny] [--tails 1,2,4,8] [--defenses 0/0,1/1] [--steps 6]
                                         [--rounds 3]
A U-shaped split keeps the labels on the client, but every training step sends the server grad_hidden (B, T, H),
the gradient of the client's loss w.r.t. the hidden states the server sent. The server knows the pretrained
weights (they are public). The attack is one matrix product: for position t it guesses the next token as
    argmax_v  -<grad_hidden[t], W_head[v]>
since the loss gradient at the head is softmax - onehot(label) and the residual stream carries it down
through the tail nearly unchanged. Baseline: what the server predicts without any gradient, running the public
tail and head on the hidden states it holds (the model's own argmax). Accuracy is top-1 over label tokens, on
client 0's first `--steps` training batches of configs/default.yaml (LoRA at its initial value: the attack
uses no adapter). `--defenses CLIP/NOISE,...`: privacy.grad_clip and privacy.grad_noise, applied by the client
before grad_hidden leaves it (what the server reads is what it receives). With `--rounds R` each (tail, defense)
also trains the default federation under U for R rounds, fixed cut 2, and reports its final eval ppl and the
relative change against no defense at that tail (`ppl_cost`). Writes
benchmarks/results/label_inference_<model>[_<tag>].json; its rows are {tail, defense, recovery, ppl_cost, ...}.
"""

from __future__ import annotations

import argparse
import shutil

from _common import MODELS, ROOT, record

from splitft.build import build_setup, load
from splitft.sim.privacy import attack_labels
from splitft.sim.runner import run_simulation


def _overrides(model: str, tail: int, defense: str, out) -> list[str]:
    clip, noise = defense.split("/")
    return [f"model.source={MODELS[model]}", "split.shape=u", f"split.tail={tail}", "split.policy=fixed",
            "split.cut_max=0", f"privacy.grad_clip={clip}", f"privacy.grad_noise={noise}", "metrics.progress=false",
            "metrics.checkpoint_every=0", f"metrics.out_dir={out}"]


def one(model: str, tail: int, defense: str, steps: int) -> dict:
    out = ROOT / "out" / "bench" / "label_inference"
    cfg = load(str(ROOT / "configs" / "default.yaml"), _overrides(model, tail, defense, out))
    setup = build_setup(cfg)
    score = attack_labels(setup, cfg, steps)  # the argmax attack, and the model's own prediction ("prior")
    return {"tail": tail, "defense": defense, "label_tokens": score.tokens, "recovery": score.recovery("argmax"),
            "model_argmax_top1": score.recovery("prior")}


def final_ppl(model: str, tail: int, defense: str, rounds: int) -> float:
    out = ROOT / "out" / "bench" / "label_inference" / model / f"train_{tail}_{defense.replace('/', '-')}"
    shutil.rmtree(out, ignore_errors=True)  # our own scratch runs
    cfg = load(str(ROOT / "configs" / "default.yaml"), [*_overrides(model, tail, defense, out),
                                                         f"federation.rounds={rounds}"])
    return run_simulation(cfg)["final_eval_ppl"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--tails", default="1,2,4,8")
    ap.add_argument("--defenses", default="0/0", help="privacy.grad_clip/privacy.grad_noise pairs")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=0, help="train R rounds per row for its ppl cost (0: no)")
    ap.add_argument("--tag", default="", help="results file suffix: label_inference_<model>_<tag>.json")
    args = ap.parse_args()
    rows = []
    for tail in map(int, args.tails.split(",")):
        for defense in args.defenses.split(","):
            rows.append(one(args.model, tail, defense, args.steps))
            if args.rounds:
                rows[-1]["final_eval_ppl"] = final_ppl(args.model, tail, defense, args.rounds)
                base = next(r for r in rows if r["tail"] == tail)  # the first defense listed: 0/0
                rows[-1]["ppl_cost"] = rows[-1]["final_eval_ppl"] / base["final_eval_ppl"] - 1
            print(rows[-1], flush=True)
    name = f"label_inference_{args.model}" + (f"_{args.tag}" if args.tag else "")
    record(name, {"config": "configs/default.yaml", "model": MODELS[args.model], "steps": args.steps, "client": 0,
                  "rounds": args.rounds, "defense": "privacy.grad_clip/privacy.grad_noise",
                  "attack": "argmax_v -<grad_hidden[t], W_head[v]>"},
           rows, ["tail", "defense", "label_tokens", "recovery", "model_argmax_top1", "final_eval_ppl", "ppl_cost"])


if __name__ == "__main__":
    main()
