#!/usr/bin/env bash
# Shared by scripts/test.sh and scripts/example.sh (source it): a project virtualenv in .venv with
# the right torch (CPU build where there is no GPU, never the multi-GB CUDA wheels there),
# this project installed in editable mode, and a dependency check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q "torch>=2.6,<2.14"          # PyPI's Linux build is the CUDA one
  else
    # No GPU: a CPU build (PyTorch's CPU index, or a local CPU wheel pip is configured to find).
    python -m pip install -q "torch>=2.6,<2.14" --timeout 10 --retries 1 \
      --extra-index-url https://download.pytorch.org/whl/cpu
  fi
fi
python -m pip install -q -e ".[test]"
if python -m pip list 2>/dev/null | grep -qi '^nvidia-' && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "error: CUDA packages (nvidia-*) were installed on a machine without a GPU" >&2
  exit 1
fi
python -m pip check
