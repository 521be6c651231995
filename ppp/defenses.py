"""Defences on the shared gradient: each maps named gradients to defended named gradients.

A defence knows which model variant it needs (`needs_precode`) and which gradients it perturbs,
chosen from the model's parameter groups. Registry: none, noise, precode, ppp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ppp.models import BEFORE, GROUPS


def sample_noise(shape: torch.Size, distribution: str, scale: float, generator: torch.Generator,
                 device: torch.device) -> torch.Tensor:
    """Zero-mean noise: Gaussian with std `scale`, or Laplacian with diversity (b) `scale`."""
    if distribution == "gaussian":
        return torch.randn(shape, generator=generator, device=device) * scale
    if distribution == "laplace":
        # Inverse CDF of Laplace(0, b) from U(-1/2, 1/2); torch.distributions takes no generator.
        u = torch.rand(shape, generator=generator, device=device) - 0.5
        return -scale * torch.sign(u) * torch.log1p(-2 * u.abs().clamp(max=0.5 - 1e-7))
    raise ValueError(f"unknown noise distribution {distribution!r}; known: gaussian, laplace")


@dataclass(frozen=True)
class Defense:
    """Base: perturbs the gradients of the parameter groups in `noised_groups` (none by default)."""

    noise_scale: float = 0.0
    distribution: str = "gaussian"
    needs_precode: ClassVar[bool] = False
    noised_groups: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        if self.noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {self.noise_scale}")

    def noised_names(self, groups: dict[str, str]) -> list[str]:
        return [n for n, g in groups.items() if g in self.noised_groups]

    def __call__(self, grads: dict[str, torch.Tensor], groups: dict[str, str],
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
        noised = set(self.noised_names(groups)) if self.noise_scale > 0 else set()
        out = {}
        # Draw in a fixed (model) order so the same seed gives the same noise.
        for name, grad in grads.items():
            if name in noised:
                grad = grad + sample_noise(grad.shape, self.distribution, self.noise_scale, generator, grad.device)
            out[name] = grad
        return out


class NoDefense(Defense):
    pass


class FullNoise(Defense):
    noised_groups = GROUPS


class Precode(Defense):
    needs_precode = True


class PartialPerturbation(Defense):
    """PPP: PRECODE plus noise on only the gradients of the layers before PRECODE."""

    needs_precode = True
    noised_groups = (BEFORE,)


DEFENSES: dict[str, type[Defense]] = {
    "none": NoDefense,
    "noise": FullNoise,
    "precode": Precode,
    "ppp": PartialPerturbation,
}


def build_defense(name: str, noise_scale: float = 0.0, distribution: str = "gaussian") -> Defense:
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {sorted(DEFENSES)}")
    return DEFENSES[name](noise_scale=float(noise_scale), distribution=distribution)


def uses_noise(name: str) -> bool:
    return bool(DEFENSES[name].noised_groups)
