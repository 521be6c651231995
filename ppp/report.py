"""Tables and plots from the per-victim metrics and the per-model utilities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ppp.io import atomic_path, read_json

CELL = ["dataset", "arch", "defense", "noise_scale", "attack", "model_state"]
RECONSTRUCTION_COLUMNS = CELL + ["victim", "label", "mse", "psnr", "ssim"]
UTILITY_COLUMNS = ["dataset", "arch", "defense", "noise_scale", "test_accuracy", "test_accuracy_ci95",
                   "test_examples", "test_accuracy_per_epoch"]
DEFENSE_ORDER = ["none", "noise", "precode", "ppp"]
MODEL_CELL = ["dataset", "arch", "defense", "noise_scale"]


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def collect_reconstructions(paths: Iterable[str | Path]) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in paths]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RECONSTRUCTION_COLUMNS)
    return frame[RECONSTRUCTION_COLUMNS].sort_values(CELL + ["victim"], kind="stable").reset_index(drop=True)


def collect_utility(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, dict[tuple, np.ndarray]]:
    """The utility table (accuracy with a 95% normal interval over the test set, per-epoch accuracies) and
    each model's per-example correctness on the test set, keyed by (dataset, arch, defense, noise_scale),
    for paired comparisons between models."""
    rows, correct = [], {}
    for path in paths:
        metrics = read_json(path)
        key = tuple(metrics[k] for k in MODEL_CELL)
        hits = np.array([c == "1" for c in metrics.get("test_correct", "")], dtype=float)
        n = len(hits)
        accuracy = float(metrics["test_accuracy"])
        rows.append(dict(zip(MODEL_CELL, key), test_accuracy=accuracy,
                         test_accuracy_ci95=1.96 * np.sqrt(accuracy * (1 - accuracy) / n) if n else float("nan"),
                         test_examples=n,
                         test_accuracy_per_epoch=";".join(f"{a:.4f}" for a in metrics.get("test_accuracy_per_epoch", []))))
        if n:
            correct[key] = hits
    frame = pd.DataFrame(rows, columns=UTILITY_COLUMNS)
    return frame.sort_values(MODEL_CELL, kind="stable").reset_index(drop=True), correct


def paired_accuracy_drop(reference: np.ndarray | None, other: np.ndarray | None) -> tuple[float, float, float]:
    """Accuracy of `reference` minus that of `other` on the same test examples, with a 95% interval from
    the per-example differences (paired, so it is far tighter than two separate intervals)."""
    if reference is None or other is None or len(reference) != len(other) or not len(reference):
        return float("nan"), float("nan"), float("nan")
    differences = reference - other
    mean = float(differences.mean())
    half = 1.96 * float(differences.std(ddof=1)) / np.sqrt(len(differences)) if len(differences) > 1 else 0.0
    return mean, mean - half, mean + half


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
    summary = summary.merge(utility[MODEL_CELL + ["test_accuracy", "test_accuracy_ci95"]], on=MODEL_CELL, how="left")
    summary["success_ssim_threshold"] = success_ssim
    return summary


def privacy_utility_plot(summary: pd.DataFrame, path: str | Path) -> None:
    """Per dataset x architecture: test accuracy against the strongest attack's mean SSIM, one line
    per defence over its noise scales."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strongest = (summary.groupby(["dataset", "arch", "defense", "noise_scale"], sort=False)
                 .agg(ssim=("ssim_median", "max"), test_accuracy=("test_accuracy", "first")).reset_index())
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
            ax.set_ylabel("median SSIM, strongest attack", fontsize=8)
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


@dataclass(frozen=True)
class Verdicts:
    """When an attack counts as working or failing on a cell, from the medians over its victims.

    An attack works when its median SSIM reaches `success_ssim`; a defence protects when the strongest
    attack on it stays below `success_ssim` and at least `margin_db` below the PSNR that Inverting
    Gradients reaches on the undefended model. The accuracy claim holds when the undefended model's test
    accuracy exceeds the defended one's by at most `max_accuracy_drop`."""

    success_ssim: float = 0.5
    margin_db: float = 6.0
    max_accuracy_drop: float = 0.03


def findings(summary: pd.DataFrame, correct: dict[tuple, np.ndarray], verdicts: Verdicts) -> pd.DataFrame:
    """One row per dataset x architecture x model state: the medians each claim of the paper rests on,
    the smallest protecting noise scale of full noise and of PPP, the accuracies there, and a verdict
    per claim (F1: IG reconstructs the undefended model; F2: IG fails on PRECODE while the targeted
    attack succeeds; F3: PPP at some sigma of the grid defeats every attack; F4: PPP at that sigma keeps
    test accuracy within `max_accuracy_drop` of the undefended model)."""
    rows = []
    for (dataset, arch, state), cell in summary.groupby(["dataset", "arch", "model_state"], sort=False):
        def median(defense, attack, column="psnr_median", sigma=0.0):
            sel = cell[(cell.defense == defense) & (cell.attack == attack) & np.isclose(cell.noise_scale, sigma)]
            return float(sel[column].iloc[0]) if len(sel) else float("nan")

        def accuracy(defense, sigma=0.0):
            sel = cell[(cell.defense == defense) & np.isclose(cell.noise_scale, sigma)]
            return float(sel.test_accuracy.iloc[0]) if len(sel) else float("nan")

        reference_psnr = median("none", "ig")
        row = dict(dataset=dataset, arch=arch, model_state=state,
                   psnr_ig_none=reference_psnr, ssim_ig_none=median("none", "ig", "ssim_median"),
                   psnr_ig_precode=median("precode", "ig"), ssim_ig_precode=median("precode", "ig", "ssim_median"),
                   psnr_targeted_precode=median("precode", "ig_targeted"),
                   ssim_targeted_precode=median("precode", "ig_targeted", "ssim_median"))
        for defense in ("noise", "ppp"):
            noisy = cell[cell.defense == defense]
            protecting, strongest_at = float("nan"), None
            for sigma in sorted(noisy.noise_scale.unique()):
                at = noisy[np.isclose(noisy.noise_scale, sigma)]
                strongest = at.loc[at.ssim_median.idxmax()]
                strongest_at = (sigma, strongest)
                if (strongest.ssim_median < verdicts.success_ssim
                        and reference_psnr - strongest.psnr_median >= verdicts.margin_db):
                    protecting = sigma
                    break
            row[f"{defense}_protecting_sigma"] = protecting
            # At the protecting sigma, or (none protects) at the largest sigma of the grid.
            shown_sigma, shown = strongest_at if strongest_at else (float("nan"), None)
            row[f"{defense}_sigma_shown"] = shown_sigma
            row[f"{defense}_strongest_attack"] = shown.attack if shown is not None else ""
            row[f"psnr_strongest_{defense}"] = float(shown.psnr_median) if shown is not None else float("nan")
            row[f"ssim_strongest_{defense}"] = float(shown.ssim_median) if shown is not None else float("nan")
            row[f"acc_{defense}"] = accuracy(defense, shown_sigma)
            drop, low, high = paired_accuracy_drop(correct.get((dataset, arch, "none", 0.0)),
                                                   correct.get((dataset, arch, defense, shown_sigma)))
            row[f"acc_drop_{defense}"], row[f"acc_drop_{defense}_ci_low"], row[f"acc_drop_{defense}_ci_high"] = drop, low, high
        row.update(acc_none=accuracy("none"), acc_precode=accuracy("precode"))
        works = row["ssim_ig_none"] >= verdicts.success_ssim
        # PPP's protection means something only where the targeted attack breaks PRECODE (else there is
        # nothing to defeat); its accuracy and its noise against full noise are read only there.
        ppp_defeats = bool(np.isfinite(row["ppp_protecting_sigma"])
                           and row["ssim_targeted_precode"] >= verdicts.success_ssim)
        row.update(
            F1_ig_leaks_undefended=bool(works),
            F2_targeted_breaks_precode_ig_does_not=bool(
                row["ssim_ig_precode"] < verdicts.success_ssim
                and row["ssim_targeted_precode"] >= verdicts.success_ssim
                and row["psnr_targeted_precode"] - row["psnr_ig_precode"] >= verdicts.margin_db),
            F3_ppp_defeats_every_attack=ppp_defeats,
            F4_ppp_keeps_accuracy=bool(ppp_defeats and row["acc_drop_ppp"] <= verdicts.max_accuracy_drop),
            ppp_needs_less_noise=bool(ppp_defeats and works
                                      and not row["noise_protecting_sigma"] <= row["ppp_protecting_sigma"]),
        )
        rows.append(row)
    return pd.DataFrame(rows)
