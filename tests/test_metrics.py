"""LPIPS from the lpips package with the AlexNet trunk read from disk, never downloaded unless allowed."""

import logging

import pytest
import torch

from ppp.lpips_metric import load_lpips


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    """An AlexNet state dict in torchvision's format (random weights: ImageNet's cannot be fetched here)."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def test_lpips_loads_the_trunk_from_the_given_file_and_measures_distance(alexnet_file, cifar_victims):
    metric = load_lpips("auto", str(alexnet_file))
    features = torch.load(alexnet_file, weights_only=True)
    assert torch.equal(metric.model.net.slice1[0].weight, features["features.0.weight"])  # really loaded
    image, other = cifar_victims[0][0], cifar_victims[0][1]
    assert metric(image, image) == pytest.approx(0.0, abs=1e-6)
    noisy = (image + 0.1 * torch.randn_like(image)).clamp(0, 1)
    assert 0 < metric(image, noisy) < metric(image, other)
    assert metric(image[:1], image[:1]) == pytest.approx(0.0, abs=1e-6)  # grey images work too


def test_lpips_without_weights_on_disk_is_left_out_with_one_message(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert load_lpips("auto", str(tmp_path / "missing.pth")) is None
    assert "LPIPS left out" in caplog.text and "missing.pth" in caplog.text
    assert load_lpips("off", None) is None
    (tmp_path / "bad.pth").write_text("not a state dict")
    with pytest.raises(ValueError, match=r"report.lpips_weights: .*bad.pth"):
        load_lpips("auto", str(tmp_path / "bad.pth"))
