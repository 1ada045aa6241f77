"""One server step for many clients: the server's tokens/s with `federation.server_batch` 1 and k, per number of
clients and compute dtype.

    python benchmarks/server_batch.py [--model smollm2|tiny|random:<shape>] [--device cpu|cuda] [--cut 2]
                                      [--clients 1,2,4,8,16] [--k 8] [--dtypes float32,bfloat16]
                                      [--batch 4 --seq 128] [--rounds 2] [--peak-tflops 989]
The real server (`build.split_server`: blocks [cut, L), the head, LoRA, AdamW) serves n clients' requests as a
round does: every client sends one step's activations (B x T x H, seeded values in the storage dtype, half of each
sample a prompt without loss), the server serves them one by one (`SplitServer.step`, server_batch=1) or k at a
time (`step_batch`: one joined forward/backward and one AdamW step). Timed over --rounds rounds after one warm-up
round: server tokens/s (label and prompt tokens alike: what the blocks compute), the median server step, and on
CUDA the MFU (`CostModel.train_flops` of blocks [cut, L) and the head / seconds / --peak-tflops; H200: 989 dense
bf16) and peak memory. The request's host-to-device copy is inside the time, as it is for a deployed server.
`fit` splits the step into `heterogeneity.server_step_s` (paid once per server step) and a per-client part, the
clock's model of a joined step.
Goal on a GPU: >= 4x server tokens/s at 8 clients with k=8 over k=1. On a CPU (2 cores) the blocks' matmuls are
already large at B=4 x 128, so joining gains little: the number is reported as measured.
Writes benchmarks/results/server_batch_<model>[_gpu].json with the machine's CPU flags.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _common import MODELS, ROOT, record

from splitft.build import build_model, compute_of, split_server
from splitft.config import load_config
from splitft.cuts import cost_model_of
from splitft.loss import IGNORE
from splitft.precision import EMULATED_BF16, bf16_support
from splitft.transport.base import ForwardRequest


def server_for(source: str, dtype: str, args: argparse.Namespace):
    cfg = load_config(ROOT / "configs" / "default.yaml", [
        f"model.source={source}", f"model.device={args.device}", f"train.compute_dtype={dtype}", "model.dtype=auto",
        f"train.batch_size={args.batch}", f"data.max_length={args.seq}", "federation.n_clients=1",
        "split.policy=fixed", f"split.cut={args.cut}", "split.cut_max=0", "metrics.out_dir=/tmp/unused"])
    peft, family, _, _ = build_model(cfg)
    compute = compute_of(cfg)
    hf = peft.base_model.model
    return (split_server(cfg, peft, family, args.cut, compute), cost_model_of(hf, family, compute),
            hf.config.hidden_size, compute)


def requests(n: int, hidden: int, dtype: torch.dtype, args: argparse.Namespace, round_: int) -> list[ForwardRequest]:
    """One step of each of n clients (seeded): activations (B, T, H) on the host, as they come off the wire."""
    g = torch.Generator().manual_seed(1000 * round_ + n)
    out = []
    for c in range(n):
        acts = torch.randn(args.batch, args.seq, hidden, generator=g).to(dtype)
        labels = torch.randint(0, 256, (args.batch, args.seq), generator=g, dtype=torch.int32)
        labels[:, :args.seq // 2] = IGNORE
        mask = torch.ones(args.batch, args.seq, dtype=torch.uint8)
        out.append(ForwardRequest(c, round_, 0, args.cut, acts, mask, labels))
    return out


def serve(server, reqs: list[ForwardRequest], k: int, sync) -> list[float]:
    """Serve one round's requests k at a time; the seconds of each server step."""
    seconds = []
    for i in range(0, len(reqs), k):
        start = time.perf_counter()
        if k == 1:
            server.step(reqs[i])
        else:
            outs = server.step_batch(reqs[i:i + k])
            assert not any(isinstance(o, Exception) for o in outs), outs
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def rows_for(source: str, dtype: str, args: argparse.Namespace) -> list[dict]:
    server, cost, hidden, compute = server_for(source, dtype, args)
    storage = compute.precision.storage
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    flops_per_step = cost.train_flops(args.cut, cost.n_layer, args.batch, args.seq, head=True)
    rows = []
    for n in args.clients:
        for k in sorted({1, min(args.k, n)}):
            serve(server, requests(n, hidden, storage, args, 0), k, sync)  # warm-up round
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds = []
            for r in range(1, args.rounds + 1):
                seconds += serve(server, requests(n, hidden, storage, args, r), k, sync)
            total = sum(seconds)
            tokens = args.rounds * n * args.batch * args.seq
            row = {"compute": dtype, "storage": str(storage).removeprefix("torch."), "clients": n,
                   "server_batch": k, "server_steps": len(seconds), "step_s": round(statistics.median(seconds), 4),
                   "tokens_per_s": round(tokens / total, 1)}
            if cuda:
                row["mfu"] = round(args.rounds * n * flops_per_step / total / (args.peak_tflops * 1e12), 4)
                row["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
            rows.append(row)
            print(row, flush=True)
    for r in rows:  # the gain of joining over one-by-one at the same clients and dtype
        base = next(b for b in rows if b["clients"] == r["clients"] and b["server_batch"] == 1)
        r["speedup"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
    return rows


def fit(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per compute dtype, the server step as `heterogeneity.server_step_s` + k x the FLOP-priced part: from one
    client's step t1 and k joined clients' step tk, per_client_step_s = (tk - t1) / (k - 1), server_step_s = t1
    minus it (what every server step costs beside its FLOPs: launches, copies, the optimizer step)."""
    out = {}
    for dtype in dict.fromkeys(r["compute"] for r in rows):
        one = next(r for r in rows if r["compute"] == dtype and r["clients"] == 1 and r["server_batch"] == 1)
        joined = [r for r in rows if r["compute"] == dtype and r["server_batch"] > 1 and r["server_steps"]
                  and r["clients"] == r["server_batch"]]
        if not joined:
            continue
        k_row = max(joined, key=lambda r: r["server_batch"])
        per = (k_row["step_s"] - one["step_s"]) / (k_row["server_batch"] - 1)
        fixed = one["step_s"] - per  # below 0 only by noise: no fixed cost to see (a CPU, compute-bound)
        out[dtype] = {"server_step_s": round(max(fixed, 0.0), 4), "per_client_step_s": round(per, 4),
                      "from_k": k_row["server_batch"], **({"fixed_s_raw": round(fixed, 4)} if fixed < 0 else {})}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 | tiny | random:<shape> (a model.source)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cut", type=int, default=2)
    ap.add_argument("--clients", default="1,2,4,8,16")
    ap.add_argument("--k", type=int, default=8, help="federation.server_batch of the joined rows")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the accelerator's dense bf16 peak, for MFU")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    source = MODELS.get(args.model, args.model)
    native, why = bf16_support(torch.device(args.device))
    os.environ[EMULATED_BF16] = "1"  # measure bf16 on any machine; `native` records whether it is emulated here
    rows = [r for dtype in args.dtypes.split(",") for r in rows_for(source, dtype, args)]
    tag = args.model.replace(":", "_") + ("_gpu" if args.device.startswith("cuda") else "")
    print("fit:", fit(rows))
    record(f"server_batch_{tag}", {"source": source, "device": args.device, "cut": args.cut, "batch": args.batch,
                                   "seq": args.seq, "k": args.k, "rounds": args.rounds, "bf16_native": native,
                                   "bf16_why": why, "fit": fit(rows)}, rows,
           ["compute", "storage", "clients", "server_batch", "server_steps", "step_s", "tokens_per_s", "speedup",
            "mfu", "peak_cuda_gb"])


if __name__ == "__main__":
    main()
