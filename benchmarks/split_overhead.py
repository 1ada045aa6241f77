"""Tokens/s of one split training step (client part -> in-process transport -> server part -> back) against
centralized PEFT LoRA training of the same model on the same batches with the same threads.

    python benchmarks/split_overhead.py [--model tiny|smollm2] [--steps 12] [--reps 3]
The split adds no FLOPs (same blocks, same LoRA, lora.r_cut = lora.r so no rank mask), so the ideal ratio
split / centralized is 1.0; what it measures is the cost of the cut itself: detaching and re-attaching the
activations, two optimizers, the transport's byte accounting. Batches are drawn once and replayed to both;
both sides compute as the config says (precision, checkpointing, the loss's chunk).
Writes benchmarks/results/split_overhead_<model>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import MODELS, ROOT, record

from splitft.build import build_setup, split_client, split_server
from splitft.client import LocalClient
from splitft.config import load_config
from splitft.data.datasets import BatchStream
from splitft.model.split import FullPart
from splitft.transport.inproc import InProcTransport


class Replay:
    """A batch stream that replays a fixed list of batches (both sides train on the same tokens)."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b


def _timed(step, n: int) -> float:
    t0 = time.perf_counter()
    for s in range(n):
        step(s)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cut", type=int, default=2)
    args = ap.parse_args()
    overrides = [f"model.source={MODELS[args.model]}", "lora.r_cut=16", "split.policy=fixed", "split.cut_max=0",
                 f"split.cut={args.cut}", "metrics.progress=false"]
    cfg = load_config(str(ROOT / "configs" / "default.yaml"), overrides)
    setup = build_setup(cfg)
    stream = BatchStream(setup.train, cfg.train.batch_size, setup.pad_id, seed=0)
    batches = [stream.next() for _ in range(args.steps)]
    tokens = sum(b["input_ids"].numel() for b in batches)

    server = split_server(cfg, setup.peft, setup.family, args.cut, setup.compute)
    transport = InProcTransport(server)
    split = split_client(setup, 0, args.cut)
    central = LocalClient(0, FullPart(setup.peft, setup.family, setup.compute), Replay(batches), lr=cfg.train.lr)
    split.stream = Replay(batches)
    runs = {"split": lambda s: split.train_step(transport, 0, s),
            "centralized": lambda s: central.train_step(None, 0, s)}
    for step in runs.values():  # warm-up: allocator, kernels, AdamW state
        _timed(step, 2)
    times: dict[str, list[float]] = {n: [] for n in runs}
    for rep in range(args.reps):  # interleaved, so drift (thermal, other load) hits both alike
        for name, step in runs.items():
            times[name].append(_timed(step, args.steps))
            print(f"rep {rep} {name}: {tokens / times[name][-1]:.0f} tokens/s", flush=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    rows = [{"method": n, "tokens_per_s": tokens / med[n], "s_per_step": med[n] / args.steps,
             "ratio_to_centralized": med["centralized"] / med[n]} for n in runs]
    record(f"split_overhead_{args.model}", {"model": cfg.model.source, "steps": args.steps, "reps": args.reps,
                                            "cut": args.cut, "batch_size": cfg.train.batch_size,
                                            "tokens_per_rep": tokens, "device": str(setup.device),
                                            "lora_r": cfg.lora.r, "precision": setup.compute.precision.record()},
           rows, ["method", "tokens_per_s", "s_per_step", "ratio_to_centralized"])


if __name__ == "__main__":
    main()
