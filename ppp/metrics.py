"""Image quality of reconstructions on [0, 1] pixels, from scikit-image."""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("mse", "psnr", "ssim")


def image_metrics(original: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, float]:
    """MSE, PSNR (dB, data range 1) and SSIM (Gaussian-weighted, per channel) of one (C, H, W) pair."""
    # Imported here: scikit-image pulls in scipy.stats, which every other job would pay for at start.
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

    a = original.detach().cpu().clamp(0, 1).numpy().astype(np.float64)
    b = reconstruction.detach().cpu().clamp(0, 1).numpy().astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(mean_squared_error(a, b))
    psnr = float(peak_signal_noise_ratio(a, b, data_range=1.0)) if mse > 0 else float("inf")
    ssim = float(structural_similarity(a, b, data_range=1.0, channel_axis=0, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False))
    return {"mse": mse, "psnr": psnr, "ssim": ssim}
