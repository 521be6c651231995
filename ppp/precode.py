"""PRECODE: the variational bottleneck of Scheliga et al., inserted into a network before its head.

Choices follow the authors' module (dAI-SY-Group/PRECODE): a linear encoder to 2K statistics, the
mean taken as is and the std through softplus(. - 5), a reparameterised sample in training and in
evaluation, a linear decoder back to the input size, and beta * KL(q(z|x) || N(0, I)) in bits,
averaged over the batch, added to the training loss. See docs/method.md.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F


class VariationalBottleneck(nn.Module):
    """Maps features of any shape through a K-dimensional stochastic code and back to that shape."""

    def __init__(self, in_shape: tuple[int, ...], bottleneck_size: int = 256, beta: float = 1e-3,
                 std_offset: float = 0.0):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.bottleneck_size = int(bottleneck_size)
        self.beta = float(beta)
        self.std_offset = float(std_offset)
        in_features = math.prod(self.in_shape)
        self.encoder = nn.Linear(in_features, 2 * self.bottleneck_size)
        self.decoder = nn.Linear(self.bottleneck_size, in_features)
        # The KL of the latest forward pass; the model adds beta * kl to the loss.
        self.kl_bits: torch.Tensor | None = None
        # "sample" (the client's and the authors' module), or "mean": the code is the mean, an
        # attacker's choice that makes its own forward pass deterministic (see CODE_MODES).
        self.code_mode = "sample"
        # The standard-normal draws of the code, one row per image, where an attacker supplies them
        # (the latent attack optimises them); None: drawn afresh.
        self.given_noise: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        statistics = self.encoder(features.reshape(batch, -1))
        mu = statistics[:, : self.bottleneck_size]
        std = F.softplus(statistics[:, self.bottleneck_size:] - self.std_offset)
        if self.code_mode == "mean":
            code = mu
        elif self.given_noise is not None:
            code = mu + self.given_noise * std
        else:
            # Sampling in evaluation too, as the authors do: the stochastic gradients are the defence.
            code = mu + torch.randn_like(std) * std
        self.kl_bits = kl_to_standard_normal_bits(mu, std)
        return self.decoder(code).reshape(batch, *self.in_shape)

    def regularizer(self) -> torch.Tensor:
        if self.kl_bits is None:
            raise RuntimeError("VariationalBottleneck.regularizer() called before a forward pass")
        return self.beta * self.kl_bits


# How a forward pass forms PRECODE's code: a reparameterised sample, or the mean of q(z|x).
CODE_MODES = ("sample", "mean")


@contextlib.contextmanager
def code_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Run every PRECODE bottleneck of `model` with the code `mode` inside the block."""
    if mode not in CODE_MODES:
        raise ValueError(f"PRECODE code mode must be one of {', '.join(CODE_MODES)}, got {mode!r}")
    bottlenecks = [m for m in model.modules() if isinstance(m, VariationalBottleneck)]
    previous = [b.code_mode for b in bottlenecks]
    for b in bottlenecks:
        b.code_mode = mode
    try:
        yield
    finally:
        for b, old in zip(bottlenecks, previous):
            b.code_mode = old


@contextlib.contextmanager
def given_noise(model: nn.Module, noise: torch.Tensor) -> Iterator[None]:
    """Inside the block, every PRECODE bottleneck of `model` forms its code from `noise` (rows, K)
    instead of fresh draws: code = mean + noise * std, differentiable in `noise`."""
    bottlenecks = [m for m in model.modules() if isinstance(m, VariationalBottleneck)]
    if not bottlenecks:
        raise ValueError("given_noise: the model has no PRECODE bottleneck")
    previous = [(b.code_mode, b.given_noise) for b in bottlenecks]
    for b in bottlenecks:
        b.code_mode, b.given_noise = "sample", noise
    try:
        yield
    finally:
        for b, (mode, old) in zip(bottlenecks, previous):
            b.code_mode, b.given_noise = mode, old


@contextlib.contextmanager
def given_noise_rows(model: nn.Module, rows: slice) -> Iterator[None]:
    """Inside the block, bottlenecks with given noise (given_noise) use only its `rows`: a FedAvg local
    step on a mini-batch passes that mini-batch's images, each with its own noise row."""
    bottlenecks = [m for m in model.modules()
                   if isinstance(m, VariationalBottleneck) and m.given_noise is not None]
    previous = [b.given_noise for b in bottlenecks]
    for b in bottlenecks:
        b.given_noise = b.given_noise[rows]
    try:
        yield
    finally:
        for b, old in zip(bottlenecks, previous):
            b.given_noise = old


def kl_to_standard_normal_bits(mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, std^2) || N(0, I)) summed over the code, averaged over the batch, in bits."""
    kl_nats = 0.5 * (mu.pow(2) + std.pow(2) - 2 * torch.log(std) - 1).sum(dim=1)
    return kl_nats.mean() / math.log(2)
