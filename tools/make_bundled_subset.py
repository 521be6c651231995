"""Rebuild data/bundled/*.npz (the compact offline subset) from full MNIST and CIFAR-10 copies.

    python tools/make_bundled_subset.py --mnist-root ../shared/datasets --cifar10-root /tmp/cifar10-jpeg

Takes a class-balanced, seeded subset of each split so the default workflow runs offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ppp.data import load_split

SIZES = {"mnist": (5000, 1000), "cifar10": (3000, 1000)}


def balanced_subset(images, labels, per_split: int, seed: int):
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = per_split // len(classes)
    index = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes])
    index.sort()
    return images[index], labels[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mnist-root", required=True, help="folder with MNIST/raw in torchvision's layout")
    parser.add_argument("--cifar10-root", required=True, help="ImageFolder root with train/ and test/")
    parser.add_argument("--out", default="data/bundled")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sources = {"mnist": dict(source="torchvision", root=args.mnist_root),
               "cifar10": dict(source="imagefolder", root=args.cifar10_root)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for dataset, options in sources.items():
        arrays = {}
        for split, size in zip(("train", "test"), SIZES[dataset]):
            data = load_split(dataset, options, train=split == "train")
            images, labels = balanced_subset(data.images.numpy(), data.labels.numpy(), size, args.seed)
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.astype(np.int64)
        np.savez_compressed(Path(args.out) / f"{dataset}.npz", **arrays)
        print(dataset, {k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
