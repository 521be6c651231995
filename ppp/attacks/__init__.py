"""Gradient inversion attacks. The attacker sees only a `ServerView`: the model, the shared
(defended) gradient, the batch size, and the labels where the config says the server knows them."""

from ppp.attacks.engine import AttackResult, ServerView, infer_labels
from ppp.attacks.inverting_gradients import ATTACKS, InvertingGradients, build_attack

__all__ = ["ATTACKS", "AttackResult", "InvertingGradients", "ServerView", "build_attack", "infer_labels"]
