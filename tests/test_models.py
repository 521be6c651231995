import pytest
import torch

from ppp.gradients import shared_gradient
from ppp.models import AFTER, BEFORE, PRECODE, PrecodeSpec, build_model

SMALL = {"mlp": {"width": 32}, "lenet": {}, "convnet": {"width": 4}, "resnet18": {"width": 4}}


@pytest.mark.parametrize("arch", sorted(SMALL))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_architecture_gives_gradients_for_one_image(arch, channels):
    model = build_model(arch, (channels, 32, 32), 10, (0.5,) * channels, (0.5,) * channels,
                        PrecodeSpec(bottleneck_size=8), SMALL[arch])
    grads = shared_gradient(model, torch.rand(1, channels, 32, 32), torch.tensor([3]))
    assert set(grads) == {n for n, _ in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("stages."))


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_parameter_groups_follow_the_model_structure(arch):
    model = build_model(arch, (3, 32, 32), 10, (0.5,) * 3, (0.5,) * 3, PrecodeSpec(bottleneck_size=8), SMALL[arch])
    groups = model.parameter_groups()
    assert {n for n, g in groups.items() if g == PRECODE} == {
        n for n, _ in model.named_parameters() if n.startswith("bottleneck.")}
    # Default position: PRECODE right before the head, so only the head comes after it.
    assert {n for n, g in groups.items() if g == AFTER} == {"stages.head.weight", "stages.head.bias"}
    assert sum(g == BEFORE for g in groups.values()) > 0


def test_precode_position_moves_the_split():
    spec = PrecodeSpec(bottleneck_size=8, position_from_end=2)
    model = build_model("mlp", (1, 32, 32), 10, (0.5,), (0.5,), spec, {"width": 32})
    groups = model.parameter_groups()
    assert groups["stages.fc2.0.weight"] == AFTER
    assert groups["stages.fc1.1.weight"] == BEFORE
    assert model.bottleneck.encoder.in_features == 32


def test_model_without_precode_has_only_before_parameters():
    model = build_model("lenet", (1, 32, 32), 10, (0.5,), (0.5,))
    assert set(model.parameter_groups().values()) == {BEFORE}
    assert model.regularizer() == 0


def test_unknown_architecture_and_bad_position_are_named():
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        build_model("vgg", (1, 32, 32), 10, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="position_from_end"):
        build_model("mlp", (1, 32, 32), 10, (0.5,), (0.5,), PrecodeSpec(position_from_end=3))


def test_model_mode_decides_batchnorm_statistics_at_capture():
    """In eval mode the client's gradient uses BatchNorm's running statistics and leaves them as they
    were; in train mode it normalises by the image's own statistics (and updates the running ones)."""
    from ppp.gradients import set_model_mode

    torch.manual_seed(0)
    model = build_model("convnet", (1, 32, 32), 10, (0.1307,), (0.3081,), None, {"width": 4})
    image, label = torch.rand(1, 1, 32, 32), torch.tensor([3])
    norm = model.stages.block1[1]
    before = norm.running_mean.clone()
    set_model_mode(model, "eval")
    eval_grads = shared_gradient(model, image, label)
    assert torch.equal(norm.running_mean, before) and not model.training
    set_model_mode(model, "train")
    train_grads = shared_gradient(model, image, label)
    assert not torch.equal(norm.running_mean, before)
    name = "stages.block1.0.weight"
    assert not torch.allclose(eval_grads[name], train_grads[name])
    with pytest.raises(ValueError, match="eval, train"):
        set_model_mode(model, "inference")
