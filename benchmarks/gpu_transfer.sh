#!/usr/bin/env bash
# Issue 23 on one GPU (H100/H200), in one call: do config/gpu.yaml's budgets for the wide models hold on two
# disjoint draws of test images (ppp-bench --victim-draw 0 and 1), and has each attack converged (the
# half-budget proxy)? Also runs the unit tests that compare numbers on this machine's CPU (another CPU
# family and torch build than the CI machine's). One JSON line per attack in $OUT/transfer.jsonl.
#   OUT=/tmp/out bash benchmarks/gpu_transfer.sh                 # on the GPU machine
#   OUT=/tmp/out DEVICE=cpu SMOKE=1 bash benchmarks/gpu_transfer.sh   # a smoke run here (tiny budgets)
set -u
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-results/gpu_transfer}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
lscpu | grep -m1 "Model name"; nproc; nvidia-smi -L 2>/dev/null; $PYTHON -c "import torch; print('torch', torch.__version__)"
if [ -z "${SMOKE:-}" ]; then
  timeout 120 $PYTHON -m pytest -q -p no:cacheprovider tests/test_client.py tests/test_verdicts.py tests/test_report.py \
    tests/test_precode.py tests/test_defenses.py 2>&1 | tail -15
fi
bench() {  # seconds, then ppp-bench arguments
  local limit=$1; shift
  local extra=""
  [ -n "${SMOKE:-}" ] && extra="--iterations 4 --width 8 --victims 4"
  timeout "$limit" $PYTHON -m ppp.bench --config config/gpu.yaml --device "$DEVICE" --mode batched "$@" $extra \
    | grep '^{' | tee -a "$OUT/transfer.jsonl" | cut -c1-400
}
for draw in 0 1; do
  bench 75 --arch convnet --dataset cifar10 --defense none --attack ig --victims 8 --victim-draw $draw
done
for draw in 0 1; do
  bench 100 --arch lenet --dataset cifar10 --defense none --attack ig --victims 16 --images-per-update 4 \
    --iterations 20000 --victim-draw $draw
done
for draw in 0 1; do
  bench 90 --arch resnet18 --dataset cifar10 --defense none --attack ig --victims 8 --victim-draw $draw
done
for draw in 0 1; do
  bench 45 --arch convnet --dataset cifar10 --defense precode --attack ig_targeted --victims 8 --victim-draw $draw
done
# What is left of the call: make gpu-check's cells (never run on a GPU before), as many as fit.
[ -z "${SMOKE:-}" ] && timeout 110 $PYTHON benchmarks/gpu_check.py --max-seconds 90 | tee "$OUT/gpu_check.jsonl" | cut -c1-300
exit 0
