#!/usr/bin/env bash
# Where each attack stops on FedAvg updates (issue 31): the undefended MLP and LeNet at initialisation,
# 4 images per update, full-batch local steps, over local lr x local steps, on the bundled test split's
# seeded draws. Per cell and attack one JSON line (SSIM per image and its median, seconds, this CPU),
# appended to $OUT; one more line per cell gives the label accuracy of label inference (labels inferred
# from the update, one attack iteration). The attacks, at about equal seconds on LeNet:
#   head_drift  the head attack with 2 rounds of drift correction (ppp.attacks.head.correct_for_drift)
#   head        the head attack, features held fixed over the steps (the default's before this grid)
#   sme         the surrogate-model attack (ppp.attacks.surrogate), 1000 iterations
#   ig          Inverting Gradients with the local steps unrolled, 1000 / steps iterations
#
#     bash benchmarks/run_fedavg_limits.sh                          # draw 0, 8 victims, every cell
#     DRAW=1 bash benchmarks/run_fedavg_limits.sh                   # the other draw
#     ARCHS=lenet LRS=0.01 STEPS=2 ATTACKS="head_drift" bash benchmarks/run_fedavg_limits.sh
#     .venv/bin/python benchmarks/fedavg_limits_table.py            # the table of benchmarks/README.md
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results-fedavg-limits.jsonl}
VICTIMS=${VICTIMS:-8}
DRAW=${DRAW:-0}
ARCHS=${ARCHS:-"lenet mlp"}
DATASETS=${DATASETS:-"cifar10 mnist"}
LRS=${LRS:-"0.001 0.01 0.1"}
STEPS=${STEPS:-"2 5"}
ATTACKS=${ATTACKS:-"head_drift head sme ig"}
THREADS=${THREADS:-1}
CPU=$($PYTHON -c "from ppp.hardware import host_description; print(host_description())")
COMMIT=$(git rev-parse --short HEAD)
bench() {  # route name, then ppp-bench flags
  local route=$1; shift
  [[ " $ATTACKS label_inference " == *" $route "* ]] || return 0
  $PYTHON -m ppp.bench --victims "$VICTIMS" --victim-draw "$DRAW" --mode batched --threads "$THREADS" \
      --images-per-update 4 "$@" | while read -r line; do
    $PYTHON -c "import json, sys; d = json.loads(sys.argv[1]); d.update(route=sys.argv[2], cpu=sys.argv[3], commit=sys.argv[4]); print(json.dumps(d))" \
      "$line" "$route" "$CPU" "$COMMIT"
  done >> "$OUT"
}
for arch in $ARCHS; do
  for dataset in $DATASETS; do
    for lr in $LRS; do
      for steps in $STEPS; do
        cell=(--arch "$arch" --dataset "$dataset" --local-steps "$steps" --local-lr "$lr" --defense none)
        bench head_drift "${cell[@]}" --attack head --iterations 1000 --tv-weight 0.002 --option drift_rounds=2
        bench head "${cell[@]}" --attack head --iterations 1000 --tv-weight 0.03
        bench sme "${cell[@]}" --attack sme --iterations 1000
        bench ig "${cell[@]}" --attack ig --iterations $((1000 / steps))
        bench label_inference "${cell[@]}" --attack ig --iterations 1 --labels inferred
      done
    done
  done
done
