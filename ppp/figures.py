"""The study's figures: what a reader looks at, each readable at a glance.

Every figure draws from the tables (ppp.report) or, for reconstructions, from the evaluate stage's
matched images; intervals are the tables' own (bootstrap over victims for SSIM, normal over the test set
for accuracy), so a figure never shows a number the tables do not hold.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ppp.io import atomic_path
from ppp.verdicts import with_setting_columns

DEFENSE_ORDER = ["none", "noise", "precode", "ppp", "ppp_encoder", "ppp_no_decoder", "dpsgd"]
# local_lr: FedAvg's, 0.0 for FedSGD; local_batch: images per local step, 0 for all (ppp.verdicts.SETTING)
CLIENT = ["batch_size", "local_steps", "local_lr", "local_batch"]
DEFENSE_CELL = ["dataset", "arch", *CLIENT, "defense", "noise_scale", "model_state"]
VERDICT_COLOURS = {"holds": "#1a9850", "fails": "#d73027", "undecided": "#7f7f7f", "": "#7f7f7f"}


def per_epoch(value) -> list[float]:
    """A utility table's per-epoch accuracies ("0.5;0.8"); one epoch reads back from the CSV as a float."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [float(a) for a in str(value).split(";") if a]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int = 110) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    _pyplot().close(fig)


def _defense_rank(defense: str) -> int:
    return DEFENSE_ORDER.index(defense) if defense in DEFENSE_ORDER else len(DEFENSE_ORDER)


def defense_label(defense: str, sigma: float) -> str:
    return defense + (f" σ={sigma:g}" if sigma else "")


def client_label(batch_size: int, local_steps: int, local_lr: float | None = None, local_batch: int = 0) -> str:
    """ "1 image/update", "4 images/update, 2 local steps at lr 0.1 (FedAvg)" (the lr where known),
    "..., 2 local steps of 2 images at lr 0.1 (FedAvg)" on mini-batches."""
    batch_size, local_steps = int(batch_size), int(local_steps)
    images = f"{batch_size} image{'s' if batch_size != 1 else ''}/update"
    if local_steps == 1:
        return images
    rate = f" at lr {float(local_lr):g}" if local_lr is not None and np.isfinite(float(local_lr)) else ""
    batch = int(local_batch) if local_batch is not None and np.isfinite(float(local_batch)) else 0
    per_step = f" of {batch} image{'s' if batch != 1 else ''}" if 0 < batch < batch_size else ""
    return images + f", {local_steps} local steps{per_step}{rate} (FedAvg)"


def strongest_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Per defence cell the full summary row of its strongest attack (highest median SSIM, ties: the
    higher median PSNR), as ppp.report.strongest_attacks ranks them, with that attack's intervals."""
    ranked = with_setting_columns(summary).sort_values(["ssim_median", "psnr_median"], ascending=False, kind="stable")
    best = ranked.groupby(DEFENSE_CELL, sort=False).head(1)
    return best.assign(_rank=best.defense.map(_defense_rank)).sort_values(
        ["dataset", "arch", *CLIENT, "model_state", "_rank", "noise_scale"]).drop(columns="_rank").reset_index(drop=True)


def place_labels(points: Sequence[tuple[float, float]], height: float, width: float) -> list[tuple[float, float]]:
    """Label positions (in the points' units) that do not overlap: each label starts just right of its
    point and moves down, then up, in steps of `height` until its box (width x height) is clear of
    every label placed before it. Greedy, in the order given."""
    placed: list[tuple[float, float]] = []
    for x, y in points:
        candidates = [y] + [y + sign * k * height for k in range(1, 12) for sign in (-1, 1)]
        for candidate in candidates:
            if all(abs(candidate - py) >= height or abs(x - px) >= width for px, py in placed):
                break
        placed.append((x, candidate))
    return placed


def _panels(plt, count: int, columns: int, width: float, height: float):
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, list(axes.flat)


def privacy_utility_plot(summary: pd.DataFrame, path: str | Path) -> None:
    """One panel per (dataset, arch), at the smallest client update of the study: test accuracy (95%
    interval over the test set) against the strongest attack's median SSIM (95% bootstrap interval over
    the victims), one colour per defence; each point is labelled with its sigma and strongest attack,
    placed so that labels do not collide. Up and right is bad for privacy and good for utility."""
    plt = _pyplot()
    best = strongest_rows(summary)
    if len(best):
        smallest = best.sort_values(CLIENT).iloc[0]
        best = best[(best.batch_size == smallest.batch_size) & (best.local_steps == smallest.local_steps)
                    & (best.local_lr == smallest.local_lr) & (best.local_batch == smallest.local_batch)]
    panels = list(dict.fromkeys(zip(best.dataset, best.arch)))
    fig, axes = _panels(plt, max(1, len(panels)), 2, 4.6, 3.9)
    colours = dict(zip(DEFENSE_ORDER, plt.get_cmap("tab10").colors))
    threshold = float(summary.success_ssim_threshold.iloc[0]) if "success_ssim_threshold" in summary and len(summary) \
        else 0.5
    for ax, (dataset, arch) in zip(axes, panels):
        cell = best[(best.dataset == dataset) & (best.arch == arch)]
        accuracy = pd.to_numeric(cell.test_accuracy, errors="coerce").astype(float)
        ax.axhline(threshold, color="grey", linewidth=0.8, linestyle=":")
        ax.text(0.01, threshold, f" attack succeeds above SSIM {threshold:g}", transform=ax.get_yaxis_transform(),
                fontsize=7, color="grey", va="bottom")
        if accuracy.isna().all():
            ax.text(0.5, 0.5, "no test accuracy\n(training off)", ha="center", va="center", transform=ax.transAxes)
        labels = []
        for defense in sorted(set(cell.defense), key=_defense_rank):
            rows = cell[cell.defense == defense].sort_values("noise_scale")
            x = pd.to_numeric(rows.test_accuracy, errors="coerce").astype(float).to_numpy()
            xerr = pd.to_numeric(rows.test_accuracy_ci95, errors="coerce").astype(float).to_numpy()
            y = rows.ssim_median.to_numpy(float)
            yerr = np.abs(np.vstack([y - rows.ssim_median_ci_low.to_numpy(float),
                                     rows.ssim_median_ci_high.to_numpy(float) - y]))
            colour = colours.get(defense, "black")
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o-" if len(rows) > 1 else "o", color=colour,
                        markersize=5, capsize=2, linewidth=1, elinewidth=0.8, label=defense)
            for (_, row), xi, yi in zip(rows.iterrows(), x, y):
                if np.isfinite(xi):
                    sigma = f"σ={row.noise_scale:g} " if row.noise_scale else ""
                    labels.append(((xi, yi), f"{sigma}{row.attack}", colour))
        if labels:
            finite = accuracy[np.isfinite(accuracy)]
            low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
            span = max(high - low, 0.05)
            ax.set_xlim(low - 0.15 * span, high + 0.45 * span)  # room for the labels right of the points
            positions = place_labels([p for p, _, _ in labels], height=0.075, width=0.45 * span)
            for ((x0, y0), text, colour), (x1, y1) in zip(labels, positions):
                ax.annotate(text, (x0, y0), xytext=(x1 + 0.03 * span, y1), fontsize=7, color=colour, va="center",
                            bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.85),
                            arrowprops=dict(arrowstyle="-", color=colour, linewidth=0.5) if y1 != y0 else None)
        ax.set_title(f"{dataset} / {arch}", fontsize=10)
        ax.set_xlabel("test accuracy (95% interval)", fontsize=9)
        ax.set_ylabel("median SSIM of the strongest attack", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="upper left", title="defence", title_fontsize=7)
    if len(best):
        client = client_label(smallest.batch_size, smallest.local_steps, smallest.local_lr, smallest.local_batch)
        fig.suptitle(f"Privacy against utility, {client}\n"
                     "(labels: σ, strongest attack)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def batch_size_plot(summary: pd.DataFrame, path: str | Path) -> None:
    """The strongest attack's median SSIM (95% bootstrap interval) against the images per client update,
    one panel per (dataset, arch) that sweeps more than one client setting, one colour per defence and
    sigma; FedAvg settings (more local steps) as open markers. A panel with one setting would be a
    single column of points (privacy_utility.png shows it): it is left out and named in a note."""
    plt = _pyplot()
    best = strongest_rows(summary)
    panels, single = [], []
    for (dataset, arch), cell in best.groupby(["dataset", "arch"], sort=False):
        (panels if len(set(zip(*(cell[c] for c in CLIENT)))) > 1 else single).append((dataset, arch))
    fig, axes = _panels(plt, max(1, len(panels)), 2, 5.2, 4.0)
    if not panels:
        axes[0].axis("off")
    threshold = float(summary.success_ssim_threshold.iloc[0]) if "success_ssim_threshold" in summary and len(summary) \
        else 0.5
    colours = plt.get_cmap("tab10").colors
    for ax, (dataset, arch) in zip(axes, panels):
        cell = best[(best.dataset == dataset) & (best.arch == arch)]
        lines = sorted(cell.groupby(["defense", "noise_scale"]).groups, key=lambda k: (_defense_rank(k[0]), k[1]))
        for k, (defense, sigma) in enumerate(lines):
            rows = cell[(cell.defense == defense) & (cell.noise_scale == sigma)].sort_values(CLIENT)
            # Side by side around each x, so that the intervals of different defences do not hide each other.
            shift = 2 ** (0.06 * (k - (len(lines) - 1) / 2))
            colour = colours[k % len(colours)]
            for fedavg, part in rows.groupby(rows.local_steps > 1):
                y = part.ssim_median.to_numpy(float)
                yerr = np.abs(np.vstack([y - part.ssim_median_ci_low.to_numpy(float),
                                         part.ssim_median_ci_high.to_numpy(float) - y]))
                ax.errorbar(part.batch_size.to_numpy(float) * shift, y, yerr=yerr, fmt="o" if fedavg else "o-",
                            color=colour, markerfacecolor="white" if fedavg else colour, markersize=5, capsize=2,
                            linewidth=1, elinewidth=0.8, label=None if fedavg else defense_label(defense, sigma))
                # FedAvg at several rates or mini-batch sizes
                if fedavg and len(set(zip(part.local_steps, part.local_lr, part.local_batch))) > 1:
                    for xi, yi, steps, lr, per_step in zip(part.batch_size.to_numpy(float) * shift, y,
                                                           part.local_steps, part.local_lr, part.local_batch):
                        of = f" of {int(per_step)}" if per_step else ""
                        ax.annotate(f"{steps} steps{of}, lr {lr:g}", (xi, yi), xytext=(4, 0),
                                    textcoords="offset points", fontsize=6, color=colour, va="center")
        ax.axhline(threshold, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xscale("log", base=2)
        sizes = sorted(set(cell.batch_size))
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlim(min(sizes) / 1.6, max(sizes) * 1.6)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"{dataset} / {arch}", fontsize=10)
        ax.set_xlabel("images per client update (open markers: FedAvg, several local steps)", fontsize=8)
        ax.set_ylabel("median SSIM of the strongest attack", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    note = ("one client setting only (no curve; see privacy_utility.png): "
            + ", ".join(f"{d} / {a}" for d, a in single)) if single else ""
    if not panels:
        axes[0].text(0.5, 0.5, "no (dataset, arch) sweeps more than one client setting\n" + note, ha="center",
                     va="center", fontsize=9, wrap=True)
    elif note:
        fig.text(0.01, 0.005, note, fontsize=8, color="dimgrey", va="bottom")
    fig.suptitle("Reconstruction quality against images per update, with 95% intervals", fontsize=10)
    fig.tight_layout(rect=(0, 0.03 if note and panels else 0, 1, 1))
    _save(fig, path)


def learning_curve_plot(utility: pd.DataFrame, path: str | Path, plateau_epochs: int = 2,
                        plateau_gain: float = 0.005) -> None:
    """Test accuracy after every epoch, one panel per dataset x architecture, one line per defence and
    sigma; the undefended model's line is black and its title says whether it has plateaued (the rule of
    ppp.verdicts, which decides whether accuracy claims are judged)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    from ppp.verdicts import Thresholds, plateaued

    rule = Thresholds(plateau_epochs=plateau_epochs, plateau_gain=plateau_gain)
    panels = list(dict.fromkeys(zip(utility.dataset, utility.arch)))
    fig, axes = _panels(plt, max(1, len(panels)), 2, 5.0, 3.4)
    for ax, (dataset, arch) in zip(axes, panels):
        rows = utility[(utility.dataset == dataset) & (utility.arch == arch)]
        rows = rows.assign(_order=rows.defense.map(_defense_rank)).sort_values(["_order", "noise_scale"])
        title = f"{dataset} / {arch}"
        for _, row in rows.iterrows():
            curve = per_epoch(row.test_accuracy_per_epoch)
            if not curve:
                continue
            undefended = row.defense == "none"
            ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3,
                    label=defense_label(row.defense, row.noise_scale),
                    color="black" if undefended else None, linewidth=2 if undefended else 1)
            if undefended:
                title += ": " + ("plateaued" if plateaued(curve, rule) else "NOT plateaued (accuracy indicative)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel("test accuracy", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.suptitle("Test accuracy per training epoch", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def worst_case_plot(worst: pd.DataFrame, path: str | Path, success_ssim: float = 0.5) -> None:
    """The worst case per defence in one figure: one panel per (dataset, arch, client setting, model
    state), one row per defence and sigma, the strongest attack's median SSIM with its 95% interval,
    coloured by whether the defence protects there (holds green, fails red, undecided grey) and
    labelled with that attack and the test accuracy."""
    plt = _pyplot()
    keys = ["dataset", "arch", *CLIENT, "model_state"]
    worst = with_setting_columns(worst) if len(worst) else worst
    settings = list(dict.fromkeys(worst[keys].itertuples(index=False, name=None))) if len(worst) else []
    cells = {s: worst[(worst[keys] == pd.Series(s, index=keys)).all(axis=1)] for s in settings}
    most = max((len(c) for c in cells.values()), default=1)
    fig, axes = _panels(plt, max(1, len(settings)), 2, 5.4, 1.0 + 0.32 * most)
    fig.set_figheight(fig.get_figheight() + 0.6)
    for ax, setting in zip(axes, settings):
        dataset, arch, batch_size, local_steps, local_lr, local_batch, state = setting
        cell = cells[setting]
        y = np.arange(len(cell))[::-1]
        for yi, (_, row) in zip(y, cell.iterrows()):
            verdict = str(row.protected) if isinstance(row.protected, str) else ""
            colour = VERDICT_COLOURS.get(verdict, "#7f7f7f")
            low, high = row.get("strongest_ssim_median_ci_low"), row.get("strongest_ssim_median_ci_high")
            if pd.notna(low) and pd.notna(high):
                ax.plot([low, high], [yi, yi], color=colour, linewidth=2, solid_capstyle="butt")
            ax.plot([row.strongest_ssim_median], [yi], "o", color=colour, markersize=6)
            accuracy = f", acc {row.test_accuracy:.2f}" if pd.notna(row.get("test_accuracy")) else ""
            ax.text(1.07, yi, f"{row.strongest_attack}{accuracy}", fontsize=7, va="center",
                    transform=ax.get_yaxis_transform())
        ax.set_yticks(y, [defense_label(d, s) for d, s in zip(cell.defense, cell.noise_scale)], fontsize=8)
        ax.axvline(success_ssim, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.7, len(cell) - 0.3)
        ax.set_title(f"{dataset} / {arch}, {client_label(batch_size, local_steps, local_lr, local_batch)}"
                     + ("" if state == "init" else f", {state} model"), fontsize=9)
        ax.set_xlabel("median SSIM of the strongest attack (95% interval)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    handles = [plt.Line2D([], [], marker="o", color=c, linestyle="-", label=f"protects: {v}")
               for v, c in VERDICT_COLOURS.items() if v]
    inches = fig.get_figheight()  # title and legend keep their size in inches, whatever the panels' count
    fig.suptitle("Worst case per defence: the strongest attack on each (labels: attack, test accuracy)",
                 fontsize=10, y=1 - 0.08 / inches, va="top")
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.32 / inches))
    fig.tight_layout(rect=(0, 0, 0.9, 1 - 0.62 / inches))
    _save(fig, path)


# --- reconstructions -----------------------------------------------------------------------------------

@dataclass
class GridRow:
    """One row of a reconstruction grid: a title and its images (n, C, H, W) in [0, 1], with each
    image's PSNR and SSIM against its original (None for the originals' row)."""
    title: str
    images: torch.Tensor
    psnr: Sequence[float] | None = None
    ssim: Sequence[float] | None = None


def tile_labels(row: GridRow, count: int) -> list[str]:
    """The caption under each of a row's first `count` tiles: PSNR and SSIM for a reconstruction, the
    victim's number for an original; empty where the row has fewer images."""
    labels = []
    for i in range(count):
        if i >= row.images.shape[0]:
            labels.append("")
        elif row.psnr is None or row.ssim is None:
            labels.append(f"victim {i}")
        else:
            labels.append(f"{row.psnr[i]:.1f} dB\nSSIM {row.ssim[i]:.2f}")
    return labels


def _strip(images: torch.Tensor, count: int, pad: int) -> np.ndarray:
    """`count` tiles side by side with `pad` white pixels between them (RGB, missing tiles white)."""
    _, channels, height, width = images.shape
    strip = np.ones((height, count * width + (count - 1) * pad, 3), dtype=np.float32)
    for i in range(min(count, images.shape[0])):
        tile = images[i].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        strip[:, i * (width + pad): i * (width + pad) + width] = tile if channels == 3 else tile[..., :1]
    return strip


def reconstruction_grid(originals: torch.Tensor, rows: Sequence[GridRow], path: str | Path, max_images: int = 8,
                        title: str = "") -> None:
    """Originals in the top row, one row per entry of `rows` below, each tile captioned with its PSNR and
    SSIM (tile_labels). Sized from its content: no blank bands whatever the number of rows."""
    plt = _pyplot()
    count = max(1, min(max_images, originals.shape[0]))
    all_rows = [GridRow("original", originals[:count])] + list(rows)
    tile, caption, left = 0.82, 0.3, 1.2
    width = max(left + count * tile + 0.1, 4.0)
    # The title wrapped to the figure's width (about 0.07 inch a character at this size).
    lines = textwrap.wrap(title, max(20, int(width / 0.07))) if title else []
    top = 0.12 + 0.17 * len(lines)
    height = top + len(all_rows) * (tile + caption) + 0.05
    fig = plt.figure(figsize=(width, height))
    pad = max(1, originals.shape[-1] // 12)
    for r, row in enumerate(all_rows):
        bottom = height - top - (r + 1) * (tile + caption) + caption
        ax = fig.add_axes((left / width, bottom / height, count * tile / width, tile / height))
        strip = _strip(row.images, count, pad)
        ax.imshow(strip, interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        step = originals.shape[-1] + pad
        for i, label in enumerate(tile_labels(row, count)):
            ax.text(i * step + originals.shape[-1] / 2, strip.shape[0] + 0.5, label, ha="center", va="top",
                    fontsize=6.5, linespacing=1.0)
        fig.text(0.06 / width, (bottom + tile / 2) / height, row.title, ha="left", va="center", fontsize=7.5,
                 fontweight="bold" if r == 0 else "normal")
    if title:
        fig.text(0.06 / width, 1 - 0.06 / height, "\n".join(lines), ha="left", va="top", fontsize=8.5)
    _save(fig, path, dpi=100)


def _font(size: int):
    """DejaVu Sans (matplotlib's own font, so the pictures match the figures), or Pillow's default."""
    import importlib.util

    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.exists():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def reconstruction_pair(originals: torch.Tensor, row: GridRow, path: str | Path, max_images: int = 8,
                        title: str = "", scale: int = 3) -> None:
    """One attack run's picture for the MLflow UI: its originals above its reconstructions, captioned as
    the grid is (tile_labels). Drawn with Pillow, not matplotlib: one per attack run, so it must cost
    milliseconds, not a tenth of a second."""
    from PIL import Image, ImageDraw

    count = max(1, min(max_images, originals.shape[0]))
    rows = [GridRow("original", originals[:count]), row]
    height, width = originals.shape[-2] * scale, originals.shape[-1] * scale
    pad, left, caption, top = 6, 120, 30, (26 if title else 6)
    canvas = Image.new("RGB", (left + count * (width + pad), top + len(rows) * (height + caption + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    small, label = _font(11), _font(12)
    if title:
        draw.text((6, 6), title, fill="black", font=label)
    for r, each in enumerate(rows):
        y = top + r * (height + caption + pad)
        draw.multiline_text((6, y + height // 2 - 12), each.title, fill="black", font=label, spacing=2)
        captions = tile_labels(each, count)
        for i in range(min(count, each.images.shape[0])):
            tile = each.images[i].detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
            image = Image.fromarray(tile[..., 0] if tile.shape[-1] == 1 else tile).convert("RGB")
            x = left + i * (width + pad)
            canvas.paste(image.resize((width, height), Image.NEAREST), (x, y))
            draw.multiline_text((x + width // 2, y + height + 2), captions[i], fill="black", font=small, anchor="ma",
                                align="center", spacing=1)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
