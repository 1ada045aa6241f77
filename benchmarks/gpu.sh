#!/usr/bin/env bash
# The precision and party-memory benchmarks on a CUDA machine, as one script that ends within 10 minutes:
# random-init shapes (no model file, no data download; speed and memory do not depend on the weights' values).
# Writes benchmarks/results/precision_random_<shape>_gpu.json and party_memory_random_<shape>_gpu.json (copied
# to $OUT when set). Such a machine needs torch, transformers, peft, accelerate, grpcio, pyyaml, safetensors,
# numpy and tqdm (an H200 image of this workplace has them); this package is used from the checkout, not
# installed.
#   bash benchmarks/gpu.sh
# Not yet run: no session so far was lent a GPU (see the README's "Precision and memory").
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export SPLITFT_CACHE_DIR="${SPLITFT_CACHE_DIR:-/tmp/splitft-cache}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# B x T = 16 x 512 tokens per step: enough work per call for a GPU (B=4 x 128 is launch-bound there)
for shape in smollm2-135m llama-1b; do
  timeout 180 python3 benchmarks/precision.py --model "random:$shape" --device cuda --steps 10 --batch 16 --seq 512
done
timeout 240 python3 benchmarks/party_memory.py --model random:llama-1b --device cuda --cuts 1,4
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*_gpu.json "$OUT"/; fi
