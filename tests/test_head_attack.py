"""The head attack (ppp.attacks.head): features from the classifier head's gradient, then images."""

import pytest
import torch

from ppp.attacks import ServerView, build_attack
from ppp.attacks.head import head_module, peel_layers, recover_head_inputs, recover_precode_inputs
from ppp.client import ClientSetting, client_update
from ppp.data import DATASETS
from ppp.defenses import build_defense
from ppp.gradients import shared_gradient
from ppp.metrics import image_metrics
from ppp.models import PrecodeSpec, build_model
from ppp.stages import match_reconstructions

MNIST = DATASETS["mnist"]


def _lenet(precode: bool, seed: int = 1):
    torch.manual_seed(seed)
    model = build_model("lenet", (1, 32, 32), 10, MNIST["mean"], MNIST["std"], PrecodeSpec() if precode else None)
    return model.eval()


def _updates(model, images, labels, group):
    """Every update's gradients (stacked) and the true inputs of the head and of PRECODE, as captured in
    the very forward pass that computed the update (PRECODE samples its code there)."""
    _, head = head_module(model)
    grads, head_inputs, precode_inputs = {}, [], []
    for start in range(0, len(images), group):
        seen = {}
        hooks = [head.register_forward_hook(lambda m, i, o: seen.update(head=i[0].detach()))]
        if model.has_precode:
            hooks.append(model.bottleneck.encoder.register_forward_hook(
                lambda m, i, o: seen.update(precode=i[0].detach())))
        g = shared_gradient(model, images[start:start + group], labels[start:start + group])
        for hook in hooks:
            hook.remove()
        for name, value in g.items():
            grads.setdefault(name, []).append(value)
        head_inputs.append(seen["head"])
        precode_inputs.append(seen.get("precode"))
    stacked = {name: torch.stack(values) for name, values in grads.items()}
    precode = torch.stack(precode_inputs).double() if model.has_precode else None
    return stacked, torch.stack(head_inputs).double(), precode


def _relative_error(estimate, truth):
    """The worst relative error per image, images of an update matched to their nearest estimate (images
    with the same label are interchangeable: their order is the attacker's)."""
    worst = 0.0
    for est, true in zip(estimate.double(), truth.double()):
        distances = torch.cdist(true, est)
        order = match_reconstructions(true, est)
        worst = max(worst, (distances[torch.arange(len(order)), order] / true.norm(dim=-1)).max().item())
    return worst


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4, 5, 6, 7], [3, 3, 5, 7, 2, 6, 6, 9]],
                         ids=["distinct", "a_repeated_label"])
def test_head_gradient_gives_every_image_s_features(mnist_victims, labels):
    images = mnist_victims[0][:8]
    labels = torch.tensor(labels)
    model = _lenet(precode=False)
    grads, truth, _ = _updates(model, images, labels, 4)
    _, head = head_module(model)
    recovery = recover_head_inputs(grads["stages.head.weight"], grads["stages.head.bias"], head.weight, head.bias,
                                   labels.view(2, 4))
    assert _relative_error(recovery.features, truth) < 1e-4
    assert recovery.residual.max() < 1e-5
    assert torch.allclose(recovery.scales, torch.full_like(recovery.scales, 0.25), rtol=1e-4)


def test_wrong_labels_leave_a_residual(mnist_victims):
    """The fit checks itself: labels that did not produce the update cannot reproduce it."""
    images, labels = mnist_victims[0][:4], torch.tensor([0, 1, 2, 3])
    model = _lenet(precode=False)
    grads, _, _ = _updates(model, images, labels, 4)
    _, head = head_module(model)
    recovery = recover_head_inputs(grads["stages.head.weight"], grads["stages.head.bias"], head.weight, head.bias,
                                   torch.tensor([[4, 5, 6, 7]]), starts=2)
    assert recovery.residual.min() > 1e-3
    # The residual finds the labels: a wrong guess for one image is corrected, and the fit is exact again.
    searched = recover_head_inputs(grads["stages.head.weight"], grads["stages.head.bias"], head.weight, head.bias,
                                   torch.tensor([[0, 1, 2, 9]]), starts=4, search_labels=True)
    assert searched.labels.tolist() == [[0, 1, 2, 3]] and searched.residual.max() < 1e-5


def test_precode_inputs_follow_through_decoder_and_encoder(mnist_victims):
    images, labels = mnist_victims[0][:8], torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    model = _lenet(precode=True)
    grads, head_truth, precode_truth = _updates(model, images, labels, 4)
    _, head = head_module(model)
    recovery = recover_head_inputs(grads["stages.head.weight"], grads["stages.head.bias"], head.weight, head.bias,
                                   labels.view(2, 4))
    assert _relative_error(recovery.features, head_truth) < 1e-4  # the decoder's outputs
    view = ServerView(model, grads, labels, "eval", images_per_update=4)
    assert _relative_error(recover_precode_inputs(view, recovery), precode_truth) < 1e-4


def test_peeling_inverts_lenet_s_last_convolution(mnist_victims):
    model = _lenet(precode=False)
    images = mnist_victims[0][:2]
    with torch.no_grad():
        head_inputs = model._features_before(images, 3).flatten(1)
        conv2_outputs = model._features_before(images, 2).flatten(1).double()
    index, peeled = peel_layers(model, 3, head_inputs.double())
    assert index.tolist() == [2, 2]  # conv2 maps 16x16 to 8x8: fewer outputs than inputs, so peeling stops there
    assert _relative_error(peeled[None], conv2_outputs[None]) < 1e-3


def _ssim(truth, images):
    return torch.tensor([image_metrics(t, r)["ssim"] for t, r in zip(truth, images)])


def test_head_attack_reconstructs_an_undefended_lenet_batch(mnist_victims):
    images, labels = mnist_victims[0][:8], mnist_victims[1][:8]
    model = _lenet(precode=False)
    grads, _, _ = _updates(model, images, labels, 4)
    attack = build_attack("head", iterations=300, tv_weight=0.002, lr=0.1, labels="inferred")
    result = attack(ServerView(model, grads, None, "eval", images_per_update=4), seed=0)
    ordered = torch.cat([result.images[s:s + 4][match_reconstructions(images[s:s + 4], result.images[s:s + 4])]
                         for s in (0, 4)])
    assert _ssim(images, ordered).median() > 0.8
    assert result.gradient_loss.shape == (2,)


def test_head_attack_breaks_the_paper_s_ppp_on_a_lenet_batch(mnist_victims):
    """PPP noises only the layers before PRECODE: head, decoder and encoder stay exact."""
    images, labels = mnist_victims[0][:8], torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    model = _lenet(precode=True)
    defense = build_defense("ppp", 1.0)
    setting = ClientSetting(images=4)
    gen = torch.Generator().manual_seed(0)
    updates = [client_update(model, images[s:s + 4], labels[s:s + 4], setting, defense, gen) for s in (0, 4)]
    grads = {name: torch.stack([u[name] for u in updates]) for name in updates[0]}
    attack = build_attack("head", iterations=300, tv_weight=0.002, lr=0.1)
    result = attack(ServerView(model, grads, labels, "eval", images_per_update=4), seed=0)
    assert _ssim(images, result.images).median() > 0.8
    # The same attack on PRECODE's noised input (ig on the noised layers) would not; the noise is there:
    assert not torch.allclose(updates[0]["stages.conv1.0.weight"],
                              shared_gradient(model, images[:4], labels[:4])["stages.conv1.0.weight"], atol=0.1)


def test_peeling_stops_where_the_features_are_not_exact(mnist_victims):
    """An inexact fit's features leave the sigmoid's range once peeled (inverted anyway they are noise):
    such a row stays where it is, while exact rows of the same call are peeled (cells attacked in one pass
    must not change each other's results)."""
    model = _lenet(precode=False)
    with torch.no_grad():
        head_inputs = model._features_before(mnist_victims[0][:4], 3).flatten(1).double()
        conv2_outputs = model._features_before(mnist_victims[0][:4], 2).flatten(1).double()
    off = head_inputs.clone()
    off[1:3] *= 1 + 0.01 * torch.randn(off[1:3].shape, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64)
    index, peeled = peel_layers(model, 3, off)
    assert index.tolist() == [2, 3, 3, 2]
    assert torch.equal(peeled[1:3, :off.shape[1]], off[1:3])
    assert _relative_error(peeled[[0, 3]][None], conv2_outputs[[0, 3]][None]) < 1e-3


def test_feature_matching_per_row_stage_equals_one_stage_at_a_time(mnist_victims):
    from ppp.attacks.analytic import FeatureMatching
    model = _lenet(precode=False)
    images = (mnist_victims[0][:3] - model.mean[0]) / model.std[0]
    with torch.no_grad():
        at3 = model._features_before(mnist_victims[0][:3], 3).flatten(1)
        at2 = model._features_before(mnist_victims[0][:3], 2).flatten(1)
    targets = torch.stack([at2[0] * 1.1, at3[1] * 0.9, at2[2] * 0.8])
    rows = torch.arange(3)
    mixed = FeatureMatching(model, targets, 0.0, "mse", torch.tensor([2, 3, 2])).matching_loss(images, rows)
    alone2 = FeatureMatching(model, targets, 0.0, "mse", 2).matching_loss(images, rows)
    alone3 = FeatureMatching(model, targets, 0.0, "mse", 3).matching_loss(images, rows)
    assert torch.allclose(mixed, torch.stack([alone2[0], alone3[1], alone2[2]]))
    assert torch.allclose(mixed, torch.tensor([0.01 / 1.21, 0.01 / 0.81, 0.04 / 0.64]), rtol=1e-3)


def _fedavg_truth(model, images, labels, local_lr):
    """FedAvg's update of 2 local steps and the inputs of the head and of PRECODE at each step."""
    _, head = head_module(model)
    seen = {"head": [], "precode": []}
    hooks = [head.register_forward_hook(lambda m, i, o: seen["head"].append(i[0].detach().double()))]
    if model.has_precode:
        hooks.append(model.bottleneck.encoder.register_forward_hook(
            lambda m, i, o: seen["precode"].append(i[0].detach().double())))
    update = client_update(model, images, labels, ClientSetting(images=len(images), local_steps=2,
                                                                local_lr=local_lr),
                           build_defense("none"), torch.Generator().manual_seed(0))
    for hook in hooks:
        hook.remove()
    return update, torch.stack(seen["head"]), seen["precode"]


def test_fedavg_head_model_is_exact_at_every_step_s_features(mnist_victims):
    """The per-step model of FedAvg's head reproduces the pseudo-gradient at the true features of both
    steps; holding the features fixed over the steps does not (LeNet's features move between them)."""
    from ppp.attacks.head import _residual
    images, labels = mnist_victims[0][:4], torch.tensor([0, 1, 2, 3])
    model = _lenet(precode=False)
    update, steps, _ = _fedavg_truth(model, images, labels, 0.1)
    _, head = head_module(model)
    W, b = head.weight.detach().double(), head.bias.detach().double()
    M = torch.cat([update["stages.head.weight"].double(), update["stages.head.bias"].double()[:, None]], 1)
    rows = torch.cat([steps.flatten(0, 1), torch.ones(8, 1, dtype=torch.float64)], 1)
    V = torch.linalg.qr(rows.T)[0].T  # the basis the true rows span
    Y = torch.nn.functional.one_hot(labels, 10).double()
    residual, _, _, scales = _residual(rows @ V.T, M @ V.T, V, W, b, Y, 2, 0.1)
    assert residual.norm() < 1e-5
    assert torch.allclose(scales, torch.full_like(scales, 1 / 8), rtol=1e-3)
    fixed = _residual(rows[:4] @ V.T, M @ V.T, V, W, b, Y, 2, 0.1)[0]
    assert fixed.norm() > 1e-3


def test_precode_inputs_follow_fedavg_s_steps(mnist_victims):
    """Given every step's decoder outputs, replaying the client's steps on head, decoder and encoder gives
    PRECODE's inputs at the first step exactly."""
    from ppp.attacks.head import HeadRecovery, _output_errors
    images, labels = mnist_victims[0][:4], torch.tensor([0, 1, 2, 3])
    model = _lenet(precode=True)
    torch.manual_seed(3)
    update, steps, precode_steps = _fedavg_truth(model, images, labels, 0.1)
    _, head = head_module(model)
    Y = torch.nn.functional.one_hot(labels, 10).double()
    errors = _output_errors(steps, head.weight.detach().double(), head.bias.detach().double(), Y, 2, 0.1)
    recovery = HeadRecovery(steps[0][None], errors[None], torch.full((1, 2, 4), 1 / 8, dtype=torch.float64),
                            torch.zeros(1), labels[None], steps[None])
    view = ServerView(model, {n: g[None] for n, g in update.items()}, labels, "eval", images_per_update=4,
                      local_steps=2, local_lr=0.1)
    recovered = recover_precode_inputs(view, recovery)
    assert _relative_error(recovered, precode_steps[0][None]) < 1e-4


def test_replayed_drift_corrects_fedavg_s_head_features(mnist_victims):
    """Given how the head's inputs drift over the client's steps (replayed on the true images), the
    first step's inputs follow from the FedAvg head update almost exactly, where the fixed-features fit
    is off by about the drift (LeNet at local lr 0.01, 2 steps)."""
    from ppp.attacks.head import correct_for_drift, head_input_drift
    images, labels = mnist_victims[0][:4], torch.tensor([[0, 1, 2, 3]])
    model = _lenet(precode=False)
    update, steps, _ = _fedavg_truth(model, images, labels[0], 0.01)
    drift = head_input_drift(model, images[None], labels, 2, 0.01)
    torch.testing.assert_close(drift[0], steps - steps[:1], atol=1e-4, rtol=1e-3)  # the replay is the client's
    weight, bias = update["stages.head.weight"][None], update["stages.head.bias"][None]
    _, head = head_module(model)
    fixed = recover_head_inputs(weight, bias, head.weight, head.bias, labels, starts=2, local_steps=2, local_lr=0.01)
    corrected = correct_for_drift(fixed, drift, weight, bias, head.weight, head.bias, 0.01)
    assert _relative_error(fixed.features, steps[0][None]) > 0.02
    assert _relative_error(corrected.features, steps[0][None]) < 2e-3
    assert corrected.step_features.shape == (1, 2, 4, steps.shape[-1]) and float(corrected.residual[0]) < 1e-3


def test_drift_rounds_improve_the_head_attack_on_a_fedavg_update(mnist_victims):
    images, labels = mnist_victims[0][:4], mnist_victims[1][:4]
    model = _lenet(precode=False)
    update, _, _ = _fedavg_truth(model, images, labels, 0.01)
    view = ServerView(model, {n: g[None] for n, g in update.items()}, labels, "eval", images_per_update=4,
                      local_steps=2, local_lr=0.01)
    ssim = {}
    for rounds in (0, 2):
        attack = build_attack("head", iterations=300, tv_weight=0.002, lr=0.1, drift_rounds=rounds)
        result = attack(view, seed=0)
        ssim[rounds] = _ssim(images, result.images[match_reconstructions(images, result.images)]).median()
    assert ssim[2] > ssim[0] + 0.1 and ssim[2] > 0.7, ssim


def test_drift_correction_follows_fedavg_on_mini_batches(mnist_victims):
    """2 mini-batches of 2 over 2 steps: each image is in one step's batch; given the replayed drift, the
    first step's head inputs follow (the fixed-features fit, blind to the batches' order, does not)."""
    from ppp.attacks.head import correct_for_drift, head_input_drift
    from ppp.client import local_batches
    images, labels = mnist_victims[0][:4], torch.tensor([[0, 1, 2, 3]])
    model = _lenet(precode=False)
    batches = local_batches(4, 2, 2)
    _, head = head_module(model)
    seen = []
    hook = head.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().double()))
    with torch.no_grad():
        model(images)
    hook.remove()
    update = client_update(model, images, labels[0], ClientSetting(4, 2, 0.01, local_batch=2), build_defense("none"),
                           torch.Generator().manual_seed(0))
    weight, bias = update["stages.head.weight"][None], update["stages.head.bias"][None]
    drift = head_input_drift(model, images[None], labels, 2, 0.01, batches)
    fixed = recover_head_inputs(weight, bias, head.weight, head.bias, labels, starts=2, local_steps=2, local_lr=0.01,
                                batches=batches)
    corrected = correct_for_drift(fixed, drift, weight, bias, head.weight, head.bias, 0.01, batches=batches)
    assert _relative_error(corrected.features, seen[0][None]) < 2e-3
    assert float(corrected.residual[0]) < 1e-4
