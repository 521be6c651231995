#!/usr/bin/env bash
# Where each attack stops on FedAvg updates (issue 31): the undefended MLP and LeNet at initialisation,
# 4 images per update, over local lr x (local steps, images per step), on the bundled test split's seeded
# draws. SETTINGS lists steps:images-per-step pairs (0: the full batch; 2: 2 mini-batches of 2 in turn). Per cell and attack one JSON line (SSIM per image and its median, seconds, this CPU),
# appended to $OUT; one more line per cell gives the label accuracy of label inference (labels inferred
# from the update, one attack iteration). The attacks, at about equal seconds on LeNet:
#   head_drift  the head attack with 2 rounds of drift correction (ppp.attacks.head.correct_for_drift)
#   head        the head attack, features held fixed over the steps (the default's before this grid)
#   sme         the surrogate-model attack (ppp.attacks.surrogate): LeNet 1000 iterations, MLP 400
#   ig          Inverting Gradients with the local steps unrolled: LeNet 1000 / steps, MLP 400 / steps
# On the MLP only sme and ig by default (ATTACKS_MLP): the head attack's feature inversion through two
# dense layers reached 0.08-0.34 at lr 0.1.
# DEFENSES (default: none) adds PRECODE models, a defence with its sigma as name:sigma (ppp:1.0); on those the
# route `analytic` also runs: the analytic attack's span matching on PRECODE's encoder, at every budget of
# ANALYTIC_ITERATIONS (each budget's own run; ppp-bench adds the half budget's median).
#
#     bash benchmarks/run_fedavg_limits.sh                          # draw 0, 8 victims: about 60 min, 1 core
#     DRAW=1 SETTINGS=2:0 bash benchmarks/run_fedavg_limits.sh      # the other draw at 2 full-batch steps
#     ARCHS=lenet LRS=0.01 SETTINGS=2:0 ATTACKS="head_drift" bash benchmarks/run_fedavg_limits.sh
#     .venv/bin/python benchmarks/fedavg_limits_table.py            # the table of benchmarks/README.md
#     ARCHS=lenet LRS=0.01 SETTINGS=2:0 VICTIMS=16 DEFENSES="precode ppp:1.0" ATTACKS="head_drift analytic" \
#       OUT=benchmarks/results-fedavg-precode.jsonl bash benchmarks/run_fedavg_limits.sh   # and DRAW=1
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results-fedavg-limits.jsonl}
VICTIMS=${VICTIMS:-8}
DRAW=${DRAW:-0}
ARCHS=${ARCHS:-"lenet mlp"}
DATASETS=${DATASETS:-"cifar10 mnist"}
LRS=${LRS:-"0.001 0.01 0.1"}
SETTINGS=${SETTINGS:-"2:0 2:2 5:0"}
ATTACKS=${ATTACKS:-"head_drift head sme ig"}
ATTACKS_MLP=${ATTACKS_MLP:-"sme ig"}
THREADS=${THREADS:-1}
DEFENSES=${DEFENSES:-none}
ANALYTIC_ITERATIONS=${ANALYTIC_ITERATIONS:-1000,2000,4000,8000}
CPU=$($PYTHON -c "from ppp.hardware import host_description; print(host_description())")
COMMIT=$(git rev-parse --short HEAD)
bench() {  # route name, then ppp-bench flags
  local route=$1; shift
  [[ " $routes label_inference " == *" $route "* ]] || return 0
  $PYTHON -m ppp.bench --victims "$VICTIMS" --victim-draw "$DRAW" --mode batched --threads "$THREADS" \
      --images-per-update 4 "$@" | while read -r line; do
    $PYTHON -c "import json, sys; d = json.loads(sys.argv[1]); d.update(route=sys.argv[2], cpu=sys.argv[3], commit=sys.argv[4]); print(json.dumps(d))" \
      "$line" "$route" "$CPU" "$COMMIT"
  done >> "$OUT"
}
for arch in $ARCHS; do
  routes=$ATTACKS; budget=1000
  if [ "$arch" = mlp ]; then routes=$ATTACKS_MLP; budget=400; fi
  for dataset in $DATASETS; do
    for lr in $LRS; do
      for setting in $SETTINGS; do
        steps=${setting%%:*}; batch=${setting##*:}
        for defense in $DEFENSES; do
          name=${defense%%:*}; sigma=0
          [[ "$defense" == *:* ]] && sigma=${defense##*:}
          cell=(--arch "$arch" --dataset "$dataset" --local-steps "$steps" --local-lr "$lr" --local-batch "$batch"
                --defense "$name" --sigma "$sigma")
          bench head_drift "${cell[@]}" --attack head --iterations 1000 --tv-weight 0.002 --option drift_rounds=2
          bench head "${cell[@]}" --attack head --iterations 1000 --tv-weight 0.03
          bench sme "${cell[@]}" --attack sme --iterations "$budget"
          bench ig "${cell[@]}" --attack ig --iterations $((budget / steps))
          if [ "$name" != none ] && [ "$name" != noise ] && [ "$name" != dpsgd ]; then
            bench analytic "${cell[@]}" --attack analytic --iterations "$ANALYTIC_ITERATIONS"
          fi
          if [ "$name" = none ]; then
            bench label_inference "${cell[@]}" --attack ig --iterations 1 --labels inferred
          fi
        done
      done
    done
  done
done
