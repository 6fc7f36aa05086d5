#!/usr/bin/env bash
# The README's main command: set up .venv, then run the pipeline on the bundled example.
# Extra arguments are Hydra overrides, e.g. `model=tiny-random` where the Hub is unreachable.
set -euo pipefail
. "$(dirname "$0")/setup.sh"
python -m pipeline "$@"
