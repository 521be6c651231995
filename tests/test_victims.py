"""Victims drawn from the test split: balanced over classes, seeded, and disjoint between draws."""

import pytest
import torch

from ppp import stages
from ppp.data import draw_victims
from ppp.io import ArtifactError, load_tensors, save_tensors, write_json


def test_draws_are_balanced_seeded_and_never_share_an_image():
    labels = torch.arange(1000) % 10
    first = draw_victims(labels, 16, 0, 10, base_seed=0, dataset="mnist")
    assert labels[first].tolist() == list(range(10)) + list(range(6))  # class by class: any prefix is balanced
    assert torch.equal(first, draw_victims(labels, 16, 0, 10, base_seed=0, dataset="mnist"))
    draws = [set(draw_victims(labels, 16, k, 10, 0, "mnist").tolist()) for k in range(5)]
    assert all(len(d) == 16 for d in draws)
    assert all(not (draws[i] & draws[j]) for i in range(5) for j in range(i + 1, 5))
    assert set(draw_victims(labels, 16, 0, 10, base_seed=1, dataset="mnist").tolist()) != draws[0]


def test_a_draw_beyond_the_split_names_the_shortfall():
    labels = torch.arange(40) % 10  # 4 images per class: two draws of 16 (2 per class), not three
    draw_victims(labels, 16, 1, 10)
    with pytest.raises(ArtifactError, match="too few"):
        draw_victims(labels, 16, 2, 10)


def test_prepare_victims_draws_from_the_prepared_test_split(tmp_path):
    images = torch.randint(0, 256, (200, 1, 32, 32), dtype=torch.uint8)
    labels = torch.arange(200) % 10
    save_tensors(tmp_path / "test.safetensors", {"images": images, "labels": labels})
    write_json(tmp_path / "meta.json", {"num_classes": 10})
    info = stages.prepare_victims("mnist", str(tmp_path / "test.safetensors"), 32, 12, str(tmp_path / "v.safetensors"),
                                  facts={"num_classes": 10}, draw=3, base_seed=0)
    victims = load_tensors(tmp_path / "v.safetensors")
    index = victims["test_index"]
    assert info["draw"] == 3 and victims["images"].shape == (12, 1, 32, 32)
    assert torch.equal(victims["labels"], labels[index])
    assert torch.allclose(victims["images"], images[index].float() / 255)
