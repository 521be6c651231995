"""Do the study's verdicts hold on other images? Compare the verdict tables of two runs of the same preset
with different victim draws (issue 23: no claim may hold under one draw and fail under the other).

    make run                                                   # draw 0, in one clone
    make run SNAKEMAKE_ARGS="--config victim_draw=1"           # draw 1, in another clone
    .venv/bin/python benchmarks/verdict_stability.py <clone0>/results/tables/verdicts.csv \
        <clone1>/results/tables/verdicts.csv

Prints the counts of holds / fails / undecided per table and per claim, and every contradiction; exits 1
when there is one.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from ppp.results_page import side_by_side
from ppp.verdicts import SETTING, VERDICTS, contradictions, with_setting_columns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", help="verdicts.csv of the first draw")
    parser.add_argument("second", help="verdicts.csv of the second draw")
    parser.add_argument("--markdown", action="store_true", help="also print both draws side by side as a table")
    args = parser.parse_args(argv)
    tables = [with_setting_columns(pd.read_csv(p)) for p in (args.first, args.second)]
    if args.markdown:
        print(side_by_side(*tables))
    for name, table in zip(("first", "second"), tables):
        counts = table.groupby("claim").verdict.value_counts().unstack(fill_value=0).reindex(columns=VERDICTS,
                                                                                           fill_value=0)
        total = {v: int((table.verdict == v).sum()) for v in VERDICTS}
        print(f"{name} ({len(table)} claims): " + ", ".join(f"{v} {n}" for v, n in total.items()))
        print(counts.to_string())
    keys = SETTING + ["claim", "defense", "noise_scale"]
    both = tables[0][keys + ["verdict"]].merge(tables[1][keys + ["verdict"]], on=keys, suffixes=("_first", "_second"))
    same = int((both.verdict_first == both.verdict_second).sum())
    print(f"same verdict on both draws: {same} of {len(both)}")
    clash = contradictions(*tables)
    if len(clash):
        print(f"CONTRADICTIONS ({len(clash)}): holds under one draw, fails under the other")
        print(clash.to_string(index=False))
        return 1
    print("no claim holds under one draw and fails under the other")
    return 0


if __name__ == "__main__":
    sys.exit(main())
