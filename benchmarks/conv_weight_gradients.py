"""Time the two ways per_layer forms a convolution's per-row weight gradients, forward and backward.

    .venv/bin/python benchmarks/conv_weight_gradients.py

16 rows, one torch thread; prints the Markdown table of benchmarks/README.md (milliseconds per call).
"""

import time

import torch

from ppp.attacks.per_layer import CONV_METHODS, conv2d_weight_per_row

# (in, out, input size, kernel, stride, padding, what it is)
SHAPES = [(1, 12, 32, 5, 2, 2, "LeNet conv1, MNIST"), (3, 12, 32, 5, 2, 2, "LeNet conv1, CIFAR-10"),
          (12, 12, 16, 5, 2, 2, "LeNet conv2"), (12, 12, 8, 5, 1, 2, "LeNet conv3"),
          (16, 16, 32, 3, 1, 1, "ResNet-18 width 16"), (32, 32, 16, 3, 1, 1, ""), (64, 64, 8, 3, 1, 1, "")]
ROWS = 16


def milliseconds(call, repeats: int = 20) -> float:
    for _ in range(3):
        call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| layer (in -> out, input size, kernel, stride) | " + " ms | ".join(CONV_METHODS) + " ms |")
    print("| --- | ---: | ---: |")
    for c_in, c_out, size, kernel, stride, padding, name in SHAPES:
        layer = torch.nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)
        inputs = torch.randn(ROWS, c_in, size, size, requires_grad=True)
        deltas = torch.randn_like(layer(inputs)).requires_grad_(True)
        weights = torch.randn(ROWS, c_out, c_in, kernel, kernel)

        def forward_and_backward(method):
            gradient = conv2d_weight_per_row(layer, inputs, deltas, method)
            return torch.autograd.grad((gradient * weights).sum(), [inputs, deltas])

        times = [milliseconds(lambda m=m: forward_and_backward(m)) for m in CONV_METHODS]
        label = f"{c_in} -> {c_out}, {size}x{size}, {kernel}x{kernel}, {stride}" + (f" ({name})" if name else "")
        print(f"| {label} | " + " | ".join(f"{t:.2f}" for t in times) + " |")


if __name__ == "__main__":
    main()
