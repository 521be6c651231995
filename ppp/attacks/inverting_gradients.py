"""Inverting Gradients (Geiping et al., 2020) and the targeted attack on PRECODE.

`ig` matches the gradients of every layer; `ig_targeted` leaves out PRECODE and every later layer,
whose gradients PRECODE's sampling makes stochastic, and matches only the earlier, deterministic ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ppp.attacks.engine import ENGINES, AttackResult, RowOptimisation, ServerView, optimise
from ppp.gradients import select_parameters
from ppp.precode import CODE_MODES


@dataclass
class InvertingGradients(RowOptimisation):
    selection: str = "all"
    keep_encoder: bool = False
    engine: str = "auto"  # row engine: auto, per_layer, vmap or loop (ppp.attacks.engine.ENGINES)
    batch_size: int | None = None  # rows (victims x restarts) per batched pass; None: all
    memory_budget_mb: float | None = None  # or: as many rows per pass as fit this budget
    patience: int = 0  # early stopping: freeze a victim after this many iterations without progress
    min_improvement: float = 1e-4
    # The attacker's PRECODE code in its own forward passes: "sample" as the client does, or "mean",
    # which matches a deterministic gradient (stronger; docs/method.md "Threat model").
    precode_code: str = "mean"
    # Also optimise PRECODE's noise per victim, so that PRECODE's and later gradients can be matched
    # (the latent attack, ppp.attacks.latent).
    latent: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.engine not in ENGINES:
            raise ValueError(f"attack engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.precode_code not in CODE_MODES:
            raise ValueError(f"attack precode_code must be one of {', '.join(CODE_MODES)}, got {self.precode_code!r}")
        if self.latent and self.selection != "all":
            raise ValueError("the latent attack matches every gradient (selection 'all')")

    def __call__(self, view: ServerView, seed: int | Sequence[int],
                 progress: Callable[[int, torch.Tensor], None] | None = None,
                 victim_ids: list[int] | None = None,
                 update_iterations: Sequence[int] | None = None) -> AttackResult:
        labels = self.server_labels(view)
        problem = self.problem(
            select_parameters(view.model, self.selection, self.keep_encoder),
            engine=self.engine, chunk_rows=self.batch_size, patience=self.patience,
            min_improvement=self.min_improvement, memory_budget_mb=self.memory_budget_mb,
            precode_code=self.precode_code, latent=self.latent,
            local_steps=view.local_steps, local_lr=view.local_lr, local_batches=view.local_batches)
        return optimise(view, labels, problem, seed, progress=progress, progress_every=self.progress_every,
                        victim_ids=victim_ids, update_iterations=update_iterations)
