"""The attack-route table of benchmarks/README.md ("Attack routes on ConvNet-64 and ResNet-18-64") from the
JSON lines of benchmarks/run_deep_routes.sh.

    .venv/bin/python benchmarks/deep_routes_table.py [benchmarks/results-deep-routes.jsonl] [--peak GFLOPS]

--peak: this CPU's float32 peak on the cores the benchmark used (benchmarks/bf16_peak.py gives one thread's
convolution and matmul rate; the benchmark ran 2 threads). Each row: median SSIM over the victims at the full
budget and at half of it (the best iterate of the same run after half the iterations), CPU seconds per
image-iteration (over both budgets of a feature-then-gradient route, "200+400"), achieved GFLOP/s and its share of the peak.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jsonl", nargs="?", default="benchmarks/results-deep-routes.jsonl")
    parser.add_argument("--peak", type=float, default=None, help="float32 GFLOP/s of the threads used")
    args = parser.parse_args(argv)
    lines = [json.loads(line) for line in Path(args.jsonl).read_text().splitlines() if line.strip()]
    failed = [line for line in lines if "error" in line]
    print("| arch | dataset | route (attack, defence) | iterations | images | median SSIM | at half the budget | "
          "s per image-iteration | GFLOP/s | share of peak |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for d in lines:
        if "error" in d:
            continue
        # Feature inversion then gradient matching (the head attack's refine): both budgets, "200+400".
        refine = int((d.get("options") or {}).get("refine_iterations", 0))
        total = d["iterations"] + refine
        budget = f"{d['iterations']}+{refine}" if refine else str(d["iterations"])
        per = d["seconds"] / (d["victims"] * total) if d.get("victims") else None
        gflops = d.get("achieved_gflops")
        share = f"{gflops / args.peak:.0%}" if gflops and args.peak else "-"
        half = d.get("median_ssim_half_budget")
        print(f"| {d['arch']} | {d['dataset']} | {d['route']} ({d['attack']}, {d['defense']}) | {budget} | "
              f"{d['victims']} | {d['median_ssim']:.2f} | {'-' if half is None else f'{half:.2f}'} | "
              f"{'-' if per is None else f'{per:.3f}'} | {'-' if gflops is None else f'{gflops:.0f}'} | {share} |")
    cpus = sorted({d.get("cpu", "?") for d in lines})
    print(f"\nCPU: {'; '.join(cpus)}; commit(s): {', '.join(sorted({d.get('commit', '?') for d in lines}))}")
    for d in failed:
        print(f"failed: {d.get('route')} {d.get('arch')} {d.get('dataset')}: {d['error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
