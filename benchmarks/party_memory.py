"""Peak memory of each deployed party, against the estimate the cut policy plans with: a client at cuts 1, 2, 4, 8
and the server, with the frozen weights stored in float32 and in bfloat16, with and without activation
checkpointing.

    python benchmarks/party_memory.py [--model smollm2|tiny|random:<shape>] [--cuts 1,2,4,8] [--device cpu|cuda]
Each party runs in its own process, as a deployment runs it: it opens the model file (`build.open_model`), reads
only its blocks (a client: embeddings + blocks [0, cut), after loading its tokenizer, tokenizing and letting the
tokenizer go as `splitft client` does; the server: blocks [cut_min, L), final norm, head and, the head being
tied, the embedding matrix; it never loads a tokenizer), and trains one step at the config's batch shape
(B x data.max_length tokens: what the estimate sizes). Not counted: a client's data (reading its file through
`datasets` imports ~86 MB more; its tokenized samples). Storage float32 computes in float32, bfloat16 in bfloat16
(autocast); the loss runs the head train.loss_chunk_tokens at a time (the config's). Also measured: the import
floor (the same imports as a party: python, torch, transformers, peft, splitft, grpc; no model), and the whole
model as `build.build_model` loads it. Estimates: a client's `CostModel.memory_gb` (base + cut x block, what the policy
uses), the server's `CostModel.server_gb`; they count model bytes, not the import floor, so the check is
(peak - floor) / estimate. On CUDA the peak allocated memory is the measure (and RSS is reported beside it).
Writes benchmarks/results/party_memory_<model>[_gpu].json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import MODELS, ROOT, record

CHILD = r"""
import json, sys, torch
import splitft.build, splitft.deploy.join  # the imports of a deployed party (grpc included)
from splitft.measure import peak_memory
what, source, cut, config, storage, ckpt, device = sys.argv[1:8]
cut = int(cut)
out = {"party": what, "cut": cut, "storage": storage, "checkpointing": ckpt == "1"}
if what == "floor":  # what every party imports before it holds anything
    import accelerate, peft, transformers  # noqa: F401
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM  # noqa: F401
    print(json.dumps({**out, **peak_memory()})); sys.exit()
from splitft.build import build_model, compute_of, open_model, split_server
from splitft.cuts import cost_model_of, cut_bounds
from splitft.config import load_config
from splitft.deploy.join import Holder
compute = "float32" if storage == "float32" else "bfloat16"
cfg = load_config(config, [f"model.source={source}", f"model.device={device}", "split.cut_max=0", "split.cut=1",
                           f"model.dtype={storage}", f"train.compute_dtype={compute}",
                           f"train.activation_checkpointing={ckpt == '1'}"])
b, t = cfg.train.batch_size, cfg.data.max_length
dev = torch.device(device)
if what == "whole":
    build_model(cfg)
    print(json.dumps({**out, **peak_memory()})); sys.exit()
pm = open_model(cfg)
if what == "client":  # as `splitft client` does: tokenize its data, let the tokenizer go, then read its blocks
    pm.tokenizer("What light through yonder window breaks?")
    pm.drop_tokenizer()
ids = torch.randint(0, 250, (b, t), device=dev); mask = torch.ones_like(ids)
labels = ids.clone(); labels[:, : t // 2] = -100  # a prompt half the sample, as instruction data has
cost = cost_model_of(pm.peft.base_model.model, pm.family, pm.compute)
bounds = cut_bounds(cfg, cost, pm.n_layer)
if what == "client":
    part = Holder(pm, None).part(cut)
    part.train()
    acts = part.forward(ids, mask)
    acts.backward(torch.ones_like(acts))
    out["estimate_gb"] = bounds.base_gb + cut * bounds.block_gb
else:
    pm.hold(pm.server_paths(cut))
    server = split_server(cfg, pm.peft, pm.family, cut, pm.compute)
    h = pm.peft.base_model.model.config.hidden_size
    acts = torch.randn(b, t, h, device=dev, dtype=pm.dtype, requires_grad=True)
    server.part.train()
    stats = server.part.loss(acts, mask, cut, labels)
    (stats.loss_sum / stats.n_tokens).backward()
    out["estimate_gb"] = cost.server_gb(cut, pm.n_layer, b, t)
print(json.dumps({**out, "held_gb": pm.held_gb(), **peak_memory()}))
"""


def run(what: str, source: str, cut: int, config: str, storage: str, ckpt: bool, device: str) -> dict:
    env = {"PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           **{k: v for k, v in os.environ.items() if k.startswith(("SPLITFT_", "CUDA", "HOME", "XDG"))}}
    res = subprocess.run([sys.executable, "-c", CHILD, what, source, str(cut), config, storage, str(int(ckpt)),
                          device], cwd=ROOT, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(res.stderr)
    row = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 | tiny | random:<shape> (a model.source)")
    ap.add_argument("--cuts", default="1,2,4,8")
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    args = ap.parse_args()
    source = MODELS.get(args.model, args.model)
    rows = [run("floor", source, 0, args.config, "float32", False, args.device),
            run("whole", source, 0, args.config, "float32", False, args.device),
            run("whole", source, 0, args.config, "bfloat16", False, args.device)]
    for storage in ("float32", "bfloat16"):
        for ckpt in (False, True):
            rows += [run("client", source, int(c), args.config, storage, ckpt, args.device)
                     for c in args.cuts.split(",")]
            rows.append(run("server", source, 1, args.config, storage, ckpt, args.device))
    floor = rows[0]["peak_rss_gb"]
    for r in rows:
        peak = r.get("peak_cuda_gb") if args.device == "cuda" else r["peak_rss_gb"] - floor
        r["above_floor_gb"] = round(peak, 3) if peak is not None else None
        if "estimate_gb" in r and peak:
            r["measured_over_estimate"] = round(peak / r["estimate_gb"], 2)
        for k in ("peak_rss_gb", "held_gb", "estimate_gb"):
            if k in r:
                r[k] = round(r[k], 3)
    tag = args.model.replace(":", "_") + ("_gpu" if args.device == "cuda" else "")
    record(f"party_memory_{tag}", {"source": source, "config": args.config, "cuts": args.cuts,
                                   "device": args.device, "measure": "peak CUDA allocated" if args.device == "cuda"
                                   else "peak RSS minus the import floor"}, rows,
           ["party", "cut", "storage", "checkpointing", "held_gb", "estimate_gb", "peak_rss_gb", "above_floor_gb",
            "measured_over_estimate"])


if __name__ == "__main__":
    main()
