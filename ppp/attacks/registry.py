"""Every attack by name: its class, the options the name fixes, and the models it applies to."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ppp.attacks.analytic import AnalyticEncoderInversion
from ppp.attacks.head import HeadInversion
from ppp.attacks.inverting_gradients import InvertingGradients
from ppp.attacks.latent import LatentInvertingGradients
from ppp.attacks.surrogate import SurrogateModelExtension


@dataclass(frozen=True)
class AttackSpec:
    cls: type
    fixed: dict = field(default_factory=dict)  # options the name sets, which a config cannot override
    needs_precode: bool = False  # defined by PRECODE (its position, its encoder or its noise)


ATTACKS: dict[str, AttackSpec] = {
    "ig": AttackSpec(InvertingGradients, dict(selection="all")),
    "ig_targeted": AttackSpec(InvertingGradients, dict(selection="before_precode"), needs_precode=True),
    "latent": AttackSpec(LatentInvertingGradients, needs_precode=True),
    "analytic": AttackSpec(AnalyticEncoderInversion, needs_precode=True),
    "head": AttackSpec(HeadInversion),
    # FedAvg: one gradient at a surrogate between the client's start and end weights (ppp.attacks.surrogate)
    "sme": AttackSpec(SurrogateModelExtension, dict(selection="all")),
    "sme_targeted": AttackSpec(SurrogateModelExtension, dict(selection="before_precode"), needs_precode=True),
}


def option_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def build_attack(name: str, **options):
    """The attack `name` with `options`: the config's attack options are shared by all attacks, so an
    option that another attack knows is left out here; one that no attack knows is an error."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {sorted(ATTACKS)}")
    spec = ATTACKS[name]
    every = set().union(*(option_names(s.cls) for s in ATTACKS.values()))
    unknown = set(options) - every
    if unknown:
        raise ValueError(f"attack {name}: unknown options {sorted(unknown)}; known: {sorted(every)}")
    own = option_names(spec.cls)
    return spec.cls(**{**{k: v for k, v in options.items() if k in own}, **spec.fixed})


def attack_needs_precode(name: str) -> bool:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {sorted(ATTACKS)}")
    return ATTACKS[name].needs_precode
