"""The analytic attack on PRECODE's encoder, then feature inversion.

PRECODE's encoder is a linear layer. For a client update on one image its gradients are
dW = delta u^T and db = delta, where u is the encoder's input (the flattened features entering
PRECODE) and delta the gradient at its output, so [dW | db] = delta [u^T, 1] has rank one and gives u
exactly: u = dW[i] / db[i] for any i with db[i] != 0 (Phong et al. 2017 on linear layers; R-GAP;
Fowl et al. "Robbing the Fed" use the same identity). With noise on these gradients the leading
right singular vector of [dW | db] is the best rank-one estimate, and u is its first entries over
its last one. PPP's noise touches only the layers before PRECODE, so it leaves this recovery exact.

The recovered features are then inverted to an image by optimisation: each victim's dummy image is
moved until the network's features before PRECODE match the recovered ones (relative squared error,
or cosine distance) plus total variation, with the same signed Adam, box constraint, schedule,
restarts and batched rows as Inverting Gradients (ppp.attacks.engine.optimise). The attacker uses only
the server's view: the model, the shared gradient of the encoder, and nothing else (not the labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ppp.attacks.engine import (AttackResult, GradientMatchingProblem, RowOptimisation, RowsObjective, ServerView,
                               optimise)
from ppp.attacks.objectives import total_variation_rows
from ppp.attacks.per_layer import per_row_batch_norm
from ppp.models import StagedNet

FEATURE_LOSSES = ("mse", "cosine")


def recover_linear_input(weight_grad: torch.Tensor, bias_grad: torch.Tensor) -> torch.Tensor:
    """The input of a linear layer from its weight and bias gradients for single-image updates:
    (rows, out, in) and (rows, out) -> (rows, in). Exact on clean gradients; the rank-one (leading
    singular vector) estimate where they are noisy."""
    stacked = torch.cat([weight_grad, bias_grad.unsqueeze(-1)], dim=-1).double()  # (rows, out, in + 1)
    # The leading right singular vector of each row's matrix, via the small (in + 1) Gram matrix would
    # square the condition number; a thin SVD of (out, in + 1) is cheap at these sizes.
    _, _, vh = torch.linalg.svd(stacked, full_matrices=False)
    direction = vh[:, 0, :]  # (rows, in + 1), defined up to sign and scale
    last = direction[:, -1:]
    # Where the bias coordinate vanishes (all noise), the scale is unknown: keep the direction.
    safe = torch.where(last.abs() > 1e-12, last, torch.ones_like(last))
    return (direction[:, :-1] / safe).to(weight_grad.dtype)


def features_before_precode(model: StagedNet, pixels: torch.Tensor) -> torch.Tensor:
    """The flattened features entering PRECODE's encoder for images in [0, 1]."""
    return model._features_before(pixels, model.precode_index).flatten(1)


class FeatureMatching(RowsObjective):
    """Rows' feature-matching losses and image gradients from one batched forward and backward: rows are
    independent (BatchNorm in evaluation mode, or per-row instance normalisation in training mode)."""

    engine = "batched"

    def __init__(self, model: StagedNet, targets: torch.Tensor, tv_weight: float, feature_loss: str):
        if feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"attack feature_loss must be one of {', '.join(FEATURE_LOSSES)}, got {feature_loss!r}")
        self.model, self.targets, self.tv_weight, self.feature_loss = model, targets, tv_weight, feature_loss
        self.mean, self.std = model.mean[0], model.std[0]
        self.target_squares = targets.pow(2).sum(1).clamp_min(1e-12)

    def matching_loss(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with per_row_batch_norm(self.model):
            features = features_before_precode(self.model, images * self.std + self.mean)
        targets = self.targets[rows]
        if self.feature_loss == "mse":
            return (features - targets).pow(2).sum(1) / self.target_squares[rows]
        return 1 - torch.nn.functional.cosine_similarity(features, targets, dim=1, eps=1e-12)

    def evaluate(self, x, rows, latent):
        images = x[rows].detach().requires_grad_(True)
        with torch.enable_grad():
            losses = self.matching_loss(images, rows) + self.tv_weight * total_variation_rows(images)
            (gradients,) = torch.autograd.grad(losses.sum(), images)
        return losses.detach(), gradients

    def score(self, x_row, row, latent_row):
        with torch.no_grad():
            return self.matching_loss(x_row.unsqueeze(0), torch.tensor([row], device=x_row.device))[0]


@dataclass
class AnalyticEncoderInversion(RowOptimisation):
    """Recover PRECODE's input from the encoder's gradient, then invert it to an image (the labels,
    known or not, are never used)."""

    iterations: int = 1000
    tv_weight: float = 1e-2  # the feature inversion needs a strong prior (benchmarks/README.md)
    feature_loss: str = "mse"

    def __post_init__(self):
        super().__post_init__()
        if self.feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"attack feature_loss must be one of {', '.join(FEATURE_LOSSES)}, got {self.feature_loss!r}")

    def recover_features(self, view: ServerView) -> torch.Tensor:
        names = view.model.encoder_parameter_names()
        if not names:
            raise ValueError("the analytic attack needs a PRECODE model (it inverts PRECODE's encoder)")
        weight = next(n for n in names if n.endswith("weight"))
        bias = next(n for n in names if n.endswith("bias"))
        return recover_linear_input(view.gradients[weight], view.gradients[bias])

    def __call__(self, view: ServerView, seed: int,
                 progress: Callable[[int, torch.Tensor], None] | None = None,
                 victim_ids: list[int] | None = None) -> AttackResult:
        model = view.model
        device = model.mean.device
        features = self.recover_features(view).to(device).repeat_interleave(self.restarts, dim=0)
        problem = GradientMatchingProblem(
            names=[], iterations=self.iterations, lr=self.lr, tv_weight=self.tv_weight, restarts=self.restarts,
            init=self.init, signed=self.signed, boxed=self.boxed, lr_decay=self.lr_decay,
            precision=self.precision)
        objective = FeatureMatching(model, features, self.tv_weight, self.feature_loss)
        # Labels play no part; the result records what the server would infer as "unknown" (-1).
        labels = view.labels if view.labels is not None else torch.full((view.num_victims,), -1)
        return optimise(view, labels, problem, seed, progress=progress, progress_every=self.progress_every,
                        victim_ids=victim_ids, objective=objective)
