#!/usr/bin/env bash
# The tables of benchmarks/README.md, written to benchmarks/results-cpu.jsonl (about 10 minutes on the
# 2-core development machine): LeNet, ConvNet and ResNet-18 with 1, 8, 16 and 32 victims and the
# 1024-wide MLP with 8 victims, batched (engine auto) and sequential, one torch thread; ResNet-18,
# LeNet and the MLP with the vmap engine; and the acceptance point of issue #3 (LeNet, 16 victims) three times with one and
# with two threads. Render with: .venv/bin/python benchmarks/table.py benchmarks/results-cpu.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results-cpu.jsonl}
bench=.venv/bin/ppp-bench
: > "$out"
for arch in lenet convnet resnet18; do
  for victims in 1 8 16 32; do
    "$bench" --arch "$arch" --victims "$victims" --iterations 100 --device cpu | tee -a "$out"
  done
done
"$bench" --arch mlp --victims 8 --iterations 100 --device cpu | tee -a "$out"
"$bench" --arch resnet18 --victims 16 --iterations 100 --device cpu --engine vmap --mode batched | tee -a "$out"
"$bench" --arch lenet --victims 16 --iterations 100 --device cpu --engine vmap --mode batched | tee -a "$out"
"$bench" --arch mlp --victims 8 --iterations 100 --device cpu --engine vmap --mode batched | tee -a "$out"
for threads in 1 2; do
  for repeat in 1 2 3; do
    "$bench" --arch lenet --victims 16 --iterations 100 --device cpu --threads "$threads" | tee -a "$out"
  done
done
