"""The optimisation engine shared by gradient-matching attacks.

All victims x restarts of one cell are one tensor optimised by one optimiser. Every row has its own
objective, and Adam and the sign step act elementwise, so rows never interact: the result equals
attacking each victim on its own. The rows' objectives are evaluated, in chunks of `chunk_rows` rows to
bound memory, by one of the row engines:

- `per_layer`: one ordinary batched forward and backward, with per-row gradients assembled layer by
  layer (ppp.attacks.per_layer); the fastest where the model's layers have rules.
- `vmap`: torch.func (vmap over a nested grad); works for any model.
- `loop`: one row after another through plain autograd; the reference the others are tested against.

`auto` picks per_layer where the model supports it, else vmap. A single row always takes the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.nn import functional as F

from ppp.attacks.contrast import CONTRASTS, resolve_contrast
from ppp.attacks.labels import LABEL_STRATEGIES, infer_update_labels
from ppp.hardware import resolve_precision
from ppp.attacks.objectives import cosine_distance, total_variation, total_variation_rows
from ppp.attacks.per_layer import PerLayerObjective, row_selector, unsupported_reason
from ppp.client import functional_update, local_batches, simulated_update
from ppp.gradients import no_running_stats, set_model_mode
from ppp.models import StagedNet
from ppp.precode import code_mode, given_noise
from ppp.seeding import derive_seed, generator, seeded

log = logging.getLogger(__name__)


@dataclass
class ServerView:
    """Everything an honest-but-curious server has: no victim image ever enters here."""

    model: StagedNet
    gradients: dict[str, torch.Tensor]  # name -> (B, *param.shape), the defended shared gradients
    labels: torch.Tensor | None = None  # (B,) where labels are known to the server
    model_mode: str = "eval"  # the mode the protocol computes updates in (ppp.gradients.MODEL_MODES)
    # What the server is told of the client's update (ppp.client): images per update, and the local
    # steps and learning rate it simulates (1 step where it is not told them: FedSGD's gradient).
    images_per_update: int = 1
    local_steps: int = 1
    local_lr: float = 0.01
    local_batch: int = 0  # images per local step (0: all; ppp.client.ClientSetting.local_batch)

    @property
    def local_batches(self) -> list[list[int]] | None:
        """The images of every local step, as the client takes them (None: all at every step)."""
        return local_batches(self.images_per_update, self.local_batch, self.local_steps)

    @property
    def num_updates(self) -> int:
        """Shared updates: one row of the attack each (`images_per_update` images in it)."""
        return next(iter(self.gradients.values())).shape[0]

    num_victims = num_updates  # one image per update: an update is a victim

    @property
    def num_images(self) -> int:
        return self.num_updates * self.images_per_update


@dataclass
class AttackResult:
    images: torch.Tensor  # (B, C, H, W) in [0, 1], the best restart per victim
    gradient_loss: torch.Tensor  # (B,), the matching loss of the chosen restart
    restart_losses: torch.Tensor  # (B, R)
    labels: torch.Tensor  # (B,), the labels the attack used (known or inferred)
    seconds: float
    iterations: torch.Tensor | None = None  # (B,), iterations the chosen restart ran before it stopped
    chunk_rows: int | None = None  # rows per batched pass that were used (None: all at once)
    engine: str | None = None  # the row engine that ran (auto resolved)
    oom_retries: int = 0  # passes redone with fewer rows after running out of memory (RowsObjective)
    # The best iterate after half the iterations, chosen by the objective as the final one is: what the
    # attack had reached then (ppp.verdicts: an attack still gaining over its second half has not converged).
    images_half: torch.Tensor | None = None


def infer_labels(model: StagedNet, gradients: dict[str, torch.Tensor], images_per_update: int = 1,
                 strategy: str = "auto") -> torch.Tensor:
    """The labels of every update's images, flat (ppp.attacks.labels)."""
    return infer_update_labels(model, gradients, images_per_update, strategy)


@dataclass
class GradientMatchingProblem:
    """What is optimised: which gradients are matched, the regulariser, the optimiser schedule, and how
    the rows are computed (vectorised in chunks, or one by one) and stopped."""

    names: list[str]
    iterations: int
    lr: float
    tv_weight: float
    restarts: int
    init: str
    signed: bool
    boxed: bool
    lr_decay: bool
    engine: str = "auto"  # how rows are evaluated: auto, per_layer, vmap or loop (see ENGINES)
    chunk_rows: int | None = None  # rows per batched pass (None: all; bounds memory)
    patience: int = 0  # freeze a row whose loss has not improved for this many iterations (0: never)
    min_improvement: float = 1e-4  # relative improvement that counts as progress for `patience`
    memory_budget_mb: float | None = None  # choose chunk_rows so that a chunk's graphs fit this
    precode_code: str = "sample"  # the attacker's PRECODE code in its own passes: sample or mean
    latent: bool = False  # also optimise PRECODE's noise per row (the latent attack); starts at the mean code
    precision: str = "float32"  # float32, or bfloat16: the objective's passes under autocast (PRECISIONS)
    optimizer: str = "adam"  # adam (signed where `signed`), or lbfgs (OPTIMIZERS)
    # The client's update as the server simulates it (ppp.client.simulated_update).
    local_steps: int = 1
    local_lr: float = 0.01
    local_batches: list[list[int]] | None = None  # the images of every local step (None: all)


def multistep_lr(base_lr: float, milestones: list[int], step: int, gamma: float = 0.1) -> float:
    """The learning rate of optimiser step `step` (0-based) under torch's MultiStepLR stepped once per
    optimiser step (Inverting Gradients' schedule), computed for any step without a scheduler object."""
    lr = base_lr
    for milestone in sorted(set(milestones)):
        if milestone <= step:
            lr = lr * gamma ** milestones.count(milestone)
    return lr


class RowAdam:
    """Adam (torch's defaults: betas 0.9/0.999, eps 1e-8) with one learning rate per row: rows with
    their own budget (the convergence check's rows, at half the budget, in the main rows' pass) follow
    their own schedule. Each step is computed in the order of torch.optim.Adam's single-tensor kernel,
    so a row gets what torch's Adam at that row's rate gives it, up to the kernels' rounding."""

    def __init__(self, params: list[torch.Tensor], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.betas, self.eps = params, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = 0

    @torch.no_grad()
    def step(self, row_lr: torch.Tensor) -> None:
        """`row_lr`: (rows,), one learning rate per row (first axis of every parameter)."""
        beta1, beta2 = self.betas
        self.steps += 1
        bias_correction1 = 1 - beta1 ** self.steps
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** self.steps)
        for param, exp_avg, exp_avg_sq in zip(self.params, self.exp_avg, self.exp_avg_sq):
            grad = param.grad
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            step_size = (-row_lr / bias_correction1).to(param.dtype).view(-1, *([1] * (param.dim() - 1)))
            param.add_(step_size * exp_avg / denom)


def row_total_variation(x_row: torch.Tensor) -> torch.Tensor:
    """TV of a row: one image (C, H, W), or the mean over the images of an update (B, C, H, W)."""
    return total_variation(x_row) if x_row.dim() == 3 else total_variation_rows(x_row).mean()


class RowObjective:
    """Per-row gradient-matching loss and its gradient with respect to the row's image.

    Row i is image x[i] as a batch of one, with label `labels[i]` and target gradients `targets[k][i]`.
    `vectorized` evaluates many rows in one pass with torch.func (vmap over a nested grad); the loop
    evaluates one row after another through autograd. Both compute the same function."""

    def __init__(self, model: StagedNet, names: list[str], labels: torch.Tensor, targets: list[torch.Tensor],
                 tv_weight: float, local_steps: int = 1, local_lr: float = 0.01,
                 local_batches: list[list[int]] | None = None):
        self.model, self.names, self.labels, self.targets = model, names, labels, targets
        self.tv_weight = tv_weight
        self.local_steps, self.local_lr, self.local_batches = local_steps, local_lr, local_batches
        self.mean, self.std = model.mean[0], model.std[0]

    def gradient_loss(self, x_row: torch.Tensor, row: int, create_graph: bool,
                      latent_row: torch.Tensor | None = None) -> torch.Tensor:
        """Row `row`: one image (C, H, W) with label labels[row], or an update's images (B, C, H, W) with
        labels[row] (B,)."""
        single = x_row.dim() == 3
        pixels = (x_row.unsqueeze(0) if single else x_row) * self.std + self.mean
        labels = self.labels[row: row + 1] if single else self.labels[row]
        noise = None if latent_row is None else (latent_row.unsqueeze(0) if single else latent_row)
        with given_noise(self.model, noise) if noise is not None else contextlib.nullcontext():
            grads = simulated_update(self.model, pixels, labels, self.names, self.local_steps, self.local_lr,
                                     create_graph=create_graph, batches=self.local_batches)
        return cosine_distance([grads[n] for n in self.names], [t[row] for t in self.targets])

    def loop(self, x: torch.Tensor, rows: torch.Tensor, latent: torch.Tensor | None = None) -> tuple:
        """(losses, gradients w.r.t. the rows' images) and, with `latent` (PRECODE's per-row noise,
        optimised by the latent attack), the gradients w.r.t. the rows' noise as a third element."""
        losses, grads = torch.empty(len(rows), device=x.device), torch.empty((len(rows), *x.shape[1:]), device=x.device)
        latent_grads = None if latent is None else torch.empty((len(rows), *latent.shape[1:]), device=x.device)
        for k, row in enumerate(rows.tolist()):
            x_row = x[row].detach().requires_grad_(True)
            z_row = None if latent is None else latent[row].detach().requires_grad_(True)
            loss = self.gradient_loss(x_row, row, create_graph=True, latent_row=z_row) \
                + self.tv_weight * row_total_variation(x_row)
            if z_row is None:
                (grads[k],) = torch.autograd.grad(loss, x_row)
            else:
                grads[k], latent_grads[k] = torch.autograd.grad(loss, [x_row, z_row])
            losses[k] = loss.detach()
        return (losses, grads) if latent is None else (losses, grads, latent_grads)

    def vectorized(self, x: torch.Tensor, rows: torch.Tensor, chunk_rows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        from torch.func import functional_call, grad, grad_and_value, vmap

        model, names = self.model, self.names
        params = dict(model.named_parameters())
        selected = {n: params[n].detach() for n in names}
        every = {n: p.detach() for n, p in params.items()}

        def row_loss(x_row, label, targets):
            single = x_row.dim() == 3
            pixels = (x_row.unsqueeze(0) if single else x_row) * self.std + self.mean
            labels = label.unsqueeze(0) if single else label
            if self.local_steps > 1:
                g = functional_update(model, every, pixels, labels, names, self.local_steps, self.local_lr,
                                      self.local_batches)
                return cosine_distance([g[n] for n in names], targets) + self.tv_weight * row_total_variation(x_row)

            def training_loss(weights):
                logits = functional_call(model, weights, (pixels,))
                # PRECODE's KL is stored by this same forward, so it is read inside the transform.
                return F.cross_entropy(logits, labels) + model.regularizer()

            g = grad(training_loss)(selected)
            return cosine_distance([g[n] for n in names], targets) + self.tv_weight * row_total_variation(x_row)

        batched = vmap(grad_and_value(row_loss), randomness="different", chunk_size=chunk_rows)
        with no_running_stats(model), torch.no_grad():
            select = row_selector(rows)
            grads, losses = batched(x[rows].detach(), self.labels[select], [t[select] for t in self.targets])
        return losses, grads


ENGINES = ("auto", "per_layer", "vmap", "loop")
# adam: Inverting Gradients' (signed) Adam. lbfgs: L-BFGS (DLG's optimiser; breaching offers it too) with a
# backtracking line search, every row its own history, step and budget (RowLBFGS). Rows never interact in either.
OPTIMIZERS = ("adam", "lbfgs")


class RowLBFGS:
    """L-BFGS on every row at once, each row with its own curvature history and its own step: the
    two-loop recursion with per-row dot products, then a projected backtracking (Armijo) line search
    that re-evaluates only the rows whose step it shortens. Its first trial step is the learning rate
    (scaled by 1 / |g|_1 at the first iteration, as torch's L-BFGS), later at most twice the row's last
    accepted step (so a row whose steps must be short does not pay the halvings again every iteration); an
    accepted step's evaluation is the next iteration's, so a step accepted at once costs one pass. A row
    that finds no decrease within `backtracks` halvings stays where it is and restarts from steepest
    descent."""

    def __init__(self, history: int = 10, armijo: float = 1e-4, backtracks: int = 8):
        self.size, self.armijo, self.backtracks = history, armijo, backtracks
        self.history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s, y, rho), (rows, D)
        self.gamma: torch.Tensor | None = None  # the initial Hessian's scale per row
        self.accepted: torch.Tensor | None = None  # each row's last accepted step length (its last trial if none)
        self.evaluations = 0

    def direction(self, gradient: torch.Tensor) -> torch.Tensor:
        q = gradient.clone()
        alphas = []
        for s, y, rho in reversed(self.history):
            alpha = rho * (s * q).sum(1)
            q -= alpha[:, None] * y
            alphas.append(alpha)
        r = q if self.gamma is None else self.gamma[:, None] * q
        for (s, y, rho), alpha in zip(self.history, reversed(alphas)):
            beta = rho * (y * r).sum(1)
            r += s * (alpha - beta)[:, None]
        return -r

    @torch.no_grad()
    def step(self, x: torch.Tensor, live: torch.Tensor, loss: torch.Tensor, gradient: torch.Tensor,
             evaluate: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], lr: torch.Tensor,
             box: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Move the `live` rows of `x` (in place) from every row's `loss` and `gradient` there, each with
        its first trial step `lr` (rows,); returns every row's loss and gradient at its new place (the
        others' unchanged). `evaluate(rows)` gives the objective and its gradient at x[rows]."""
        n = x.shape[0]
        start, g = x.detach().clone().view(n, -1), gradient.view(n, -1)
        d = self.direction(g)
        slope = (g * d).sum(1)
        uphill = slope >= 0  # a stale history: fall back to steepest descent
        d[uphill], slope[uphill] = -g[uphill], -(g[uphill] ** 2).sum(1)
        t = lr.to(x.device, torch.float32).clone()
        if not self.history:
            t = t * (1 / g.abs().sum(1).clamp_min(1e-12)).clamp(max=1.0)
        elif self.accepted is not None:  # start from twice the row's last accepted step: fewer halvings
            t = torch.minimum(t, 2 * self.accepted)
        new_loss, new_g = loss.clone(), g.clone()
        moved = torch.zeros(n, dtype=torch.bool, device=x.device)
        pending = live
        for _ in range(self.backtracks + 1):
            x.view(n, -1)[pending] = start[pending] + t[pending, None] * d[pending]
            if box is not None:
                x.copy_(torch.max(torch.min(x, box[1]), box[0]))
            with torch.enable_grad():
                losses, grads = evaluate(pending)
            self.evaluations += 1
            losses, grads = losses.detach().float(), grads.detach().float().view(len(pending), -1)
            ok = torch.isfinite(losses) & (losses <= loss[pending] + self.armijo * t[pending] * slope[pending])
            accepted = pending[ok]
            new_loss[accepted], new_g[accepted], moved[accepted] = losses[ok], grads[ok], True
            pending = pending[~ok]
            if not len(pending):
                break
            t[pending] *= 0.5
        x.view(n, -1)[pending] = start[pending]  # no decrease found: stay
        if self.accepted is None:
            self.accepted = t.clone()
        self.accepted[moved] = t[moved]
        s, y = x.detach().view(n, -1) - start, new_g - g
        sy = (s * y).sum(1)
        curved = moved & (sy > 1e-10)
        rho = torch.where(curved, 1 / sy.clamp_min(1e-10), torch.zeros_like(sy))
        gamma = sy / (y * y).sum(1).clamp_min(1e-30)
        self.gamma = torch.where(curved, gamma, torch.ones_like(gamma) if self.gamma is None else self.gamma)
        if len(pending):  # restart those rows: their old pairs no longer describe where they are
            self.history = [(hs, hy, hr.index_fill(0, pending, 0.0)) for hs, hy, hr in self.history]
        self.history = (self.history + [(s, y, rho)])[-self.size:]
        return new_loss, new_g.view_as(gradient)
# The objective's passes in float32, or under bfloat16 autocast (convolutions and matrix products in
# bfloat16, reductions in float32); the optimiser, the box and the restarts' scores stay float32.
# `auto`: bfloat16 where the device has native bfloat16 kernels (AMX, AVX512-BF16, a recent GPU), else
# float32 (ppp.hardware; emulated bfloat16 is slower than float32).
PRECISIONS = ("float32", "bfloat16", "auto")


def objective_precision(device: torch.device, precision: str):
    """The autocast context for the objective's passes at `precision`."""
    if precision not in PRECISIONS:
        raise ValueError(f"attack precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=resolve_precision(precision, device) == "bfloat16")


def choose_engine(requested: str, model: StagedNet, names: list[str], images_per_update: int = 1,
                  local_steps: int = 1, latent: bool = False) -> str:
    """The row engine to run: `auto` is per_layer where the model supports it, else vmap (the loop
    for the latent attack and for local steps, which vmap does not run or runs slower)."""
    if requested not in ENGINES:
        raise ValueError(f"unknown attack engine {requested!r}; known: {', '.join(ENGINES)}")
    if requested == "auto":
        reason = unsupported_reason(model, names, images_per_update, local_steps)
        if reason:
            fallback = "loop" if latent or local_steps > 1 else "vmap"
            log.info("attack engine auto: %s, because per_layer does not apply (%s)", fallback, reason)
            return fallback
        return "per_layer"
    return requested


def saved_bytes_per_row(objective: RowObjective, x: torch.Tensor) -> int:
    """Bytes autograd keeps for one row's double backward: the memory a row adds to a chunk."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        objective.loop(x[:1], torch.tensor([0], device=x.device))
    return total


def rows_per_chunk(objective: RowObjective, x: torch.Tensor, memory_budget_mb: float | None,
                   chunk_rows: int | None) -> int | None:
    """The chunk size: the configured one, or as many rows as fit the memory budget (at least one)."""
    if not memory_budget_mb:
        return chunk_rows
    per_row = max(1, saved_bytes_per_row(objective, x))
    fitting = max(1, int(memory_budget_mb * 2**20 // per_row))
    chosen = min(fitting, chunk_rows) if chunk_rows else fitting
    log.info("memory budget %.0f MB, about %.1f MB per row: %d rows per chunk", memory_budget_mb,
             per_row / 2**20, chosen)
    return chosen


@dataclass
class RowOptimisation:
    """The options every attack's optimisation shares (Inverting Gradients' defaults): iterations,
    signed Adam's lr with its 3/8-5/8-7/8 decay, the TV weight, restarts, the start, the box, and what
    the server knows of the labels."""

    iterations: int = 4800
    lr: float = 0.1
    tv_weight: float = 1e-6
    restarts: int = 1
    init: str = "randn"
    signed: bool = True
    boxed: bool = True
    lr_decay: bool = True
    labels: str = "known"  # known: the server has the labels; inferred: from the classifier's gradient
    label_strategy: str = "auto"  # how labels are inferred (ppp.attacks.labels.LABEL_STRATEGIES)
    progress_every: int = 0
    precision: str = "float32"  # or bfloat16: the objective under autocast (PRECISIONS)
    optimizer: str = "adam"  # or lbfgs (OPTIMIZERS)
    # The reconstructions' contrast where the gradient does not fix it (ResNet-18 with GroupNorm): keep the
    # optimiser's, or the most the box allows (ppp.attacks.contrast).
    contrast: str = "keep"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"attack precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"attack optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.contrast not in CONTRASTS:
            raise ValueError(f"attack contrast must be one of {', '.join(CONTRASTS)}, got {self.contrast!r}")
        if self.labels not in ("known", "inferred"):
            raise ValueError(f"attack labels must be 'known' or 'inferred', got {self.labels!r}")
        if self.label_strategy not in ("auto", *LABEL_STRATEGIES):
            raise ValueError(f"attack label_strategy must be auto or one of {', '.join(LABEL_STRATEGIES)}, "
                             f"got {self.label_strategy!r}")
        if self.iterations < 1 or self.restarts < 1:
            raise ValueError("attack iterations and restarts must be >= 1")

    def problem(self, names: list[str], **overrides) -> GradientMatchingProblem:
        """The optimisation these options describe, over the gradients `names` (none where the attack's
        objective is its own); `overrides` are what the attack sets itself."""
        shared = dict(iterations=self.iterations, lr=self.lr, tv_weight=self.tv_weight, restarts=self.restarts,
                      init=self.init, signed=self.signed, boxed=self.boxed, lr_decay=self.lr_decay,
                      precision=self.precision, optimizer=self.optimizer)
        return GradientMatchingProblem(names=names, **{**shared, **overrides})

    def finish(self, result: "AttackResult", view: ServerView) -> "AttackResult":
        """The attacker's last step on its reconstructions (and the half-budget ones): their contrast
        (`contrast`), from the dataset's mean colour the model normalises with."""
        mean = view.model.mean.detach().flatten().cpu()
        return dataclasses.replace(result, images=resolve_contrast(result.images, mean, self.contrast),
                                   images_half=resolve_contrast(result.images_half, mean, self.contrast))

    def server_labels(self, view: ServerView) -> torch.Tensor:
        """Every update's labels, flat: the server's where it knows them (`labels: known`), else inferred
        from the update in the protocol's model mode."""
        if self.labels == "known":
            if view.labels is None:
                raise ValueError("attack labels: 'known' but the server view has no labels")
            return view.labels
        set_model_mode(view.model, view.model_mode)  # the server's passes run in the protocol's mode
        return infer_labels(view.model, view.gradients, view.images_per_update, self.label_strategy)


class AttackOutOfMemory(RuntimeError):
    """Even one row per pass does not fit the device's memory."""


def is_out_of_memory(err: BaseException) -> bool:
    """torch's out-of-memory error (the GPU's, torch.cuda.OutOfMemoryError), or the CPU allocator's,
    which torch raises as a plain RuntimeError."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(err))


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _restore_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class RowsObjective:
    """What `optimise` minimises, row by row: `evaluate(x, rows, latent)` gives the rows' losses and
    gradients w.r.t. their images (and w.r.t. their latent noise where `latent` is given); `score`
    ranks a finished row's restarts by the matching term alone. Subclasses implement `_evaluate`, in
    passes of at most `chunk_rows` rows (None: all)."""

    engine: str = "loop"
    chunk_rows: int | None = None
    oom_retries: int = 0

    def evaluate(self, x: torch.Tensor, rows: torch.Tensor, latent: torch.Tensor | None) -> tuple:
        """The rows' losses and gradients; a pass that runs out of memory (the GPU's, or the CPU's) is
        redone with half the rows per pass, for this and every later pass. Rows never interact and the
        global RNG is rewound, so the result is the fitted run's up to float summation order."""
        while True:
            rng = _rng_state(x.device)
            try:
                return self._evaluate(x, rows, latent)
            except RuntimeError as err:
                if not is_out_of_memory(err):
                    raise
                failed = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
            # Out of the except block: the failed pass's tensors are freed before the retry.
            current = min(self.chunk_rows or len(rows), len(rows))
            if self.engine == "loop" or current <= 1:
                raise AttackOutOfMemory(f"attack: out of memory with one row per pass ({failed}); lower "
                                        "attack.restarts or use a device with more memory") from None
            smaller = max(1, current // 2)
            log.warning("attack: out of memory with %d rows per pass; retrying with %d", current, smaller)
            self.chunk_rows, self.oom_retries = smaller, self.oom_retries + 1
            _restore_rng_state(x.device, rng)
            if x.device.type == "cuda":
                torch.cuda.empty_cache()

    def _evaluate(self, x: torch.Tensor, rows: torch.Tensor, latent: torch.Tensor | None) -> tuple:
        raise NotImplementedError

    def score(self, x_row: torch.Tensor, row: int, latent_row: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, rows: torch.Tensor, lr_scale: torch.Tensor) -> None:
        """Called after every optimiser step with the rows just evaluated and every row's learning-rate
        factor of its schedule (1 at the start): an objective with unknowns of its own (the surrogate
        attack's alpha) steps them here."""


class ChunkedRowsObjective(RowsObjective):
    """An objective whose rows go through one batched forward and backward (`_evaluate_rows`), split
    into passes of `chunk_rows` rows."""

    engine = "batched"

    def _evaluate(self, x, rows, latent):
        size = self.chunk_rows or len(rows)
        parts = [self._evaluate_rows(x, chunk) for chunk in rows.split(size)]
        return torch.cat([losses for losses, _ in parts]), torch.cat([grads for _, grads in parts])

    def _evaluate_rows(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class GradientMatching(RowsObjective):
    """Inverting Gradients' objective through the chosen row engine."""

    def __init__(self, model: StagedNet, labels: torch.Tensor, targets: list[torch.Tensor],
                 problem: GradientMatchingProblem, x: torch.Tensor):
        images_per_update = 1 if x.dim() == 4 else x.shape[1]
        self.rows = RowObjective(model, problem.names, labels, targets, problem.tv_weight, problem.local_steps,
                                 problem.local_lr, problem.local_batches)
        self.chunk_rows = rows_per_chunk(self.rows, x, problem.memory_budget_mb, problem.chunk_rows)
        self.engine = choose_engine(problem.engine, model, problem.names, images_per_update, problem.local_steps,
                                    problem.latent)
        if problem.latent and self.engine == "vmap":
            raise ValueError("the latent attack runs on the per_layer or loop engine, not vmap")
        self.per_layer = PerLayerObjective(model, problem.names, labels, targets, problem.tv_weight,
                                           images_per_update) if self.engine == "per_layer" else None

    def _evaluate(self, x, rows, latent):
        # A single row is faster through plain autograd than through a vmap of one (benchmarks/).
        if self.engine == "loop" or len(rows) == 1:
            return self.rows.loop(x, rows, latent)
        if self.per_layer is not None:
            return self.per_layer(x, rows, self.chunk_rows, latent)
        return self.rows.vectorized(x, rows, self.chunk_rows)

    def score(self, x_row, row, latent_row):
        return self.rows.gradient_loss(x_row, row, create_graph=False, latent_row=latent_row)


def optimise(view: ServerView, labels: torch.Tensor, problem: GradientMatchingProblem, seed: int | Sequence[int],
             progress: Callable[[int, torch.Tensor], None] | None = None,
             progress_every: int = 0, victim_ids: list[int] | None = None,
             objective: RowsObjective | None = None, start: torch.Tensor | None = None,
             update_iterations: Sequence[int] | None = None) -> AttackResult:
    """Optimise one dummy image per victim and restart, all rows in one optimiser.

    Each row's start is seeded by (seed, victim id, restart), so a victim gets the same start whether it
    is attacked alone or with others (`seed` may be one per update: several cells' updates optimised
    together keep each cell's starts); Adam and the sign step act elementwise, so rows never interact.
    Every row keeps its best iterate (lowest objective); with `patience`, a row that stopped improving
    is frozen and no longer computed. The objective is gradient matching over `problem.names` unless
    `objective` is given (the analytic attack's feature inversion). `start` (every image, in [0, 1]) replaces
    the seeded starts: every restart of an update starts there. `update_iterations` gives each update its
    own budget (at most `problem.iterations`) and learning-rate schedule: a row run for n iterations
    gets what a run of n iterations alone gives it, in the same passes as the other rows (the
    convergence check at half the budget, ppp.stages)."""
    started = time.perf_counter()
    model = view.model
    set_model_mode(model, view.model_mode)  # the mode the client computed its update in
    for p in model.parameters():
        p.requires_grad_(True)
    device = model.mean.device
    batch, restarts = view.num_updates, problem.restarts
    per_update = view.images_per_update
    # A row is one image, or the `per_update` images of one update, optimised together.
    shape = model.in_shape if per_update == 1 else (per_update, *model.in_shape)
    mean, std = model.mean[0], model.std[0]
    # Optimise in normalised space, as Inverting Gradients does; the box is [0, 1] in pixels.
    lower, upper = (0 - mean) / std, (1 - mean) / std

    victim_ids = list(range(batch)) if victim_ids is None else list(victim_ids)
    if len(victim_ids) != batch:
        raise ValueError(f"victim_ids has {len(victim_ids)} entries for {batch} victims")
    row_seeds = [seed] * batch if isinstance(seed, int) else [int(s) for s in seed]
    if len(row_seeds) != batch:
        raise ValueError(f"seed has {len(row_seeds)} entries for {batch} updates")
    rows = []
    for b in range(batch):
        for r in range(restarts):
            gen = generator(derive_seed(row_seeds[b], "init", victim_ids[b], r))
            if problem.init == "randn":
                row = torch.randn(shape, generator=gen)
            elif problem.init == "rand":
                row = (torch.rand(shape, generator=gen) - mean.cpu()) / std.cpu()
            else:
                raise ValueError(f"unknown init {problem.init!r}; known: randn, rand")
            rows.append(row)
    n_rows = batch * restarts
    x = torch.stack(rows).to(device)
    if start is not None:
        given = ((start.to(device) - mean) / std).clamp(lower, upper).view(batch, *shape)
        x = given.repeat_interleave(restarts, dim=0).contiguous()
    x.grad = torch.zeros_like(x)
    latent = None
    if problem.latent:
        if model.bottleneck is None:
            raise ValueError("the latent attack needs a PRECODE model")
        # PRECODE's noise, one row per image, starting at zero: the mean code.
        latent = torch.zeros(n_rows, *shape[:-3], model.bottleneck.bottleneck_size, device=device)
        latent.grad = torch.zeros_like(latent)
    if objective is None:
        row_labels = labels.to(device).view(batch, *shape[:-3]).repeat_interleave(restarts, dim=0)
        targets = [view.gradients[n].to(device).repeat_interleave(restarts, dim=0) for n in problem.names]
        objective = GradientMatching(model, row_labels, targets, problem, x)
    optimised = [x] if latent is None else [x, latent]
    budgets = torch.full((n_rows,), problem.iterations, dtype=torch.long)
    if update_iterations is not None:
        if len(update_iterations) != batch or max(update_iterations) > problem.iterations:
            raise ValueError(f"update_iterations: {len(update_iterations)} budgets for {batch} updates, each at "
                             f"most {problem.iterations}")
        budgets = torch.tensor([int(n) for n in update_iterations]).repeat_interleave(restarts)
    own_budgets = bool((budgets != problem.iterations).any())
    lbfgs = problem.optimizer == "lbfgs"
    if problem.optimizer not in OPTIMIZERS:
        raise ValueError(f"attack optimizer must be one of {', '.join(OPTIMIZERS)}, got {problem.optimizer!r}")
    if lbfgs and latent is not None:
        raise ValueError("attack optimizer lbfgs does not optimise the latent attack's noise (use adam)")
    # One torch Adam where every row has the full budget (the same numbers as before per-row budgets);
    # RowAdam where rows follow their own schedules.
    cached = None  # L-BFGS: the rows' losses and gradients at the current iterate, from its line search
    if lbfgs:
        optimizer = RowLBFGS()
    else:
        optimizer = RowAdam(optimised) if own_budgets else torch.optim.Adam(optimised, lr=problem.lr)

    def schedule(iterations: int) -> list[int]:
        return [round(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)] if problem.lr_decay else []
    milestones = schedule(problem.iterations)
    row_budgets = budgets.tolist()
    row_milestones = {n: schedule(n) for n in set(row_budgets)}

    losses = torch.full((n_rows,), float("inf"))
    best_loss = torch.full((n_rows,), float("inf"))
    best_x = x.detach().clone()
    best_latent = None if latent is None else latent.detach().clone()
    since_improved = torch.zeros(n_rows, dtype=torch.long)
    active = torch.ones(n_rows, dtype=torch.bool)
    iterations_run = torch.zeros(n_rows, dtype=torch.long)
    half_step = problem.iterations // 2
    half_x, half_loss = None, None

    def remember_best(rows: torch.Tensor, row_losses: torch.Tensor) -> None:
        """Keep each row's iterate when its objective is the lowest seen so far."""
        better = rows[row_losses < best_loss[rows]].to(device)
        best_x[better] = x[better]
        if latent is not None:
            best_latent[better] = latent[better]
        best_loss[rows] = torch.minimum(best_loss[rows], row_losses)

    def row_learning_rates(step: int) -> torch.Tensor:
        """Every row's learning rate at `step` under its own budget's schedule."""
        lr_of = {n: multistep_lr(problem.lr, m, step) for n, m in row_milestones.items()}
        return torch.tensor([lr_of[n] for n in row_budgets], device=device)

    def adam_step(live: torch.Tensor, row_grads: torch.Tensor, latent_grads: list, step: int) -> None:
        """One (signed) Adam step of the live rows; frozen rows (patience, own budgets) held in place."""
        frozen = ~active.to(device)
        frozen_before = [t[frozen].clone() for t in optimised] if not bool(active.all()) else None
        x.grad.zero_()
        x.grad[live.to(device)] = row_grads.sign() if problem.signed else row_grads
        if latent is not None:
            latent.grad.zero_()
            latent.grad[live.to(device)] = latent_grads[0].sign() if problem.signed else latent_grads[0]
        if own_budgets:
            row_lr = row_learning_rates(step)
            optimizer.step(row_lr)
        else:
            optimizer.param_groups[0]["lr"] = multistep_lr(problem.lr, milestones, step)
            optimizer.step()
            row_lr = torch.full((n_rows,), optimizer.param_groups[0]["lr"], device=device)
        objective.after_step(live.to(device), row_lr / problem.lr)
        if frozen_before is not None:  # Adam's momentum would move frozen rows: hold them
            for t, before in zip(optimised, frozen_before):
                t[frozen] = before
        if problem.boxed:
            x.copy_(torch.max(torch.min(x, upper), lower))

    with seeded(derive_seed(row_seeds[0], "sampling"), device), code_mode(model, problem.precode_code):
        for step in range(problem.iterations):
            finishing = (active & (budgets == step)).nonzero().flatten()
            if len(finishing):  # the last iterate of a row whose budget ends here may be its best
                with objective_precision(device, problem.precision):
                    final = objective.evaluate(x, finishing.to(device), latent)[0]
                remember_best(finishing, final.detach().cpu())
                active[finishing] = False
            live = active.nonzero().flatten()
            if len(live) == 0:
                break
            if lbfgs:  # the objective here came with the line search's accepted step
                if cached is None:
                    if problem.boxed:  # the line search projects its trials: start inside the box
                        x.copy_(torch.max(torch.min(x, upper), lower))
                    with objective_precision(device, problem.precision):
                        every = torch.arange(n_rows, device=device)
                        cached = tuple(t.detach().float() for t in objective.evaluate(x, every, None)[:2])
                row_losses = cached[0][live.to(device)].cpu()
            else:
                with objective_precision(device, problem.precision):
                    row_losses, row_grads, *latent_grads = objective.evaluate(x, live.to(device), latent)
                row_losses = row_losses.detach().cpu()
            # The objective at the current iterate: remember the best iterate before stepping.
            losses[live] = row_losses
            improved = row_losses < best_loss[live] * (1 - problem.min_improvement)
            remember_best(live, row_losses)
            since_improved[live] = torch.where(improved, 0, since_improved[live] + 1)
            iterations_run[live] += 1
            if lbfgs:
                row_lr = row_learning_rates(step)

                def evaluate(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                    with objective_precision(device, problem.precision):
                        return objective.evaluate(x, rows, None)[:2]

                cached = optimizer.step(x, live.to(device), *cached, evaluate, row_lr,
                                        (lower, upper) if problem.boxed else None)
                objective.after_step(live.to(device), row_lr / problem.lr)
            else:
                adam_step(live, row_grads, latent_grads, step)
            if problem.patience:
                active &= since_improved < problem.patience
            if step + 1 == half_step:  # best iterates so far, before this step moved x
                half_x, half_loss = best_x.clone(), best_loss.clone()
            if progress and progress_every and ((step + 1) % progress_every == 0 or step + 1 == problem.iterations):
                progress(step + 1, losses.view(batch, restarts))
            if not math.isfinite(float(row_losses.sum())):
                log.warning("non-finite attack loss at iteration %d", step + 1)

        # The last iterate may be the best one too.
        if problem.iterations > 0 and bool(active.any()):
            live = active.nonzero().flatten()
            with objective_precision(device, problem.precision):
                final = objective.evaluate(x, live.to(device), latent)[0]
            remember_best(live, final.detach().cpu())
        # Score every restart by its matching loss alone, as Inverting Gradients does.
        scores = torch.stack([objective.score(best_x[i], i, None if latent is None else best_latent[i]).detach().cpu()
                              for i in range(n_rows)])
    scores = scores.view(batch, restarts)
    best = scores.argmin(dim=1)
    final_images = (best_x * std + mean).clamp(0, 1).view(batch, restarts, *shape).cpu()
    images = final_images[torch.arange(batch), best].reshape(batch * per_update, *model.in_shape)
    images_half = None
    if half_x is not None:
        half_best = half_loss.view(batch, restarts).argmin(dim=1)
        images_half = ((half_x * std + mean).clamp(0, 1).view(batch, restarts, *shape).cpu()
                       [torch.arange(batch), half_best].reshape(batch * per_update, *model.in_shape))
    return AttackResult(images=images, images_half=images_half, gradient_loss=scores[torch.arange(batch), best], restart_losses=scores,
                        labels=labels.cpu(), seconds=time.perf_counter() - started,
                        chunk_rows=objective.chunk_rows, engine=objective.engine,
                        oom_retries=getattr(objective, "oom_retries", 0), iterations=iterations_run.view(batch, restarts)[torch.arange(batch), best])
