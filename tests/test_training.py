"""Training with defended gradients, and the DP-SGD baseline through Opacus."""

import pytest
import torch

from ppp.defenses import build_defense
from ppp.models import build_model
from ppp.seeding import seeded
from ppp.training import TrainingConfig, accuracy, train

MNIST = ((0.1307,), (0.3081,))


@pytest.fixture(scope="module")
def mnist_train(mnist_victims):
    images, labels = mnist_victims  # 128 real MNIST images at 32 x 32
    return images, labels


def _mlp(seed=0):
    with seeded(seed):
        return build_model("mlp", (1, 32, 32), 10, *MNIST, None, {"width": 64})


def _train(defense, images, labels, epochs=2, seed=0, optimizer="adam"):
    model = _mlp()
    config = TrainingConfig(epochs=epochs, batch_size=16, lr=1e-3 if optimizer == "adam" else 0.05, optimizer=optimizer)
    summary = train(model, defense, images, labels, config, seed, torch.device("cpu"))
    return model, summary


def test_dpsgd_reports_the_privacy_spent_and_more_noise_spends_less(mnist_train):
    images, labels = mnist_train
    _, low_noise = _train(build_defense("dpsgd", 0.6, max_grad_norm=1.0), images, labels)
    _, high_noise = _train(build_defense("dpsgd", 2.0, max_grad_norm=1.0), images, labels)
    _, longer = _train(build_defense("dpsgd", 2.0, max_grad_norm=1.0), images, labels, epochs=4)
    assert 0 < high_noise["epsilon"] < low_noise["epsilon"] and high_noise["epsilon"] < longer["epsilon"]
    assert high_noise["delta"] == 1e-5 and high_noise["steps"] == 2 * (128 // 16)


def test_dpsgd_is_seeded_and_its_noise_changes_the_model(mnist_train):
    images, labels = mnist_train
    first, _ = _train(build_defense("dpsgd", 1.0), images, labels)
    second, _ = _train(build_defense("dpsgd", 1.0), images, labels)
    # SGD: Adam would turn the tiny noise on parameters without gradient (dead units) into full steps.
    noiseless, _ = _train(build_defense("dpsgd", 1e-9, max_grad_norm=1e3), images, labels, optimizer="sgd")
    plain, _ = _train(build_defense("none"), images, labels, optimizer="sgd")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.state_dict()["stages.head.weight"], noiseless.state_dict()["stages.head.weight"])
    # Without noise and with a clipping norm never reached, DP-SGD is plain Adam on the batch mean.
    torch.testing.assert_close(noiseless.state_dict()["stages.head.weight"], plain.state_dict()["stages.head.weight"],
                               rtol=1e-4, atol=1e-5)
    assert accuracy(plain, images, labels, torch.device("cpu"), 0) > 0.5


def test_dpsgd_refuses_batchnorm_by_name(mnist_train):
    images, labels = mnist_train
    with seeded(0):
        convnet = build_model("convnet", (1, 32, 32), 10, *MNIST, None, {"width": 4})
    with pytest.raises(ValueError, match="BatchNorm"):
        train(convnet, build_defense("dpsgd", 1.0), images, labels, TrainingConfig(), 0, torch.device("cpu"))


@pytest.mark.parametrize("arch", ["mlp", "lenet"])
def test_dpsgd_ghost_clipping_trains_the_same_model_as_per_example_gradients(mnist_train, arch):
    """Ghost clipping (the default) never forms per-example gradients; with a clipping norm that every
    example exceeds, its clipped, noised updates must equal GradSampleModule's."""
    images, labels = mnist_train
    models = []
    for clipping in ("ghost", "per_sample"):
        with seeded(0):
            model = build_model(arch, (1, 32, 32), 10, *MNIST, None, {"width": 64} if arch == "mlp" else {})
        config = TrainingConfig(epochs=1, batch_size=16, lr=0.05, optimizer="sgd")
        train(model, build_defense("dpsgd", 0.5, max_grad_norm=0.05, clipping=clipping), images, labels, config, 0,
              torch.device("cpu"))
        models.append(model)
    with seeded(0):
        start = build_model(arch, (1, 32, 32), 10, *MNIST, None, {"width": 64} if arch == "mlp" else {})
    for (name, ghost), per_sample in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(ghost, per_sample, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.allclose(models[0].state_dict()["stages.head.weight"], start.state_dict()["stages.head.weight"])
