"""The adaptive attacks on PRECODE (analytic, latent) and the PPP variants they call for."""

import pytest
import torch

from ppp.attacks import ServerView, build_attack
from ppp.attacks.analytic import features_before_precode, recover_linear_input
from ppp.attacks.engine import RowObjective
from ppp.attacks.per_layer import PerLayerObjective
from ppp.attacks.registry import attack_needs_precode
from ppp.defenses import build_defense
from ppp.gradients import select_parameters, shared_gradient
from ppp.metrics import image_metrics
from ppp.models import PrecodeSpec, build_model
from ppp.seeding import derive_seed, generator, seeded

MNIST = ((0.1307,), (0.3081,))


def _model(arch="mlp", options=None, seed=0):
    with seeded(seed):
        return build_model(arch, (1, 32, 32), 10, *MNIST, PrecodeSpec(bottleneck_size=32),
                           {"width": 256} if options is None else options)


def _view(model, images, labels, defense="precode", sigma=0.0):
    """The server's view of single-image updates, defended as the client would."""
    groups, per_victim = model.parameter_groups(), []
    chosen = build_defense(defense, sigma)
    for i in range(images.shape[0]):
        with seeded(100 + i):
            grads = shared_gradient(model, images[i:i + 1], labels[i:i + 1])
        per_victim.append(chosen(grads, groups, generator(derive_seed(7, i))))
    return ServerView(model, {n: torch.stack([g[n] for g in per_victim]) for n in per_victim[0]}, labels.clone())


def _relative_error(view, images):
    names = view.model.encoder_parameter_names()
    weight, bias = (next(n for n in names if n.endswith(k)) for k in ("weight", "bias"))
    recovered = recover_linear_input(view.gradients[weight], view.gradients[bias])
    true = features_before_precode(view.model, images).detach()
    return float(((recovered - true).norm(dim=1) / true.norm(dim=1)).max())


def _ssim(images, result):
    return [image_metrics(images[i], result.images[i])["ssim"] for i in range(images.shape[0])]


@pytest.mark.parametrize("arch,options", [("mlp", {"width": 256}), ("lenet", {})])
def test_encoder_gradient_gives_precodes_input_exactly(mnist_victims, arch, options):
    images, labels = mnist_victims[0][:3], mnist_victims[1][:3]
    model = _model(arch, options)
    assert _relative_error(_view(model, images, labels), images) < 1e-4
    # The paper's PPP noises only the layers before PRECODE: the recovery stays exact.
    assert _relative_error(_view(model, images, labels, "ppp", 0.1), images) < 1e-4


def test_noise_on_the_encoder_raises_the_recovery_error(mnist_victims):
    images, labels = mnist_victims[0][:3], mnist_victims[1][:3]
    model = _model()
    errors = [_relative_error(_view(model, images, labels, "ppp_encoder", sigma), images)
              for sigma in (1e-5, 1e-3, 1e-1)]
    assert errors[0] < 0.05 and errors[0] < errors[1] < errors[2] and errors[2] > 0.5


def test_analytic_attack_reconstructs_through_the_papers_ppp(mnist_victims):
    """Where the study used to call PPP safe (the targeted attack fails at sigma 0.1), the analytic
    attack still reconstructs: the encoder's gradient is not noised."""
    images, labels = mnist_victims[0][:2], mnist_victims[1][:2]
    view = _view(_model(options={"width": 1024}), images, labels, "ppp", 0.1)
    analytic = build_attack("analytic", iterations=1000, tv_weight=0.03)(view, seed=0)
    targeted = build_attack("ig_targeted", iterations=300)(view, seed=0)
    assert min(_ssim(images, analytic)) > 0.5
    assert max(_ssim(images, targeted)) < 0.3
    assert analytic.labels.tolist() == labels.tolist()


def test_per_layer_latent_gradients_equal_the_loop(mnist_victims):
    images, labels = mnist_victims[0][:3], mnist_victims[1][:3]
    model = _model("lenet", {})
    view = _view(model, images, labels)
    names = select_parameters(model, "all")
    targets = [view.gradients[n] for n in names]
    loop, per_layer = RowObjective(model, names, labels, targets, 1e-4), PerLayerObjective(model, names, labels, targets, 1e-4)
    x, latent, rows = torch.randn(3, 1, 32, 32), torch.randn(3, 32), torch.arange(3)
    expected, got = loop.loop(x, rows, latent), per_layer(x, rows, None, latent)
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert got[2].abs().sum() > 0  # the noise gets a gradient


def test_latent_attack_matches_the_clients_draw_better_than_the_mean_code(mnist_victims):
    """The latent attack matches every gradient, PRECODE's included, by optimising the client's noise:
    its gradient loss ends far below that of IG with the mean code, which cannot explain the draw."""
    images, labels = mnist_victims[0][:2], mnist_victims[1][:2]
    view = _view(_model(), images, labels)
    latent = build_attack("latent", iterations=200)(view, seed=0)
    ig = build_attack("ig", iterations=200)(view, seed=0)
    assert float(latent.gradient_loss.max()) < 0.5 * float(ig.gradient_loss.min())


def test_attacks_on_precode_are_registered_as_such():
    assert not attack_needs_precode("ig")
    assert all(attack_needs_precode(a) for a in ("ig_targeted", "latent", "analytic"))
    with pytest.raises(ValueError, match="unknown attack"):
        attack_needs_precode("dlg")


def test_shared_attack_options_reach_only_the_attacks_that_know_them():
    analytic = build_attack("analytic", iterations=5, keep_encoder=True, engine="per_layer", tv_weight=0.5)
    assert analytic.iterations == 5 and analytic.tv_weight == 0.5
    with pytest.raises(ValueError, match="unknown options"):
        build_attack("analytic", iterationz=5)
    assert build_attack("latent", iterations=3).latent


def test_latent_attack_beats_the_targeted_one_where_ppp_noises_the_early_layers(mnist_victims):
    """PPP at a large sigma drowns the gradients the targeted attack matches; the latent attack also
    matches PRECODE's and the head's clean gradients, with the client's draw as an unknown."""
    images, labels = mnist_victims[0][:2], mnist_victims[1][:2]
    view = _view(_model("lenet", {}), images, labels, "ppp", 1.0)
    latent = build_attack("latent", iterations=600, tv_weight=1e-2)(view, seed=0)
    targeted = build_attack("ig_targeted", iterations=600, tv_weight=1e-2)(view, seed=0)
    psnr = lambda result: [image_metrics(images[i], result.images[i])["psnr"] for i in range(2)]  # noqa: E731
    assert min(psnr(latent)) > max(psnr(targeted)) + 3
