#!/usr/bin/env bash
# The table of benchmarks/README.md: LeNet, ConvNet and ResNet-18 with 1, 8 and 32 victims, plus
# the acceptance point (16 victims), batched and sequential, one torch thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results-cpu.jsonl}
: > "$out"
for arch in lenet convnet resnet18; do
  for victims in 1 8 16 32; do
    .venv/bin/ppp-bench --arch "$arch" --defense none --victims "$victims" --iterations 100 --device cpu | tee -a "$out"
  done
done
