"""Render ppp-bench quality lines (benchmarks/results-quality.jsonl) as the Markdown table of
benchmarks/README.md, "Attack quality".

    .venv/bin/python benchmarks/quality_table.py benchmarks/results-quality.jsonl
"""

import json
import sys

COLUMNS = ["dataset", "arch", "width", "model_mode", "defense", "sigma", "attack", "precode_code", "init_range",
           "tv_weight", "iterations", "victims"]


def main(path: str) -> None:
    lines = [json.loads(line) for line in open(path) if line.strip() and '"error"' not in line]
    print("| dataset | arch | width | mode | defence | sigma | attack | code | LeNet init | TV | iterations | "
          "victims | median PSNR | median SSIM | mean PSNR | s (2 threads) |")
    print("| --- | --- | ---: | --- | --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in lines:
        code = r.get("precode_code") if r["defense"] in ("precode", "ppp") else ""
        init = "" if r["arch"] != "lenet" else ("default" if r.get("init_range") == 0 else "uniform")
        cells = [r["dataset"], r["arch"], r.get("width") or "", r["model_mode"], r["defense"],
                 f'{r["sigma"]:g}' if r["sigma"] else "", r["attack"], code or "", init, f'{r["tv_weight"]:g}',
                 r["iterations"], r["victims"], f'{r["median_psnr"]:.1f}', f'{r["median_ssim"]:.2f}',
                 f'{r["mean_psnr"]:.1f}', f'{r["seconds"]:.0f}']
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results-quality.jsonl")
