"""Tables and plots from the per-victim metrics and the per-model utilities."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ppp.io import atomic_path, read_json

CELL = ["dataset", "arch", "defense", "noise_scale", "attack", "model_state"]
RECONSTRUCTION_COLUMNS = CELL + ["victim", "label", "mse", "psnr", "ssim"]
UTILITY_COLUMNS = ["dataset", "arch", "defense", "noise_scale", "test_accuracy"]
DEFENSE_ORDER = ["none", "noise", "precode", "ppp"]


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def collect_reconstructions(paths: Iterable[str | Path]) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in paths]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RECONSTRUCTION_COLUMNS)
    return frame[RECONSTRUCTION_COLUMNS].sort_values(CELL + ["victim"], kind="stable").reset_index(drop=True)


def collect_utility(paths: Iterable[str | Path]) -> pd.DataFrame:
    rows = [{k: read_json(p)[k] for k in UTILITY_COLUMNS} for p in paths]
    frame = pd.DataFrame(rows, columns=UTILITY_COLUMNS)
    return frame.sort_values(UTILITY_COLUMNS[:4], kind="stable").reset_index(drop=True)


def summarize(reconstructions: pd.DataFrame, utility: pd.DataFrame, success_ssim: float) -> pd.DataFrame:
    """Mean and median of each metric per cell, and the share of victims reconstructed (SSIM >= threshold)."""
    grouped = reconstructions.groupby(CELL, sort=False)
    summary = grouped.agg(
        victims=("victim", "count"),
        mse_mean=("mse", "mean"), mse_median=("mse", "median"),
        psnr_mean=("psnr", "mean"), psnr_median=("psnr", "median"),
        ssim_mean=("ssim", "mean"), ssim_median=("ssim", "median"),
        success_rate=("ssim", lambda s: float((s >= success_ssim).mean())),
    ).reset_index()
    summary = summary.merge(utility, on=["dataset", "arch", "defense", "noise_scale"], how="left")
    summary["success_ssim_threshold"] = success_ssim
    return summary


def privacy_utility_plot(summary: pd.DataFrame, path: str | Path) -> None:
    """Per dataset x architecture: test accuracy against the strongest attack's mean SSIM, one line
    per defence over its noise scales."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strongest = (summary.groupby(["dataset", "arch", "defense", "noise_scale"], sort=False)
                 .agg(ssim=("ssim_mean", "max"), test_accuracy=("test_accuracy", "first")).reset_index())
    datasets, archs = sorted(strongest.dataset.unique()), list(dict.fromkeys(strongest.arch))
    fig, axes = plt.subplots(len(datasets), len(archs), figsize=(3.2 * len(archs), 3.0 * len(datasets)),
                             squeeze=False)
    for i, dataset in enumerate(datasets):
        for j, arch in enumerate(archs):
            ax = axes[i][j]
            cell = strongest[(strongest.dataset == dataset) & (strongest.arch == arch)]
            for defense in [d for d in DEFENSE_ORDER if d in set(cell.defense)]:
                rows = cell[cell.defense == defense].sort_values("noise_scale")
                ax.plot(rows.test_accuracy, rows.ssim, marker="o", label=defense)
                for _, row in rows.iterrows():
                    if row.noise_scale > 0:
                        ax.annotate(f"{row.noise_scale:g}", (row.test_accuracy, row.ssim), fontsize=6)
            ax.set_title(f"{dataset} / {arch}", fontsize=9)
            ax.set_xlabel("test accuracy", fontsize=8)
            ax.set_ylabel("attack SSIM (strongest)", fontsize=8)
            ax.set_ylim(-0.05, 1.05)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def reconstruction_grid(originals: torch.Tensor, rows: Sequence[tuple[str, torch.Tensor]], path: str | Path,
                        max_images: int = 8) -> None:
    """Originals in the top row, one row of reconstructions per labelled cell below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(max_images, originals.shape[0])
    all_rows = [("original", originals)] + list(rows)
    fig, axes = plt.subplots(len(all_rows), n, figsize=(1.1 * n + 1.6, 1.15 * len(all_rows)), squeeze=False)
    for r, (title, images) in enumerate(all_rows):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < images.shape[0]:
                img = images[c].clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        axes[r][0].text(-0.1, 0.5, title, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(left=0.2, wspace=0.05, hspace=0.1)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def findings(summary: pd.DataFrame, success_ssim: float) -> pd.DataFrame:
    """One row per dataset x architecture x model state with the numbers each claim of the paper rests
    on (mean SSIM per cell, test accuracy) and whether it held at the success threshold. Noisy cells
    are reported at the largest noise scale of the grid."""
    rows = []
    for (dataset, arch, state), cell in summary.groupby(["dataset", "arch", "model_state"], sort=False):
        top = cell.loc[cell.defense.isin(["noise", "ppp"]), "noise_scale"].max()

        def pick(defense, attack, column="ssim_mean"):
            sel = cell[(cell.defense == defense) & (cell.attack == attack)]
            if defense in ("noise", "ppp"):
                sel = sel[np.isclose(sel.noise_scale, top)]
            return float(sel[column].iloc[0]) if len(sel) else float("nan")

        row = dict(dataset=dataset, arch=arch, model_state=state, noise_scale=top,
                   ssim_ig_none=pick("none", "ig"), ssim_ig_noise=pick("noise", "ig"),
                   ssim_ig_precode=pick("precode", "ig"), ssim_targeted_precode=pick("precode", "ig_targeted"),
                   ssim_ig_ppp=pick("ppp", "ig"), ssim_targeted_ppp=pick("ppp", "ig_targeted"),
                   acc_none=pick("none", "ig", "test_accuracy"), acc_noise=pick("noise", "ig", "test_accuracy"),
                   acc_precode=pick("precode", "ig", "test_accuracy"), acc_ppp=pick("ppp", "ig", "test_accuracy"))
        row.update(
            ig_leaks_undefended=row["ssim_ig_none"] >= success_ssim,
            precode_blocks_ig=row["ssim_ig_precode"] < success_ssim,
            targeted_breaks_precode=row["ssim_targeted_precode"] >= success_ssim,
            ppp_blocks_both=max(row["ssim_ig_ppp"], row["ssim_targeted_ppp"]) < success_ssim,
            noise_blocks_ig=row["ssim_ig_noise"] < success_ssim,
        )
        rows.append(row)
    return pd.DataFrame(rows)
