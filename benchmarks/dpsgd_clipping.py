"""DP-SGD training speed: Opacus's ghost clipping against per-example gradients, and no defence.

    .venv/bin/python benchmarks/dpsgd_clipping.py

Ten training steps (batch 64) on random CIFAR-10-shaped images, one thread, per architecture; torch's
compiler and Opacus are imported before the clock starts. The table is in benchmarks/README.md.
"""

import time

import torch

torch.set_num_threads(1)
import opacus  # noqa: E402,F401  (import cost outside the clock)
import torch._dynamo  # noqa: E402,F401  (torch.optim imports it; outside the clock)

from ppp.defenses import build_defense  # noqa: E402
from ppp.models import build_model  # noqa: E402
from ppp.seeding import seeded  # noqa: E402
from ppp.training import TrainingConfig, train  # noqa: E402

STATS = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
ARCHS = [("mlp", {"width": 1024}), ("lenet", {}), ("resnet18", {"width": 16, "norm_groups": 2})]


def seconds(arch: str, options: dict, defense) -> float:
    images, labels = torch.rand(640, 3, 32, 32), torch.randint(0, 10, (640,))
    with seeded(0):
        model = build_model(arch, (3, 32, 32), 10, *STATS, None, options)
    started = time.perf_counter()
    train(model, defense, images, labels, TrainingConfig(epochs=1, batch_size=64), 0, torch.device("cpu"))
    return time.perf_counter() - started


if __name__ == "__main__":
    for arch, options in ARCHS:
        row = {clipping: seconds(arch, options, build_defense("dpsgd", 1.0, clipping=clipping))
               for clipping in ("ghost", "per_sample")}
        row["none"] = seconds(arch, options, build_defense("none"))
        print(arch, " ".join(f"{k} {v:.2f} s" for k, v in row.items()), flush=True)
