"""The optimisation engine shared by gradient-matching attacks.

All victims x restarts of one cell are one tensor optimised by one optimiser. Every row has its own
objective, and Adam and the sign step act elementwise, so rows never interact: the result equals
attacking each victim on its own. Each row's graph is freed right after its backward pass, so
memory does not grow with the number of rows.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ppp.gradients import shared_gradient
from ppp.models import StagedNet
from ppp.seeding import derive_seed, generator, seeded

log = logging.getLogger(__name__)


@dataclass
class ServerView:
    """Everything an honest-but-curious server has: no victim image ever enters here."""

    model: StagedNet
    gradients: dict[str, torch.Tensor]  # name -> (B, *param.shape), the defended shared gradients
    labels: torch.Tensor | None = None  # (B,) where labels are known to the server

    @property
    def num_victims(self) -> int:
        return next(iter(self.gradients.values())).shape[0]


@dataclass
class AttackResult:
    images: torch.Tensor  # (B, C, H, W) in [0, 1], the best restart per victim
    gradient_loss: torch.Tensor  # (B,), the matching loss of the chosen restart
    restart_losses: torch.Tensor  # (B, R)
    labels: torch.Tensor  # (B,), the labels the attack used (known or inferred)
    seconds: float


def infer_labels(model: StagedNet, gradients: dict[str, torch.Tensor]) -> torch.Tensor:
    """Labels of single-image updates from the classifier's weight gradient (iDLG): with non-negative
    features, only the true class's row has a negative sum."""
    weight = gradients[model.classifier_weight_name()]  # (B, classes, features)
    return weight.flatten(2).sum(dim=2).argmin(dim=1)


def cosine_distance(grads: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """1 - cosine similarity of the concatenation of all selected gradients (Inverting Gradients)."""
    dot = sum((g * t).sum() for g, t in zip(grads, targets))
    norm_g = sum(g.pow(2).sum() for g in grads).sqrt()
    norm_t = sum(t.pow(2).sum() for t in targets).sqrt()
    return 1 - dot / (norm_g * norm_t).clamp_min(1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV as in Inverting Gradients: mean absolute neighbour differences."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


@dataclass
class GradientMatchingProblem:
    """What is optimised: which gradients are matched, the regulariser and the optimiser schedule."""

    names: list[str]
    iterations: int
    lr: float
    tv_weight: float
    restarts: int
    init: str
    signed: bool
    boxed: bool
    lr_decay: bool


def optimise(view: ServerView, labels: torch.Tensor, problem: GradientMatchingProblem, seed: int,
             progress: Callable[[int, torch.Tensor], None] | None = None,
             progress_every: int = 0, victim_ids: list[int] | None = None) -> AttackResult:
    """Optimise one dummy image per victim and restart. Each row's start is seeded by (seed, victim id,
    restart), so a victim gets the same start whether it is attacked alone or with others."""
    started = time.perf_counter()
    model = view.model
    model.train()  # the client computed its update in training mode
    for p in model.parameters():
        p.requires_grad_(True)
    device = model.mean.device
    batch, restarts = view.num_victims, problem.restarts
    shape = model.in_shape
    mean, std = model.mean[0], model.std[0]
    # Optimise in normalised space, as Inverting Gradients does; the box is [0, 1] in pixels.
    lower, upper = (0 - mean) / std, (1 - mean) / std

    victim_ids = list(range(batch)) if victim_ids is None else list(victim_ids)
    if len(victim_ids) != batch:
        raise ValueError(f"victim_ids has {len(victim_ids)} entries for {batch} victims")
    rows = []
    for b in range(batch):
        for r in range(restarts):
            gen = generator(derive_seed(seed, "init", victim_ids[b], r))
            if problem.init == "randn":
                row = torch.randn(shape, generator=gen)
            elif problem.init == "rand":
                row = (torch.rand(shape, generator=gen) - mean.cpu()) / std.cpu()
            else:
                raise ValueError(f"unknown init {problem.init!r}; known: randn, rand")
            rows.append(row)
    x = torch.stack(rows).to(device).requires_grad_(True)
    row_labels = labels.to(device).repeat_interleave(restarts)
    targets = [view.gradients[n].to(device) for n in problem.names]

    optimizer = torch.optim.Adam([x], lr=problem.lr)
    milestones = [round(problem.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)] if problem.lr_decay else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)

    def row_gradient_loss(i: int, create_graph: bool) -> torch.Tensor:
        pixels = x[i: i + 1] * std + mean
        grads = shared_gradient(model, pixels, row_labels[i: i + 1], create_graph=create_graph,
                                names=problem.names)
        victim = i // restarts
        return cosine_distance([grads[n] for n in problem.names], [t[victim] for t in targets])

    losses = torch.zeros(batch * restarts)
    with seeded(derive_seed(seed, "sampling"), device):
        for step in range(problem.iterations):
            optimizer.zero_grad(set_to_none=False)
            if x.grad is None:
                x.grad = torch.zeros_like(x)
            for i in range(x.shape[0]):
                loss = row_gradient_loss(i, create_graph=True) + problem.tv_weight * total_variation(x[i])
                (row_grad,) = torch.autograd.grad(loss, x, only_inputs=True)
                x.grad += row_grad
                losses[i] = loss.detach()
            if problem.signed:
                x.grad.sign_()
            optimizer.step()
            scheduler.step()
            if problem.boxed:
                with torch.no_grad():
                    x.data = torch.max(torch.min(x, upper), lower)
            if progress and progress_every and ((step + 1) % progress_every == 0 or step + 1 == problem.iterations):
                progress(step + 1, losses.view(batch, restarts))
            if not math.isfinite(float(losses.sum())):
                log.warning("non-finite attack loss at iteration %d", step + 1)

        # Score every restart by its gradient-matching loss alone, as Inverting Gradients does.
        scores = torch.stack([row_gradient_loss(i, create_graph=False).detach() for i in range(x.shape[0])])
    scores = scores.view(batch, restarts).cpu()
    best = scores.argmin(dim=1)
    final = (x.detach() * std + mean).clamp(0, 1).view(batch, restarts, *shape).cpu()
    images = final[torch.arange(batch), best]
    return AttackResult(images=images, gradient_loss=scores[torch.arange(batch), best], restart_losses=scores,
                        labels=labels.cpu(), seconds=time.perf_counter() - started)
