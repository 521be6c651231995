"""The bfloat16 table of benchmarks/README.md from the JSON lines of benchmarks/run_bf16_quality.sh.

    .venv/bin/python benchmarks/bf16_quality_table.py [benchmarks/results-bf16-quality.jsonl]

Per (arch, dataset, attack, defence, draw) and precision: seconds, speed against float32 on the same CPU, the
median SSIM with its 95% bootstrap interval over the images, the paired difference to float32 on the same
images (median, 95% bootstrap interval), and whether the median lies inside float32's interval: issue 30's
rule for using bfloat16 (`attack.precision: auto`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppp.report import bootstrap_median_interval  # noqa: E402


def variant(line: dict) -> str:
    return line["precision"] + (f" {line['extra']}" if line.get("extra") else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jsonl", nargs="?", default="benchmarks/results-bf16-quality.jsonl")
    args = parser.parse_args(argv)
    lines = [json.loads(line) for line in Path(args.jsonl).read_text().splitlines() if line.strip()]
    lines = [line for line in lines if "error" not in line]
    groups: dict[tuple, dict[str, dict]] = {}
    for line in lines:  # the last run of a variant on a CPU wins
        key = (line["arch"], line["dataset"], line["attack"], line["defense"], line.get("victim_draw"),
               line["iterations"], line["victims"], line.get("cpu", "?"))
        groups.setdefault(key, {})[variant(line)] = line
    print("| arch | dataset | attack (defence) | draw | images | iterations | precision | seconds | speed | "
          "median SSIM [95%] | at half the budget | paired difference [95%] | inside float32's interval |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | --- | --- |")
    for key, runs in groups.items():
        arch, dataset, attack, defense, draw, iterations, victims, _ = key
        reference = runs.get("float32")
        low, high = (bootstrap_median_interval(reference["ssim_per_image"]) if reference else (np.nan, np.nan))
        for name, run in runs.items():
            ssim = np.asarray(run["ssim_per_image"], dtype=float)
            lo, hi = bootstrap_median_interval(ssim)
            speed = paired = inside = "-"
            if reference is not None and name != "float32":
                speed = f"{reference['seconds'] / run['seconds']:.2f}x"
                difference = ssim - np.asarray(reference["ssim_per_image"], dtype=float)
                d_lo, d_hi = bootstrap_median_interval(difference)
                paired = f"{np.median(difference):+.3f} [{d_lo:+.3f}, {d_hi:+.3f}]"
                inside = "yes" if low <= np.median(ssim) <= high else "no"
            half = run.get("median_ssim_half_budget")
            print(f"| {arch} | {dataset} | {attack} ({defense}) | {draw} | {victims} | {iterations} | {name} | "
                  f"{run['seconds']:.0f} | {speed} | {np.median(ssim):.2f} [{lo:.2f}, {hi:.2f}] | "
                  f"{'-' if half is None else f'{half:.2f}'} | {paired} | {inside} |")
    for cpu in sorted({line.get("cpu", "?") for line in lines}):
        print(f"\nCPU: {cpu}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
