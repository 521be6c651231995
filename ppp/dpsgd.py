"""DP-SGD training through Opacus: per-example clipping and noise, and the privacy spent (the RDP
accountant's epsilon at the configured delta).

Two ways to clip, both Opacus's and both giving the same update (`dpsgd.clipping`): `ghost` (fast
gradient clipping, Li et al. 2022 / Bu et al.: each example's gradient norm from the layers' inputs and
output gradients, then a second backward pass of the loss reweighted by the clip factors; no
per-example gradient is formed) and `per_sample` (GradSampleModule forms every example's gradient,
DPOptimizer clips them); `auto` picks by the model's layers (choose_clipping).

The study's batches are a fixed-size shuffle per epoch (as every other cell trains), not Poisson
sampling; the accountant is stepped with the sampling rate batch / examples, the approximation Opacus
itself makes when `poisson_sampling=False`.
"""

from __future__ import annotations

import torch

from ppp.defenses import DPSGD
from ppp.models import StagedNet


def choose_clipping(model: torch.nn.Module, requested: str) -> str:
    """auto: ghost clipping for models without convolutions (Linear layers' per-example norms are cheap:
    8-12x faster than per-example gradients on the 1024-wide MLP); per-example gradients where there are
    convolutions (ghost's convolution norms were 1.2-1.3x slower on LeNet and ResNet-18;
    benchmarks/README.md, "DP-SGD")."""
    if requested != "auto":
        return requested
    has_conv = any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())
    return "per_sample" if has_conv else "ghost"


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
        params = [p for p in model.parameters() if p.requires_grad]
        base = {"adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
                "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)}
        if optimizer_name not in base:
            raise ValueError(f"training.optimizer: unknown {optimizer_name!r}; known: {sorted(base)}")
        noise = dict(noise_multiplier=defense.noise_scale, max_grad_norm=defense.max_grad_norm,
                     expected_batch_size=batch_size, generator=noise_generator)
        if choose_clipping(model, defense.clipping) == "ghost":
            from opacus.grad_sample import GradSampleModuleFastGradientClipping
            from opacus.optimizers import DPOptimizerFastGradientClipping
            from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

            self.wrapped = GradSampleModuleFastGradientClipping(model, max_grad_norm=defense.max_grad_norm,
                                                                use_ghost_clipping=True)
            self.optimizer = DPOptimizerFastGradientClipping(base[optimizer_name](), **noise)
            self.criterion = DPLossFastGradientClipping(self.wrapped, self.optimizer, torch.nn.CrossEntropyLoss())
        else:
            self.wrapped = GradSampleModule(model)
            self.optimizer = DPOptimizer(base[optimizer_name](), **noise)
            self.criterion = torch.nn.CrossEntropyLoss()
        self.accountant = RDPAccountant()
        self.sample_rate = batch_size / examples

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        # DP-SGD runs on plain models (no PRECODE, so no KL term): the loss is the cross-entropy alone.
        self.criterion(self.wrapped(images), labels).backward()
        self.optimizer.step()
        self.accountant.step(noise_multiplier=self.defense.noise_scale, sample_rate=self.sample_rate)

    def epsilon(self) -> float:
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.defense.delta))

    def close(self) -> None:
        """Remove Opacus's hooks, leaving the plain model."""
        self.wrapped._close()
