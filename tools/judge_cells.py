"""The study's verdicts from the evaluated cells a run has so far: a partial run (one dataset of a preset,
an interrupted run, a cluster run with jobs still queued) judged as the `aggregate` rule would judge it.

    .venv/bin/python tools/judge_cells.py --config config/deep_cpu.yaml \
        results/eval/cifar10/resnet18/b1s1/init/metrics.csv --out results/tables/verdicts-partial.csv

The thresholds are the preset's `report` keys (merged over config/config.yaml, as the workflow merges
them). No training metrics are read, so the accuracy claim (F4) is undecided, as in a preset without
training. Prints the table; writes it (atomically) where --out says.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ppp import report, verdicts  # noqa: E402  (the checkout's ppp, after its path)
from ppp.config import ConfigError, load_preset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", nargs="+",
                        help="evaluated cells: results/eval/<dataset>/<arch>/<client>/<state>/metrics.csv")
    parser.add_argument("--config", action="append", default=[],
                        help="preset(s) whose report thresholds apply, merged over config/config.yaml")
    parser.add_argument("--out", help="write the verdict table here (CSV)")
    args = parser.parse_args(argv)
    try:
        config = load_preset(args.config, base=REPO / "config" / "config.yaml")
    except ConfigError as err:
        parser.error(str(err))
    missing = [p for p in args.metrics if not Path(p).is_file()]
    if missing:
        parser.error(f"no such metrics file: {', '.join(missing)}")
    thresholds = verdicts.Thresholds.from_report(config["report"])
    table = verdicts.judge(report.collect_reconstructions(args.metrics), None, None, thresholds)
    if args.out:
        report.write_csv(table, args.out)
    columns = ["claim", "verdict", "dataset", "arch", "defense", "noise_scale", "attack", "statistic", "estimate",
               "ci_low", "ci_high"]
    print(table[[c for c in columns if c in table]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
