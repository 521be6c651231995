"""The latent attack: latent-aware Inverting Gradients against PRECODE.

PRECODE's gradients are stochastic because the client's code is z = mu + eps * std with a fresh draw
eps. The targeted attack gives up the gradients that eps touches; this attack instead treats each
victim's eps as an unknown and optimises it jointly with the dummy image, so that every gradient,
PRECODE's and the later layers' included, can be matched (cosine distance + TV, signed Adam, box).
eps starts at zero, the mean code the other attacks use. At the client's image and draw the gradients
match exactly, so the objective has a global minimum where the attack succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppp.attacks.inverting_gradients import InvertingGradients


@dataclass
class LatentInvertingGradients(InvertingGradients):
    selection: str = "all"
    latent: bool = True

    def __post_init__(self):
        if not self.latent or self.selection != "all":
            raise ValueError("the latent attack optimises PRECODE's noise and matches every gradient")
        super().__post_init__()
