"""Training with defended gradients: every update applies the defence the client would apply."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ppp.defenses import Defense
from ppp.gradients import shared_gradient
from ppp.models import StagedNet
from ppp.seeding import derive_seed, generator, seeded

log = logging.getLogger(__name__)


@dataclass
class TrainingConfig:
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    max_train_examples: int | None = None
    precision: str = "float32"  # or bfloat16: forward and backward under autocast (not DP-SGD's steps)


# float32, or bfloat16 autocast for the forward and backward passes (the weights, the optimiser and the
# defence's noise stay float32). Opacus's per-example steps (DP-SGD) always run in float32.
PRECISIONS = ("float32", "bfloat16")

OPTIMIZERS = {
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay),
}


def train(model: StagedNet, defense: Defense, images: torch.Tensor, labels: torch.Tensor,
          config: TrainingConfig, seed: int, device: torch.device,
          after_epoch: Callable[[int], float] | None = None) -> dict:
    """Train in place on float images in [0, 1]; return a training summary. `after_epoch(epoch)` (for
    example the test accuracy) is called after every epoch and its values are returned as `per_epoch`."""
    if config.precision not in PRECISIONS:
        raise ValueError(f"training.precision: unknown {config.precision!r}; known: {list(PRECISIONS)}")
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"training.optimizer: unknown {config.optimizer!r}; known: {sorted(OPTIMIZERS)}")
    model.to(device).train()
    groups = model.parameter_groups()
    params = dict(model.named_parameters())
    optimizer = None if defense.per_example else OPTIMIZERS[config.optimizer](list(params.values()), config)
    order_gen = generator(derive_seed(seed, "order"))
    noise_gen = generator(derive_seed(seed, "noise"), device)
    n = images.shape[0] if config.max_train_examples is None else min(images.shape[0], config.max_train_examples)
    private = None
    if defense.per_example:  # DP-SGD: Opacus clips every example's gradient and keeps the account
        from ppp.dpsgd import PrivateSteps
        private = PrivateSteps(model, defense, config.optimizer, config.lr, config.weight_decay,
                               config.batch_size, n, noise_gen)
    started, steps, per_epoch = time.perf_counter(), 0, []
    with seeded(derive_seed(seed, "sampling"), device):
        for epoch in range(config.epochs):
            order = torch.randperm(images.shape[0], generator=order_gen)[:n]
            for start in range(0, n - config.batch_size + 1, config.batch_size):  # drop_last, as the authors
                index = order[start:start + config.batch_size]
                x, y = images[index].to(device), labels[index].to(device)
                if private is not None:
                    private.step(x, y)
                else:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16"):
                        update = shared_gradient(model, x, y)
                    grads = defense(update, groups, noise_gen)
                    for name, p in params.items():
                        p.grad = grads[name]
                    optimizer.step()
                steps += 1
            log.info("epoch %d/%d done (%d steps)", epoch + 1, config.epochs, steps)
            if after_epoch is not None:
                per_epoch.append(after_epoch(epoch + 1))
                model.train()
    summary = {"steps": steps, "train_seconds": time.perf_counter() - started, "train_examples": n}
    if private is not None:
        summary.update(epsilon=private.epsilon(), delta=defense.delta)
        private.close()
    if after_epoch is not None:
        summary["per_epoch"] = per_epoch
    return summary


@torch.no_grad()
def test_pass(model: StagedNet, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
              seed: int, batch_size: int = 500) -> tuple[torch.Tensor, float]:
    """Per test example, whether the model classifies it correctly, and the mean cross-entropy, in
    evaluation mode (PRECODE still samples, as the authors' module does). Correctness is kept per
    example so that two models' accuracies can be compared on the same examples (a paired interval;
    ppp.report)."""
    model.to(device).eval()
    correct, loss = [], 0.0
    with seeded(derive_seed(seed, "eval"), device):
        for start in range(0, images.shape[0], batch_size):
            x, y = images[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
            logits = model(x)
            loss += float(torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
            correct.append((logits.argmax(dim=1) == y).cpu())
    return torch.cat(correct), loss / max(1, images.shape[0])


def correct_predictions(model: StagedNet, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                        seed: int, batch_size: int = 500) -> torch.Tensor:
    """Per test example, whether the model classifies it correctly (test_pass)."""
    return test_pass(model, images, labels, device, seed, batch_size)[0]


def accuracy(model: StagedNet, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
             seed: int, batch_size: int = 500) -> float:
    return float(correct_predictions(model, images, labels, device, seed, batch_size).float().mean())
