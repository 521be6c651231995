"""What makes a FedAvg update hard to invert: how far the head's inputs drift over the client's local steps,
and how much of the pseudo-gradient float32 loses, per local lr and steps (issue 31).

    .venv/bin/python benchmarks/fedavg_drift.py [--archs lenet mlp] [--victims 8] [--draw 0]

Models at initialisation as the default builds them (config/config.yaml's model options), the bundled test
split's seeded draw, 4 images per update, full batch. Per (arch, dataset, local lr, steps), medians over the
images: `drift` = |h_S - h_0| / |h_0| of each image's head input between the first and the last local step
(the head attack's fixed-features fit assumes 0); `float32 error` = the relative difference between the
client's pseudo-gradient (w_0 - w_S) / (lr S) computed in float32 and the same steps in float64 (what exact
algebra on the update, such as peeling, has to live with).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["lenet", "mlp"])
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "mnist"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.001, 0.01, 0.1])
    parser.add_argument("--steps", nargs="+", type=int, default=[2, 5])
    parser.add_argument("--victims", type=int, default=8)
    parser.add_argument("--draw", type=int, default=0)
    args = parser.parse_args(argv)

    import yaml

    from ppp.attacks.head import head_input_drift, head_module
    from ppp.client import local_training_update
    from ppp.config import validate_config
    from ppp.data import DATASETS, draw_victims, load_split, resize_uint8, to_float
    from ppp.models import build_model
    from ppp.seeding import seeded

    torch.set_num_threads(1)
    config = validate_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    print("| arch | dataset | local lr | steps | head-input drift (median) | float32 error of the update |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for arch in args.archs:
        for dataset in args.datasets:
            facts = DATASETS[dataset]
            split = load_split(dataset, {"source": "bundled"}, train=False)
            chosen = draw_victims(split.labels, args.victims, args.draw, facts["num_classes"], config["seed"], dataset)
            images, labels = to_float(resize_uint8(split.images[chosen], 32)), split.labels[chosen].long()
            with seeded(config["seed"]):
                model = build_model(arch, images.shape[1:], facts["num_classes"], facts["mean"], facts["std"], None,
                                    dict(config.get("models", {}).get(arch, {}))).eval()
            _, head = head_module(model)
            updates = images.shape[0] // 4
            grouped, grouped_labels = images[:updates * 4].view(updates, 4, *images.shape[1:]), \
                labels[:updates * 4].view(updates, 4)
            precise = copy.deepcopy(model).double()
            for lr in args.lrs:
                for steps in args.steps:
                    drift = head_input_drift(model, grouped, grouped_labels, steps, lr)  # (U, S, B, D)
                    seen = []
                    hook = head.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().double()))
                    with torch.no_grad():
                        model(images[:updates * 4])
                    hook.remove()
                    first = seen[0].view(updates, 4, -1)
                    relative = (drift[:, -1].norm(dim=-1) / first.norm(dim=-1)).flatten()
                    errors = []
                    for u in range(updates):
                        single = local_training_update(model, grouped[u], grouped_labels[u], steps, lr)
                        double = local_training_update(precise, grouped[u].double(), grouped_labels[u], steps, lr)
                        num = sum((single[n].double() - double[n]).pow(2).sum() for n in double).sqrt()
                        den = sum(double[n].pow(2).sum() for n in double).sqrt()
                        errors.append(float(num / den))
                    print(f"| {arch} | {dataset} | {lr:g} | {steps} | {float(relative.median()):.1%} | "
                          f"{torch.tensor(errors).median():.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
