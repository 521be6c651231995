"""float32 against bfloat16 throughput of a convolution and a matmul on one thread.

    .venv/bin/python benchmarks/bf16_peak.py

A 128-channel 3x3 convolution on 16x128x32x32 and a 2048^2 matmul, mean of 5 runs after a warm-up.
The figures are in benchmarks/README.md ("bfloat16 autocast").
"""

import time

import torch


def mean_seconds(fn, repeats: int = 5) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


if __name__ == "__main__":
    torch.set_num_threads(1)
    x, w = torch.randn(16, 128, 32, 32), torch.randn(128, 128, 3, 3)
    conv_flop = 2 * 16 * 128 * 128 * 9 * 32 * 32
    a = torch.randn(2048, 2048)
    mm_flop = 2 * 2048 ** 3
    for dtype in (torch.float32, torch.bfloat16):
        xd, wd, ad = x.to(dtype), w.to(dtype), a.to(dtype)
        conv = conv_flop / mean_seconds(lambda: torch.nn.functional.conv2d(xd, wd, padding=1)) / 1e9
        mm = mm_flop / mean_seconds(lambda: ad @ ad) / 1e9
        print(f"{dtype}: conv {conv:.0f} GFLOP/s, matmul {mm:.0f} GFLOP/s", flush=True)
