"""Client updates as federated learning sends them: several images per update, several local steps.

A client holds `images` private images. With one local step (FedSGD) it sends the gradient of its mean
training loss on them. With more (FedAvg) it runs `local_steps` plain SGD steps at `local_lr`, each on
all of its images, and sends the model difference as a pseudo-gradient, (w_0 - w_S) / (local_lr * S),
which equals the gradient for one step and keeps a noise scale sigma meaning the same thing for both
(servers treat client differences as pseudo-gradients: Reddi et al. 2021, "Adaptive Federated
Optimization"; breaching's `UserMultiStep` and inversefed's `FedAvgReconstructor` send the difference,
which differs only by the factor local_lr * S, to which the cosine objective is blind).

Defences act on what is sent: noise and PPP on the named parts of the (pseudo-)gradient, PRECODE by its
sampling (a fresh draw per image and per step), DP-SGD inside every local step (each image's gradient
clipped, Gaussian noise on the sum, divided by the number of images), as Opacus does per batch.

The server's own simulation of the client (`simulated_update`) is differentiable in the images, so an
attacker can match the update of dummy images (inversefed's FedAvgReconstructor does the same).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import functional_call

from ppp.defenses import DPSGD, Defense
from ppp.gradients import shared_gradient
from ppp.models import StagedNet
from ppp.precode import given_noise_rows

# b<images>s<local steps>, and for FedAvg lr<local lr> (e.g. b4s2lr0.1): a float as Python's `g` format writes it.
# FedAvg on mini-batches adds m<images per local step> (b4s2lr0.1m2: 2 mini-batches of 2).
SETTING_PATTERN = re.compile(r"^b(\d+)s(\d+)(?:lr([0-9][0-9.e+-]*))?(?:m(\d+))?$")


@dataclass(frozen=True)
class ClientSetting:
    """What one client update is: images per update, local SGD steps and their learning rate."""

    images: int = 1
    local_steps: int = 1
    local_lr: float = 0.01
    # Images per local step (FedAvg): 0 is full batch; else the images split into consecutive mini-batches
    # of this size, visited in turn, one per step (local_batches).
    local_batch: int = 0

    def __post_init__(self):
        if self.images < 1 or self.local_steps < 1:
            raise ValueError(f"client update: images and local_steps must be >= 1, got {self.images}, "
                             f"{self.local_steps}")
        if self.local_batch >= self.images:  # one mini-batch of all the images is full batch: one name, one key
            object.__setattr__(self, "local_batch", 0)
        if self.local_batch and (self.local_batch < 1 or self.images % self.local_batch or self.local_steps == 1):
            raise ValueError(f"client local_batch must divide the {self.images} images of a FedAvg update (more "
                             f"than one local step), got {self.local_batch} at {self.local_steps} step(s)")
        if self.local_steps > 1 and not self.local_lr > 0:
            raise ValueError(f"client local_lr must be > 0 for FedAvg, got {self.local_lr}")

    @property
    def name(self) -> str:
        """The workflow's wildcard for this setting: b<images>s1 for FedSGD, b<images>s<local steps>lr<local lr>
        for FedAvg (e.g. b4s2lr0.1), whose update depends on the local learning rate: one architecture may
        sweep FedAvg at several rates, and each is its own setting (paths, rules, verdicts)."""
        if self.local_steps == 1:
            return f"b{self.images}s1"
        batches = f"m{self.local_batch}" if self.local_batch else ""
        return f"b{self.images}s{self.local_steps}lr{self.local_lr:g}{batches}"

    @property
    def batches(self) -> list[list[int]] | None:
        """The images of every local step (None: all of them at every step)."""
        return local_batches(self.images, self.local_batch, self.local_steps)

    @property
    def key_lr(self) -> float:
        """The local learning rate as the tables key a setting: FedAvg's own, 0.0 for FedSGD (one step's
        gradient does not depend on it)."""
        return float(self.local_lr) if self.local_steps > 1 else 0.0

    @property
    def is_single_gradient(self) -> bool:
        """One image, one step: the study's original single-image gradient."""
        return self.images == 1 and self.local_steps == 1

    @classmethod
    def parse(cls, name: str, local_lr: float = 0.01) -> "ClientSetting":
        """The setting a name stands for. A FedAvg name's lr (b4s2lr0.1) wins over `local_lr`; a name
        without one (b4s2) takes `local_lr`. FedSGD names carry no lr."""
        match = SETTING_PATTERN.match(name)
        if not match:
            raise ValueError(f"client setting {name!r} is not of the form b<images>s<local steps> "
                             "(FedAvg: b<images>s<local steps>lr<local lr>, e.g. b4s2lr0.1)")
        images, steps, lr = int(match.group(1)), int(match.group(2)), match.group(3)
        batch = int(match.group(4)) if match.group(4) else 0
        if lr is not None:
            if steps == 1:
                raise ValueError(f"client setting {name!r}: one local step (FedSGD) takes no lr; name it b{images}s1")
            try:
                local_lr = float(lr)
            except ValueError:
                raise ValueError(f"client setting {name!r}: {lr!r} is not a learning rate") from None
        return cls(images, steps, float(local_lr), batch)


def step_images(batches: list[list[int]] | None, step: int) -> slice:
    """The images of local step `step` as a slice (the mini-batches are consecutive; None: all)."""
    return slice(None) if batches is None else slice(batches[step][0], batches[step][-1] + 1)


def local_batches(images: int, local_batch: int, local_steps: int) -> list[list[int]] | None:
    """The images (indices) of each of `local_steps` local steps: consecutive mini-batches of `local_batch`,
    visited in turn (the client's data loader without shuffling); None where every step takes all."""
    if not local_batch or local_batch >= images:
        return None
    groups = [list(range(start, start + local_batch)) for start in range(0, images, local_batch)]
    return [groups[step % len(groups)] for step in range(local_steps)]


def form_updates(num_victims: int, images: int) -> list[list[int]]:
    """The victims of each update: consecutive, disjoint groups of `images` (victims beyond the last full
    group are not used). The victim sets are shuffled sets of the authors, so consecutive groups mix
    classes as a client's data would."""
    if images > num_victims:
        raise ValueError(f"an update of {images} images needs at least {images} victims, got {num_victims}")
    return [list(range(start, start + images)) for start in range(0, num_victims - images + 1, images)]


def _dp_gradient(model: StagedNet, images: torch.Tensor, labels: torch.Tensor, defense: DPSGD,
                 noise_generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One DP-SGD step's gradient on a batch: each image's gradient clipped, summed, noised, averaged."""
    per_example = [shared_gradient(model, images[i:i + 1], labels[i:i + 1]) for i in range(images.shape[0])]
    return defense.aggregate(per_example, noise_generator)


def client_update(model: StagedNet, images: torch.Tensor, labels: torch.Tensor, setting: ClientSetting,
                  defense: Defense, noise_generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The defended update a client sends for its `images` (B, C, H, W), keyed by parameter name.

    PRECODE draws from torch's global generator (seed it around this call); the defence's noise comes
    from `noise_generator`. The model's weights are unchanged afterwards."""
    groups = model.parameter_groups()
    if setting.local_steps == 1:
        if defense.per_example:
            return _dp_gradient(model, images, labels, defense, noise_generator)
        return defense(shared_gradient(model, images, labels), groups, noise_generator)
    update = local_training_update(model, images, labels, setting.local_steps, setting.local_lr,
                                   defense if defense.per_example else None, noise_generator, setting.batches)
    if defense.per_example:
        return update  # DP-SGD's noise is inside every step
    return defense(update, groups, noise_generator)


def local_training_update(model: StagedNet, images: torch.Tensor, labels: torch.Tensor, local_steps: int,
                          local_lr: float, dpsgd: DPSGD | None = None,
                          noise_generator: torch.Generator | None = None,
                          batches: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """FedAvg's pseudo-gradient (w_0 - w_S) / (local_lr * S) after S SGD steps on all of `images`
    (each step DP-SGD's noised, clipped gradient where `dpsgd` is given; each step on its mini-batch of
    `batches`, else on all); the weights are restored."""
    params = dict(model.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    try:
        for k in range(local_steps):
            chosen = step_images(batches, k)
            if dpsgd is not None:
                step = _dp_gradient(model, images[chosen], labels[chosen], dpsgd, noise_generator)
            else:
                step = shared_gradient(model, images[chosen], labels[chosen])
            with torch.no_grad():
                for name, p in params.items():
                    p.sub_(local_lr * step[name])
        scale = local_lr * local_steps
        return {n: (start[n] - p.detach()) / scale for n, p in params.items()}
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(start[name])


def simulated_update(model: StagedNet, pixels: torch.Tensor, labels: torch.Tensor, names: list[str],
                     local_steps: int, local_lr: float, create_graph: bool = True,
                     batches: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """The server's differentiable simulation of an undefended client update on `pixels` (B, C, H, W):
    the gradient for one step, the FedAvg pseudo-gradient for more (each step on its mini-batch of
    `batches`, else on all); keyed by `names`."""
    if local_steps == 1:
        return shared_gradient(model, pixels, labels, create_graph=create_graph, names=names)
    return simulated_local_training(model, pixels, labels, names, local_steps, local_lr, create_graph, batches)


def simulated_local_training(model: StagedNet, pixels: torch.Tensor, labels: torch.Tensor, names: list[str],
                             local_steps: int, local_lr: float, create_graph: bool = True,
                             batches: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """The FedAvg pseudo-gradient of `local_training_update`, differentiable in `pixels`."""
    weights = dict(model.named_parameters())
    order = list(weights)

    def step_gradients(current, step):
        chosen = step_images(batches, step)
        with given_noise_rows(model, chosen):  # the latent attack's noise: one row per image
            loss = _functional_loss(model, current, pixels[chosen], labels[chosen])
        return dict(zip(order, torch.autograd.grad(loss, [current[n] for n in order], create_graph=create_graph)))

    return _mean_step_gradient(step_gradients, weights, names, local_steps, local_lr)


def _mean_step_gradient(step_gradients: Callable[[dict, int], dict], weights: dict[str, torch.Tensor], names: list[str],
                        local_steps: int, local_lr: float) -> dict[str, torch.Tensor]:
    """(w_0 - w_S) / (lr S), the FedAvg pseudo-gradient, as the mean of the S steps' gradients: summed
    directly, with no update after the last step, it takes half the passes over the (large) weight tensors
    that differencing the weights does, forward and backward."""
    total: dict[str, torch.Tensor] = {}
    for step in range(local_steps):
        grads = step_gradients(weights, step)
        total = {n: grads[n] if step == 0 else total[n] + grads[n] for n in names}
        if step < local_steps - 1:
            weights = {n: torch.add(w, grads[n], alpha=-local_lr) for n, w in weights.items()}
    return {n: total[n] / local_steps for n in names}


def _functional_loss(model: StagedNet, weights: dict[str, torch.Tensor], pixels: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
    logits = functional_call(model, weights, (pixels,))
    return torch.nn.functional.cross_entropy(logits, labels) + model.regularizer()


def functional_update(model: StagedNet, weights: dict[str, torch.Tensor], pixels: torch.Tensor,
                      labels: torch.Tensor, names: list[str], local_steps: int,
                      local_lr: float, batches: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """`simulated_local_training` in torch.func's functional form (for vmap): the FedAvg pseudo-gradient
    after `local_steps` steps from `weights` (all parameters), keyed by `names`."""
    from torch.func import grad

    def step_gradients(current, step):
        chosen = step_images(batches, step)
        return grad(lambda w: _functional_loss(model, w, pixels[chosen], labels[chosen]))(current)

    return _mean_step_gradient(step_gradients, dict(weights), names, local_steps, local_lr)


def dpsgd_epsilon(noise_multiplier: float, steps: int, delta: float, sample_rate: float = 1.0) -> float:
    """Epsilon (Opacus's RDP accountant, at `delta`) of `steps` DP-SGD steps at `sample_rate`: one client
    update's local steps, each over all of the client's images, spend sample rate 1."""
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta=delta))
