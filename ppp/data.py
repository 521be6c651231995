"""Dataset sources behind one interface, victim sets, and the tensors the workflow stores.

Every source yields uint8 images (N, C, H, W) and int64 labels (N,). Sources are registered by
name: `bundled` (the compact subset committed to this repository), `torchvision` (download where
there is a network, or a local root in torchvision's layout) and `imagefolder` (root/train/<class>/*
and root/test/<class>/*).

Datasets are named by the config. The field's datasets (MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100,
SVHN) are known by name with their channels, classes and usual normalisation; any other name is the
user's own (an image folder or a bundled-format .npz), whose channels are given and whose classes and
normalisation are given or computed from its training split (`dataset_facts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from ppp.io import ArtifactError, load_npz
from ppp.seeding import derive_seed

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DIR = REPO_ROOT / "data" / "bundled"

# The field's datasets: channels, classes, normalisation (the usual training statistics) and
# torchvision's class. Fashion-MNIST's, CIFAR-100's and SVHN's statistics are those of their training
# splits as commonly quoted.
DATASETS = {
    "mnist": dict(channels=1, num_classes=10, mean=(0.1307,), std=(0.3081,), torchvision="MNIST"),
    "fashion_mnist": dict(channels=1, num_classes=10, mean=(0.2860,), std=(0.3530,), torchvision="FashionMNIST"),
    "cifar10": dict(channels=3, num_classes=10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                    torchvision="CIFAR10"),
    "cifar100": dict(channels=3, num_classes=100, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                     torchvision="CIFAR100"),
    "svhn": dict(channels=3, num_classes=10, mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
                 torchvision="SVHN"),
}
FACT_KEYS = ("channels", "num_classes", "mean", "std")


def known_facts(dataset: str, options: dict) -> dict:
    """What the config and the registry say of a dataset before its data is read: the registry's facts
    for the field's datasets, overridden by the config's `channels`, `num_classes`, `mean` and `std`.
    A user's own dataset must give `channels`; classes and normalisation may be left to the data."""
    facts = {k: v for k, v in DATASETS.get(dataset, {}).items() if k in FACT_KEYS}
    facts.update({k: options[k] for k in FACT_KEYS if options.get(k) is not None})
    if "channels" not in facts:
        raise ValueError(f"datasets.{dataset}.channels: {dataset!r} is not one of the known datasets "
                         f"({', '.join(DATASETS)}), so its channels (1 or 3) must be given")
    for key in ("mean", "std"):
        if key in facts and len(facts[key]) != facts["channels"]:
            raise ValueError(f"datasets.{dataset}.{key}: needs one value per channel ({facts['channels']}), "
                             f"got {list(facts[key])}")
    return facts


def dataset_facts(dataset: str, options: dict, train: "Split") -> dict:
    """channels, num_classes, mean and std: the known ones, the rest from the training split (classes:
    the largest label + 1; normalisation: the per-channel mean and std of its pixels in [0, 1])."""
    facts = known_facts(dataset, options)
    if "num_classes" not in facts:
        facts["num_classes"] = int(train.labels.max()) + 1
    if "mean" not in facts or "std" not in facts:
        pixels = train.images.double().div(255.0).transpose(0, 1).reshape(train.images.shape[1], -1)
        facts.setdefault("mean", tuple(round(float(v), 4) for v in pixels.mean(dim=1)))
        facts.setdefault("std", tuple(round(float(v), 4) for v in pixels.std(dim=1)))
    facts["mean"], facts["std"] = tuple(facts["mean"]), tuple(facts["std"])
    return facts


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
            raise ArtifactError(f"{path}: missing array {key!r} (a bundled-format .npz has train_images, "
                                f"train_labels, test_images, test_labels)")
    return Split(torch.from_numpy(arrays[f"{prefix}_images"]), torch.from_numpy(arrays[f"{prefix}_labels"]).long())


@source("torchvision")
def load_torchvision(dataset: str, options: dict, train: bool) -> Split:
    import torchvision

    name = DATASETS.get(dataset, {}).get("torchvision")
    if name is None:
        raise ValueError(f"datasets.{dataset}.source: torchvision has no loader here for {dataset!r}; known: "
                         f"{', '.join(DATASETS)} (use source imagefolder for your own images)")
    root = options.get("root")
    if not root:
        raise ValueError(f"datasets.{dataset}.root must be set for source 'torchvision'")
    split = {"split": "train" if train else "test"} if name == "SVHN" else {"train": train}
    try:
        ds = getattr(torchvision.datasets, name)(root=str(root), download=bool(options.get("download", False)),
                                                 **split)
    except RuntimeError as err:
        raise ArtifactError(f"datasets.{dataset}.root={root}: {err} (set download: true where there is a network)") from None
    images = torch.as_tensor(np.asarray(ds.data))
    if images.ndim == 3:  # MNIST, Fashion-MNIST: (N, H, W)
        images = images.unsqueeze(1)
    elif name != "SVHN":  # CIFAR: (N, H, W, C); SVHN is already (N, C, H, W)
        images = images.permute(0, 3, 1, 2)
    labels = ds.labels if name == "SVHN" else ds.targets
    return Split(images.contiguous().to(torch.uint8), torch.as_tensor(np.asarray(labels)).long())


@source("imagefolder")
def load_imagefolder(dataset: str, options: dict, train: bool) -> Split:
    from PIL import Image

    root = options.get("root")
    if not root:
        raise ValueError(f"datasets.{dataset}.root must be set for source 'imagefolder'")
    split_dir = Path(root) / ("train" if train else "test")
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
    if not class_dirs:
        raise ArtifactError(f"datasets.{dataset}.root: {split_dir} has no class folders")
    mode = "L" if known_facts(dataset, options)["channels"] == 1 else "RGB"
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(f for f in class_dir.iterdir() if f.is_file()):
            try:
                with Image.open(file) as img:
                    images.append(np.asarray(img.convert(mode)))
            except (OSError, ValueError, SyntaxError) as err:  # truncated, empty or not an image
                raise ArtifactError(f"datasets.{dataset}.root: {file}: truncated, empty or not an image "
                                    f"({err})") from None
            labels.append(label)
    if not images:
        raise ArtifactError(f"datasets.{dataset}.root: {split_dir} has class folders but no images")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ArtifactError(f"datasets.{dataset}.root: images in {split_dir} differ in size ({sorted(shapes)[:3]}); "
                            "resize them to one size first")
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
        raise ValueError(f"datasets.{dataset}.source: unknown source {name!r}; known: {sorted(SOURCES)}")
    return SOURCES[name](dataset, options, train)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 to float32 in [0, 1]."""
    return images.float().div_(255.0)


def load_victims(path: str | Path, dataset: str, image_size: int,
                 facts: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A victim set from .npz: images (N, C, H, W) uint8 0..255 or float in [0, 1], labels int64 (N,),
    checked against the dataset's facts (`facts`, e.g. its meta.json; default: the registry's).

    Returns float32 images in [0, 1] and int64 labels; every problem names the file."""
    facts = facts or DATASETS[dataset]
    channels, num_classes = int(facts["channels"]), int(facts["num_classes"])
    arrays = load_npz(path)
    for key in ("images", "labels"):
        if key not in arrays:
            raise ArtifactError(f"{path}: victim file needs arrays 'images' and 'labels', has {sorted(arrays)}")
    images, labels = arrays["images"], arrays["labels"]
    expected = (channels, image_size, image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ArtifactError(f"{path}: images must be (N, {channels}, {image_size}, {image_size}) for {dataset}, "
                            f"got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ArtifactError(f"{path}: has no victims (images is empty)")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ArtifactError(f"{path}: labels must be integers of shape ({images.shape[0]},), "
                            f"got {labels.dtype} {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ArtifactError(f"{path}: labels must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    if images.dtype == np.uint8:
        floats = torch.from_numpy(images).float() / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        finite = np.isfinite(images)
        if not finite.all():
            bad = np.unique(np.nonzero(~finite)[0])
            raise ArtifactError(f"{path}: images have non-finite pixels (NaN or inf) in victim(s) "
                                f"{', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}")
        if images.min() < 0 or images.max() > 1:
            raise ArtifactError(f"{path}: float images must lie in [0, 1], got [{images.min():.3g}, {images.max():.3g}]")
        floats = torch.from_numpy(images.astype(np.float32))
    else:
        raise ArtifactError(f"{path}: images must be uint8 or float, got {images.dtype}")
    return floats.contiguous(), torch.from_numpy(labels.astype(np.int64))


# `datasets.<name>.victims: draw`: the victims are drawn from the dataset's own test split.
VICTIMS_DRAWN = "draw"


def draw_victims(labels: torch.Tensor, count: int, draw: int, num_classes: int, base_seed: int = 0,
                 dataset: str = "") -> torch.Tensor:
    """Indices of `count` victims from a split with `labels`, balanced over classes and seeded.

    Each class's examples are shuffled once by (`base_seed`, `dataset`), then cut into consecutive
    blocks of ceil(count / classes): draw k takes block k of every class, so different draws never share
    an image. The victims are ordered class by class in turn (0, 1, ..., 9, 0, 1, ...), so any prefix is
    balanced and an update of up to `num_classes` consecutive victims has distinct labels."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if draw < 0:
        raise ValueError(f"the victim draw must be >= 0, got {draw}")
    per_class = -(-count // num_classes)
    gen = torch.Generator().manual_seed(derive_seed(base_seed, "victims", dataset))
    blocks = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        block = members[draw * per_class:(draw + 1) * per_class]
        blocks.append(block)
    depth = max(len(b) for b in blocks)
    order = [b[i] for i in range(depth) for b in blocks if i < len(b)]
    if len(order) < count:
        raise ArtifactError(f"draw {draw} of {count} victims needs {per_class} test images per class after "
                            f"{draw * per_class} per class for earlier draws; the test split has too few "
                            f"(smallest class: {min(int((labels == c).sum()) for c in range(num_classes))})")
    return torch.stack(order[:count])
