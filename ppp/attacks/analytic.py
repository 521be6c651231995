"""The analytic attack on PRECODE's encoder, then feature inversion.

PRECODE's encoder is a linear layer. For a client update on one image its gradients are
dW = delta u^T and db = delta, where u is the encoder's input (the flattened features entering
PRECODE) and delta the gradient at its output, so [dW | db] = delta [u^T, 1] has rank one and gives u
exactly: u = dW[i] / db[i] for any i with db[i] != 0 (Phong et al. 2017 on linear layers; R-GAP;
Fowl et al. "Robbing the Fed" use the same identity). With noise on these gradients the leading
right singular vector of [dW | db] is the best rank-one estimate, and u is its first entries over
its last one. PPP's noise touches only the layers before PRECODE, so it leaves this recovery exact.

For an update of B images (and for FedAvg's local steps) [dW | db] = sum_i delta_i [u_i^T, 1] has rank at
most B, and its row space is spanned by the B vectors [u_i, 1]: the server learns the span of the B
feature vectors (exactly, from clean gradients; the leading B right singular vectors where noisy),
not the vectors themselves. Each output neuron k gives [dW_k | db_k] / db_k, an affine combination of
the u_i with unknown weights delta_ik / db_k, so no single u_i follows unless one image alone drives a
neuron (PRECODE's encoder has no activation, so that is rare). `recover_feature_span` gives that span,
and the inversion then moves the update's B dummy images until the span of their [f(x_i), 1] is that
span: the chordal distance between the two subspaces, 1 - |Q_f^T V|_F^2 / B, plus total variation
(docs/method.md, "The analytic attack beyond one image").

The recovered features are then inverted to an image by optimisation: each victim's dummy image is
moved until the network's features before PRECODE match the recovered ones (relative squared error,
or cosine distance) plus total variation, with the same signed Adam, box constraint, schedule,
restarts and batched rows as Inverting Gradients (ppp.attacks.engine.optimise). The attacker uses only
the server's view: the model, the shared gradient of the encoder, and nothing else (not the labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ppp.attacks.engine import (AttackResult, ChunkedRowsObjective, RowOptimisation,
                               ServerView, optimise)
from ppp.attacks.objectives import total_variation_rows
from ppp.attacks.per_layer import per_row_batch_norm
from ppp.models import StagedNet

FEATURE_LOSSES = ("mse", "cosine")


def leading_right_singular_vectors(stacked: torch.Tensor, k: int) -> torch.Tensor:
    """The `k` leading right singular vectors (rows, k, n) of each (rows, m, n) matrix, by the
    eigenvectors of the small m x m Gram matrix in float64: 2.4x faster than a thin SVD at the encoder's
    sizes (512 x 1025 on this CPU). Squaring the condition number costs nothing for the leading
    directions, which are what the attack reads."""
    stacked = stacked.double()
    values, vectors = torch.linalg.eigh(stacked @ stacked.transpose(1, 2))
    left = vectors[:, :, -k:].flip(-1)  # (rows, m, k), largest first
    right = stacked.transpose(1, 2) @ left  # (rows, n, k) = V S
    return (right / right.norm(dim=1, keepdim=True).clamp_min(1e-300)).transpose(1, 2)


def recover_linear_input(weight_grad: torch.Tensor, bias_grad: torch.Tensor) -> torch.Tensor:
    """The input of a linear layer from its weight and bias gradients for single-image updates:
    (rows, out, in) and (rows, out) -> (rows, in). Exact on clean gradients; the rank-one (leading
    singular vector) estimate where they are noisy."""
    stacked = torch.cat([weight_grad, bias_grad.unsqueeze(-1)], dim=-1)  # (rows, out, in + 1)
    direction = leading_right_singular_vectors(stacked, 1)[:, 0, :]  # (rows, in + 1), up to sign and scale
    last = direction[:, -1:]
    # Where the bias coordinate vanishes (all noise), the scale is unknown: keep the direction.
    safe = torch.where(last.abs() > 1e-12, last, torch.ones_like(last))
    return (direction[:, :-1] / safe).to(weight_grad.dtype)


def features_before_precode(model: StagedNet, pixels: torch.Tensor) -> torch.Tensor:
    """The flattened features entering PRECODE's encoder for images in [0, 1]."""
    return model._features_before(pixels, model.precode_index).flatten(1)


def recover_feature_span(weight_grad: torch.Tensor, bias_grad: torch.Tensor, rank: int) -> torch.Tensor:
    """An orthonormal basis (rows, rank, in + 1) of the span of an update's [u_i, 1], from its encoder's
    weight and bias gradients (rows, out, in) and (rows, out): the leading `rank` right singular
    vectors of [dW | db]."""
    stacked = torch.cat([weight_grad, bias_grad.unsqueeze(-1)], dim=-1)
    if min(stacked.shape[1:]) < rank:
        raise ValueError(f"the encoder's gradient has rank at most {min(stacked.shape[1:])}; cannot span {rank} images")
    basis = leading_right_singular_vectors(stacked, rank)
    # Orthonormal to float64 precision (the Gram route leaves directions of equal singular values mixed).
    basis = torch.linalg.qr(basis.transpose(1, 2))[0].transpose(1, 2)
    return basis.to(weight_grad.dtype)


class SpanMatching(ChunkedRowsObjective):
    """Rows are updates of B dummy images; each row's loss is the chordal distance between the span of
    its images' [features, 1] and the recovered span, plus TV; one batched forward and backward."""

    def __init__(self, model: StagedNet, spans: torch.Tensor, tv_weight: float):
        self.model, self.spans, self.tv_weight = model, spans, tv_weight
        self.mean, self.std = model.mean[0], model.std[0]
        self.group = spans.shape[1]

    def matching_loss(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """images (n, B, C, H, W) -> (n,)"""
        n = images.shape[0]
        with per_row_batch_norm(self.model):
            features = features_before_precode(self.model, images.flatten(0, 1) * self.std + self.mean)
        augmented = torch.cat([features, torch.ones_like(features[:, :1])], dim=1).view(n, self.group, -1)
        basis, _ = torch.linalg.qr(augmented.transpose(1, 2).double())  # (n, in + 1, B), orthonormal columns
        overlap = torch.bmm(self.spans[rows].double(), basis).pow(2).sum((1, 2))
        return (1 - overlap / self.group).to(images.dtype)

    def _evaluate_rows(self, x, rows):
        images = x[rows].detach().requires_grad_(True)
        with torch.enable_grad():
            tv = total_variation_rows(images.flatten(0, 1)).view(-1, self.group).mean(1)
            losses = self.matching_loss(images, rows) + self.tv_weight * tv
            (gradients,) = torch.autograd.grad(losses.sum(), images)
        return losses.detach(), gradients

    def score(self, x_row, row, latent_row):
        with torch.no_grad():
            return self.matching_loss(x_row.unsqueeze(0), torch.tensor([row], device=x_row.device))[0]


class FeatureMatching(ChunkedRowsObjective):
    """Rows' feature-matching losses and image gradients from one batched forward and backward: rows are
    independent (BatchNorm in evaluation mode, or per-row instance normalisation in training mode)."""

    def __init__(self, model: StagedNet, targets: torch.Tensor, tv_weight: float, feature_loss: str,
                 index: int | torch.Tensor | None = None):
        if feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"attack feature_loss must be one of {', '.join(FEATURE_LOSSES)}, got {feature_loss!r}")
        self.model, self.targets, self.tv_weight, self.feature_loss = model, targets, tv_weight, feature_loss
        # The stage whose input is matched: PRECODE's (the analytic attack), or any other (the head attack),
        # or one per row (rows, ), each row's target zero-padded beyond that stage's width.
        self.index = model.precode_index if index is None else index
        self.mean, self.std = model.mean[0], model.std[0]
        self.target_squares = targets.pow(2).sum(1).clamp_min(1e-12)

    def _row_losses(self, images: torch.Tensor, rows: torch.Tensor, index: int) -> torch.Tensor:
        with per_row_batch_norm(self.model):
            features = self.model._features_before(images * self.std + self.mean, index).flatten(1)
        targets = self.targets[rows, :features.shape[1]]
        if self.feature_loss == "mse":
            return (features - targets).pow(2).sum(1) / self.target_squares[rows]
        return 1 - torch.nn.functional.cosine_similarity(features, targets, dim=1, eps=1e-12)

    def matching_loss(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.index, torch.Tensor):
            return self._row_losses(images, rows, self.index)
        stages = self.index.to(rows.device)[rows]
        order, losses = [], []
        for index in stages.unique().tolist():
            where = (stages == index).nonzero().flatten()
            order.append(where)
            losses.append(self._row_losses(images[where], rows[where], index))
        return torch.cat(losses)[torch.argsort(torch.cat(order))]

    def _evaluate_rows(self, x, rows):
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

    @staticmethod
    def encoder_gradients(view: ServerView) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared gradients of PRECODE's encoder: weight (rows, out, in) and bias (rows, out)."""
        names = view.model.encoder_parameter_names()
        if not names:
            raise ValueError("the analytic attack needs a PRECODE model (it inverts PRECODE's encoder)")
        weight = next(n for n in names if n.endswith("weight"))
        bias = next(n for n in names if n.endswith("bias"))
        return view.gradients[weight], view.gradients[bias]

    def recover_features(self, view: ServerView) -> torch.Tensor:
        return recover_linear_input(*self.encoder_gradients(view))

    def recover_span(self, view: ServerView) -> torch.Tensor:
        return recover_feature_span(*self.encoder_gradients(view), view.images_per_update)

    def __call__(self, view: ServerView, seed: int | Sequence[int],
                 progress: Callable[[int, torch.Tensor], None] | None = None,
                 victim_ids: list[int] | None = None,
                 update_iterations: Sequence[int] | None = None) -> AttackResult:
        model = view.model
        device = model.mean.device
        problem = self.problem([])
        if view.images_per_update == 1:  # rank one (for local steps, the leading direction: approximate)
            features = self.recover_features(view).to(device).repeat_interleave(self.restarts, dim=0)
            objective = FeatureMatching(model, features, self.tv_weight, self.feature_loss)
        else:
            spans = self.recover_span(view).to(device).repeat_interleave(self.restarts, dim=0)
            objective = SpanMatching(model, spans, self.tv_weight)
        # Labels play no part; the result records what the server would infer as "unknown" (-1).
        labels = view.labels if view.labels is not None else torch.full((view.num_images,), -1)
        return optimise(view, labels, problem, seed, progress=progress, progress_every=self.progress_every,
                        victim_ids=victim_ids, objective=objective, update_iterations=update_iterations)
