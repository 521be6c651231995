"""The head attack: every image's features from the classifier head's gradient, then feature inversion.

For a model whose last layer is linear, logits = W h + b, an update of B images (FedSGD, mean
cross-entropy) shares [dW | db] = sum_i s_i g_i [h_i^T, 1] with g_i = softmax(W h_i + b) - onehot(y_i)
and s_i = 1/B (per-example clipping in DP-SGD changes s_i; FedAvg's local steps change h_i slightly).
The matrix has rank at most B, and its row space is spanned by the B vectors [h_i, 1]: with V the B
leading right singular vectors, [h_i, 1] = a_i V for an unknown B x B matrix A. Given A, the model's own
head gives every g_i, and the update must be reproduced: K = [dW | db] V^T = G^T diag(s) A. The attack
fits A (and the scales s, least squares inside) by Levenberg-Marquardt on that residual, from the
label rows' start (each image's class row of [dW | db], its dominant term) and seeded perturbed starts,
keeping the start of least residual. On a clean gradient the residual reaches float64 precision at the
true features (a check, not an assumption); noisy gradients leave a residual, and the fit is then a
least-squares estimate. Labels are the server's where it knows them, else inferred
(ppp.attacks.labels).

Through PRECODE (its bottleneck right before the head, the paper's position), the head's input is the
decoder's output d_i. The decoder is linear, so the codes follow by least squares, and the gradient at
each code is s_i W_dec^T W^T g_i, known once g_i is. PRECODE's encoder is linear too: its mean half's
gradient is sum_i delta_i [u_i^T, 1] with delta_i that code gradient plus the KL term's
beta mu_i / (B ln 2); with the delta_i known, the encoder's inputs u_i (the features entering PRECODE)
follow by least squares, a few rounds updating mu_i. The paper's PPP leaves head, decoder and encoder
clean, so this recovery is exact there.

The recovered features (the head's input, or PRECODE's input) are then inverted to images by
optimisation, as the analytic attack does (ppp.attacks.analytic.FeatureMatching): one row per image,
signed Adam, box, TV. docs/method.md, "The head attack".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ppp.attacks.analytic import FeatureMatching, leading_right_singular_vectors
from ppp.attacks.engine import (AttackResult, GradientMatching, RowOptimisation,
                               RowsObjective, ServerView, optimise)
from ppp.gradients import select_parameters
from ppp.attacks.labels import _classifier, infer_update_labels
from ppp.models import StagedNet
from ppp.precode import CODE_MODES
from ppp.seeding import generator


def head_module(model: StagedNet) -> tuple[str, nn.Linear]:
    """The classifier head: the model's last linear layer outside PRECODE (label inference's classifier)."""
    return _classifier(model)


def head_index(model: StagedNet) -> int:
    """The stage the head belongs to: its input is the output of the stages before."""
    owner, _ = head_module(model)
    return list(model.stages.keys()).index(owner.split(".")[1])


@dataclass
class HeadRecovery:
    """What the head's gradient gives per update (U updates of B images)."""

    features: torch.Tensor  # (U, B, D) the head's inputs (at the server's weights: FedAvg's first step)
    # Per fitted step S' (1 for FedSGD, or FedAvg with features held fixed; S for FedAvg's exact fit):
    output_errors: torch.Tensor  # (U, S', B, C) softmax - onehot per image (FedAvg fixed: the steps' mean)
    scales: torch.Tensor  # (U, S', B) each term's weight in the update (1/(S B) without clipping)
    residual: torch.Tensor  # (U,) relative residual of the fit: 0 where the gradient is reproduced exactly
    labels: torch.Tensor | None = None  # (U, B) the labels the fit used (corrected where they were searched)
    step_features: torch.Tensor | None = None  # (U, S', B, D) the head's inputs at every fitted step


def _output_errors(features: torch.Tensor, W: torch.Tensor, b: torch.Tensor, Y: torch.Tensor, local_steps: int,
                   local_lr: float, batches: list[list[int]] | None = None) -> torch.Tensor:
    """Each image's softmax - onehot (S, B, C) at every local step. `features` (S', B, D) are the head's
    inputs per step: S' = S when the fit has each step's own (the exact FedAvg model: the head takes the
    client's steps, and every step reads the features its earlier layers give then), S' = 1 when one set
    is held fixed over the steps (approximate for FedAvg, where the earlier layers move too). With
    mini-batches (`batches`: the images of every step), an image out of a step's batch has zero error there."""
    out = []
    images = features.shape[1]
    for step in range(local_steps):
        h = features[min(step, features.shape[0] - 1)]
        G = torch.softmax(h @ W.T + b, dim=1) - Y
        batch = images
        if batches is not None:
            taken = torch.zeros(images, 1, dtype=G.dtype)
            taken[batches[step]] = 1.0
            G, batch = G * taken, len(batches[step])
        out.append(G)
        if step < local_steps - 1:
            W = W - local_lr * G.T @ h / batch
            b = b - local_lr * G.sum(0) / batch
    return torch.stack(out)


def _residual(A: torch.Tensor, K: torch.Tensor, V: torch.Tensor, W: torch.Tensor, b: torch.Tensor, Y: torch.Tensor,
              local_steps: int, local_lr: float,
              batches: list[list[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(residual, features, output errors, scales) of one update at A: features and errors (S', B, .) and
    scales (S' * B,), S' = A's rows over the B images (1, or every local step's own)."""
    images = Y.shape[0]
    rows = A @ V
    rows = rows / rows[:, -1:]
    per_step = rows.shape[0] // images
    features = rows[:, :-1].view(per_step, images, -1)
    G = _output_errors(features, W, b, Y, local_steps, local_lr, batches)
    if per_step == 1:
        G = G.mean(0, keepdim=True)  # the pseudo-gradient is the steps' mean; the features are fixed
    coords = rows @ V.T  # (S' B, r): each [h, 1] in the basis
    # K = sum_k s_k g_k coords_k^T is linear in the scales s: solved exactly for the current A.
    basis = torch.einsum("ic,ij->icj", G.flatten(0, 1), coords).flatten(1)  # (S' B, C * r)
    gram = basis @ basis.T
    s = torch.linalg.solve(gram + 1e-12 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype),
                           basis @ K.flatten())
    return (K.flatten() - basis.T @ s) / K.norm().clamp_min(1e-300), features, G, s


def _fit(K: torch.Tensor, V: torch.Tensor, W: torch.Tensor, b: torch.Tensor, Y: torch.Tensor, A: torch.Tensor,
         steps: int, local_steps: int = 1, local_lr: float = 0.01,
         batches: list[list[int]] | None = None) -> tuple[torch.Tensor, float]:
    """Levenberg-Marquardt on A (S' B x r) for one update; returns (A, relative residual)."""

    def residual(A: torch.Tensor) -> torch.Tensor:
        return _residual(A, K, V, W, b, Y, local_steps, local_lr, batches)[0]

    damping = 1e-3
    r = residual(A)
    cost = float(r @ r)
    for _ in range(steps):
        if not math.isfinite(cost) or cost < 1e-28:
            break
        J = torch.func.jacfwd(residual)(A).reshape(r.shape[0], -1)
        JtJ, Jtr = J.T @ J, J.T @ r
        improved = False
        for _ in range(6):
            step = torch.linalg.solve(JtJ + damping * torch.diag(JtJ.diagonal().clamp_min(1e-12)), Jtr)
            candidate = A - step.view_as(A)
            r_new = residual(candidate)
            new_cost = float(r_new @ r_new)
            if math.isfinite(new_cost) and new_cost < cost:
                gain = 1 - new_cost / cost
                A, r, cost = candidate, r_new, new_cost
                damping = max(damping / 3, 1e-12)
                improved = gain > 1e-4  # stalled: stop
                break
            damping *= 4
        if not improved:
            break
    return A, math.sqrt(cost) if math.isfinite(cost) else float("inf")


EXACT_FIT = 1e-5  # relative residual: float32 gradients leave about 1e-7; a wrong fit leaves far more


def _fit_update(M: torch.Tensor, V: torch.Tensor, W: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
                starts: int, steps: int, gen: torch.Generator, local_steps: int,
                local_lr: float, batches: list[list[int]] | None = None) -> tuple[torch.Tensor, float]:
    """One update's best A over the label rows' start and up to `starts` perturbed ones. With a basis
    of S B rows (FedAvg, every step's features their own), the fixed-features fit starts each step."""
    K = M @ V.T
    Y = nn.functional.one_hot(labels, W.shape[0]).double()
    start = M[labels] @ V.T  # each image's own class row: its dominant term
    per_step = V.shape[0] // len(labels) > 1
    scale = start.norm() / len(labels)
    best_A, best = None, float("inf")
    for k in range(starts + 1):
        if best < EXACT_FIT:
            break
        candidate = start if k == 0 else start + 0.1 * k * scale * torch.randn(start.shape, generator=gen,
                                                                               dtype=torch.float64)
        A, res = _fit(K, V, W, b, Y, candidate, steps, local_steps, local_lr, batches)
        if per_step:
            # Every step's features from the fixed ones, a little apart so that the steps can separate.
            spread = 1e-3 * A.norm() / len(labels)
            A = torch.cat([A] + [A + spread * torch.randn(A.shape, generator=gen, dtype=torch.float64)
                                 for _ in range(local_steps - 1)])
            A, res = _fit(K, V, W, b, Y, A, steps, local_steps, local_lr, batches)
        if res < best:
            best_A, best = A, res
    return best_A, best


def recover_head_inputs(weight_grad: torch.Tensor, bias_grad: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor, labels: torch.Tensor, starts: int = 8, steps: int = 50,
                        seed: int = 0, local_steps: int = 1, local_lr: float = 0.01,
                        search_labels: bool = False, per_step: bool = False,
                        batches: list[list[int]] | None = None) -> HeadRecovery:
    """Each image's input to a linear head from the head's shared gradients.

    weight_grad (U, C, D), bias_grad (U, C), the head's weight (C, D) and bias (C,), labels (U, B).
    FedAvg (local_steps S > 1): with `per_step` and S B <= C, every step's features are unknowns of the
    fit (exact: the pseudo-gradient's rank is S B); else one set held over the steps (approximate).
    With `search_labels` (labels inferred, not told), an update whose fit is not exact has its labels
    corrected greedily: one image's label changed at a time, kept where the fit's residual drops, until
    the fit is exact or no change helps; the labels used are returned. In float64 throughout."""
    updates, images = labels.shape
    classes = weight.shape[0]
    if images > classes:
        raise ValueError(f"the head's gradient has rank at most {classes} (its classes): it cannot separate "
                         f"{images} images per update")
    fit_steps = local_steps if per_step and local_steps > 1 and local_steps * images <= classes else 1
    W, b = weight.detach().double(), bias.detach().double()
    stacked = torch.cat([weight_grad.double(), bias_grad.double().unsqueeze(-1)], dim=-1)  # (U, C, D + 1)
    bases = leading_right_singular_vectors(stacked, fit_steps * images)  # (U, S' B, D + 1)
    features = torch.empty(updates, fit_steps, images, W.shape[1], dtype=torch.float64)
    errors = torch.empty(updates, fit_steps, images, classes, dtype=torch.float64)
    scales = torch.empty(updates, fit_steps, images, dtype=torch.float64)
    residuals = torch.empty(updates, dtype=torch.float64)
    used = labels.clone()
    gen = generator(seed)
    for u in range(updates):
        M = stacked[u]
        V = torch.linalg.qr(bases[u].T)[0].T  # orthonormal rows
        current = labels[u].clone()
        best_A, best = _fit_update(M, V, W, b, current, starts, steps, gen, local_steps, local_lr, batches)
        while search_labels and best >= EXACT_FIT:
            trials = []
            for i in range(images):
                for c in range(classes):
                    if c != int(current[i]):
                        candidate = current.clone()
                        candidate[i] = c
                        A, res = _fit_update(M, V, W, b, candidate, 0, steps, gen, local_steps, local_lr,
                                             batches)
                        trials.append((res, candidate, A))
            res, candidate, A = min(trials, key=lambda trial: trial[0])
            if not res < 0.5 * best:
                break
            best, current, best_A = res, candidate, A
            # The search's fits try one start each; the labels it settles on get every start.
            best_A, best = min([(best_A, best), _fit_update(M, V, W, b, current, starts, steps, gen, local_steps,
                                                            local_lr, batches)], key=lambda fit: fit[1])
        used[u] = current
        Y = nn.functional.one_hot(current, classes).double()
        _, features[u], errors[u], s = _residual(best_A, M @ V.T, V, W, b, Y, local_steps, local_lr, batches)
        scales[u] = s.view(fit_steps, images)
        residuals[u] = best
    # A failed fit can divide by a vanishing bias coordinate: keep such rows finite (they are wrong either way).
    features = torch.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0).clamp(-1e6, 1e6)
    return HeadRecovery(features[:, 0], errors, scales, residuals, used, features)


def recover_precode_inputs(view: ServerView, recovery: HeadRecovery, rounds: int = 4) -> torch.Tensor:
    """PRECODE's inputs (U, B, D_in) from the decoder's outputs the head gave, the decoder's weights and
    the encoder's shared gradient (its mean half); float64. Where the head's fit has every FedAvg step's
    outputs, the client's steps are replayed on head, decoder and encoder (each step's weights follow
    from the steps before), and every step's inputs are solved together; the first step's are returned."""
    model = view.model
    bottleneck = model.bottleneck
    code = bottleneck.bottleneck_size
    _, head = head_module(model)
    lr = view.local_lr or 0.0
    names = model.encoder_parameter_names()
    grad_w = view.gradients[next(n for n in names if n.endswith("weight"))].double()[:, :code]
    grad_b = view.gradients[next(n for n in names if n.endswith("bias"))].double()[:, :code]
    encoder_grad = torch.cat([grad_w, grad_b.unsqueeze(-1)], dim=-1)  # (U, K, D_in + 1)
    step_features = recovery.step_features if recovery.step_features is not None else recovery.features[:, None]
    updates, steps, images = step_features.shape[:3]
    outputs = []
    for u in range(updates):
        W = head.weight.detach().double()
        decoder = torch.cat([bottleneck.decoder.weight.detach().double(),
                             bottleneck.decoder.bias.detach().double().unsqueeze(1)], dim=1)  # (D_out, K + 1)
        code_grads, step_codes = [], []
        for t in range(steps):
            decoded = step_features[u, t]  # (B, D_out): the decoder's outputs at step t
            codes = torch.linalg.lstsq(decoder[:, :-1], (decoded - decoder[:, -1]).T).solution.T  # (B, K)
            errors = recovery.output_errors[u, t]
            step_codes.append(codes)
            code_grads.append(recovery.scales[u, t].unsqueeze(1) * (errors @ W @ decoder[:, :-1]))  # (B, K)
            if t < steps - 1:  # the client's step on head and decoder (mean loss: 1/B per image)
                upstream = errors @ W / images  # (B, D_out)
                W = W - lr * errors.T @ decoded / images
                decoder = decoder - lr * upstream.T @ torch.cat([codes, torch.ones(images, 1, dtype=codes.dtype)], 1)
        code_grads = torch.cat(code_grads)  # (S' B, K)
        encoder = torch.cat([bottleneck.encoder.weight.detach().double()[:code],
                             bottleneck.encoder.bias.detach().double()[:code].unsqueeze(1)], dim=1)
        rows = None
        for _ in range(rounds):
            # mu of every step's images at that step's encoder (from the inputs of the round before).
            mus, current = [], encoder
            for t in range(steps):
                if rows is None:  # first round: the sampled codes for the means
                    mus.append(step_codes[t])
                    continue
                step_rows = rows[t * images:(t + 1) * images]
                mu = step_rows @ current.T
                mus.append(mu)
                if t < steps - 1:
                    delta_t = code_grads[t * images:(t + 1) * images] * steps + bottleneck.beta * mu / (
                        images * math.log(2))
                    current = current - lr * delta_t.T @ step_rows
            delta = code_grads + bottleneck.beta * torch.cat(mus) / (images * math.log(2) * steps)
            rows = torch.linalg.lstsq(delta.T, encoder_grad[u]).solution  # (S' B, D_in + 1)
            rows = rows / rows[:, -1:]
        outputs.append(rows[:images, :-1])
    return torch.nan_to_num(torch.stack(outputs), nan=0.0, posinf=0.0, neginf=0.0).clamp(-1e6, 1e6)


def head_input_drift(model: StagedNet, images: torch.Tensor, labels: torch.Tensor, local_steps: int,
                     local_lr: float, batches: list[list[int]] | None = None) -> torch.Tensor:
    """How the head's inputs move over a FedAvg client's local steps on `images` (U, B, C, H, W) with
    `labels` (U, B): the server replays the steps (plain SGD, each on its mini-batch of `batches` or on all,
    PRECODE at its mean code) and returns every image's head input at every step's weights minus its
    first, (U, S, B, D), float64."""
    from torch.func import functional_call

    from ppp.client import _functional_loss, step_images
    from ppp.precode import code_mode

    _, head = head_module(model)
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().double()))
    drift = []
    try:
        with code_mode(model, "mean"):
            for pixels, update_labels in zip(images, labels):
                weights = {n: p.detach() for n, p in model.named_parameters()}
                steps = []
                for step in range(local_steps):
                    seen.clear()
                    with torch.no_grad():
                        functional_call(model, weights, (pixels,))
                    steps.append(seen[0].flatten(1))
                    if step < local_steps - 1:
                        current = {n: w.clone().requires_grad_(True) for n, w in weights.items()}
                        chosen = step_images(batches, step)
                        loss = _functional_loss(model, current, pixels[chosen], update_labels[chosen])
                        grads = torch.autograd.grad(loss, list(current.values()))
                        weights = {n: (w - local_lr * g).detach() for (n, w), g in zip(current.items(), grads)}
                stacked = torch.stack(steps)
                drift.append(stacked - stacked[:1])
    finally:
        hook.remove()
    return torch.stack(drift)


def correct_for_drift(recovery: HeadRecovery, drift: torch.Tensor, weight_grad: torch.Tensor,
                      bias_grad: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, local_lr: float,
                      rounds: int = 200, batches: list[list[int]] | None = None) -> HeadRecovery:
    """The first step's head inputs H_0 of every update, given the inputs' drift D_k over the local steps
    (`head_input_drift` on the images recovered so far). The FedAvg head update is
    K = sum_k s_k G_k^T [H_0 + D_k, 1] (s_k = 1/(S n_k), n_k the images of step k: all, or its mini-batch
    of `batches`), every step's output errors G_k from the head's own replayed steps at H_0 + D_k. With the
    G_k fixed, K is linear in H_0: least squares gives H_0, and H_0 the G_k, alternately (at most `rounds`
    times, from the fixed-features fit, until H_0 stops moving). Returns a recovery with every step's
    features. An update with two images of one label can stall short of the truth, as the fixed fit can."""
    updates, local_steps, images, _ = drift.shape
    labels = recovery.labels
    W, b = weight.detach().double(), bias.detach().double()
    classes = W.shape[0]
    stacked = torch.cat([weight_grad.double(), bias_grad.double().unsqueeze(-1)], dim=-1)  # (U, C, D + 1)
    sizes = [images if batches is None else len(batches[k]) for k in range(local_steps)]
    step_scale = torch.tensor([1.0 / (local_steps * n) for n in sizes], dtype=torch.float64).view(-1, 1, 1)
    ones = torch.ones(local_steps, images, 1, dtype=torch.float64)
    features = recovery.features.clone().double()
    step_features = torch.empty(updates, local_steps, images, W.shape[1], dtype=torch.float64)
    errors = torch.empty(updates, local_steps, images, classes, dtype=torch.float64)
    residuals = torch.empty(updates, dtype=torch.float64)
    for u in range(updates):
        Y = nn.functional.one_hot(labels[u], classes).double()
        D, K = drift[u].double(), stacked[u]
        H0 = features[u]
        for _ in range(rounds):
            G = step_scale * _output_errors(H0.unsqueeze(0) + D, W, b, Y, local_steps, local_lr, batches)
            rhs = K.clone()
            rhs[:, :-1] -= torch.einsum("kic,kid->cd", G, D)
            rows = torch.linalg.lstsq(G.sum(0).T, rhs).solution  # (B, D + 1): [H_0, 1] up to each row's scale
            new = torch.nan_to_num(rows[:, :-1] / rows[:, -1:], nan=0.0, posinf=0.0, neginf=0.0).clamp(-1e6, 1e6)
            moved = float((new - H0).norm() / H0.norm().clamp_min(1e-300))
            H0 = new
            if moved < 1e-9:
                break
        G = _output_errors(H0.unsqueeze(0) + D, W, b, Y, local_steps, local_lr, batches)
        modelled = torch.einsum("kic,kid->cd", step_scale * G, torch.cat([H0.unsqueeze(0) + D, ones], dim=-1))
        residuals[u] = (K - modelled).norm() / K.norm().clamp_min(1e-300)
        features[u], step_features[u], errors[u] = H0, H0.unsqueeze(0) + D, G
    scales = step_scale.view(-1, 1).expand(local_steps, images).expand(updates, -1, -1).clone()
    return HeadRecovery(features, errors, scales, residuals, labels, step_features)


# Elementwise activations with an inverse, for peeling layers off recovered features.
INVERSES: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    nn.Sigmoid: lambda y: torch.logit(y.clamp(1e-12, 1 - 1e-12)),
    nn.Tanh: lambda y: torch.atanh(y.clamp(-1 + 1e-12, 1 - 1e-12)),
    nn.Identity: lambda y: y,
}
PEEL_MAX_INPUTS = 4096  # a layer is inverted through its dense matrix: at most this many inputs
# The ranges of bounded activations: a peeled stage's input must lie in the range of the activation that
# produced it. An inexact fit's features do not (the inverses amplify any error), and peeling stops there.
ACTIVATION_RANGES: dict[type, tuple[float, float]] = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0)}
PEEL_TOLERANCE = 1e-3  # how far outside that range (a share of its width) a peeled value may lie


def _linear_map(layer: nn.Module, in_shape: tuple[int, ...]) -> torch.Tensor:
    """A Conv2d's or Linear's weight map (without bias) as a dense (inputs, outputs) matrix."""
    basis = torch.eye(math.prod(in_shape), dtype=torch.float64, device=layer.weight.device).view(-1, *in_shape)
    with torch.no_grad():
        if isinstance(layer, nn.Conv2d):
            out = nn.functional.conv2d(basis, layer.weight.double(), None, layer.stride, layer.padding,
                                       layer.dilation, layer.groups)
        else:
            out = basis @ layer.weight.double().T
    return out.flatten(1)


def _peel_stage(model: StagedNet, index: int, values: torch.Tensor) -> torch.Tensor | None:
    """The inputs of stage index - 1 from its outputs `values` (rows, n), or None where the stage cannot
    be inverted (a layer that is not linear and invertible, or with fewer outputs than inputs)."""
    stage = list(model.stages.values())[index - 1]
    layers = list(stage.children()) if isinstance(stage, nn.Sequential) else [stage]
    with torch.no_grad():
        current = model._features_before(torch.zeros(1, *model.in_shape, device=model.mean.device), index - 1)
    shapes = []
    with torch.no_grad():
        for layer in layers:
            shapes.append(tuple(current.shape[1:]))
            current = layer(current)
    for layer, in_shape in zip(reversed(layers), reversed(shapes)):
        if isinstance(layer, nn.Flatten):
            continue  # values stay flat; shapes are tracked separately
        inverse = next((f for t, f in INVERSES.items() if type(layer) is t), None)
        if inverse is not None:
            values = inverse(values)
            continue
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            return None
        inputs = math.prod(in_shape)
        matrix = _linear_map(layer, in_shape).to(values.device)
        if inputs > PEEL_MAX_INPUTS or matrix.shape[1] < inputs:
            return None
        bias = 0.0
        if layer.bias is not None:
            with torch.no_grad():
                bias = layer(torch.zeros(1, *in_shape, dtype=layer.weight.dtype,
                                         device=layer.weight.device)).flatten(1).double()
        # One pseudo-inverse for all rows: each row's input from its own output alone (a row that the fit
        # got wrong must not spoil the others, as a joint least-squares solve would).
        values = (values - bias) @ torch.linalg.pinv(matrix)
    return values


def _in_range(model: StagedNet, index: int, values: torch.Tensor) -> torch.Tensor:
    """Per row: do the inputs of stage `index` lie in the range of the activation that produced them?"""
    if index == 0:
        return torch.ones(len(values), dtype=torch.bool, device=values.device)
    before = list(model.stages.values())[index - 1]
    last = [m for m in (before.children() if isinstance(before, nn.Sequential) else [before])
            if not isinstance(m, nn.Flatten)][-1:]
    bounds = ACTIVATION_RANGES.get(type(last[0])) if last else None
    if bounds is None:
        return torch.ones(len(values), dtype=torch.bool, device=values.device)
    margin = PEEL_TOLERANCE * (bounds[1] - bounds[0])
    return ((values > bounds[0] - margin) & (values < bounds[1] + margin)).all(1)


def peel_layers(model: StagedNet, index: int, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Walk back from the input of stage `index`: while the stage before is a linear layer (Conv2d or
    Linear) with at least as many outputs as inputs, followed by invertible activations (and Flatten),
    its input follows exactly from its output (least squares through its matrix). Deeper features are
    a better-posed target for the image inversion (LeNet's CIFAR-10 median SSIM 0.50 -> 0.57,
    benchmarks/README.md). Row by row: a row stops where its peeled values leave the range of the
    activation that produced them (an inexact fit's, which the inverses amplify). Returns each row's
    stage index (rows,) and its inputs there, flattened and zero-padded to the widest (rows, n)."""
    rows = [features[r].double() for r in range(len(features))]
    indices = torch.full((len(features),), index, dtype=torch.long)
    active = torch.ones(len(features), dtype=torch.bool)
    while index > 0 and bool(active.any()):
        live = active.nonzero().flatten().tolist()
        values = _peel_stage(model, index, torch.stack([rows[r] for r in live]))
        if values is None:
            break
        ok = _in_range(model, index - 1, values)
        for k, r in enumerate(live):
            if ok[k]:
                rows[r], indices[r] = values[k], index - 1
            else:
                active[r] = False
        index -= 1
    width = max(len(r) for r in rows)
    padded = torch.zeros(len(rows), width, dtype=torch.float64, device=features.device)
    for r, values in enumerate(rows):
        padded[r, :len(values)] = values
    return indices, padded


class FeatureAndGradientMatching(RowsObjective):
    """Rows are updates of B images: Inverting Gradients' objective on the update (cosine distance over
    the matched gradients, plus TV) plus `weight` times the mean feature-matching loss of its images."""

    def __init__(self, gradients: GradientMatching, features: FeatureMatching, weight: float, group: int):
        self.gradients, self.features, self.weight, self.group = gradients, features, weight, group
        self.engine, self.chunk_rows = gradients.engine, gradients.chunk_rows

    def _image_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows.unsqueeze(1) * self.group + torch.arange(self.group, device=rows.device)).flatten()

    def _evaluate(self, x, rows, latent):
        losses, grads = self.gradients.evaluate(x, rows, None)[:2]
        if not self.weight:
            return losses, grads
        images = x.view(-1, *x.shape[-3:])
        feature_losses, feature_grads = self.features.evaluate(images, self._image_rows(rows), None)
        losses = losses + self.weight * feature_losses.view(-1, self.group).mean(1)
        grads = grads + self.weight / self.group * feature_grads.view_as(grads)
        return losses, grads

    def score(self, x_row, row, latent_row):
        score = self.gradients.score(x_row, row, None)
        if self.weight:
            images = x_row.view(-1, *x_row.shape[-3:])
            rows = self._image_rows(torch.tensor([row], device=x_row.device))
            with torch.no_grad():
                score = score + self.weight * self.features.matching_loss(images, rows).mean()
        return score


@dataclass
class HeadInversion(RowOptimisation):
    """Recover every image's features from the classifier head's gradient (through PRECODE's decoder and
    encoder where the model has it before the head), then invert them to images."""

    iterations: int = 1000
    tv_weight: float = 1e-2
    feature_loss: str = "mse"
    fit_starts: int = 8  # perturbed starts of the head fit beyond the label rows' (stops once exact)
    # Where the model has PRECODE right before the head: invert PRECODE's input recovered through the
    # encoder ("encoder"), or the decoder's output, the head's input ("head").
    precode_target: str = "encoder"
    search_labels: bool = True  # with inferred labels, correct them where the head's fit is not exact
    # FedAvg: fit every local step's features (the exact model, where S B <= classes). Off: on LeNet at
    # local lr 0.1 it cut the fit's residual 100x but not its feature error (14-18%), at 10x the fit's time.
    per_step: bool = False
    # FedAvg: rounds of replaying the client's local steps on the images recovered so far, correcting the
    # head's features for how they drift over the steps (correct_for_drift), and inverting again (0: off).
    drift_rounds: int = 0
    peel: bool = True  # invert exactly recovered features back through invertible layers first (peel_layers)
    # Then Inverting Gradients on the whole update from the inverted features (0: no refinement), over
    # every gradient ("all") or those before PRECODE ("before_precode"), plus the feature term.
    refine_iterations: int = 0
    refine_selection: str = "all"
    refine_feature_weight: float = 1.0
    refine_lr: float = 0.01
    refine_tv_weight: float = 1e-4
    # The attacker's PRECODE code in the refinement's passes: "sample" as the client does, or "mean" (a
    # deterministic gradient, as the targeted attack's precode_code: mean).
    refine_precode_code: str = "sample"
    recovery: dict = field(default_factory=dict, repr=False)  # diagnostics of the last call

    def __post_init__(self):
        super().__post_init__()
        if self.precode_target not in ("encoder", "head"):
            raise ValueError(f"attack precode_target must be encoder or head, got {self.precode_target!r}")
        if self.refine_precode_code not in CODE_MODES:
            raise ValueError(f"attack refine_precode_code must be one of {', '.join(CODE_MODES)}, "
                             f"got {self.refine_precode_code!r}")

    def _invert(self, view: ServerView, recovery: HeadRecovery, labels: torch.Tensor, seeds: list[int],
                ids: list[int], progress, update_iterations, start: torch.Tensor | None = None) -> AttackResult:
        """The recovered features (through PRECODE's encoder where it sits before the head, peeled back
        through invertible layers) inverted to images, one optimisation row per image."""
        model = view.model
        device = model.mean.device
        per_update = view.images_per_update
        index = head_index(model)
        targets = recovery.features
        through_precode = model.has_precode and model.precode_index == index
        if through_precode and self.precode_target == "encoder":
            targets = recover_precode_inputs(view, recovery)
        elif model.has_precode and not through_precode:
            raise ValueError("the head attack inverts through PRECODE only where it sits right before the head")
        if self.peel:
            index, flat = peel_layers(model, index, targets.reshape(-1, targets.shape[-1]))
            targets = flat.view(*targets.shape[:2], -1)
        else:
            index = torch.full((targets.shape[0] * targets.shape[1],), index, dtype=torch.long)
        self.recovery = {"residual": recovery.residual, "features": targets, "stage": index}
        rows = targets.reshape(-1, targets.shape[-1]).float().to(device).repeat_interleave(self.restarts, dim=0)
        objective = FeatureMatching(model, rows, self.tv_weight, self.feature_loss,
                                    index.to(device).repeat_interleave(self.restarts))
        # One optimisation row per image: a view of single images carrying nothing but their count.
        images = view.num_images
        row_view = ServerView(model, {"images": torch.zeros(images, 1)}, None, view.model_mode)
        problem = self.problem([])

        def per_update_progress(step: int, losses: torch.Tensor) -> None:
            progress(step, losses.view(view.num_updates, per_update, -1).mean(1))

        result = optimise(row_view, labels.flatten(), problem,
                          [s for s in seeds for _ in range(per_update)],
                          progress=per_update_progress if progress else None, progress_every=self.progress_every,
                          victim_ids=[v * per_update + j for v in ids for j in range(per_update)],
                          objective=objective, start=start, update_iterations=None if update_iterations is None else
                          [n for n in update_iterations for _ in range(per_update)])
        # The engine's losses are per image; the study's are per update.
        result.gradient_loss = result.gradient_loss.view(view.num_updates, per_update).mean(1)
        result.restart_losses = result.restart_losses.view(view.num_updates, per_update, -1).mean(1)
        if result.iterations is not None:
            result.iterations = result.iterations.view(view.num_updates, per_update).max(1).values
        return result

    def __call__(self, view: ServerView, seed: int | Sequence[int],
                 progress: Callable[[int, torch.Tensor], None] | None = None,
                 victim_ids: list[int] | None = None,
                 update_iterations: Sequence[int] | None = None) -> AttackResult:
        model = view.model
        device = model.mean.device
        per_update = view.images_per_update
        owner, head = head_module(model)
        if head.bias is None:
            raise ValueError("the head attack needs a head with a bias")
        labels = view.labels if self.labels == "known" else None
        if self.labels == "known" and labels is None:
            raise ValueError("attack labels: 'known' but the server view has no labels")
        inferred = labels is None
        if inferred:
            labels = infer_update_labels(model, view.gradients, per_update, self.label_strategy)
        labels = labels.cpu().view(view.num_updates, per_update)
        fit_seed = seed if isinstance(seed, int) else int(seed[0])
        recovery = recover_head_inputs(view.gradients[f"{owner}.weight"].cpu(), view.gradients[f"{owner}.bias"].cpu(),
                                       head.weight.cpu(), head.bias.cpu(), labels, starts=self.fit_starts,
                                       seed=fit_seed, local_steps=view.local_steps, local_lr=view.local_lr,
                                       search_labels=inferred and self.search_labels, per_step=self.per_step,
                                       batches=view.local_batches)
        labels = recovery.labels
        seeds = [seed] * view.num_updates if isinstance(seed, int) else list(seed)
        ids = list(range(view.num_updates)) if victim_ids is None else list(victim_ids)
        result = self._invert(view, recovery, labels, seeds, ids, progress, update_iterations)
        drift_rounds = self.drift_rounds if view.local_steps > 1 else 0
        for _ in range(drift_rounds):
            # FedAvg: replay the client's steps on the images so far, correct the features for their
            # drift, invert again from those images.
            drift = head_input_drift(model, result.images.view(view.num_updates, per_update, *model.in_shape).to(device),
                                     labels.to(device), view.local_steps, view.local_lr, view.local_batches).cpu()
            recovery = correct_for_drift(recovery, drift, view.gradients[f"{owner}.weight"].cpu(),
                                         view.gradients[f"{owner}.bias"].cpu(), head.weight.cpu(), head.bias.cpu(),
                                         view.local_lr, batches=view.local_batches)
            seconds = result.seconds
            result = self._invert(view, recovery, labels, seeds, ids, progress, update_iterations,
                                  start=result.images)
            result.seconds += seconds
        self.recovery["drift_rounds"] = drift_rounds
        if not self.refine_iterations:
            return result
        refine = self.problem(
            select_parameters(model, self.refine_selection), iterations=self.refine_iterations, lr=self.refine_lr,
            tv_weight=self.refine_tv_weight, restarts=1, local_steps=view.local_steps, local_lr=view.local_lr,
            local_batches=view.local_batches, precode_code=self.refine_precode_code)
        group_shape = (view.num_updates, *((per_update,) if per_update > 1 else ()), *model.in_shape)
        matching = GradientMatching(model, labels.flatten().to(device).view(view.num_updates, -1).squeeze(1)
                                    if per_update == 1 else labels.to(device),
                                    [view.gradients[n].to(device) for n in refine.names], refine,
                                    torch.zeros(group_shape, device=device))
        targets, index = self.recovery["features"], self.recovery["stage"]
        features = FeatureMatching(model, targets.reshape(-1, targets.shape[-1]).float().to(device), 0.0,
                                   self.feature_loss, index.to(device))
        combined = FeatureAndGradientMatching(matching, features, self.refine_feature_weight, per_update)
        refined = optimise(view, labels.flatten(), refine, seeds, victim_ids=ids, objective=combined,
                           start=result.images)
        refined.seconds += result.seconds
        return refined
