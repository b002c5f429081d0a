#!/usr/bin/env bash
# Set everything up, then run the end-to-end demo (embedded broker, local Qdrant, MovieLens-100K).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/coldstream demo "$@"
