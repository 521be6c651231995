import numpy as np
import pytest
import torch
from PIL import Image

from ppp.data import Split, load_split, load_victims, resize_uint8, subsample
from ppp.io import ArtifactError, atomic_path, load_tensors, save_tensors, write_json
from ppp.seeding import derive_seed, generator


def test_victims_accept_uint8_and_float_and_name_bad_files(tmp_path):
    good = tmp_path / "v.npz"
    np.savez(good, images=np.full((2, 1, 32, 32), 255, np.uint8), labels=np.array([1, 2]))
    images, labels = load_victims(good, "mnist", 32)
    assert images.dtype == torch.float32 and float(images.max()) == 1.0 and labels.tolist() == [1, 2]

    cases = {
        "shape.npz": dict(images=np.zeros((2, 3, 32, 32), np.uint8), labels=np.array([1, 2])),
        "range.npz": dict(images=np.full((2, 1, 32, 32), 2.0, np.float32), labels=np.array([1, 2])),
        "labels.npz": dict(images=np.zeros((2, 1, 32, 32), np.uint8), labels=np.array([1, 12])),
        "missing.npz": dict(pixels=np.zeros((2, 1, 32, 32), np.uint8)),
    }
    for name, arrays in cases.items():
        path = tmp_path / name
        np.savez(path, **arrays)
        with pytest.raises(ArtifactError, match=name):
            load_victims(path, "mnist", 32)


def test_victims_never_unpickle(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, images=np.array([object()], dtype=object), labels=np.array([0]))
    with pytest.raises(ArtifactError, match="pickled.npz"):
        load_victims(path, "mnist", 32)


def test_the_committed_victim_sets_load(mnist_victims, cifar_victims):
    assert mnist_victims[0].shape == (128, 1, 32, 32)
    assert cifar_victims[0].shape == (128, 3, 32, 32)
    assert 0 <= float(cifar_victims[0].min()) and float(cifar_victims[0].max()) <= 1


def test_bundled_subset_is_real_data():
    split = load_split("mnist", {"source": "bundled"}, train=True)
    assert split.images.shape[1:] == (1, 28, 28) and split.images.shape[0] >= 1000
    assert set(split.labels.unique().tolist()) == set(range(10))
    cifar = load_split("cifar10", {"source": "bundled"}, train=False)
    assert cifar.images.shape[1:] == (3, 32, 32)


def test_imagefolder_source(tmp_path):
    for split in ("train", "test"):
        for c, name in enumerate(["cat", "dog"]):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), 40 * c, np.uint8)).save(folder / "0.png")
    split = load_split("cifar10", {"source": "imagefolder", "root": str(tmp_path)}, train=True)
    assert split.images.shape == (2, 3, 32, 32) and split.labels.tolist() == [0, 1]
    with pytest.raises(ArtifactError, match="no class folders"):
        load_split("cifar10", {"source": "imagefolder", "root": str(tmp_path / "nowhere")}, train=True)


def test_torchvision_source_without_files_names_the_root(tmp_path):
    with pytest.raises(ArtifactError, match="root="):
        load_split("mnist", {"source": "torchvision", "root": str(tmp_path), "download": False}, train=True)


def test_resize_and_seeded_subsample():
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    assert resize_uint8(images, 32).shape == (10, 1, 32, 32)
    split = Split(images, torch.arange(10))
    a = subsample(split, 4, generator(derive_seed(0, "x")))
    b = subsample(split, 4, generator(derive_seed(0, "x")))
    assert torch.equal(a.labels, b.labels) and a.images.shape[0] == 4


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{") and list(tmp_path.iterdir()) == [target]


def test_tensor_files_round_trip_and_bad_files_are_named(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"x": torch.arange(3)})
    assert torch.equal(load_tensors(path, required=("x",))["x"], torch.arange(3))
    with pytest.raises(ArtifactError, match="missing tensors"):
        load_tensors(path, required=("y",))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a tensor file")
    with pytest.raises(ArtifactError, match="bad.safetensors"):
        load_tensors(bad)
