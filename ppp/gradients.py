"""The client side: the gradient a client shares for its private batch, and parameter selection."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F

from ppp.models import AFTER, BEFORE, PRECODE, StagedNet


# The model's mode when the client computes its update, which the server knows as part of the protocol
# and uses in its own forward passes: BatchNorm in "eval" normalises with the running statistics, in
# "train" with the statistics of the client's own batch. PRECODE samples in both (the authors' module).
MODEL_MODES = ("eval", "train")


def set_model_mode(model: StagedNet, mode: str) -> StagedNet:
    if mode not in MODEL_MODES:
        raise ValueError(f"model mode must be one of {', '.join(MODEL_MODES)}, got {mode!r}")
    return model.train(mode == "train")


def training_loss(model: StagedNet, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus the model's regulariser (beta * KL in bits for PRECODE), as the client trains."""
    logits = model(images)
    return F.cross_entropy(logits, labels) + model.regularizer()


def shared_gradient(model: StagedNet, images: torch.Tensor, labels: torch.Tensor,
                    create_graph: bool = False, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The gradient of the training loss on one batch, keyed by parameter name (all, or `names`)."""
    params = dict(model.named_parameters())
    selected = list(params) if names is None else list(names)
    loss = training_loss(model, images, labels)
    grads = torch.autograd.grad(loss, [params[n] for n in selected], create_graph=create_graph)
    return dict(zip(selected, grads))


# Which parameter groups an attack matches: all of them, or only the deterministic ones before PRECODE.
SELECTIONS = {
    "all": (BEFORE, PRECODE, AFTER),
    "before_precode": (BEFORE,),
}


def select_parameters(model: StagedNet, selection: str, keep_encoder: bool = False) -> list[str]:
    """Parameter names an attacker matches, chosen from the model's own groups, in model order.

    `before_precode` leaves out PRECODE and every later layer (the targeted attack); with
    `keep_encoder` PRECODE's encoder stays in, as the authors' later code does."""
    if selection not in SELECTIONS:
        raise ValueError(f"unknown gradient selection {selection!r}; known: {sorted(SELECTIONS)}")
    groups = model.parameter_groups()
    keep = set(SELECTIONS[selection])
    extra = set(model.encoder_parameter_names()) if keep_encoder else set()
    names = [n for n, g in groups.items() if g in keep or n in extra]
    if not names:
        raise ValueError(f"selection {selection!r} leaves no gradients to match for this model")
    return names


@contextlib.contextmanager
def no_running_stats(model: nn.Module):
    """Inside the block, training-mode BatchNorm does not update its running statistics: it normalises
    with the batch's own statistics either way, so no output changes, and the attacked model is left as
    it was (the write is also one vmap refuses). In evaluation mode nothing is written and nothing
    changes."""
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True
