#!/usr/bin/env bash
# Do the default preset's findings hold on other victims? The MLP and LeNet cells that carry F1-F3,
# with the preset's settings, on 8 victims from the authors' other CIFAR-10 set (cifar10_128_precode.npz)
# and from the second half of the MNIST set (victims 64-71). Appends to benchmarks/results-other-victims.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results-other-victims.jsonl}
bench() { .venv/bin/ppp-bench --mode batched --threads 2 --victims 8 "$@" | tee -a "$OUT"; }
for arch in mlp lenet; do
  for source in "--dataset cifar10 --victims-file data/victims/cifar10_128_precode.npz" "--dataset mnist --first-victim 64"; do
    # shellcheck disable=SC2086
    {
      bench --arch $arch $source --defense none --attack ig
      bench --arch $arch $source --defense precode --attack ig
      bench --arch $arch $source --defense precode --attack ig_targeted
      bench --arch $arch $source --defense ppp --sigma 0.1 --attack ig_targeted
      bench --arch $arch $source --defense noise --sigma 0.1 --attack ig
    }
  done
done
