"""The surrogate-model attack on FedAvg updates (ppp.attacks.surrogate)."""

import pytest
import torch

from ppp.attacks import build_attack
from ppp.attacks.engine import GradientMatching, GradientMatchingProblem
from ppp.attacks.registry import attack_needs_precode
from ppp.attacks.surrogate import SurrogateMatching
from ppp.client import ClientSetting
from ppp.gradients import select_parameters
from ppp.models import PrecodeSpec
from tests.test_client import _matched_ssim, _model, _updates


def _objective(view, names, alpha_start=0.5, alpha_lr=1e-3, tv_weight=0.0):
    labels = view.labels.view(view.num_updates, -1).squeeze(1)
    step_size = view.local_lr * view.local_steps if view.local_steps > 1 else view.local_lr
    return SurrogateMatching(view.model, names, labels, view.gradients, step_size, tv_weight, alpha_start, alpha_lr)


def _dummies(view, seed=3):
    shape = (view.num_updates, *((view.images_per_update,) if view.images_per_update > 1 else ()), 1, 32, 32)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_alpha_gradient_is_the_objective_s_derivative(mnist_victims):
    """alpha's gradient (the surrogate moves every weight along the update) against central differences."""
    images, labels = mnist_victims[0][:4], mnist_victims[1][:4]
    view = _updates(_model(width=128), images, labels, ClientSetting(2, 3, 0.1))
    objective = _objective(view, select_parameters(view.model, "all"), alpha_start=0.4)
    x = _dummies(view)
    objective.evaluate(x, torch.arange(2), None)
    analytic = objective.alpha_grad.clone()
    eps = 1e-3
    for row in range(2):
        losses = []
        for delta in (eps, -eps):
            objective.alpha[row] = 0.4 + delta
            losses.append(float(objective.evaluate(x, torch.tensor([row]), None)[0][0]))
        objective.alpha[row] = 0.4
        numeric = (losses[0] - losses[1]) / (2 * eps)
        assert analytic[row] == pytest.approx(numeric, rel=0.05, abs=1e-4)
    assert analytic.abs().max() > 1e-3  # alpha matters: the surrogate is not the start model


def test_at_alpha_zero_a_fedsgd_gradient_is_inverting_gradients_objective(mnist_victims):
    """One local step, surrogate at the client's start weights: the objective is IG's, row by row."""
    images, labels = mnist_victims[0][:3], mnist_victims[1][:3]
    view = _updates(_model(width=128), images, labels, ClientSetting(1, 1, 0.1))
    names = select_parameters(view.model, "all")
    x = _dummies(view)
    sme = _objective(view, names, alpha_start=0.0, alpha_lr=0.0, tv_weight=1e-2)
    problem = GradientMatchingProblem(names=names, iterations=1, lr=0.1, tv_weight=1e-2, restarts=1, init="randn",
                                      signed=True, boxed=True, lr_decay=False, engine="loop")
    ig = GradientMatching(view.model, view.labels, [view.gradients[n] for n in names], problem, x)
    rows = torch.arange(3)
    sme_losses, sme_grads = sme.evaluate(x, rows, None)
    ig_losses, ig_grads = ig.evaluate(x, rows, None)
    torch.testing.assert_close(sme_losses, ig_losses, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sme_grads, ig_grads, atol=1e-5, rtol=1e-3)


def test_one_forward_pass_per_row_whatever_the_local_steps(mnist_victims):
    images, labels = mnist_victims[0][:4], mnist_victims[1][:4]
    view = _updates(_model(width=64), images, labels, ClientSetting(4, 5, 0.1))
    objective = _objective(view, select_parameters(view.model, "all"))
    calls = []
    hook = view.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        objective.evaluate(_dummies(view), torch.arange(1), None)
    finally:
        hook.remove()
    assert len(calls) == 1


def test_sme_reconstructs_a_fedavg_update_and_learns_alpha(mnist_victims):
    images, labels = mnist_victims[0][:4], mnist_victims[1][:4]
    view = _updates(_model(width=256), images, labels, ClientSetting(4, 3, 0.01))
    attack = build_attack("sme", iterations=300, tv_weight=1e-4, alpha_lr=0.01)
    result = attack(view, seed=0)
    assert result.engine == "loop" and result.images.shape == images.shape
    assert _matched_ssim(images, result.images, 4).median() > 0.5
    assert float(attack.fitted["alpha"].flatten()[0]) != pytest.approx(0.5, abs=1e-3)


def test_sme_targeted_matches_only_the_gradients_before_precode(mnist_victims):
    images, labels = mnist_victims[0][:2], mnist_victims[1][:2]
    model = _model(width=64, precode=PrecodeSpec(bottleneck_size=16))
    view = _updates(model, images, labels, ClientSetting(2, 2, 0.1), defense="precode")
    assert attack_needs_precode("sme_targeted") and not attack_needs_precode("sme")
    attack = build_attack("sme_targeted", iterations=5)
    assert attack.selection == "before_precode"
    result = attack(view, seed=0)
    assert torch.isfinite(result.gradient_loss).all()
    before = select_parameters(model, "before_precode")
    assert len(before) < len(select_parameters(model, "all"))
    # Only the earlier gradients are matched; the surrogate still moves every weight by its update.
    objective = _objective(view, before)
    assert len(objective.targets) == len(before) and set(objective.moved) == set(view.gradients)


def test_the_client_s_images_fit_a_surrogate_between_the_weights_better_than_one_beyond_the_start(mnist_victims):
    """The surrogate lies on the segment from w_0 towards the client's end weights: at the true images,
    alpha 0.5 gives a lower objective than the mirrored point -0.5 (a surrogate moved the wrong way)."""
    images, labels = mnist_victims[0][:4], mnist_victims[1][:4]
    view = _updates(_model(width=128), images, labels, ClientSetting(4, 3, 0.3))
    objective = _objective(view, select_parameters(view.model, "all"))
    truth = ((images - view.model.mean[0]) / view.model.std[0]).unsqueeze(0)
    inside = float(objective.evaluate(truth, torch.arange(1), None)[0][0])
    objective.alpha[0] = -0.5
    beyond = float(objective.evaluate(truth, torch.arange(1), None)[0][0])
    assert inside < beyond
