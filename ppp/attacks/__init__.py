"""Gradient inversion attacks. The attacker sees only a `ServerView`: the model, the shared
(defended) gradient, the batch size, and the labels where the config says the server knows them.
Registry: ppp.attacks.registry (ig, ig_targeted, latent, analytic)."""

from ppp.attacks.engine import AttackResult, ServerView, infer_labels
from ppp.attacks.inverting_gradients import InvertingGradients
from ppp.attacks.registry import ATTACKS, attack_needs_precode, build_attack

__all__ = ["ATTACKS", "AttackResult", "InvertingGradients", "ServerView", "attack_needs_precode", "build_attack",
           "infer_labels"]
