"""The FedAvg limits table of benchmarks/README.md ("FedAvg: where each attack stops") from the JSON lines of
benchmarks/run_fedavg_limits.sh.

    .venv/bin/python benchmarks/fedavg_limits_table.py [benchmarks/results-fedavg-limits.jsonl]

One row per (arch, dataset, local lr, local steps, images per local step): each attack's median SSIM on each draw (draw 0 / draw 1,
"-" where not run), its seconds per update (the mean over the draws run), and the label accuracy of label
inference. The best attack of a row is in bold where it reaches F1's bar (0.5 on CIFAR-10, 0.9 on MNIST,
issue 31) on every draw run.

Lines on PRECODE models (`DEFENSES=...` in run_fedavg_limits.sh) make a second table: per (dataset, local lr,
defence) the head attack's median SSIM and the analytic attack's at each budget, with the median its half
budget reached (ppp-bench's convergence check), draw 0 / draw 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROUTES = ("head_drift", "head", "sme", "ig")
BAR = {"cifar10": 0.5, "mnist": 0.9}


def per_draw(runs: dict, text) -> str:
    """Draw 0 / draw 1 of one cell, each as text(line) ("-" where that draw was not run)."""
    return " / ".join(text(runs[draw]) if draw in runs else "-" for draw in (0, 1))


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jsonl", nargs="?", default="benchmarks/results-fedavg-limits.jsonl")
    args = parser.parse_args(argv)
    lines = [json.loads(line) for line in Path(args.jsonl).read_text().splitlines() if line.strip()]
    failed = [d for d in lines if "error" in d]
    cells: dict[tuple, dict] = defaultdict(lambda: defaultdict(dict))
    for d in lines:
        if "error" in d or d.get("defense", "none") != "none":
            continue
        key = (d["arch"], d["dataset"], float(d["local_lr"]), int(d["local_steps"]), int(d.get("local_batch") or 0))
        cells[key][d["route"]][int(d.get("victim_draw") or 0)] = d
    header = (["arch", "dataset", "local lr", "steps", "images per step"] + [f"{r} SSIM (s/update)" for r in ROUTES]
              + ["label accuracy"])
    if cells:  # undefended models' lines (a PRECODE-only file has none)
        print(markdown_row(header))
        print(markdown_row(["---"] * 5 + ["---:"] * (len(ROUTES) + 1)))
    for key in sorted(cells):
        arch, dataset, lr, steps, batch = key
        routes = cells[key]
        best = max(((r, min(d["median_ssim"] for d in routes[r].values())) for r in ROUTES if routes.get(r)),
                   key=lambda item: item[1], default=(None, 0.0))
        row = [arch, dataset, f"{lr:g}", str(steps), str(batch) if batch else "4 (all)"]
        for route in ROUTES:
            runs = routes.get(route, {})
            if not runs:
                row.append("-")
                continue
            ssim = per_draw(runs, lambda d: f"{d['median_ssim']:.2f}")
            per_update = sum(d["seconds"] / d["updates"] for d in runs.values()) / len(runs)
            text = f"{ssim} ({per_update:.1f})"
            if route == best[0] and best[1] >= BAR[dataset]:
                text = f"**{text}**"
            row.append(text)
        labels = routes.get("label_inference", {})
        row.append(per_draw(labels, lambda d: f"{d['label_accuracy']:.2f}"))
        print(markdown_row(row))
    precode_table([d for d in lines if "error" not in d and d.get("defense", "none") != "none"])
    cpus = sorted({d.get("cpu", "?") for d in lines})
    print(f"\nCPU: {'; '.join(cpus)}. Runs that failed: {len(failed)}.")
    return 0


def precode_table(lines: list[dict]) -> None:
    """The head attack against the analytic attack's budgets on PRECODE models' FedAvg updates."""
    if not lines:
        return
    budgets = sorted({int(d["iterations"]) for d in lines if d["route"] == "analytic"})
    cells: dict[tuple, dict] = defaultdict(lambda: defaultdict(dict))
    for d in lines:
        key = (d["arch"], d["dataset"], float(d["local_lr"]), int(d["local_steps"]), d["defense"], float(d["sigma"]))
        budget = int(d["iterations"]) if d["route"] == "analytic" else 0  # the head routes run one budget
        cells[key][(d["route"], budget)][int(d.get("victim_draw") or 0)] = d
    head_routes = sorted({d["route"] for d in lines if d["route"] != "analytic"})
    header = (["arch", "dataset", "local lr", "steps", "defence"] + [f"{r} SSIM" for r in head_routes]
              + [f"analytic {b} SSIM (half budget)" for b in budgets] + ["analytic s/update at the largest"])
    print("\nPRECODE models:\n")
    print(markdown_row(header))
    print(markdown_row(["---"] * 5 + ["---:"] * (len(header) - 5)))
    for key in sorted(cells):
        arch, dataset, lr, steps, defense, sigma = key
        runs = cells[key]
        row = [arch, dataset, f"{lr:g}", str(steps), defense + (f" {sigma:g}" if sigma else "")]
        for route in head_routes:
            row.append(per_draw(runs.get((route, 0), {}), lambda d: f"{d['median_ssim']:.2f}"))
        for budget in budgets:
            row.append(per_draw(runs.get(("analytic", budget), {}),
                                lambda d: f"{d['median_ssim']:.2f} ({d['median_ssim_half_budget']:.2f})"))
        largest = runs.get(("analytic", budgets[-1]), {}) if budgets else {}
        row.append(f"{sum(d['seconds'] / d['updates'] for d in largest.values()) / len(largest):.1f}" if largest else "-")
        print(markdown_row(row))


if __name__ == "__main__":
    sys.exit(main())
