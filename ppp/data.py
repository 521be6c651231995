"""Dataset sources behind one interface, victim sets, and the tensors the workflow stores.

Every source yields uint8 images (N, C, H, W) and int64 labels (N,). Sources are registered by
name: `bundled` (the compact subset committed to this repository), `torchvision` (download where
there is a network, or a local root in torchvision's layout) and `imagefolder` (root/train/<class>/*
and root/test/<class>/*).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from ppp.io import ArtifactError, load_npz

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DIR = REPO_ROOT / "data" / "bundled"

# Per-dataset facts: channels, classes, normalisation (the usual training statistics).
DATASETS = {
    "mnist": dict(channels=1, num_classes=10, mean=(0.1307,), std=(0.3081,)),
    "cifar10": dict(channels=3, num_classes=10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
}


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}")


SourceLoader = Callable[[str, dict, bool], Split]
SOURCES: dict[str, SourceLoader] = {}


def source(name: str):
    def decorate(fn: SourceLoader) -> SourceLoader:
        SOURCES[name] = fn
        return fn
    return decorate


@source("bundled")
def load_bundled(dataset: str, options: dict, train: bool) -> Split:
    path = Path(options.get("path") or BUNDLED_DIR / f"{dataset}.npz")
    arrays = load_npz(path)
    prefix = "train" if train else "test"
    for key in (f"{prefix}_images", f"{prefix}_labels"):
        if key not in arrays:
            raise ArtifactError(f"{path}: missing array {key!r}")
    return Split(torch.from_numpy(arrays[f"{prefix}_images"]), torch.from_numpy(arrays[f"{prefix}_labels"]).long())


@source("torchvision")
def load_torchvision(dataset: str, options: dict, train: bool) -> Split:
    import torchvision

    classes = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}
    if dataset not in classes:
        raise ValueError(f"data.{dataset}.source: torchvision has no loader here for {dataset!r}")
    root = options.get("root")
    if not root:
        raise ValueError(f"data.{dataset}.root must be set for source 'torchvision'")
    try:
        ds = classes[dataset](root=str(root), train=train, download=bool(options.get("download", False)))
    except RuntimeError as err:
        raise ArtifactError(f"data.{dataset}.root={root}: {err} (set download: true where there is a network)") from None
    images = torch.as_tensor(np.asarray(ds.data))
    if images.ndim == 3:  # MNIST: (N, H, W)
        images = images.unsqueeze(1)
    else:  # CIFAR-10: (N, H, W, C)
        images = images.permute(0, 3, 1, 2)
    return Split(images.contiguous().to(torch.uint8), torch.as_tensor(np.asarray(ds.targets)).long())


@source("imagefolder")
def load_imagefolder(dataset: str, options: dict, train: bool) -> Split:
    from PIL import Image

    root = options.get("root")
    if not root:
        raise ValueError(f"data.{dataset}.root must be set for source 'imagefolder'")
    split_dir = Path(root) / ("train" if train else "test")
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
    if not class_dirs:
        raise ArtifactError(f"data.{dataset}.root: {split_dir} has no class folders")
    mode = "L" if DATASETS[dataset]["channels"] == 1 else "RGB"
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(class_dir.iterdir()):
            with Image.open(file) as img:
                images.append(np.asarray(img.convert(mode)))
            labels.append(label)
    array = np.stack(images)
    array = array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)
    return Split(torch.from_numpy(np.ascontiguousarray(array)), torch.tensor(labels, dtype=torch.int64))


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize with antialiasing, rounded back to uint8 (MNIST's 28x28 to 32x32, as the authors do)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def subsample(split: Split, limit: int | None, generator: torch.Generator) -> Split:
    """A seeded random subset of at most `limit` examples (all of them when limit is None)."""
    n = split.images.shape[0]
    if limit is None or limit >= n:
        return split
    index = torch.randperm(n, generator=generator)[:limit].sort().values
    return Split(split.images[index], split.labels[index])


def load_split(dataset: str, options: dict, train: bool) -> Split:
    name = options.get("source", "bundled")
    if name not in SOURCES:
        raise ValueError(f"data.{dataset}.source: unknown source {name!r}; known: {sorted(SOURCES)}")
    return SOURCES[name](dataset, options, train)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 to float32 in [0, 1]."""
    return images.float().div_(255.0)


def load_victims(path: str | Path, dataset: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A victim set from .npz: images (N, C, H, W) uint8 0..255 or float in [0, 1], labels int64 (N,).

    Returns float32 images in [0, 1] and int64 labels; every problem names the file."""
    arrays = load_npz(path)
    for key in ("images", "labels"):
        if key not in arrays:
            raise ArtifactError(f"{path}: victim file needs arrays 'images' and 'labels', has {sorted(arrays)}")
    images, labels = arrays["images"], arrays["labels"]
    channels = DATASETS[dataset]["channels"]
    expected = (channels, image_size, image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ArtifactError(f"{path}: images must be (N, {channels}, {image_size}, {image_size}) for {dataset}, "
                            f"got {tuple(images.shape)}")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ArtifactError(f"{path}: labels must be integers of shape ({images.shape[0]},), "
                            f"got {labels.dtype} {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= DATASETS[dataset]["num_classes"]:
        raise ArtifactError(f"{path}: labels must be in 0..{DATASETS[dataset]['num_classes'] - 1}")
    if images.dtype == np.uint8:
        floats = torch.from_numpy(images).float() / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        if images.min() < 0 or images.max() > 1:
            raise ArtifactError(f"{path}: float images must lie in [0, 1], got [{images.min():.3g}, {images.max():.3g}]")
        floats = torch.from_numpy(images.astype(np.float32))
    else:
        raise ArtifactError(f"{path}: images must be uint8 or float, got {images.dtype}")
    return floats.contiguous(), torch.from_numpy(labels.astype(np.int64))
