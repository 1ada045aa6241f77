#!/usr/bin/env bash
# The project's test command: install, then run the default (fast, tiny-model) test suite.
# Slow tests on the real SmolLM2-135M weights: python3 -m pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
${PYTHON:-python3} -m ruff check splitft tests benchmarks  # the rules: pyproject.toml [tool.ruff.lint]
${PYTHON:-python3} -m mypy  # splitft/ type-checked: pyproject.toml [tool.mypy]
${PYTHON:-python3} -m mkdocs build --strict --quiet --site-dir "$(mktemp -d)"  # docs/: warnings and bad links fail
${PYTHON:-python3} -m pytest -q "$@"
