#!/usr/bin/env bash
# The GPU benchmarks as one script that ends within about 8 minutes (10 at its parts' limits): joined server steps (server_batch.py),
# precision and party memory, on random-init shapes (no model file, no data download; speed and memory do not
# depend on the weights' values). Writes benchmarks/results/*_gpu.json (copied to $OUT when set, with the log).
# Such a machine needs torch, transformers, peft, accelerate, grpcio, pyyaml, safetensors, numpy and tqdm (the
# H200 image of this workplace has them); this package is used from the checkout, not installed. A part that
# fails or runs out of its time is logged and the next one runs.
#   bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export SPLITFT_CACHE_DIR="${SPLITFT_CACHE_DIR:-/tmp/splitft-cache}"
LOG="${OUT:-/tmp}/gpu.log"
part() {  # part <seconds> <command...>: run it under a time limit, log its output and exit status
  local limit=$1; shift
  echo "== $* (limit ${limit}s)" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "== exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG"
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" \
  | tee -a "$LOG"
# one client's step is B x T = 4 x 128 tokens (launch-bound on a GPU); 8 of them joined are 4,096 tokens a step
part 150 python3 benchmarks/server_batch.py --model random:llama-1b --device cuda --clients 1,2,4,8,16 --k 8 \
  --dtypes bfloat16,float32 --rounds 3
# B x T = 16 x 512 tokens per step: enough work per call for a GPU (each row builds its model: ~30 s a row on an
# H200 machine's CPU; at 100 s both parts below ran out of time there, at 170 s they ended in 110-160 s)
part 170 python3 benchmarks/precision.py --model random:llama-1b --device cuda --steps 6 --batch 16 --seq 512
part 180 python3 benchmarks/party_memory.py --model random:llama-1b --device cuda --cuts 4
part 60 python3 benchmarks/server_batch.py --model random:smollm2-135m --device cuda --clients 1,8,16 --k 8 \
  --dtypes bfloat16 --rounds 3
part 60 python3 benchmarks/precision.py --model random:smollm2-135m --device cuda --steps 10 --batch 16 --seq 512
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*_gpu.json "$OUT"/ 2>/dev/null; fi
