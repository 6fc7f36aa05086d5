#!/usr/bin/env bash
# The GPU check for dia_model, one prepared script for a bare H100/H200 (no Ray: its wheel is too big
# to carry). Results land as JSON (and a log) under $OUT:
#   1. parity.json: golden greedy codes on CUDA in fp32 (generate() and stream()), bf16 invariance,
#      captured graphs against the eager step, and the codec in fp16/bf16 against fp32
#      (fraction of rows identical between stream() and generate() alone; bf16 against fp32);
#   2. engine-<slots>.json: bench_engine.py on the 1.6B shape, random weights, bf16, static batches vs
#      stream(), codes only and end to end with the codec, at 4 slot counts up to what fits.
#
# The device image has torch, transformers, safetensors, numpy, pyarrow and huggingface_hub;
# soundfile and soxr (and soundfile's cffi/pycparser) travel as wheels in .whl/ (see the device
# README: pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl NAME==VERSION).
# A device call:   carry=[".whl"], command="bash bench/gpu_check.sh", timeout 480 s.
# Here (no GPU):   DEVICE=cpu SHAPE=tiny SLOTS="4 8" bash bench/gpu_check.sh     (a smoke test)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-check}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
SHAPE=${SHAPE:-1.6b}
DTYPE=${DTYPE:-bfloat16}
SLOTS=${SLOTS:-"16 32 64 128"}
ROWS=${ROWS:-}
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || { echo "wheel install failed" >&2; exit 1; }
fi
{
  echo "== $(date -u +%FT%TZ) device=$DEVICE shape=$SHAPE dtype=$DTYPE slots=$SLOTS"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/log.txt"

status=0
timeout 240 python3 bench/gpu_parity.py --device "$DEVICE" --json "$OUT/parity.json" 2>&1 | tee -a "$OUT/log.txt" \
  || { echo "parity check failed" | tee -a "$OUT/log.txt"; status=1; }
for n in $SLOTS; do
  # each slot count in its own process: a count that does not fit is refused there, the others go on
  timeout 240 python3 bench/bench_engine.py --device "$DEVICE" --shape "$SHAPE" --dtype "$DTYPE" --slots "$n" \
    ${ROWS:+--rows "$ROWS"} --cache /tmp/dia-bench-checkpoints --json "$OUT/engine-$n.json" 2>&1 | tee -a "$OUT/log.txt" \
    || { echo "bench with $n slots failed" | tee -a "$OUT/log.txt"; status=1; }
done
echo "== done, status $status" | tee -a "$OUT/log.txt"
exit $status
