"""Peak memory of each deployed party: a client at cuts 1, 2, 4, 8 and the server, against the cut policy's estimate.

    python benchmarks/party_memory.py [--model smollm2|tiny] [--cuts 1,2,4,8]
Each party runs in its own process, as a deployment runs it: it opens the model file (`build.open_model`), reads
only its blocks (a client: embeddings + blocks [0, cut); the server: blocks [cut_min, L), final norm, head and,
the head being tied, the embedding matrix), and trains one step at the config's batch shape (B x data.max_length
tokens: what the estimate sizes). Also measured: the import floor (python + torch + transformers + peft, no
model), and the whole model loaded as every process loaded it before (`build.build_model`). The estimate is
`CostModel.memory_gb` (base + cut x block), which the cut policy plans with; it counts model bytes only, not the
runtime floor. Writes benchmarks/results/party_memory_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import MODELS, ROOT, record

CHILD = r"""
import json, sys, resource, torch
from splitft import lora
from splitft.build import open_model, build_model, cost_model_of, cut_bounds, split_server
from splitft.config import load_config
from splitft.deploy.join import Holder
from splitft.loss import token_loss
what, source, cut = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = load_config(str(sys.argv[4]), [f"model.source={source}", "model.device=cpu", "split.cut_max=0", "split.cut=1"])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
out = {"party": what, "cut": cut}
if what == "floor":
    import transformers, peft  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401
    print(json.dumps({**out, "peak_rss_gb": rss()})); sys.exit()
b, t = cfg.train.batch_size, cfg.data.max_length
ids = torch.randint(0, 250, (b, t)); mask = torch.ones_like(ids)
if what == "whole":
    peft_model = build_model(cfg)[0]
    print(json.dumps({**out, "peak_rss_gb": rss()})); sys.exit()
pm = open_model(cfg)
cost = cost_model_of(pm.peft.base_model.model, pm.family, pm.dtype.itemsize)
bounds = cut_bounds(cfg, cost, pm.n_layer)
if what == "client":
    part = Holder(pm, None).part(cut)
    acts = part.forward(ids, mask)
    acts.backward(torch.ones_like(acts))
    out["estimate_gb"] = bounds.base_gb + cut * bounds.block_gb
else:
    pm.hold(pm.server_paths(cut))
    server = split_server(cfg, pm.peft, pm.family, cut)
    h = pm.peft.base_model.model.config.hidden_size
    acts = torch.randn(b, t, h, requires_grad=True)
    token_loss(server.part.forward(acts, mask, cut), ids).loss_sum.backward()
print(json.dumps({**out, "held_gb": pm.held_gb(), "peak_rss_gb": rss()}))
"""


def run(what: str, source: str, cut: int, config: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, what, source, str(cut), config], cwd=ROOT, capture_output=True,
                         text=True, env={"PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    if res.returncode:
        raise SystemExit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--cuts", default="1,2,4,8")
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    args = ap.parse_args()
    source = MODELS[args.model]
    rows = [run("floor", source, 0, args.config), run("whole", source, 0, args.config)]
    rows += [run("client", source, int(c), args.config) for c in args.cuts.split(",")]
    rows.append(run("server", source, 1, args.config))
    floor = rows[0]["peak_rss_gb"]
    for r in rows:
        r["above_floor_gb"] = round(r["peak_rss_gb"] - floor, 3)
        for k in ("peak_rss_gb", "held_gb", "estimate_gb"):
            if k in r:
                r[k] = round(r[k], 3)
        print(json.dumps(r), flush=True)
    record(f"party_memory_{args.model}", {"source": source, "config": args.config, "cuts": args.cuts}, rows,
           ["party", "cut", "held_gb", "estimate_gb", "peak_rss_gb", "above_floor_gb"])


if __name__ == "__main__":
    main()
