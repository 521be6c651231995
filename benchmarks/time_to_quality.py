"""Seconds until the victims reach a target PSNR: for each mode (batched, sequential) the attack runs
at each budget of a list, and the time to quality is the time of the smallest budget whose mean PSNR
reaches the target (a budget is what a user sets; the learning-rate schedule follows it).

    .venv/bin/python benchmarks/time_to_quality.py --arch convnet --dataset cifar10 --victims 8 \\
        --iterations 100,200,300,400 --target-psnr 20 [--width 64] [--threads 2]

Prints the per-budget lines of ppp-bench and one summary line per mode.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(sys.executable).with_name("ppp-bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-psnr", type=float, default=20.0)
    parser.add_argument("--iterations", default="100,200,300,400")
    args, passthrough = parser.parse_known_args()
    for mode in ("batched", "sequential"):
        out = subprocess.run([str(BENCH), "--mode", mode, "--iterations", args.iterations, *passthrough],
                             check=True, capture_output=True, text=True).stdout
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        for line in lines:
            print(json.dumps(line))
        reached = [line for line in lines if line["mean_psnr"] >= args.target_psnr]
        best = min(reached, key=lambda line: line["seconds"]) if reached else None
        print(json.dumps(dict(mode=mode, target_psnr=args.target_psnr,
                              seconds_to_target=best["seconds"] if best else None,
                              iterations_to_target=best["iterations"] if best else None)))


if __name__ == "__main__":
    main()
