#!/usr/bin/env bash
# Set everything up, then lint, type-check and run the whole test suite (unit + integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PACKAGES=(streams encoders ranking infra)
echo "== ruff"
.venv/bin/ruff check "${PACKAGES[@]}" tests scripts
.venv/bin/ruff format --check "${PACKAGES[@]}" tests scripts
echo "== mypy"
.venv/bin/mypy
.venv/bin/mypy scripts/gpu_encoder_check.py
echo "== pytest"
if [ "$#" -gt 0 ]; then
    .venv/bin/pytest "$@"
else
    # tests marked `isolated` run in a process of their own (see the marker's description)
    .venv/bin/pytest -m "not isolated"
    echo "== pytest (isolated)"
    .venv/bin/pytest -m isolated
fi
