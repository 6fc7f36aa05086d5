#!/usr/bin/env bash
# Submit a synthesis job to a running Ray cluster with `ray job submit`.
#
#   RAY_ADDRESS=http://head-host:8265 jobs/submit.sh data.input='s3://bucket/scripts/*.parquet' data.name=scripts
#
# The entrypoint runs on the head node with RAY_ADDRESS set, so the pipeline joins that cluster
# (cluster=auto) and starts one replica per GPU. The driver writes every output file: put
# output.dir on storage the head node keeps (a mounted volume), and run the same command again
# to resume after a failure. Extra arguments are Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/.."

ray job submit \
  --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --working-dir . \
  --runtime-env-json '{"excludes": ["runs", "outputs", "multirun", ".venv", ".git", "bench/results"]}' \
  -- python -m pipeline cluster=auto output.dir="${OUTPUT_DIR:-/mnt/data/runs/dia-synthesis}" "$@"
