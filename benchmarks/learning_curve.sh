#!/usr/bin/env bash
# Learning curves of the default preset's training (issue 23): the workflow's own train jobs at more epochs
# than the default runs, for the undefended model and the PPP variants, then one line per model with its test
# accuracy after every epoch and the epoch at which the plateau rule (ppp.verdicts.plateaued: the best of the
# last 2 epochs less than 0.5 points above the best before) first holds.
#   bash benchmarks/learning_curve.sh [workdir]          # about 6 minutes on 2 cores
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/ppp-learning-curve}
mkdir -p "$work"
cat >"$work/longer.yaml" <<'YAML'
defenses: [none, ppp, ppp_encoder]
training: {epochs: 15, per_arch: {lenet: {epochs: 30}}}
mlflow: {enabled: false}
YAML
"$repo/.venv/bin/snakemake" -s "$repo/Snakefile" --directory "$work" --cores 2 --quiet rules \
  --configfile "$repo/config/config.yaml" "$work/longer.yaml" \
  --until train_mlp train_lenet >"$work/snakemake.log" 2>&1
"$repo/.venv/bin/python" - "$work" <<'PY'
import json, sys
from pathlib import Path
from ppp.verdicts import Thresholds, plateaued
rule = Thresholds()
for path in sorted(Path(sys.argv[1], "results", "models").rglob("metrics.json")):
    m = json.loads(path.read_text())
    curve = m["test_accuracy_per_epoch"]
    first = next((e for e in range(1, len(curve) + 1) if plateaued(curve[:e], rule)), None)
    print(json.dumps(dict(dataset=m["dataset"], arch=m["arch"], defense=m["defense"], sigma=m["noise_scale"],
                          epochs=len(curve), plateau_epoch=first, best=round(max(curve), 4),
                          best_epoch=curve.index(max(curve)) + 1, train_seconds=m.get("train_seconds"),
                          curve=[round(a, 4) for a in curve])))
PY
