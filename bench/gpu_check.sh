#!/usr/bin/env bash
# The GPU check for dia_model: one prepared script for a bare H100/H200, under 8 minutes in all
# (a device command may run 10). No Ray, no soundfile: dia_model imports without them. Every phase
# is its own process with its own timeout and writes its JSON as it ends, so a phase that runs out
# of time costs only itself. Under $OUT:
#   0. model.txt    bench/gpu_model.py: the CPU-side cost model (bytes and kernels per step), for
#                   comparing the modeled step time with the measured one below;
#   1. probe.json   bench/gpu_probe.py (~1 min): versions, the SDPA backend each attention call
#                   shape gets (and its time in each backend), one graphed step replayed under
#                   set_sync_debug_mode("error"), captures while the codec thread works;
#   2. parity.json  bench/gpu_parity.py: golden greedy codes on CUDA in fp32 (generate() and
#                   stream()), bf16 invariance, captured graphs against the eager step;
#   3. engine-<n>.json  bench/bench_engine.py on the 1.6B shape, random weights, bf16, static
#                   batches vs stream(), codes only and end to end with the codec, rows of 3-8 s
#                   (one static batch at 128 slots, two at 32: each fits its timeout).
# A device call:   command="bash bench/gpu_check.sh", timeout_s 540.
# Here (no GPU):   DEVICE=cpu SHAPE=tiny SLOTS="4" bash bench/gpu_check.sh     (a smoke test)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-check}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
SHAPE=${SHAPE:-1.6b}
DTYPE=${DTYPE:-bfloat16}
SLOTS=${SLOTS:-"32 128"}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
started=$(date +%s)
{
  echo "== $(date -u +%FT%TZ) device=$DEVICE shape=$SHAPE dtype=$DTYPE slots=$SLOTS"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/log.txt"

status=0
phase() {  # phase NAME SECONDS COMMAND...: run with a timeout, log it, note a failure and go on
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s, $(( $(date +%s) - started ))s in)" | tee -a "$OUT/log.txt"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ]; then echo "== $name failed (exit $rc)" | tee -a "$OUT/log.txt"; status=1; fi
}
phase model 40 bash -c "python3 bench/gpu_model.py --shape $SHAPE > '$OUT/model.txt'; cat '$OUT/model.txt'"
phase probe 90 python3 bench/gpu_probe.py --device "$DEVICE" --shape "$SHAPE" --json "$OUT/probe.json"
phase parity 120 python3 bench/gpu_parity.py --device "$DEVICE" --json "$OUT/parity.json"
for n in $SLOTS; do
  rows=$(( n >= 128 ? n : 2 * n ))
  phase "engine-$n" $(( n >= 128 ? 150 : 90 )) python3 bench/bench_engine.py --device "$DEVICE" --shape "$SHAPE" \
    --dtype "$DTYPE" --slots "$n" --rows "$rows" --seconds 3 8 --cache /tmp/dia-bench-checkpoints \
    --json "$OUT/engine-$n.json"
done
echo "== done in $(( $(date +%s) - started ))s, status $status" | tee -a "$OUT/log.txt"
exit $status
