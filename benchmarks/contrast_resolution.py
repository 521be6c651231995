"""What the attacker's contrast step (attack.contrast: max_in_box, ppp/attacks/contrast.py) does to a finished
run's reconstructions: every one-image cell's images re-scored after the step, and the verdicts re-judged.

The step is a pure function of the final reconstructions and the dataset's mean colour, so applying it to a
run's saved reconstructions gives what the run would have written with the option on.

    .venv/bin/python benchmarks/contrast_resolution.py /path/to/run            # a finished `make run`
    .venv/bin/python benchmarks/contrast_resolution.py /path/to/run --markdown
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ppp import report, verdicts  # noqa: E402
from ppp.attacks.contrast import max_contrast_in_box  # noqa: E402
from ppp.io import load_tensors, read_json  # noqa: E402
from ppp.metrics import image_metrics  # noqa: E402


def resolved_metrics(run: Path, archs: list[str]) -> pd.DataFrame:
    """The run's reconstructions table with psnr, ssim and ssim_half recomputed after the contrast step on
    `archs` (one-image cells; others are left out)."""
    frame = report.collect_reconstructions(sorted(glob.glob(str(run / "results/eval/*/*/*/*/metrics.csv"))))
    frame = frame[(frame.batch_size == 1) & (frame.local_steps == 1)].copy()
    for (dataset, arch, defense, sigma, state, attack), cell in frame.groupby(
            ["dataset", "arch", "defense", "noise_scale", "model_state", "attack"]):
        if arch not in archs:
            continue
        mean = torch.tensor(read_json(str(run / f"results/data/{dataset}/meta.json"))["mean"])
        victims = load_tensors(str(run / f"results/data/{dataset}/victims.safetensors"))["images"]
        sigma_dir = f"{sigma:g}" if sigma else "0"
        recon = load_tensors(str(run / f"results/attacks/{dataset}/{arch}/b1s1/{defense}/{sigma_dir}/{state}/"
                                 f"{attack}/reconstructions.safetensors"))
        images = max_contrast_in_box(recon["images"], mean)
        half = recon.get("images_half")
        for index, row in cell.iterrows():
            v = int(row.victim)
            scores = image_metrics(victims[v], images[v])
            frame.loc[index, ["psnr", "ssim"]] = scores["psnr"], scores["ssim"]
            if half is not None and torch.isfinite(half[v]).all():
                frame.loc[index, "ssim_half"] = image_metrics(victims[v], max_contrast_in_box(half[v:v + 1], mean)[0])["ssim"]
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a checkout where `make run` finished")
    parser.add_argument("--archs", nargs="+", default=["resnet18"],
                        help="where the step applies (the presets set it for ResNet-18's GroupNorm)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    raw = report.collect_reconstructions(sorted(glob.glob(str(args.run / "results/eval/*/*/*/*/metrics.csv"))))
    raw = raw[(raw.batch_size == 1) & (raw.local_steps == 1)]
    resolved = resolved_metrics(args.run, args.archs)
    before, after = verdicts.judge(raw), verdicts.judge(resolved)
    keys = ["dataset", "arch", "claim", "defense", "noise_scale"]
    table = before[keys + ["attack", "verdict", "estimate", "ci_low", "ci_high", "converged"]].merge(
        after[keys + ["verdict", "estimate", "ci_low", "ci_high", "converged"]], on=keys, suffixes=("", "_resolved"))
    if not args.markdown:
        print(table.to_string(index=False))
        return
    print("| dataset | arch | claim | defence | attack | as reconstructed | contrast resolved |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in table.itertuples():
        defence = r.defense + (f" {r.noise_scale:g}" if r.noise_scale else "")
        cells = [f"**{v}** {e:.2f} [{lo:.2f}, {hi:.2f}]" + ("" if c in (True, "True") or pd.isna(c) else ", not converged")
                 for v, e, lo, hi, c in ((r.verdict, r.estimate, r.ci_low, r.ci_high, r.converged),
                                         (r.verdict_resolved, r.estimate_resolved, r.ci_low_resolved,
                                          r.ci_high_resolved, r.converged_resolved))]
        print(f"| {r.dataset} | {r.arch} | {r.claim} | {defence} | {r.attack} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
