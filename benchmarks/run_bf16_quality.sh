#!/usr/bin/env bash
# bfloat16 autocast against float32 on the same images (issue 30): the deep preset's attack on 16
# images of one draw, in both precisions, on the CPU at hand; one JSON line per run, appended to $OUT
# with this CPU named. Then `.venv/bin/python benchmarks/bf16_quality_table.py` judges each pair: is
# bfloat16's median SSIM inside float32's 95% interval, and the paired difference's interval.
#
#     bash benchmarks/run_bf16_quality.sh                       # ConvNet-64 IG, both datasets (~25 min, AMX Xeon)
#     ARCHS=resnet18 DATASETS=mnist bash benchmarks/run_bf16_quality.sh
#     ATTACK=ig_targeted DEFENSE=precode bash benchmarks/run_bf16_quality.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results-bf16-quality.jsonl}
CONFIG=${CONFIG:-config/deep_cpu.yaml}
VICTIMS=${VICTIMS:-16}
DRAW=${DRAW:-0}
ARCHS=${ARCHS:-convnet}
DATASETS=${DATASETS:-"cifar10 mnist"}
ATTACK=${ATTACK:-ig}
DEFENSE=${DEFENSE:-none}
PRECISIONS=${PRECISIONS:-"float32 bfloat16"}
THREADS=${THREADS:-2}
EXTRA=${EXTRA:-}
CPU=$($PYTHON -c "from ppp.hardware import host_description; print(host_description())")
COMMIT=$(git rev-parse --short HEAD)
for arch in $ARCHS; do
  for dataset in $DATASETS; do
    for precision in $PRECISIONS; do
      # shellcheck disable=SC2086  # EXTRA is a list of flags
      $PYTHON -m ppp.bench --config "$CONFIG" --arch "$arch" --dataset "$dataset" --defense "$DEFENSE" \
          --attack "$ATTACK" --victims "$VICTIMS" --victim-draw "$DRAW" --mode batched --threads "$THREADS" \
          --precision "$precision" $EXTRA | while read -r line; do
        $PYTHON -c "import json, sys; d = json.loads(sys.argv[1]); d.update(cpu=sys.argv[2], commit=sys.argv[3], preset=sys.argv[4], extra=sys.argv[5]); print(json.dumps(d))" \
            "$line" "$CPU" "$COMMIT" "$CONFIG" "$EXTRA"
      done >> "$OUT"
    done
  done
done
