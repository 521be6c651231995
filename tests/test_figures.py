"""What a reader sees: the figures' intervals and labels, the reconstruction grid's captions, the landing page."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from docutils.core import publish_parts
from test_report import CELLS, _study

from ppp import figures
from ppp.landing import interval, landing_rst
from ppp.report import worst_case


@pytest.fixture
def drawn(monkeypatch):
    """The figures a plotting function made, kept open instead of saved."""
    kept = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, dpi=110: kept.append(fig))
    yield kept
    import matplotlib.pyplot as plt

    for fig in kept:
        plt.close(fig)


def _two_settings(summary):
    """The study at one image per update and again at four (FedAvg: two local steps at lr 0.1)."""
    other = summary.assign(batch_size=4, local_steps=2, local_lr=0.1)
    return pd.concat([summary, other], ignore_index=True)


def test_privacy_utility_has_intervals_on_both_axes_and_labels_that_do_not_collide(drawn):
    from matplotlib.container import ErrorbarContainer

    summary, _ = _study(CELLS)
    figures.privacy_utility_plot(summary, "unused.png")
    (fig,) = drawn
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert {c.get_label() for c in bars} == {"none", "noise", "precode", "ppp"}
    assert all(c.has_xerr and c.has_yerr for c in bars)
    fig.canvas.draw()
    from matplotlib.text import Annotation

    boxes = [t.get_window_extent() for t in ax.texts if isinstance(t, Annotation)]
    assert len(boxes) == 8  # one label per point: none, precode, noise and ppp at three sigmas each
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), "two point labels overlap"


def test_place_labels_moves_a_label_off_another_and_keeps_a_free_one_at_its_point():
    placed = figures.place_labels([(0.5, 0.5), (0.5, 0.51), (0.9, 0.1)], height=0.05, width=0.2)
    assert placed[0] == (0.5, 0.5) and placed[2] == (0.9, 0.1)
    assert abs(placed[1][1] - placed[0][1]) >= 0.05


def test_batch_size_plot_draws_intervals_and_leaves_out_single_setting_panels(drawn):
    summary, _ = _study(CELLS)
    lenet = _two_settings(summary)
    mlp = summary.assign(arch="mlp")  # one client setting only: no curve to draw
    figures.batch_size_plot(pd.concat([lenet, mlp], ignore_index=True), "unused.png")
    (fig,) = drawn
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == ["mnist / lenet"]
    assert any("mnist / mlp" in t.get_text() for t in fig.texts)  # the note names the panel left out
    ax = titled[0]
    assert ax.containers and all(c.has_yerr for c in ax.containers)
    # FedAvg points are open markers.
    assert any(line.get_markerfacecolor() == "white" for line in ax.lines)


def test_worst_case_plot_has_one_row_per_defence_coloured_by_its_verdict(drawn):
    summary, table = _study(CELLS)
    worst = worst_case(summary, table)
    figures.worst_case_plot(worst, "unused.png")
    (fig,) = drawn
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [figures.defense_label(d, s) for d, s in zip(worst.defense, worst.noise_scale)]  # top down
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    colours = {figures.VERDICT_COLOURS[v] for v in worst.protected}
    assert {d.get_color() for d in dots} == colours and figures.VERDICT_COLOURS["holds"] in colours


def test_fedavg_at_two_local_learning_rates_gets_a_panel_and_a_label_each(drawn):
    assert figures.client_label(1, 1) == "1 image/update"
    assert figures.client_label(4, 1, 0.0) == "4 images/update"
    assert figures.client_label(4, 2, 0.1) == "4 images/update, 2 local steps at lr 0.1 (FedAvg)"
    assert figures.client_label(4, 2) == "4 images/update, 2 local steps (FedAvg)"  # the lr unknown
    summary, table = _study(CELLS)
    worst = worst_case(summary, table)
    both = pd.concat([worst.assign(batch_size=4, local_steps=2, local_lr=lr) for lr in (0.1, 0.01)],
                     ignore_index=True)
    figures.worst_case_plot(both, "unused.png")
    (fig,) = drawn
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["mnist / lenet, 4 images/update, 2 local steps at lr 0.1 (FedAvg)",
                      "mnist / lenet, 4 images/update, 2 local steps at lr 0.01 (FedAvg)"]
    text = landing_rst(pd.concat([table.assign(batch_size=4, local_steps=2, local_lr=lr) for lr in (0.1, 0.01)]))
    assert "2 local steps at lr 0.1 (FedAvg)" in text and "2 local steps at lr 0.01 (FedAvg)" in text


def test_learning_curves_read_a_single_epoch_back_from_the_csv():
    # One epoch: pandas reads "0.42" back as a float, not a string.
    assert figures.per_epoch(0.42) == [0.42] and figures.per_epoch("0.5;0.8") == [0.5, 0.8]
    assert figures.per_epoch(float("nan")) == [] and figures.per_epoch(None) == []


def test_every_reconstruction_tile_is_captioned_with_its_own_psnr_and_ssim():
    row = figures.GridRow("ppp σ=0.1\nlatent", torch.zeros(3, 1, 8, 8), psnr=[12.34, 20.0, 8.0], ssim=[0.5, 0.91, 0.0])
    assert figures.tile_labels(row, 4) == ["12.3 dB\nSSIM 0.50", "20.0 dB\nSSIM 0.91", "8.0 dB\nSSIM 0.00", ""]
    originals = figures.GridRow("original", torch.zeros(2, 1, 8, 8))
    assert figures.tile_labels(originals, 2) == ["victim 0", "victim 1"]


def test_reconstruction_grid_is_sized_by_its_rows(tmp_path):
    """No blank band: the figure grows by the same height per row, and a one-row grid stays small."""
    from PIL import Image

    images = torch.rand(8, 3, 32, 32)
    rows = [figures.GridRow(f"row {i}", images, [20.0] * 8, [0.5] * 8) for i in range(6)]
    heights = []
    for count in (1, 6):
        figures.reconstruction_grid(images, rows[:count], tmp_path / f"{count}.png", max_images=8, title="t")
        heights.append(Image.open(tmp_path / f"{count}.png").size[1])
    per_row = (heights[1] - heights[0]) / 5
    assert heights[0] < 2.5 * per_row + 60  # the originals, one row and the title
    assert 100 <= per_row <= 130  # tile and caption, at 100 dpi


def test_an_interval_is_shown_only_where_the_verdict_has_one():
    assert interval(0.8234, 0.75, 0.88) == "0.82 [0.75, 0.88]"
    assert interval(0.8234, float("nan"), "") == "0.82"
    assert interval("", 0.1, 0.2) == ""


def test_landing_page_holds_every_claim_and_defence_with_its_verdict_and_interval():
    summary, table = _study(CELLS)
    text = landing_rst(table)
    parts = publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 5})
    html = parts["body"]
    for claim in ("F1 IG leaks", "F2", "F3", "F4"):
        assert claim in html
    counts = table.verdict.value_counts()
    assert f"<strong>{counts.get('holds', 0)} hold</strong>" in html
    protects = table[table.claim == "protects"]
    for _, row in protects.iterrows():  # each defence's column lists its verdict at every sigma
        sigma = f"σ={row.noise_scale:g} " if row.noise_scale else ""
        assert f"{sigma}<strong>{row.verdict}</strong> {interval(row.estimate, row.ci_low, row.ci_high)}" in html
    assert all(f">{d}<" in html for d in set(protects.defense))  # one column per defence
    f1 = table[table.claim == "F1"].iloc[0]
    assert f"<strong>{f1.verdict}</strong> {interval(f1.estimate, f1.ci_low, f1.ci_high)}" in html
    assert np.isfinite(f1.ci_low)  # 16 images: the verdicts here have intervals, and the page shows them


def test_landing_page_states_the_preset():
    import yaml

    from test_report import REPO_CONFIG

    config = yaml.safe_load(REPO_CONFIG.read_text())
    summary, table = _study(CELLS)
    text = landing_rst(table, config)
    assert "The preset that ran" in text and "mnist, cifar10" in text
    assert "**lenet**" in text and "16 images per cell" in text and "training epochs" in text
    # A preset that trains nothing (config/deep_cpu.yaml) says so, not the default's epochs.
    text = landing_rst(table, {**config, "training": {**config["training"], "enabled": False}})
    assert "training epochs" not in text and "no training" in text


def test_the_grid_shows_each_defence_once_with_its_strongest_attack():
    from ppp.stages import strongest_per_defense

    def entry(defense, sigma, attack, ssim, psnr):
        return (dict(defense=defense, noise_scale=sigma, attack=attack), attack, ssim, psnr)

    entries = [entry("ppp", 0.1, "ig", 0.10, 12.0), entry("ppp", 0.1, "analytic", 0.80, 20.0),
               entry("ppp", 0.1, "latent", 0.80, 25.0), entry("none", 0.0, "ig", 0.99, 40.0),
               entry("ppp", 1.0, "ig", 0.05, 9.0), entry("noise", 0.1, "ig", 0.3, 15.0)]
    shown = [(c["defense"], c["noise_scale"], attack) for c, attack, _, _ in strongest_per_defense(entries)]
    assert shown == [("none", 0.0, "ig"), ("noise", 0.1, "ig"), ("ppp", 0.1, "latent"), ("ppp", 1.0, "ig")]
