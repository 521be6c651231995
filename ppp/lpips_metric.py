"""LPIPS (Zhang et al. 2018), the perceptual distance CVB and breaching report, from the maintained
`lpips` package, without a download at run time unless allowed.

The package ships its calibrated linear layers but takes the AlexNet trunk from torchvision, which
downloads ImageNet weights on first use. Here the trunk's weights are read from disk: a configured
file (`report.lpips_weights`) or torchvision's cache (`$TORCH_HOME/hub/checkpoints/`, where an earlier
torchvision download put them). Where they are not on disk, LPIPS is left out with one clear message
and the other metrics are computed as usual; `report.lpips: download` lets torchvision fetch them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet (AlexNet_Weights.IMAGENET1K_V1)
MODES = ("auto", "off", "download")


def alexnet_weights_path(configured: str | None = None) -> Path:
    """Where the AlexNet trunk's weights are looked for: the configured file, else torchvision's cache."""
    if configured:
        return Path(configured)
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


class Lpips:
    """LPIPS (AlexNet, v0.1) of (C, H, W) images in [0, 1]; grey images are repeated to 3 channels."""

    def __init__(self, trunk_state: dict[str, torch.Tensor] | None):
        import lpips

        # pnet_rand: build the trunk without torchvision's download; its weights are loaded below.
        self.model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=trunk_state is not None,
                                 verbose=False).eval()
        if trunk_state is not None:
            features = {k.removeprefix("features."): v for k, v in trunk_state.items() if k.startswith("features.")}
            for slice_name, block in self.model.net.named_children():
                for index, layer in block.named_children():  # children keep AlexNet's feature indices
                    for param_name, param in layer.named_parameters():
                        key = f"{index}.{param_name}"
                        if key not in features:
                            raise ValueError(f"AlexNet weights lack features.{key}")
                        param.data.copy_(features[key])

    @torch.no_grad()
    def __call__(self, original: torch.Tensor, reconstruction: torch.Tensor) -> float:
        a, b = (t.detach().cpu().float().clamp(0, 1).unsqueeze(0) for t in (original, reconstruction))
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        return float(self.model(a, b, normalize=True).flatten()[0])  # normalize: [0, 1] -> [-1, 1]


def load_lpips(mode: str = "auto", weights: str | None = None) -> Lpips | None:
    """The LPIPS metric, or None (with one warning saying why and how to enable it) when it is off or
    its trunk's weights are not on disk and downloading is not allowed."""
    if mode not in MODES:
        raise ValueError(f"report.lpips must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return None
    path = alexnet_weights_path(weights)
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a bad file is named, the other metrics go on
            raise ValueError(f"report.lpips_weights: {path} is not a readable AlexNet state dict ({err})") from None
        return Lpips(state)
    if mode == "download":
        return Lpips(None)  # torchvision downloads the trunk into its cache
    log.warning("LPIPS left out: the AlexNet weights it needs are not at %s (put %s there, set "
                "report.lpips_weights to a copy, or report.lpips: download where there is a network); "
                "MSE, PSNR and SSIM are computed as usual", path, ALEXNET_FILE)
    return None
