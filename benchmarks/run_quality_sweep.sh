#!/usr/bin/env bash
# The quality measurements behind the default preset's threat model and budgets (benchmarks/README.md,
# "Attack quality"): PSNR/SSIM against iterations per architecture, defence and attack, on the first
# 4 victims of the authors' sets, batched, 2 threads. Appends to benchmarks/results-quality.jsonl.
# Each line overrides only what it studies; everything else is config/config.yaml's.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results-quality.jsonl}
bench() { .venv/bin/ppp-bench --mode batched --threads 2 --victims 4 "$@" | tee -a "$OUT"; }

# ConvNet: width, budget, threat model (BatchNorm eval vs train), TV
bench --arch convnet --dataset cifar10 --width 16 --iterations 100,200,400 --tv-weight 1e-4
bench --arch convnet --dataset cifar10 --width 32 --iterations 100,200 --tv-weight 1e-4
bench --arch convnet --dataset cifar10 --width 16 --iterations 200 --tv-weight 1e-2
bench --arch convnet --dataset cifar10 --width 16 --iterations 200 --tv-weight 1e-4 --model-mode train
bench --arch convnet --dataset mnist --width 16 --iterations 100,200 --tv-weight 1e-4
# ConvNet with PRECODE: IG, the targeted attack with the attacker sampling or using the mean code
bench --arch convnet --dataset cifar10 --width 16 --iterations 200 --tv-weight 1e-4 --defense precode --attack ig
bench --arch convnet --dataset cifar10 --width 16 --iterations 200 --tv-weight 1e-4 --defense precode --attack ig_targeted --precode-code sample
bench --arch convnet --dataset cifar10 --width 16 --iterations 200 --tv-weight 1e-4 --defense precode --attack ig_targeted --precode-code mean
# LeNet: init (uniform(-0.5, 0.5) as DLG / Inverting Gradients' LeNetZhu, or PyTorch's default), TV, code
for init in 0.5 0; do
  bench --arch lenet --dataset cifar10 --iterations 200,600 --tv-weight 1e-4 --init-range $init
  bench --arch lenet --dataset mnist --iterations 200,600 --tv-weight 1e-4 --init-range $init --defense precode --attack ig_targeted --precode-code mean
  bench --arch lenet --dataset cifar10 --iterations 600 --tv-weight 1e-4 --init-range $init --defense precode --attack ig_targeted --precode-code mean
done
bench --arch lenet --dataset mnist --iterations 600 --tv-weight 1e-4 --defense precode --attack ig_targeted --precode-code sample
bench --arch lenet --dataset cifar10 --iterations 600 --tv-weight 1e-2
# MLP: TV 1e-6 (the old default) against 1e-4
bench --arch mlp --dataset cifar10 --iterations 100,200 --tv-weight 1e-6
bench --arch mlp --dataset cifar10 --iterations 100,200 --tv-weight 1e-4
# Noise scales: where full noise (IG) and PPP (the targeted attack, the stronger one there) stop working
for sigma in 0.01 0.1 1; do
  bench --arch mlp --dataset mnist --iterations 100 --defense noise --sigma $sigma
  bench --arch mlp --dataset mnist --iterations 100 --defense ppp --sigma $sigma --attack ig_targeted
  bench --arch lenet --dataset mnist --iterations 600 --defense noise --sigma $sigma
  bench --arch lenet --dataset mnist --iterations 600 --defense ppp --sigma $sigma --attack ig_targeted
  bench --arch convnet --dataset cifar10 --iterations 400 --defense noise --sigma $sigma
  bench --arch convnet --dataset cifar10 --iterations 400 --defense ppp --sigma $sigma --attack ig_targeted
done
# The authors' ConvNet width: the acceptance point of issue 8
bench --arch convnet --dataset cifar10 --width 64 --iterations 200
# ConvNet on MNIST: longer and wider
bench --arch convnet --dataset mnist --width 16 --iterations 400,800
bench --arch convnet --dataset mnist --width 32 --iterations 200,400
# The targeted attack on ConvNet: longer, and also matching PRECODE's encoder
bench --arch convnet --dataset cifar10 --iterations 400 --defense precode --attack ig_targeted
bench --arch convnet --dataset cifar10 --iterations 400 --defense precode --attack ig_targeted --keep-encoder
bench --arch lenet --dataset mnist --iterations 600 --defense precode --attack ig_targeted --keep-encoder
# LeNet is cheap: longer budgets
bench --arch lenet --dataset mnist --iterations 2000 --defense precode --attack ig_targeted
bench --arch lenet --dataset cifar10 --iterations 2000
bench --arch lenet --dataset mnist --iterations 600,2000 --defense precode --attack ig_targeted --precode-code sample
# TV per architecture
for tv in 1e-2 1e-1; do
  bench --arch lenet --dataset mnist --iterations 600 --tv-weight $tv
  bench --arch lenet --dataset mnist --iterations 600 --tv-weight $tv --defense precode --attack ig_targeted
  bench --arch lenet --dataset cifar10 --iterations 600 --tv-weight $tv --defense precode --attack ig_targeted
  bench --arch lenet --dataset mnist --iterations 600 --tv-weight $tv --defense precode --attack ig
done
bench --arch lenet --dataset cifar10 --iterations 600 --tv-weight 1e-1
bench --arch convnet --dataset cifar10 --iterations 400 --tv-weight 1e-3
bench --arch convnet --dataset mnist --iterations 400 --tv-weight 1e-3
bench --arch mlp --dataset mnist --iterations 200,400
bench --arch mlp --dataset mnist --iterations 200 --defense precode --attack ig_targeted
bench --arch mlp --dataset mnist --iterations 200 --defense precode --attack ig
# ConvNet's gradients are small: lower noise scales
for sigma in 0.0001 0.001; do
  bench --arch convnet --dataset cifar10 --iterations 400 --defense noise --sigma $sigma
  bench --arch convnet --dataset cifar10 --iterations 400 --defense ppp --sigma $sigma --attack ig_targeted
done
