"""Render ppp-bench JSON lines as the Markdown table of benchmarks/README.md.

    .venv/bin/python benchmarks/table.py benchmarks/results-cpu.jsonl

A batched line followed by a sequential line of the same arch, victims and threads (one `ppp-bench`
run in its default `--mode both`) is one row; a batched-only line (e.g. `--engine vmap --mode batched`)
is compared with the first sequential line of the same setting.
"""

import json
import statistics
import sys


def setting(r: dict) -> tuple:
    return r["arch"], r["dataset"], r["defense"], r["attack"], r["victims"], r["iterations"], r["threads"]


def rows(lines: list[dict]) -> list[tuple[dict, dict | None]]:
    first_sequential = {}
    for r in lines:
        if r["mode"] == "sequential":
            first_sequential.setdefault(setting(r), r)
    pairs = []
    for i, r in enumerate(lines):
        if r["mode"] != "batched":
            continue
        following = lines[i + 1] if i + 1 < len(lines) else None
        if following and following["mode"] == "sequential" and setting(following) == setting(r):
            pairs.append((r, following))
        else:
            pairs.append((r, first_sequential.get(setting(r))))
    return pairs


def main(path: str) -> None:
    lines = [json.loads(line) for line in open(path) if line.strip()]
    print("| arch | victims | threads | engine | batched s | sequential s | batched victim-it/s | "
          "sequential victim-it/s | speed-up | batched peak MB | sequential peak MB | mean PSNR b / s |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    speedups: dict[tuple, list[float]] = {}
    for b, s in rows(lines):
        ratio = b["victim_iterations_per_second"] / s["victim_iterations_per_second"] if s else None
        if ratio:
            speedups.setdefault((b["arch"], b["victims"], b["threads"], b["engine"]), []).append(ratio)
        cells = [b["arch"], b["victims"], b["threads"], b["engine"], b["seconds"], s["seconds"] if s else "",
                 b["victim_iterations_per_second"], s["victim_iterations_per_second"] if s else "",
                 f"{ratio:.2f}x" if ratio else "", round(b["peak_memory_mb"]),
                 round(s["peak_memory_mb"]) if s else "",
                 f'{b["mean_psnr"]:.2f} / {s["mean_psnr"]:.2f}' if s else f'{b["mean_psnr"]:.2f}']
        print("| " + " | ".join(str(c) for c in cells) + " |")
    repeated = {k: v for k, v in speedups.items() if len(v) > 1}
    if repeated:
        print()
        for (arch, victims, threads, engine), values in repeated.items():
            print(f"- {arch}, {victims} victims, {threads} thread(s), {engine}: speed-up over {len(values)} runs "
                  f"median {statistics.median(values):.2f}x (min {min(values):.2f}x, max {max(values):.2f}x)")


if __name__ == "__main__":
    main(sys.argv[1])
