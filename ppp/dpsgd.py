"""DP-SGD training through Opacus: per-example gradients (GradSampleModule), clipping and noise
(DPOptimizer), and the privacy spent (the RDP accountant's epsilon at the configured delta).

The study's batches are a fixed-size shuffle per epoch (as every other cell trains), not Poisson
sampling; the accountant is stepped with the sampling rate batch / examples, the approximation Opacus
itself makes when `poisson_sampling=False`.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ppp.defenses import DPSGD
from ppp.models import StagedNet


class PrivateSteps:
    """One DP-SGD step per call on a batch, with Opacus's clipping, noise and accounting."""

    def __init__(self, model: StagedNet, defense: DPSGD, optimizer_name: str, lr: float, weight_decay: float,
                 batch_size: int, examples: int, noise_generator: torch.Generator):
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.optimizers import DPOptimizer

        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ValueError("defense dpsgd: the model has BatchNorm, which mixes examples, so per-example "
                             "clipping is undefined (Opacus refuses it); leave this architecture out of "
                             "defense_archs.dpsgd")
        self.model, self.defense = model, defense
        self.wrapped = GradSampleModule(model)
        params = [p for p in model.parameters() if p.requires_grad]
        base = {"adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
                "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)}
        if optimizer_name not in base:
            raise ValueError(f"training.optimizer: unknown {optimizer_name!r}; known: {sorted(base)}")
        self.optimizer = DPOptimizer(base[optimizer_name](), noise_multiplier=defense.noise_scale,
                                     max_grad_norm=defense.max_grad_norm, expected_batch_size=batch_size,
                                     generator=noise_generator)
        self.accountant = RDPAccountant()
        self.sample_rate = batch_size / examples

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.wrapped(images), labels) + self.model.regularizer()
        loss.backward()
        self.optimizer.step()
        self.accountant.step(noise_multiplier=self.defense.noise_scale, sample_rate=self.sample_rate)

    def epsilon(self) -> float:
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.defense.delta))

    def close(self) -> None:
        """Remove Opacus's hooks, leaving the plain model."""
        self.wrapped._close()
