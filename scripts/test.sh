#!/usr/bin/env bash
# The README's test command: a project virtualenv with the CPU torch wheel where no GPU
# is present (never the multi-GB CUDA build), every dependency, a dependency check, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q "torch>=2.6,<2.14"          # PyPI's Linux build is the CUDA one
  else
    # No GPU: a CPU build (PyTorch's CPU index, or a local CPU wheel pip is configured to find),
    # never the several-GB CUDA build that plain PyPI resolves to.
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
python -m pytest "$@"
