"""The terms of Inverting Gradients' objective, shared by every way the engine evaluates rows."""

from __future__ import annotations

import torch


def cosine_distance(grads: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """1 - cosine similarity of the concatenation of all selected gradients (Inverting Gradients)."""
    dot = sum((g * t).sum() for g, t in zip(grads, targets))
    norm_g = sum(g.pow(2).sum() for g in grads).sqrt()
    norm_t = sum(t.pow(2).sum() for t in targets).sqrt()
    return 1 - dot / (norm_g * norm_t).clamp_min(1e-12)


def total_variation_rows(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV as in Inverting Gradients, per image of a (rows, C, H, W) batch: the mean
    absolute difference of horizontal neighbours plus that of vertical ones."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """TV of one image (C, H, W)."""
    return total_variation_rows(x.unsqueeze(0))[0]
