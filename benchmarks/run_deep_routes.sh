#!/usr/bin/env bash
# Attack routes on the paper's deep nets at the authors' width 64, one image per update, on a CPU
# (issue 30): which route reconstructs the undefended ConvNet and ResNet-18, at what cost per
# image-iteration and share of this CPU's peak. Models as config/gpu.yaml (ConvNet with BatchNorm in
# evaluation mode, ResNet-18 with GroupNorm(2)); draw 0 of the bundled test split; one JSON line per
# route and budget, appended to $OUT with this CPU named in every line.
#
#     bash benchmarks/run_deep_routes.sh                  # 2 victims, about 20 minutes on 2 cores
#     VICTIMS=4 DRAW=1 bash benchmarks/run_deep_routes.sh # more images, the other draw
#     ARCHS=resnet18 ROUTES=ig_tv1e-2 IG_ITERATIONS=400 bash benchmarks/run_deep_routes.sh   # one route, longer
#     CONFIG=config/deep_cpu.yaml THREADS=1 ARCHS=resnet18 DATASETS=cifar10 VICTIMS=4 IG_ITERATIONS=400 \
#         ROUTES="targeted_precode features_targeted_precode" bash benchmarks/run_deep_routes.sh
#
# CONFIG: the preset whose model and attack options the routes take (its precision and contrast too).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results-deep-routes.jsonl}
VICTIMS=${VICTIMS:-2}
DRAW=${DRAW:-0}
ARCHS=${ARCHS:-"convnet resnet18"}
DATASETS=${DATASETS:-"cifar10 mnist"}
ROUTES=${ROUTES:-"ig ig_tv1e-2 head analytic_precode"}
IG_ITERATIONS=${IG_ITERATIONS:-200}
LBFGS_ITERATIONS=${LBFGS_ITERATIONS:-$IG_ITERATIONS}
IG_TV=${IG_TV:-1e-2}            # TV of the gradient-matching routes through PRECODE
CONFIG=${CONFIG:-config/gpu.yaml}
THREADS=${THREADS:-2}
CPU=$($PYTHON -c "from ppp.hardware import host_description; print(host_description())")
COMMIT=$(git rev-parse --short HEAD)
bench() {  # route name, then ppp-bench flags
  local route=$1; shift
  [[ " $ROUTES " == *" $route "* ]] || return 0
  # A failed route prints a JSON line with its error (deep_routes_table.py names it) and the others go on.
  { $PYTHON -m ppp.bench --config "$CONFIG" --victims "$VICTIMS" --victim-draw "$DRAW" --mode batched \
      --threads "$THREADS" --width 64 "$@" || true; } | while read -r line; do
    $PYTHON -c "import json, sys; d = json.loads(sys.argv[1]); d.update(route=sys.argv[2], cpu=sys.argv[3], commit=sys.argv[4]); print(json.dumps(d))" \
      "$line" "$route" "$CPU" "$COMMIT"
  done >> "$OUT"
}
for arch in $ARCHS; do
  for dataset in $DATASETS; do
    common=(--arch "$arch" --dataset "$dataset")
    # Inverting Gradients: signed Adam, lr 0.1 with the 3/8-5/8-7/8 decay (the study's engine).
    bench ig "${common[@]}" --defense none --attack ig --iterations "$IG_ITERATIONS" --tv-weight 1e-4
    bench ig_tv1e-2 "${common[@]}" --defense none --attack ig --iterations "$IG_ITERATIONS" --tv-weight 1e-2
    # The features from the head's gradient (exact at one image), then inverted: a forward and a backward
    # pass per iteration, no second-order term.
    bench head "${common[@]}" --defense none --attack head --iterations 400 --tv-weight 1e-3
    # Through PRECODE: its input from the encoder's gradient, inverted (the analytic attack).
    bench analytic_precode "${common[@]}" --defense precode --attack analytic --iterations 400 --tv-weight 1e-3
    # The targeted attack on PRECODE (gradients before PRECODE only), the study's strongest there.
    bench targeted_precode "${common[@]}" --defense precode --attack ig_targeted --iterations "$IG_ITERATIONS" \
        --tv-weight "$IG_TV"
    # Feature inversion as the start and the regulariser of gradient matching (breaching's
    # FeatureRegularization): PRECODE's input from the encoder's gradient, inverted for 200 iterations, then
    # the targeted attack from there (with PRECODE's mean code, as the study's) plus the relative squared error
    # to those features (weight 1).
    bench features_targeted_precode "${common[@]}" --defense precode --attack head --iterations 200 \
        --tv-weight 1e-3 --option refine_iterations="$IG_ITERATIONS" --option refine_selection=before_precode \
        --option refine_lr=0.1 --option refine_tv_weight="$IG_TV" --option refine_precode_code=mean
    # L-BFGS (unsigned gradients, unit first step, backtracking line search; ppp.attacks.engine.RowLBFGS)
    # against signed Adam, on the undefended model and through PRECODE.
    bench ig_lbfgs "${common[@]}" --defense none --attack ig --iterations "$LBFGS_ITERATIONS" --lr 1 \
        --tv-weight "$IG_TV" --option optimizer=lbfgs --option signed=false
    bench targeted_lbfgs_precode "${common[@]}" --defense precode --attack ig_targeted \
        --iterations "$LBFGS_ITERATIONS" --lr 1 --tv-weight "$IG_TV" --option optimizer=lbfgs --option signed=false
    # The same on the undefended model: the head's input from its gradient, then IG on every gradient.
    bench features_ig "${common[@]}" --defense none --attack head --iterations 200 --tv-weight 1e-3 \
        --option refine_iterations="$IG_ITERATIONS" --option refine_selection=all --option refine_lr=0.1 \
        --option refine_tv_weight="$IG_TV"
  done
done
