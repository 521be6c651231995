"""The image's contrast where the gradient does not fix it: ResNet-18 with GroupNorm gives every image
mean + a (image - mean) the same gradient, and the attacker takes the most contrast the box allows."""

import dataclasses

import pytest
import torch

from ppp.attacks import ServerView, build_attack
from ppp.attacks.contrast import max_contrast_in_box, resolve_contrast
from ppp.attacks.engine import AttackResult
from ppp.gradients import shared_gradient
from ppp.models import build_model

MEAN = (0.49, 0.48, 0.45)


def _scaled(images, a):
    mean = torch.tensor(MEAN).view(1, -1, 1, 1)
    return mean + a * (images - mean)


def _gradient(arch, images, options):
    torch.manual_seed(0)
    model = build_model(arch, (3, 32, 32), 10, MEAN, (0.25, 0.24, 0.26), None, options)
    model.eval()
    return shared_gradient(model, images, torch.tensor([3]))


def _largest_relative_change(arch, options, a):
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    first, second = _gradient(arch, image, options), _gradient(arch, _scaled(image, a), options)
    return max(float((g - second[n]).norm() / g.norm().clamp_min(1e-12)) for n, g in first.items())


def test_groupnorm_resnet_gradients_do_not_see_the_contrast_and_batchnorm_convnet_gradients_do():
    # Equal up to GroupNorm's epsilon (added to a variance that scales with a^2): a few percent at width 4.
    assert _largest_relative_change("resnet18", {"width": 4, "norm_groups": 2}, 0.4) < 0.05
    assert _largest_relative_change("convnet", {"width": 4}, 0.4) > 0.5
    assert _largest_relative_change("lenet", {}, 0.4) > 0.5


def test_the_box_recovers_the_contrast_of_images_that_use_their_range():
    images = torch.rand(4, 3, 32, 32)
    images[:, :, 0, 0] = 0.0  # every image touches the box's lower face
    images[:, :, 0, 1] = 1.0
    reduced = _scaled(images, torch.tensor([0.3, 0.5, 0.8, 1.0]).view(-1, 1, 1, 1))
    assert torch.allclose(max_contrast_in_box(reduced, torch.tensor(MEAN)), images, atol=1e-5)
    # A flat image (nothing to scale) and a missing result (NaN, a row that was not run) stay as they are.
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert torch.equal(max_contrast_in_box(flat, torch.tensor([0.3, 0.3, 0.3])), flat)
    missing = torch.cat([reduced[:1], torch.full_like(reduced[:1], float("nan"))])
    out = resolve_contrast(missing, torch.tensor(MEAN), "max_in_box")
    assert torch.allclose(out[0], images[0], atol=1e-5) and torch.isnan(out[1]).all()
    assert resolve_contrast(reduced, torch.tensor(MEAN), "keep") is reduced


def test_an_attack_finishes_its_reconstructions_with_the_contrast_it_is_told():
    with pytest.raises(ValueError, match="contrast"):
        build_attack("ig", contrast="auto")
    model = build_model("resnet18", (3, 32, 32), 10, MEAN, (0.25, 0.24, 0.26), None, {"width": 4})
    view = ServerView(model, {"w": torch.zeros(1)}, torch.tensor([3]), "eval")
    images = _scaled(torch.rand(2, 3, 32, 32), 0.5)
    result = AttackResult(images=images, images_half=images.clone(), gradient_loss=torch.zeros(2),
                          restart_losses=torch.zeros(2, 1), labels=torch.tensor([3, 3]), seconds=0.0)
    kept = build_attack("ig").finish(result, view)
    assert torch.equal(kept.images, images)
    stretched = build_attack("ig", contrast="max_in_box").finish(result, view)
    for out in (stretched.images, stretched.images_half):
        # each image reaches a face of the box, along its own contrast direction
        assert ((out.flatten(1).amin(1) < 1e-4) | (out.flatten(1).amax(1) > 1 - 1e-4)).all()
        assert (out - torch.tensor(MEAN).view(1, -1, 1, 1)).abs().sum() > (images - torch.tensor(MEAN).view(
            1, -1, 1, 1)).abs().sum()
    assert dataclasses.replace(stretched, images=images).labels is result.labels
