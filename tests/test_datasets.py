"""Datasets by name: the field's datasets through torchvision, a user's own image folder under any
name, and the checks that refuse bad data with the file or key named."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from ppp import stages
from ppp.config import ConfigError, validate_config
from ppp.data import DATASETS, load_split, load_victims
from ppp.io import ArtifactError, load_tensors, read_json

from conftest import REPO


def _fake_torchvision(monkeypatch, name, data, labels, label_attr="targets"):
    """torchvision's dataset class `name`, holding `data` as torchvision does (no download here)."""
    import torchvision

    calls = []

    def make(root, download, **split):
        calls.append(split)
        return SimpleNamespace(data=data, **{label_attr: labels})

    monkeypatch.setattr(torchvision.datasets, name, make)
    return calls


@pytest.mark.parametrize("dataset,cls,shape,label_attr", [
    ("fashion_mnist", "FashionMNIST", (5, 28, 28), "targets"),      # (N, H, W) tensor
    ("cifar100", "CIFAR100", (5, 32, 32, 3), "targets"),            # (N, H, W, C) array
    ("svhn", "SVHN", (5, 3, 32, 32), "labels"),                     # (N, C, H, W) array, .labels
])
def test_the_fields_datasets_load_through_torchvision_in_n_c_h_w(monkeypatch, dataset, cls, shape, label_attr):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=shape, dtype=np.uint8)
    labels = list(range(5))
    calls = _fake_torchvision(monkeypatch, cls, torch.from_numpy(data) if len(shape) == 3 else data, labels,
                              label_attr)
    split = load_split(dataset, {"source": "torchvision", "root": "/nowhere"}, train=False)
    channels = DATASETS[dataset]["channels"]
    assert split.images.shape == (5, channels, shape[1] if channels == 1 else 32, 28 if channels == 1 else 32)
    expected = {1: data[:, None], 3: data.transpose(0, 3, 1, 2) if cls == "CIFAR100" else data}[channels]
    assert np.array_equal(split.images.numpy(), expected) and split.labels.tolist() == labels
    assert calls == [{"split": "test"} if cls == "SVHN" else {"train": False}]


def _image_folder(root, images, labels, mode):
    from PIL import Image

    for split in ("train", "test"):
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / f"class_{int(label)}"
            folder.mkdir(parents=True, exist_ok=True)
            array = (image.numpy() * 255).round().astype(np.uint8)
            Image.fromarray(array[0] if mode == "L" else array.transpose(1, 2, 0), mode).save(folder / f"{i}.png")


def test_a_users_image_folder_gets_its_classes_and_normalisation_from_its_data(tmp_path, mnist_victims):
    images, labels = mnist_victims[0][:12], mnist_victims[1][:12]
    _image_folder(tmp_path / "digits", images, labels, "L")
    options = {"source": "imagefolder", "root": str(tmp_path / "digits"), "channels": 1, "image_size": 32}
    out = {k: str(tmp_path / f"{k}.out") for k in ("train", "test", "meta")}
    meta = stages.prepare_data("my_digits", options, 0, out["train"], out["test"], out["meta"])
    classes = sorted(set(labels.tolist()))
    assert meta["num_classes"] == len(classes)  # class folders are numbered in sorted order
    pixels = load_tensors(out["train"])["images"].double() / 255
    assert meta["mean"][0] == pytest.approx(float(pixels.mean()), abs=1e-4)
    assert meta["std"][0] == pytest.approx(float(pixels.std()), abs=1e-4)
    assert read_json(out["meta"]) == meta and meta["counts"] == {"train": 12, "test": 12}


def test_a_users_dataset_without_channels_is_refused_by_key(tmp_path):
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["datasets"] = {"my_scans": {"source": "imagefolder", "root": str(tmp_path), "victims": "v.npz"}}
    with pytest.raises(ConfigError, match=r"datasets\.my_scans\.channels"):
        validate_config(config)
    config["datasets"] = {"my_scans": {"source": "torchvision", "root": str(tmp_path), "channels": 3,
                                       "victims": "v.npz"}}
    with pytest.raises(ConfigError, match=r"datasets\.my_scans\.source"):
        validate_config(config)
    config["datasets"] = {"cifar100": {"source": "bundled", "victims": "v.npz"}}
    with pytest.raises(ConfigError, match=r"no bundled subset of 'cifar100'"):
        validate_config(config)
    config["datasets"] = {"Bad-Name": {"source": "imagefolder", "root": "x", "channels": 1, "victims": "v.npz"}}
    with pytest.raises(ConfigError, match="Bad-Name"):
        validate_config(config)


def test_victims_with_non_finite_pixels_or_none_at_all_are_refused_by_file(tmp_path):
    images = np.random.default_rng(0).random((3, 1, 32, 32)).astype(np.float32)
    images[1, 0, 4, 4] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, images=images, labels=np.array([1, 2, 3]))
    with pytest.raises(ArtifactError, match=r"nan\.npz.*non-finite pixels .* victim\(s\) 1"):
        load_victims(path, "mnist", 32)
    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((0, 1, 32, 32), np.uint8), labels=np.zeros(0, np.int64))
    with pytest.raises(ArtifactError, match=r"empty\.npz: has no victims"):
        load_victims(empty, "mnist", 32)
