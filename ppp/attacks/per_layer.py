"""Per-layer batched gradient matching: every row's objective from one ordinary batched pass.

Rows are independent images through the same weights, so the gradient of the rows' summed training
losses with respect to a layer's output is, row by row, each row's own output gradient (delta). A
matched parameter's per-row gradient is a function of the layer's input and delta only, so each layer
rule returns the two per-row quantities the cosine distance needs, <gradient, target> and
|gradient|^2, and autograd differentiates them back to the images.

- Linear never forms a row's weight gradient delta u^T: <delta u^T, T> = delta^T T u and
  |delta u^T|^2 = |delta|^2 |u|^2 (for the 1024-wide MLP this avoids 8 MB per row).
- Conv2d forms the rows' weight gradients in one grouped call (rows as groups): torch's grouped
  weight-gradient kernel, or for layers with few input channels a correlation of the inputs with the
  deltas (faster there); forward and input-gradient convolutions stay ordinary batched ones with
  shared weights, which is where this engine gains over a vmap of the whole objective.
- GroupNorm's affine gradients are sums of delta times the normalised input, and so are those of
  BatchNorm in evaluation mode (a per-channel affine map with the running statistics).
- BatchNorm2d in training mode sees one image per client update, so it normalises each channel over
  that image's own pixels: instance normalisation. The batched forward runs it as such per row (rows
  must not share statistics), and its affine gradients follow as for GroupNorm.

Unsupported, and then the engine uses vmap instead: BatchNorm1d/3d in training mode, any other layer
type owning a matched parameter, grouped or non-zero-padded convolutions, and a matched layer that
runs more than once per forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import contextlib

import torch
from torch import nn
from torch.nn import functional as F

from ppp.attacks.objectives import total_variation_rows
from ppp.gradients import training_loss
from ppp.models import StagedNet
from ppp.precode import given_noise


@dataclass(frozen=True)
class LayerRule:
    """How one layer type's matched gradients enter the cosine, per row.

    `weight` maps (layer, input, output gradient, per-row weight targets) to per-row
    (<weight gradient, target>, |weight gradient|^2), each of shape (rows,). A bias's per-row gradient
    is always the output gradient summed over everything but rows and `channel_axis`."""

    weight: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    channel_axis: int


LAYER_RULES: dict[type, LayerRule] = {}


def layer_rule(layer_type: type, channel_axis: int):
    def decorate(weight_terms):
        LAYER_RULES[layer_type] = LayerRule(weight_terms, channel_axis)
        return weight_terms
    return decorate


def _dot_and_square(gradient: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row <g, t> and |g|^2 of an explicit per-row gradient (rows first)."""
    return (gradient * target).flatten(1).sum(1), gradient.pow(2).flatten(1).sum(1)


def layer_terms(rule: LayerRule, layer: nn.Module, inputs: torch.Tensor, delta: torch.Tensor,
                targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row <gradient, target> and |gradient|^2 of a layer's matched parameters (weight, bias)."""
    rows = inputs.shape[0]
    dot = torch.zeros(rows, device=inputs.device)
    square = torch.zeros(rows, device=inputs.device)
    if "weight" in targets:
        weight_dot, weight_square = rule.weight(layer, inputs, delta, targets["weight"])
        dot, square = dot + weight_dot, square + weight_square
    if "bias" in targets:
        channels = delta.movedim(rule.channel_axis, 1)
        bias_gradient = channels.reshape(rows, channels.shape[1], -1).sum(2)
        bias_dot, bias_square = _dot_and_square(bias_gradient, targets["bias"])
        dot, square = dot + bias_dot, square + bias_square
    return dot, square


@layer_rule(nn.Linear, channel_axis=-1)
def linear_weight_terms(layer: nn.Linear, inputs: torch.Tensor, delta: torch.Tensor,
                        target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = inputs.shape[0]
    u = inputs.reshape(rows, -1, inputs.shape[-1])  # (rows, positions, in)
    d = delta.reshape(rows, -1, delta.shape[-1])  # (rows, positions, out)
    if u.shape[1] == 1:
        # (delta^T T) u: a row vector times each row's target, which BLAS does far faster than
        # T u (a matrix times a column, measured 4-5x slower in torch.bmm on the CPU).
        return (torch.bmm(d, target) * u).sum((1, 2)), d.pow(2).sum((1, 2)) * u.pow(2).sum((1, 2))
    return _dot_and_square(torch.bmm(d.transpose(1, 2), u), target)


def _correlation(layer: nn.Conv2d, inputs: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Each row's weight gradient in the layout the computation gives, (in, rows, out, kh, kw): the
    rows' inputs correlated with their own output gradients, as one convolution with the rows as
    groups (the stride becomes a dilation)."""
    rows, channels = inputs.shape[:2]
    out_channels = delta.shape[1]
    kernel = layer.kernel_size
    # Pad (or crop) each side to exactly the input span the kernel offsets reach, so the correlation
    # is kh x kw with nothing computed to be cut away.
    pads = []
    for axis in (1, 0):  # F.pad lists the last axis first
        span = layer.dilation[axis] * (kernel[axis] - 1) + layer.stride[axis] * (delta.shape[2 + axis] - 1) + 1
        before = layer.padding[axis]
        pads += [before, span - inputs.shape[2 + axis] - before]
    correlation = F.conv2d(F.pad(inputs, pads).transpose(0, 1),
                           delta.reshape(rows * out_channels, 1, *delta.shape[2:]),
                           dilation=layer.stride, groups=rows)  # (in, rows * out, kh * dilation...)
    if layer.dilation != (1, 1):
        correlation = correlation[:, :, ::layer.dilation[0], ::layer.dilation[1]]
    return correlation.reshape(channels, rows, out_channels, *kernel)


def _grouped_weight_gradient(layer: nn.Conv2d, inputs: torch.Tensor, delta: torch.Tensor,
                             group: int = 1) -> torch.Tensor:
    """Each row's weight gradient, (rows, out, in, kh, kw), as the weight gradient of one convolution
    with the rows as groups (torch's own kernel; its backward is a grouped convolution and a grouped
    transposed convolution). With `group` > 1 a row is an update of `group` consecutive images, passed
    as the convolution's batch, whose weight gradient is the sum over them."""
    channels, out_channels = inputs.shape[1], delta.shape[1]
    rows = inputs.shape[0] // group

    def as_batch(t: torch.Tensor) -> torch.Tensor:  # (rows * group, C, ...) -> (group, rows * C, ...)
        return t.reshape(rows, group, *t.shape[1:]).transpose(0, 1).reshape(group, rows * t.shape[1], *t.shape[2:])

    grouped_shape = (rows * out_channels, channels, *layer.kernel_size)
    _, gradient, _ = torch.ops.aten.convolution_backward(
        as_batch(delta), as_batch(inputs),
        inputs.new_zeros(grouped_shape),  # only its shape is read for a weight gradient
        None, layer.stride, layer.padding, layer.dilation, False, (0, 0), rows, (False, True, False))
    return gradient.reshape(rows, out_channels, channels, *layer.kernel_size)


# Which formulation computes a conv layer's per-row weight gradients faster on the CPU (16 rows,
# forward and backward, benchmarks/conv_weight_gradients.py): the correlation for few input channels
# (LeNet's first layer: 0.47 vs 0.98 ms), torch's grouped weight gradient from this many on (LeNet's
# 12-channel layers: 0.69 vs 1.19 ms; ResNet-18 width 16's 16-channel layers: 1.88 vs 10.72 ms). A
# fixed rule, not a timing, so that a config always computes the same numbers.
GROUPED_WEIGHT_GRADIENT_MIN_CHANNELS = 8
CONV_METHODS = ("correlation", "grouped_weight_gradient")


def conv2d_method(layer: nn.Conv2d) -> str:
    return CONV_METHODS[layer.in_channels >= GROUPED_WEIGHT_GRADIENT_MIN_CHANNELS]


def conv2d_weight_per_row(layer: nn.Conv2d, inputs: torch.Tensor, delta: torch.Tensor,
                          method: str | None = None) -> torch.Tensor:
    """Each row's weight gradient, (rows, out, in, kh, kw), by `method` (default: conv2d_method)."""
    if (method or conv2d_method(layer)) == "grouped_weight_gradient":
        return _grouped_weight_gradient(layer, inputs, delta)
    return _correlation(layer, inputs, delta).permute(1, 2, 0, 3, 4)


@layer_rule(nn.Conv2d, channel_axis=1)
def conv2d_weight_terms(layer: nn.Conv2d, inputs: torch.Tensor, delta: torch.Tensor,
                        target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if conv2d_method(layer) == "grouped_weight_gradient":
        return _dot_and_square(_grouped_weight_gradient(layer, inputs, delta), target)
    # Reduced in the correlation's own layout: no copy of the per-row gradients into rows-first.
    gradient = _correlation(layer, inputs, delta)
    other_axes = (0, 2, 3, 4)
    return (gradient * target.permute(2, 0, 1, 3, 4)).sum(other_axes), gradient.pow(2).sum(other_axes)


def _uses_own_statistics(layer: nn.Module) -> bool:
    """BatchNorm that normalises with the batch's statistics: training mode, or no running statistics."""
    return isinstance(layer, nn.modules.batchnorm._BatchNorm) and (layer.training or layer.running_mean is None)


def _normalised_input(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """A normalisation layer's input before its affine map: GroupNorm's groups; BatchNorm's running
    statistics, or in training mode one image per row (instance normalisation; unsupported_reason
    refuses BatchNorm1d/3d there)."""
    if isinstance(layer, nn.GroupNorm):
        return F.group_norm(inputs, layer.num_groups, eps=layer.eps)
    if _uses_own_statistics(layer):
        return F.instance_norm(inputs, eps=layer.eps)
    shape = (1, -1) + (1,) * (inputs.dim() - 2)
    return (inputs - layer.running_mean.view(shape)) * torch.rsqrt(layer.running_var.view(shape) + layer.eps)


def _affine_weight_gradient(layer: nn.Module, inputs: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Each image's gradient of a normalisation layer's weight: delta times the normalised input, summed
    over positions, (images, channels)."""
    return (delta * _normalised_input(layer, inputs)).flatten(2).sum(2)


@layer_rule(nn.GroupNorm, channel_axis=1)
def group_norm_weight_terms(layer: nn.GroupNorm, inputs: torch.Tensor, delta: torch.Tensor,
                            target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _dot_and_square(_affine_weight_gradient(layer, inputs, delta), target)


@layer_rule(nn.modules.batchnorm._BatchNorm, channel_axis=1)
def batch_norm_weight_terms(layer: nn.modules.batchnorm._BatchNorm, inputs: torch.Tensor,
                            delta: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _dot_and_square(_affine_weight_gradient(layer, inputs, delta), target)


def grouped_weight_gradient(layer: nn.Module, inputs: torch.Tensor, delta: torch.Tensor,
                            group: int) -> torch.Tensor:
    """Each update's weight gradient (rows, *weight.shape): the sum of the gradients of its `group`
    images, which come consecutively in `inputs` and `delta` (rows * group first)."""
    rows = inputs.shape[0] // group
    if isinstance(layer, nn.Conv2d):
        return _grouped_weight_gradient(layer, inputs, delta, group)
    if isinstance(layer, nn.Linear):  # an update's positions and images together
        u = inputs.reshape(rows, -1, inputs.shape[-1])
        d = delta.reshape(rows, -1, delta.shape[-1])
        return torch.bmm(d.transpose(1, 2), u)
    if isinstance(layer, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) and not _uses_own_statistics(layer):
        return _affine_weight_gradient(layer, inputs, delta).reshape(rows, group, -1).sum(1)
    raise ValueError(f"no grouped per-layer rule for {type(layer).__name__}")


def grouped_layer_terms(rule: LayerRule, layer: nn.Module, inputs: torch.Tensor, delta: torch.Tensor,
                        targets: dict[str, torch.Tensor], group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """layer_terms for updates of `group` images: each update's gradient is the sum of its images'."""
    rows = inputs.shape[0] // group
    dot = torch.zeros(rows, device=inputs.device)
    square = torch.zeros(rows, device=inputs.device)
    if "weight" in targets:
        if isinstance(layer, nn.Linear) and inputs.dim() == 2:
            # sum_i d_i u_i^T without forming it: <., T> = sum_i d_i^T T u_i, |.|^2 = sum_ij (d_i.d_j)(u_i.u_j)
            u, d = inputs.reshape(rows, group, -1), delta.reshape(rows, group, -1)
            dot = dot + (torch.bmm(d, targets["weight"]) * u).sum((1, 2))
            square = square + (torch.bmm(d, d.transpose(1, 2)) * torch.bmm(u, u.transpose(1, 2))).sum((1, 2))
        else:
            weight_dot, weight_square = _dot_and_square(grouped_weight_gradient(layer, inputs, delta, group),
                                                        targets["weight"])
            dot, square = dot + weight_dot, square + weight_square
    if "bias" in targets:
        channels = delta.movedim(rule.channel_axis, 1)
        bias_gradient = channels.reshape(rows, group, channels.shape[1], -1).sum((1, 3))
        bias_dot, bias_square = _dot_and_square(bias_gradient, targets["bias"])
        dot, square = dot + bias_dot, square + bias_square
    return dot, square


@contextlib.contextmanager
def per_row_batch_norm(model: nn.Module):
    """Run training-mode BatchNorm2d layers as instance normalisation, so that each row of a batched
    forward is normalised by its own statistics, as a client's update on that one image is. Running
    statistics are not updated (the attack must not change the model)."""
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and _uses_own_statistics(m)]
    for layer in layers:
        layer.forward = (lambda module: lambda x: F.instance_norm(
            x, weight=module.weight, bias=module.bias, eps=module.eps))(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _rule_for(layer: nn.Module) -> LayerRule | None:
    for cls in type(layer).__mro__:
        if cls in LAYER_RULES:
            return LAYER_RULES[cls]
    return None


def unsupported_reason(model: nn.Module, names: list[str], images_per_update: int = 1,
                       local_steps: int = 1) -> str | None:
    """Why the per-layer engine cannot compute this model's matched gradients, or None if it can."""
    if local_steps > 1:
        return f"{local_steps} local steps: the update is not one backward pass"
    modules = dict(model.named_modules())
    if images_per_update > 1:
        for name, module in modules.items():
            if _uses_own_statistics(module):
                return f"{name} normalises with the statistics of the update's {images_per_update} images"
    for name, module in modules.items():
        if _uses_own_statistics(module) and not isinstance(module, nn.BatchNorm2d):
            return (f"{name} is {type(module).__name__} in training mode; only BatchNorm2d has a per-row "
                    f"rule (instance normalisation over one image)")
    for parameter in names:
        owner, _, kind = parameter.rpartition(".")
        module = modules.get(owner)
        if module is None or kind not in ("weight", "bias") or _rule_for(module) is None:
            return f"no per-layer rule for parameter {parameter} ({type(module).__name__})"
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"
                                              or isinstance(module.padding, str)):
            return f"{owner}: only ungrouped, zero-padded convolutions with numeric padding are supported"
    return None


def row_selector(rows: torch.Tensor) -> slice | torch.Tensor:
    """An index for `rows`: a slice when they are one contiguous range, so that indexing the large
    per-row targets gives views instead of copies."""
    first = int(rows[0])
    if bool((rows == torch.arange(first, first + len(rows), device=rows.device)).all()):
        return slice(first, first + len(rows))
    return rows


class PerLayerObjective:
    """Rows' gradient-matching losses (cosine distance + TV) and their gradients w.r.t. the rows'
    images, from one batched forward and two backward passes; equal to RowObjective.loop row by row."""

    def __init__(self, model: StagedNet, names: list[str], labels: torch.Tensor, targets: list[torch.Tensor],
                 tv_weight: float, images_per_update: int = 1):
        self.group = images_per_update  # rows are updates of this many images (x: rows, group, C, H, W)
        reason = unsupported_reason(model, names, images_per_update)
        if reason:
            raise ValueError(f"attack engine per_layer cannot run this model: {reason}; use engine vmap")
        modules = dict(model.named_modules())
        self.model, self.labels, self.tv_weight = model, labels, tv_weight
        self.targets: dict[str, dict[str, torch.Tensor]] = {}  # layer name -> kind -> (rows, *shape)
        for parameter, target in zip(names, targets):
            owner, _, kind = parameter.rpartition(".")
            self.targets.setdefault(owner, {})[kind] = target
        self.layers = {owner: modules[owner] for owner in self.targets}
        self.target_norms = sum(t.flatten(1).pow(2).sum(1) for t in targets).sqrt()
        self.mean, self.std = model.mean[0], model.std[0]

    def __call__(self, x: torch.Tensor, rows: torch.Tensor, chunk_rows: int | None = None,
                 latent: torch.Tensor | None = None) -> tuple:
        """(losses, gradients w.r.t. the rows' images), and with `latent` (PRECODE's per-row noise) the
        gradients w.r.t. it as a third element."""
        step = chunk_rows or len(rows)
        parts = [self._evaluate(x, rows[start: start + step], latent) for start in range(0, len(rows), step)]
        return tuple(torch.cat([p[k] for p in parts]) for k in range(len(parts[0])))

    def _evaluate(self, x: torch.Tensor, rows: torch.Tensor, latent: torch.Tensor | None) -> tuple:
        group = self.group
        images = x[rows].detach().requires_grad_(True)
        noise = None if latent is None else latent[rows].detach().requires_grad_(True)
        select = row_selector(rows)
        # An update's images are consecutive rows of one ordinary batch.
        flat_images = images if group == 1 else images.flatten(0, 1)
        flat_noise = noise if noise is None or group == 1 else noise.flatten(0, 1)
        flat_labels = self.labels[select] if group == 1 else self.labels[select].flatten()
        captured: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

        def capture(name: str):
            def hook(module, inputs, output):
                if name in captured:
                    raise RuntimeError(f"layer {name} ran twice in one forward pass; use attack engine vmap")
                captured[name] = (inputs[0], output, output._version)
            return hook

        handles = [layer.register_forward_hook(capture(name)) for name, layer in self.layers.items()]
        try:
            with torch.enable_grad(), per_row_batch_norm(self.model), \
                    given_noise(self.model, flat_noise) if noise is not None else contextlib.nullcontext():
                # training_loss averages per-image terms (cross-entropy, PRECODE's KL), so n times it is
                # the sum of the rows' own losses (each the mean over its update's images) and its output
                # gradients are each row's own.
                loss = len(rows) * training_loss(self.model, flat_images * self.std + self.mean, flat_labels)
        finally:
            for handle in handles:
                handle.remove()
        for name, (_, output, version) in captured.items():
            if output._version != version:
                raise RuntimeError(f"the output of layer {name} was modified in place; use attack engine vmap")
        names = list(self.layers)
        missing = [n for n in names if n not in captured]
        if missing:
            raise RuntimeError(f"matched layers {missing} did not run in the forward pass")
        with torch.enable_grad():
            deltas = torch.autograd.grad(loss, [captured[n][1] for n in names], create_graph=True)
            dot = torch.zeros(len(rows), device=x.device)
            square = torch.zeros(len(rows), device=x.device)
            for name, delta in zip(names, deltas):
                layer = self.layers[name]
                targets = {kind: t[select] for kind, t in self.targets[name].items()}
                if group == 1:
                    layer_dot, layer_square = layer_terms(_rule_for(layer), layer, captured[name][0], delta, targets)
                else:
                    layer_dot, layer_square = grouped_layer_terms(_rule_for(layer), layer, captured[name][0], delta,
                                                                  targets, group)
                dot, square = dot + layer_dot, square + layer_square
            distance = 1 - dot / (square.sqrt() * self.target_norms[select]).clamp_min(1e-12)
            tv = total_variation_rows(images) if group == 1 else total_variation_rows(flat_images).view(-1, group).mean(1)
            losses = distance + self.tv_weight * tv
            if noise is None:
                (gradients,) = torch.autograd.grad(losses.sum(), images)
                return losses.detach(), gradients
            gradients, noise_gradients = torch.autograd.grad(losses.sum(), [images, noise])
        return losses.detach(), gradients, noise_gradients
