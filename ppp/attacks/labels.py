"""Label inference from a shared update, where the server is not told the labels.

For cross-entropy, the classifier's gradient row of class c over an update of B images is
(1/B) sum_i (p_ic - y_ic) f_i (weight) and (1/B) sum_i (p_ic - y_ic) (bias), with p the softmax and
f_i the features entering the classifier. Strategies (each a function of the server's view only):

- `idlg` (Zhao et al. 2020, iDLG): one image per update; with non-negative features only the true
  class's weight row has a negative sum.
- `yin` (Yin et al. 2021, GradInversion): the B classes whose weight rows have the smallest minimum;
  right only where an update's labels are distinct.
- `llg` (Wainakh et al. 2022, "User-level label leakage", LLG+ flavour): counts per class, from the
  classifier's bias gradient (or the weight rows' sums without a bias), b_c ~ p_c - n_c / B, where the
  mean softmax p_c (and, for weight rows, the mean feature mass) are estimated from the server's own
  forward pass on random images; counts rounded to sum to B (largest remainders). Handles repeated
  labels; its error grows as the model's outputs depend more on the input (trained models).

`auto`: idlg for one image per update, llg for more.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ppp.gradients import no_running_stats
from ppp.models import StagedNet
from ppp.precode import code_mode
from ppp.seeding import generator

LabelStrategy = Callable[[StagedNet, dict, int], torch.Tensor]
LABEL_STRATEGIES: dict[str, LabelStrategy] = {}
DUMMY_IMAGES = 64  # random images in the server's estimate of the mean softmax and feature mass


def label_strategy(name: str):
    def decorate(function: LabelStrategy) -> LabelStrategy:
        LABEL_STRATEGIES[name] = function
        return function
    return decorate


def _classifier(model: StagedNet) -> tuple[str, nn.Linear]:
    weight_name = model.classifier_weight_name()
    owner = weight_name.rpartition(".")[0]
    return owner, dict(model.named_modules())[owner]


@label_strategy("idlg")
def idlg(model: StagedNet, gradients: dict, images_per_update: int) -> torch.Tensor:
    if images_per_update != 1:
        raise ValueError("label strategy idlg recovers one label per update; use llg or yin for batches")
    weight = gradients[model.classifier_weight_name()]  # (updates, classes, features)
    return weight.flatten(2).sum(dim=2).argmin(dim=1)


@label_strategy("yin")
def yin(model: StagedNet, gradients: dict, images_per_update: int) -> torch.Tensor:
    weight = gradients[model.classifier_weight_name()]
    if images_per_update > weight.shape[1]:
        raise ValueError(f"label strategy yin picks distinct classes: {images_per_update} images per update "
                         f"exceed the {weight.shape[1]} classes")
    minima = weight.flatten(2).min(dim=2).values  # (updates, classes)
    return minima.argsort(dim=1)[:, :images_per_update].sort(dim=1).values.flatten()


def _dummy_statistics(model: StagedNet) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's mean softmax over classes and mean feature mass entering the classifier, from a
    forward pass on seeded uniform random images (the model's mode as set; PRECODE at its mean code;
    BatchNorm's running statistics left untouched)."""
    _, classifier = _classifier(model)
    seen = {}
    handle = classifier.register_forward_hook(lambda module, inputs, output: seen.update(features=inputs[0]))
    device = model.mean.device
    pixels = torch.rand((DUMMY_IMAGES, *model.in_shape), generator=generator(0)).to(device)
    try:
        with torch.no_grad(), code_mode(model, "mean"), no_running_stats(model):
            probabilities = model(pixels).softmax(dim=1)
    finally:
        handle.remove()
    return probabilities.mean(0), seen["features"].flatten(1).sum(1).mean()


def _round_counts(expected: torch.Tensor, total: int) -> torch.Tensor:
    """Non-negative integer counts near `expected` (updates, classes) summing to `total` per update."""
    expected = expected.clamp_min(0)
    scaled = expected * total / expected.sum(1, keepdim=True).clamp_min(1e-12)
    counts = scaled.floor().long()
    remainder = scaled - counts
    for u in range(counts.shape[0]):
        missing = total - int(counts[u].sum())
        if missing > 0:
            counts[u, remainder[u].argsort(descending=True)[:missing]] += 1
    return counts


@label_strategy("llg")
def llg(model: StagedNet, gradients: dict, images_per_update: int) -> torch.Tensor:
    owner, classifier = _classifier(model)
    mean_softmax, feature_mass = _dummy_statistics(model)
    bias_name = f"{owner}.bias"
    if classifier.bias is not None and bias_name in gradients:
        per_class = gradients[bias_name]  # (updates, classes): mean over images of p - y
        expected = images_per_update * (mean_softmax.to(per_class) - per_class)
    else:
        sums = gradients[model.classifier_weight_name()].flatten(2).sum(2)
        expected = images_per_update * (mean_softmax.to(sums) - sums / feature_mass.to(sums))
    counts = _round_counts(expected.double(), images_per_update)
    classes = torch.arange(counts.shape[1], device=counts.device)
    return torch.cat([classes.repeat_interleave(row) for row in counts])


def infer_update_labels(model: StagedNet, gradients: dict, images_per_update: int = 1,
                        strategy: str = "auto") -> torch.Tensor:
    """Every update's labels, flat (update after update, each update's sorted), by `strategy`."""
    if strategy == "auto":
        strategy = "idlg" if images_per_update == 1 else "llg"
    if strategy not in LABEL_STRATEGIES:
        raise ValueError(f"unknown label strategy {strategy!r}; known: auto, {', '.join(LABEL_STRATEGIES)}")
    return LABEL_STRATEGIES[strategy](model, gradients, images_per_update)


def label_accuracy(inferred: torch.Tensor, true: torch.Tensor, images_per_update: int) -> torch.Tensor:
    """Per update, the share of its labels recovered as a multiset (order within an update is unknown
    to the attacker): (updates,)."""
    inferred, true = inferred.view(-1, images_per_update), true.view(-1, images_per_update)
    classes = int(max(inferred.max(), true.max())) + 1
    hits = torch.minimum(nn.functional.one_hot(inferred.clamp_min(0), classes).sum(1),
                         nn.functional.one_hot(true, classes).sum(1)).sum(1)
    hits = torch.where((inferred < 0).any(1), torch.zeros_like(hits), hits)
    return hits.double() / images_per_update
