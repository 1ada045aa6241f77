"""Mixed precision: split-step tokens/s per compute and storage dtype on the same batches, and the default run's
final eval ppl at float32 and at `auto`.

    python benchmarks/precision.py [--model smollm2|tiny|random:<shape>] [--device cpu|cuda] [--steps 6]
                                   [--batch 4 --seq 128] [--no-runs] [--peak-tflops 989]
Part 1 (step): one client at cut 2 and the server in one process, the real split step (`SplitClient.train_step`
over the in-process transport: client forward, server forward + loss + backward + AdamW, client backward +
AdamW), on the same batches for every row (seeded tokens, exactly B x T each, half of them a prompt without
loss, as instruction data has): float32; bfloat16 compute with float32 weights;
bfloat16 compute and weights; float16 (CUDA only: refused on a CPU). tokens/s over `--steps` steps after two
warm-up steps, and the median step; on CUDA, MFU = the steps' model FLOPs (`CostModel.train_flops`: client +
server + head, all B x T tokens) / seconds / --peak-tflops (H200: 989).
Part 2 (runs, CPU only): `splitft simulate --config configs/default.yaml` at float32 and at the default `auto`
(what auto picked here is recorded): final eval ppl and wall time. Goal on a CPU with bf16 instructions: >= 1.6x
tokens/s with the final ppl within 1% of float32's; on a CPU without them auto is float32 (no slower by
construction). Writes benchmarks/results/precision_<model>[_gpu].json with the machine's CPU flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import MODELS, ROOT, cli, record

from splitft.build import build_model, client_part, compute_of, split_client_with, split_server
from splitft.config import load_config
from splitft.cuts import cost_model_of
from splitft.data.datasets import BatchStream, Example
from splitft.loss import IGNORE
from splitft.precision import EMULATED_BF16, bf16_support
from splitft.transport.inproc import InProcTransport

ROWS = [("float32", "float32"), ("bfloat16", "float32"), ("bfloat16", "bfloat16"), ("float16", "float16")]
"""(compute, storage) per row."""


def batches(vocab: int, batch: int, seq: int, n: int) -> list[Example]:
    """n x batch samples of exactly `seq` tokens, the first half a prompt (no loss), seeded: every row trains on
    the same tokens, and every step is B x T tokens (speed does not depend on which tokens)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n * batch):
        ids = torch.randint(0, min(vocab, 256), (seq,), generator=g).tolist()
        out.append(Example(ids, [IGNORE] * (seq // 2) + ids[seq // 2:]))
    return out


def step_row(source: str, compute_name: str, storage: str, args: argparse.Namespace) -> dict:
    cfg = load_config(ROOT / "configs" / "default.yaml", [
        f"model.source={source}", f"model.device={args.device}", f"train.compute_dtype={compute_name}",
        f"model.dtype={storage}", f"train.batch_size={args.batch}", f"data.max_length={args.seq}",
        "federation.n_clients=1", "split.policy=fixed", "split.cut=2", "split.cut_max=0",
        "metrics.out_dir=/tmp/unused"])
    peft, family, _, _ = build_model(cfg)
    compute = compute_of(cfg)
    server = split_server(cfg, peft, family, 2, compute)
    data = batches(peft.base_model.model.config.vocab_size, args.batch, args.seq, args.steps + 2)
    client = split_client_with(cfg, 0, client_part(cfg, peft, family, 2, compute), BatchStream(data, args.batch, 0, 0))
    transport = InProcTransport(server)
    cost = cost_model_of(peft.base_model.model, family, compute)
    seconds, tokens, flops = [], [], 0.0
    for s in range(args.steps + 2):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        client.train_step(transport, 0, s)
        if args.device == "cuda":
            torch.cuda.synchronize()
        if s >= 2:  # two warm-up steps; every row then times the same batches (B x their padded length)
            b, t = client.last_shape
            seconds.append(time.perf_counter() - start)
            tokens.append(b * t)
            flops += cost.train_flops(0, 2, b, t) + cost.train_flops(2, cost.n_layer, b, t, head=True)
    row = {"compute": compute_name, "storage": storage, "why": compute.precision.why, "batch": args.batch,
           "step_s": round(statistics.median(seconds), 4), "tokens_per_s": round(sum(tokens) / sum(seconds), 1)}
    if args.device == "cuda":
        row["mfu"] = round(flops / sum(seconds) / (args.peak_tflops * 1e12), 4)
        row["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
        torch.cuda.reset_peak_memory_stats()
    return row


def run_row(label: str, overrides: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="splitft-precision-")) / label
    start = time.perf_counter()
    cli("simulate", "--config", str(ROOT / "configs" / "default.yaml"), *overrides, f"metrics.out_dir={out}",
        "metrics.progress=false")
    summary = json.loads((out / "summary.json").read_text())
    setup = next(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["kind"] == "setup")
    return {"run": label, **setup["precision"], "final_eval_ppl": summary["final_eval_ppl"],
            "eval_ppl_by_round": summary["eval_ppl_by_round"], "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_gb": summary["peak_memory"]["peak_rss_gb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 | tiny | random:<shape> (a model.source)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--no-runs", action="store_true", help="skip part 2 (the default run at fp32 and auto)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the accelerator's dense bf16 peak, for MFU")
    args = ap.parse_args()
    source = MODELS.get(args.model, args.model)
    native, why = bf16_support(torch.device(args.device))
    os.environ[EMULATED_BF16] = "1"  # measure bf16 on any machine; `native` records whether it is emulated here
    rows = [step_row(source, c, s, args) for c, s in ROWS if c != "float16" or args.device == "cuda"]
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup"] = round(r["tokens_per_s"] / base, 2)
        print(json.dumps(r), flush=True)
    runs = []
    if not args.no_runs and args.device == "cpu":
        runs = [run_row("float32", ["train.compute_dtype=float32", "model.dtype=float32"]), run_row("auto", [])]
        runs[1]["ppl_vs_float32"] = round(runs[1]["final_eval_ppl"] / runs[0]["final_eval_ppl"] - 1, 4)
        for r in runs:
            print(json.dumps(r), flush=True)
    tag = args.model.replace(":", "_") + ("_gpu" if args.device == "cuda" else "")
    record(f"precision_{tag}", {"source": source, "device": args.device, "steps": args.steps,
                                "bf16_native": native, "bf16_why": why, "runs": runs}, rows,
           ["compute", "storage", "batch", "step_s", "tokens_per_s", "speedup", "mfu", "peak_cuda_gb"])


if __name__ == "__main__":
    main()
