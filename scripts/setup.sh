#!/usr/bin/env bash
# Shared by scripts/test.sh and scripts/example.sh (source it): a project virtualenv in .venv with
# the right torch (CPU build where there is no GPU, never the multi-GB CUDA wheels there),
# this project installed in editable mode, and a dependency check.
# The install and the check are skipped when nothing changed since the last successful setup: a
# stamp in .venv holds a hash of pyproject.toml, this script, the Python, whether there is a GPU and
# the list of installed packages; they are redone when it differs or the packages do not resolve.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
_setup_stamp=.venv/.dia-setup-stamp
_setup_hash() {
  {
    cat pyproject.toml scripts/setup.sh
    python -c 'import sys; print(sys.version, sys.base_prefix)'
    command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo no-gpu
    ls -1 .venv/lib/python*/site-packages | sed "/^__pycache__$/d"   # packages added, upgraded, removed
  } | sha256sum | cut -d' ' -f1
}
# resolvable without importing them (importing torch alone takes seconds); dia_model from this checkout
_setup_ready() {
  python - <<'PY' 2>/dev/null
import importlib.util, os, sys
specs = [importlib.util.find_spec(m) for m in ("torch", "dia_model", "pipeline", "pytest")]
ok = all(specs) and os.path.dirname(os.path.dirname(os.path.realpath(specs[1].origin))) == os.path.realpath(".")
sys.exit(0 if ok else 1)
PY
}
if [ -f "$_setup_stamp" ] && [ "$(cat "$_setup_stamp")" = "$(_setup_hash)" ] && _setup_ready; then
  echo "setup: .venv is up to date (pip install and pip check skipped; delete $_setup_stamp to redo)" >&2
else
  rm -f "$_setup_stamp"
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
  _setup_hash > "$_setup_stamp"   # only after everything above succeeded (set -e)
fi
unset -f _setup_hash _setup_ready
unset _setup_stamp
