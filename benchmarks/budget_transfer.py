"""Do the default's attack budgets hold on other images? One row per (dataset, arch, client setting, attack)
on the cell that tests its budget (IG on the undefended model, the targeted and latent attacks on PRECODE,
the analytic attack on the paper's PPP): the median SSIM on two disjoint draws of test images and the
median SSIM gained from half to the full budget (the study's convergence check), from the reconstructions
tables of two runs of the same preset (issue 23).

    .venv/bin/python benchmarks/budget_transfer.py <clone0>/results/tables/reconstructions.csv \
        <clone1>/results/tables/reconstructions.csv
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

PROBES = [("ig", "none"), ("ig_targeted", "precode"), ("latent", "precode"), ("analytic", "ppp")]


def probe(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (dataset, arch, batch, steps), setting in frame.groupby(["dataset", "arch", "batch_size", "local_steps"]):
        for attack, defense in PROBES:
            cell = setting[(setting.attack == attack) & (setting.defense == defense)]
            if not len(cell):
                continue
            checked = cell[cell.ssim_half.notna()]
            rows.append(dict(dataset=dataset, arch=arch, images=batch, attack=attack, defense=defense + (
                f" {cell.noise_scale.iloc[0]:g}" if cell.noise_scale.iloc[0] else ""),
                ssim=float(np.median(cell.ssim)),
                gain=float(np.median(checked.ssim) - np.median(checked.ssim_half)) if len(checked) else np.nan))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args(argv)
    first, second = (probe(pd.read_csv(p)) for p in (args.first, args.second))
    keys = ["dataset", "arch", "images", "attack", "defense"]
    both = first.merge(second, on=keys, suffixes=("_0", "_1"))
    print("| dataset | arch | images | attack | on | median SSIM draw 0 / 1 | gain half -> full, draw 0 / 1 | holds on both |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for _, r in both.iterrows():
        works = "works" if min(r.ssim_0, r.ssim_1) >= 0.5 else ("fails" if max(r.ssim_0, r.ssim_1) < 0.5 else "differs")
        print(f"| {r.dataset} | {r.arch} | {r.images} | {r.attack} | {r.defense} | {r.ssim_0:.2f} / {r.ssim_1:.2f} | "
              f"{r.gain_0:+.2f} / {r.gain_1:+.2f} | {works} on both |" if works != "differs" else
              f"| {r.dataset} | {r.arch} | {r.images} | {r.attack} | {r.defense} | {r.ssim_0:.2f} / {r.ssim_1:.2f} | "
              f"{r.gain_0:+.2f} / {r.gain_1:+.2f} | **no** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
