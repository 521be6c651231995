"""The image's contrast, where the shared gradient does not determine it.

ResNet-18 with GroupNorm normalises the stem convolution's output per image, and that convolution has no
bias. The model sees pixels p as (p - mean) / std, so every image mean + a (p - mean), a > 0, gives the same
output and the same gradient: the contrast around the dataset's mean colour is invisible to the server.
Gradient matching then stops at whatever contrast its start and prior favour (measured: about half the
original's, SSIM 0.48 on MNIST where the digits are plain to see; benchmarks/README.md, "Contrast").

The attacker knows this family and the box every image lies in, so it picks the member with the most
contrast that stays inside [0, 1] (natural images and digits use their range). It uses nothing the server
does not have: the reconstruction, the dataset's mean and the box.
"""

from __future__ import annotations

import torch

CONTRASTS = ("keep", "max_in_box")


def max_contrast_in_box(images: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Each image (N, C, H, W, pixels in [0, 1]) moved along mean + a (image - mean) to the largest a that
    keeps every pixel in [0, 1]; `mean` is the per-channel mean colour (C,). A flat image stays as it is."""
    mean = mean.reshape(1, -1, 1, 1).to(images)
    offset = images - mean
    tiny = 1e-6
    up = torch.where(offset > tiny, (1 - mean) / offset.clamp_min(tiny), torch.full_like(offset, float("inf")))
    down = torch.where(offset < -tiny, mean / (-offset).clamp_min(tiny), torch.full_like(offset, float("inf")))
    scale = torch.minimum(up, down).flatten(1).amin(dim=1)
    scale = torch.where(torch.isfinite(scale), scale, torch.ones_like(scale)).view(-1, 1, 1, 1)
    return (mean + scale * offset).clamp(0, 1)


def resolve_contrast(images: torch.Tensor | None, mean: torch.Tensor, contrast: str) -> torch.Tensor | None:
    """The attack's reconstructions with their contrast chosen by `contrast` (CONTRASTS)."""
    if contrast not in CONTRASTS:
        raise ValueError(f"attack contrast must be one of {', '.join(CONTRASTS)}, got {contrast!r}")
    if images is None or contrast == "keep":
        return images
    finite = torch.isfinite(images.flatten(1)).all(dim=1)  # rows without a result (NaN) stay NaN
    out = images.clone()
    if bool(finite.any()):
        out[finite] = max_contrast_in_box(images[finite], mean)
    return out
