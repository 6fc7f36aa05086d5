#!/usr/bin/env bash
# The README's test command (CI runs it through .ci/run): set up .venv, then pytest.
set -euo pipefail
. "$(dirname "$0")/setup.sh"
python -m pytest "$@"
