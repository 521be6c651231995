"""Defences on the shared gradient: each maps named gradients to defended named gradients.

A defence knows which model variant it needs (`needs_precode`) and which gradients it perturbs,
chosen from the parts of the model: the layers before PRECODE, PRECODE's encoder, its decoder, and
the layers after it. Registry: none, noise, precode, ppp (the paper's: noise before PRECODE only), and
the PPP variants ppp_encoder (also PRECODE's encoder) and ppp_no_decoder (every gradient except the
decoder's).

The noise scale is absolute (std sigma) or, with `relative`, relative to each gradient tensor's size:
std sigma * |g| / sqrt(numel(g)), so that the noise's norm is about sigma times the gradient's and
sigma means the same across architectures whose gradients differ by orders of magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ppp.models import AFTER, BEFORE, PRECODE

# The parts a defence may noise; PRECODE's parameters split into its encoder (before the sampling)
# and its decoder.
BEFORE_PART, ENCODER_PART, DECODER_PART, AFTER_PART = "before", "encoder", "decoder", "after"
PARTS = (BEFORE_PART, ENCODER_PART, DECODER_PART, AFTER_PART)


def part_of(name: str, group: str) -> str:
    """The part of parameter `name` of parameter group `group` (ppp.models: before, precode, after)."""
    if group == PRECODE:
        return ENCODER_PART if name.startswith("bottleneck.encoder.") else DECODER_PART
    return {BEFORE: BEFORE_PART, AFTER: AFTER_PART}[group]


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
    relative: bool = False  # std sigma * |g| / sqrt(numel) per gradient tensor, instead of sigma
    needs_precode: ClassVar[bool] = False
    noised_parts: ClassVar[tuple[str, ...]] = ()
    per_example: ClassVar[bool] = False  # training clips each example's gradient (DP-SGD)

    def __post_init__(self):
        if self.noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {self.noise_scale}")

    def noised_names(self, groups: dict[str, str]) -> list[str]:
        return [n for n, g in groups.items() if part_of(n, g) in self.noised_parts]

    def scale_for(self, grad: torch.Tensor) -> float | torch.Tensor:
        if not self.relative:
            return self.noise_scale
        return self.noise_scale * grad.norm() / grad.numel() ** 0.5

    def __call__(self, grads: dict[str, torch.Tensor], groups: dict[str, str],
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
        noised = set(self.noised_names(groups)) if self.noise_scale > 0 else set()
        out = {}
        # Draw in a fixed (model) order so the same seed gives the same noise.
        for name, grad in grads.items():
            if name in noised:
                grad = grad + sample_noise(grad.shape, self.distribution, self.scale_for(grad), generator, grad.device)
            out[name] = grad
        return out


class NoDefense(Defense):
    pass


class FullNoise(Defense):
    noised_parts = PARTS


class Precode(Defense):
    needs_precode = True


class PartialPerturbation(Defense):
    """PPP as the paper defines it: PRECODE plus noise on only the gradients of the layers before it."""

    needs_precode = True
    noised_parts = (BEFORE_PART,)


class PartialPerturbationWithEncoder(PartialPerturbation):
    """PPP whose noise also covers PRECODE's encoder, whose gradient otherwise gives PRECODE's input
    exactly (the analytic attack, ppp.attacks.analytic)."""

    noised_parts = (BEFORE_PART, ENCODER_PART)


class PartialPerturbationNoDecoder(PartialPerturbation):
    """PPP noising every gradient except PRECODE's decoder's."""

    noised_parts = (BEFORE_PART, ENCODER_PART, AFTER_PART)


@dataclass(frozen=True)
class DPSGD(Defense):
    """DP-SGD (Abadi et al. 2016) as Opacus computes it: each example's gradient clipped to
    `max_grad_norm` over all parameters, then Gaussian noise with std `noise_scale` (the noise
    multiplier) times `max_grad_norm`, averaged over the batch. A captured update is one image, so it
    is the clipped gradient plus that noise. Training uses Opacus itself (ppp.dpsgd), whose accountant
    gives epsilon at `delta`."""

    max_grad_norm: float = 1.0
    delta: float = 1e-5
    clipping: str = "auto"  # how training clips: ghost, per_sample, or auto (ppp.dpsgd.choose_clipping)
    noised_parts = PARTS
    per_example = True

    def __post_init__(self):
        super().__post_init__()
        if self.max_grad_norm <= 0:
            raise ValueError(f"dpsgd max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.clipping not in ("auto", "ghost", "per_sample"):
            raise ValueError(f"dpsgd clipping must be auto, ghost or per_sample, got {self.clipping!r}")
        if self.distribution != "gaussian" or self.relative:
            raise ValueError("dpsgd adds Gaussian noise scaled by the clipping norm (noise.distribution "
                             "gaussian, noise.scale_mode absolute)")

    def __call__(self, grads: dict[str, torch.Tensor], groups: dict[str, str],
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.aggregate([grads], generator)

    def aggregate(self, per_example: list[dict[str, torch.Tensor]],
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One DP-SGD step's gradient of a batch from its examples' gradients: each clipped to
        `max_grad_norm`, summed, Gaussian noise of std noise_scale * max_grad_norm added to the sum, and
        divided by the number of examples (Opacus's DPOptimizer with expected_batch_size = B)."""
        clipped = []
        for grads in per_example:
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
            factor = (self.max_grad_norm / (norm + 1e-6)).clamp(max=1.0)  # Opacus's clip factor
            clipped.append({name: grad * factor for name, grad in grads.items()})
        std = self.noise_scale * self.max_grad_norm
        count = len(per_example)
        out = {}
        for name in per_example[0]:
            total = clipped[0][name] if count == 1 else torch.stack([c[name] for c in clipped]).sum(0)
            noised = total + sample_noise(total.shape, "gaussian", std, generator, total.device)
            out[name] = noised if count == 1 else noised / count
        return out


DEFENSES: dict[str, type[Defense]] = {
    "none": NoDefense,
    "noise": FullNoise,
    "precode": Precode,
    "ppp": PartialPerturbation,
    "ppp_encoder": PartialPerturbationWithEncoder,
    "ppp_no_decoder": PartialPerturbationNoDecoder,
    "dpsgd": DPSGD,
}


def build_defense(name: str, noise_scale: float = 0.0, distribution: str = "gaussian",
                  relative: bool = False, **options) -> Defense:
    """The defence `name`; `options` (max_grad_norm, delta) go to the defences that take them."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {sorted(DEFENSES)}")
    cls = DEFENSES[name]
    own = {k: v for k, v in options.items() if k in cls.__dataclass_fields__}
    return cls(noise_scale=float(noise_scale), distribution=distribution, relative=bool(relative), **own)


def uses_noise(name: str) -> bool:
    return bool(DEFENSES[name].noised_parts)
