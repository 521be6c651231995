"""Model registry: every architecture is a list of named stages, with PRECODE optionally between two.

`build_model(arch, in_shape, num_classes, precode=...)` returns a `StagedNet`. The parameter groups
(before PRECODE, PRECODE, after PRECODE) come from where each parameter sits in that structure, never
from hand-written name lists.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ppp.precode import VariationalBottleneck

BEFORE, PRECODE, AFTER = "before", "precode", "after"
GROUPS = (BEFORE, PRECODE, AFTER)


@dataclass(frozen=True)
class PrecodeSpec:
    """Where and how PRECODE is inserted; position counts stages from the end (1: before the head)."""

    bottleneck_size: int = 256
    beta: float = 1e-3
    position_from_end: int = 1
    std_offset: float = 0.0


class StagedNet(nn.Module):
    """Normalisation, then stages; PRECODE (if any) runs before stage `precode_index`.

    Inputs are images in [0, 1]; normalisation is part of the model so that attacks, box constraints
    and metrics all live in pixel space."""

    def __init__(self, stages: "OrderedDict[str, nn.Module]", in_shape: tuple[int, int, int],
                 mean: tuple[float, ...], std: tuple[float, ...], precode: PrecodeSpec | None = None):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.stages = nn.ModuleDict(stages)
        self.precode_index: int | None = None
        self.bottleneck: VariationalBottleneck | None = None
        if precode is not None:
            n = len(self.stages)
            if not 1 <= precode.position_from_end <= n - 1:
                raise ValueError(f"precode position_from_end must be in 1..{n - 1} for this model, "
                                 f"got {precode.position_from_end}")
            self.precode_index = n - precode.position_from_end
            with torch.no_grad():
                shape = self._features_before(torch.zeros(1, *in_shape), self.precode_index).shape[1:]
            self.bottleneck = VariationalBottleneck(tuple(shape), precode.bottleneck_size, precode.beta,
                                                    precode.std_offset)

    def _features_before(self, x: torch.Tensor, index: int) -> torch.Tensor:
        x = (x - self.mean) / self.std
        for stage in list(self.stages.values())[:index]:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        for i, stage in enumerate(self.stages.values()):
            if i == self.precode_index:
                x = self.bottleneck(x)
            x = stage(x)
        return x

    @property
    def has_precode(self) -> bool:
        return self.bottleneck is not None

    def regularizer(self) -> torch.Tensor:
        """The term the training loss adds to the cross-entropy (beta * KL for PRECODE, else 0)."""
        if self.bottleneck is None:
            return torch.zeros((), device=self.mean.device)
        return self.bottleneck.regularizer()

    def parameter_groups(self) -> dict[str, str]:
        """Map each parameter name to before/precode/after from the module that owns it."""
        groups: dict[str, str] = {}
        stage_names = list(self.stages.keys())
        for name, _ in self.named_parameters():
            if name.startswith("bottleneck."):
                groups[name] = PRECODE
            else:
                stage = name.split(".")[1]
                index = stage_names.index(stage)
                before = self.precode_index is None or index < self.precode_index
                groups[name] = BEFORE if before else AFTER
        return groups

    def encoder_parameter_names(self) -> list[str]:
        """PRECODE's encoder (the part before sampling); empty without PRECODE."""
        if self.bottleneck is None:
            return []
        return [f"bottleneck.encoder.{n}" for n, _ in self.bottleneck.encoder.named_parameters()]

    def classifier_weight_name(self) -> str:
        """The weight of the last linear layer, used for label inference."""
        last = None
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith("bottleneck"):
                last = name
        if last is None:
            raise ValueError("model has no linear classifier")
        return f"{last}.weight"


StageBuilder = Callable[..., "OrderedDict[str, nn.Module]"]
ARCHITECTURES: dict[str, StageBuilder] = {}


def register(name: str) -> Callable[[StageBuilder], StageBuilder]:
    def decorate(builder: StageBuilder) -> StageBuilder:
        ARCHITECTURES[name] = builder
        return builder
    return decorate


def build_model(arch: str, in_shape: tuple[int, int, int], num_classes: int,
                mean: tuple[float, ...], std: tuple[float, ...],
                precode: PrecodeSpec | None = None, options: dict | None = None) -> StagedNet:
    """`options` are the architecture's keyword arguments (width, ...), from config `models.<arch>`."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    try:
        stages = ARCHITECTURES[arch](tuple(in_shape), int(num_classes), **(options or {}))
    except TypeError as err:
        raise ValueError(f"models.{arch}: bad option ({err})") from None
    return StagedNet(stages, in_shape, mean, std, precode)


# Importing the architecture modules fills the registry.
from ppp.models import convnet, lenet, mlp, resnet  # noqa: E402,F401
