"""The surrogate-model attack on FedAvg updates (SME: Zhu, Yao and Blaschko, ICML 2023).

A FedAvg client sends w_0 - w_S after S local steps (ppp.client sends it as the pseudo-gradient
g = (w_0 - w_S) / (local_lr S)). Unrolling the steps costs S forward and double-backward passes per
iteration. SME instead takes one gradient at a surrogate model on the straight line between the two
weights, w_alpha = w_0 - alpha (w_0 - w_S), and matches its direction to the update's (cosine distance
plus TV). alpha is one number per update, learned with the images (its own Adam, clamped to [0, 1],
starting at 0.5 and decayed with the images' schedule, as the authors' code does). So an iteration
costs one gradient-matching iteration whatever S is.

The surrogate moves every parameter by its shared update; `selection` picks the gradients matched:
`sme` all, `sme_targeted` those before PRECODE (as `ig_targeted`). Each row has its own weights, so rows
run one after another through autograd (the loop engine, as unrolled IG on FedAvg does).
docs/method.md, "The surrogate-model attack".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.func import functional_call
from torch.nn import functional as F

from ppp.attacks.engine import (AttackResult, RowOptimisation, RowsObjective, ServerView,
                               optimise, row_total_variation)
from ppp.attacks.objectives import cosine_distance
from ppp.gradients import select_parameters
from ppp.models import StagedNet
from ppp.precode import CODE_MODES


class SurrogateMatching(RowsObjective):
    """Per-row cosine distance between the gradient at the row's surrogate weights and the row's update,
    plus TV; every row's alpha is a second unknown, stepped by `after_step`."""

    engine = "loop"

    def __init__(self, model: StagedNet, names: list[str], labels: torch.Tensor, updates: dict[str, torch.Tensor],
                 step_size: float, tv_weight: float, alpha_start: float, alpha_lr: float):
        """`updates`: every shared parameter's pseudo-gradient per row (rows, *shape); the weight change
        is step_size (local_lr S) times it. `labels`: (rows,) or (rows, B)."""
        self.model, self.names, self.labels, self.tv_weight = model, names, labels, tv_weight
        self.weights = {n: p.detach() for n, p in model.named_parameters()}
        missing = [n for n in names if n not in updates]
        if missing:
            raise ValueError(f"the surrogate-model attack matches {missing}, which the update does not share")
        self.moved = [n for n in self.weights if n in updates]
        self.steps = {n: step_size * updates[n] for n in self.moved}  # w_0 - w_S per row
        self.targets = [updates[n] for n in names]
        rows = labels.shape[0]
        device = model.mean.device
        self.alpha = torch.full((rows,), float(alpha_start), device=device)
        self.alpha_grad = torch.zeros(rows, device=device)
        self.alpha_lr = alpha_lr
        self._adam = (torch.zeros(rows, device=device), torch.zeros(rows, device=device))
        self._adam_steps = torch.zeros(rows, device=device)
        self.mean, self.std = model.mean[0], model.std[0]

    def _row_loss(self, x_row: torch.Tensor, row: int, alpha: torch.Tensor, create_graph: bool) -> torch.Tensor:
        single = x_row.dim() == 3
        pixels = (x_row.unsqueeze(0) if single else x_row) * self.std + self.mean
        labels = self.labels[row: row + 1] if single else self.labels[row]
        surrogate = dict(self.weights)
        for n in self.moved:
            surrogate[n] = self.weights[n] - alpha * self.steps[n][row]
        selected = [surrogate[n] for n in self.names]
        logits = functional_call(self.model, surrogate, (pixels,))
        loss = F.cross_entropy(logits, labels) + self.model.regularizer()
        grads = torch.autograd.grad(loss, selected, create_graph=create_graph)
        return cosine_distance(list(grads), [t[row] for t in self.targets])

    def _evaluate(self, x, rows, latent):
        losses = torch.empty(len(rows), device=x.device)
        grads = torch.empty((len(rows), *x.shape[1:]), device=x.device)
        for k, row in enumerate(rows.tolist()):
            x_row = x[row].detach().requires_grad_(True)
            alpha = self.alpha[row].clone().requires_grad_(True)
            with torch.enable_grad():
                loss = self._row_loss(x_row, row, alpha, create_graph=True) \
                    + self.tv_weight * row_total_variation(x_row)
                grads[k], self.alpha_grad[row] = torch.autograd.grad(loss, [x_row, alpha])
            losses[k] = loss.detach()
        return losses, grads

    @torch.no_grad()
    def after_step(self, rows: torch.Tensor, lr_scale: torch.Tensor) -> None:
        """One Adam step (torch's defaults) on the live rows' alpha at alpha_lr times their schedule's
        factor, then the clamp to [0, 1]."""
        if not self.alpha_lr:
            return
        beta1, beta2 = 0.9, 0.999
        exp_avg, exp_avg_sq = self._adam
        grad = self.alpha_grad[rows]
        exp_avg[rows] = exp_avg[rows] * beta1 + (1 - beta1) * grad
        exp_avg_sq[rows] = exp_avg_sq[rows] * beta2 + (1 - beta2) * grad * grad
        self._adam_steps[rows] += 1
        t = self._adam_steps[rows]
        denom = (exp_avg_sq[rows] / (1 - beta2 ** t)).sqrt() + 1e-8
        step = self.alpha_lr * lr_scale[rows] * exp_avg[rows] / (1 - beta1 ** t) / denom
        self.alpha[rows] = (self.alpha[rows] - step).clamp(0.0, 1.0)

    def score(self, x_row, row, latent_row):
        alpha = self.alpha[row].clone().requires_grad_(True)  # the surrogate's weights must be in a graph
        with torch.enable_grad():
            return self._row_loss(x_row.detach(), row, alpha, create_graph=False).detach()


@dataclass
class SurrogateModelExtension(RowOptimisation):
    """SME on the client's update: images and each update's alpha learned together (module docstring)."""

    selection: str = "all"
    keep_encoder: bool = False
    alpha_start: float = 0.5  # the authors' start: the surrogate halfway between w_0 and w_S
    alpha_lr: float = 1e-3  # the authors' Adam rate for alpha (their `beta`); 0 holds alpha fixed
    precode_code: str = "mean"  # the attacker's PRECODE code in its own passes (as InvertingGradients)
    fitted: dict = field(default_factory=dict, repr=False)  # diagnostics of the last call: alpha per update

    def __post_init__(self):
        super().__post_init__()
        if self.precode_code not in CODE_MODES:
            raise ValueError(f"attack precode_code must be one of {', '.join(CODE_MODES)}, got {self.precode_code!r}")
        if not 0 <= self.alpha_start <= 1 or not math.isfinite(self.alpha_lr) or self.alpha_lr < 0:
            raise ValueError(f"attack alpha_start must be in [0, 1] and alpha_lr >= 0, got {self.alpha_start}, "
                             f"{self.alpha_lr}")

    def __call__(self, view: ServerView, seed: int | Sequence[int],
                 progress: Callable[[int, torch.Tensor], None] | None = None,
                 victim_ids: list[int] | None = None,
                 update_iterations: Sequence[int] | None = None) -> AttackResult:
        model = view.model
        device = model.mean.device
        labels = self.server_labels(view)
        names = select_parameters(model, self.selection, self.keep_encoder)
        problem = self.problem(names, engine="loop", precode_code=self.precode_code, local_steps=view.local_steps,
                               local_lr=view.local_lr)
        per_update, restarts = view.images_per_update, self.restarts
        row_labels = labels.to(device).view(view.num_updates, *((per_update,) if per_update > 1 else ()))
        row_labels = row_labels.repeat_interleave(restarts, dim=0)
        updates = {n: g.to(device).repeat_interleave(restarts, dim=0) for n, g in view.gradients.items()}
        step_size = view.local_lr * view.local_steps if view.local_steps > 1 else view.local_lr
        objective = SurrogateMatching(model, names, row_labels, updates, step_size, self.tv_weight,
                                      self.alpha_start, self.alpha_lr)
        result = optimise(view, labels, problem, seed, progress=progress, progress_every=self.progress_every,
                          victim_ids=victim_ids, objective=objective, update_iterations=update_iterations)
        self.fitted = {"alpha": objective.alpha.view(view.num_updates, restarts).cpu()}
        return result

