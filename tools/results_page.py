"""Write docs/results.md and the README's answer table from the verdict tables of two victim draws.

    cp <clone0>/results/tables/verdicts.csv docs/results/verdicts-draw0.csv   # make run
    cp <clone1>/results/tables/verdicts.csv docs/results/verdicts-draw1.csv   # ... --config victim_draw=1
    make results-page                               # writes docs/results.md and README.md's answer block
    .venv/bin/python tools/results_page.py --check  # exit 1 if either file differs from what it would write

docs/results.md is docs/results.template.md with its {{placeholders}} filled; the README keeps everything
outside its <!-- answer:start --> ... <!-- answer:end --> block. Tables come only from the CSVs, so
the pages cannot drift from them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`

from ppp.results_page import answer_block, counts_text, fill, replace_block, side_by_side  # noqa: E402


def _shown(path: Path) -> str:
    """A path as the page names it: relative to the checkout where it lies inside it."""
    return os.path.relpath(path.resolve(), ROOT) if path.resolve().is_relative_to(ROOT) else str(path)


def pages(draw0: Path, draw1: Path, template: Path, readme: Path) -> tuple[str, str]:
    """(docs/results.md, README.md) as they should read."""
    first, second = pd.read_csv(draw0), pd.read_csv(draw1)
    results = fill(template.read_text(), {
        "source": f"`{_shown(draw0)}` (draw 0) and `{_shown(draw1)}` (draw 1)",
        "template": f"`{_shown(template)}`",
        "answer_table": answer_block(first, second),
        "counts": counts_text(first, second),
        "verdict_table": side_by_side(first, second),
    })
    return results, replace_block(readme.read_text(), answer_block(first, second))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draw0", type=Path, default=ROOT / "docs/results/verdicts-draw0.csv",
                        help="verdicts.csv of the run with victim_draw 0")
    parser.add_argument("--draw1", type=Path, default=ROOT / "docs/results/verdicts-draw1.csv",
                        help="verdicts.csv of the run with victim_draw 1")
    parser.add_argument("--template", type=Path, default=ROOT / "docs/results.template.md",
                        help="the page's prose, with {{placeholders}} for the generated parts")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results.md", help="the page to write")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md",
                        help="the README whose answer block is rewritten")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    for path in (args.draw0, args.draw1, args.template, args.readme):
        if not path.is_file():
            print(f"results_page: {path}: no such file", file=sys.stderr)
            return 2
    try:
        results, readme = pages(args.draw0, args.draw1, args.template, args.readme)
    except (ValueError, KeyError, pd.errors.ParserError) as error:
        print(f"results_page: {error}", file=sys.stderr)
        return 2
    targets = [(args.out, results), (args.readme, readme)]
    if args.check:
        stale = [_shown(p) for p, text in targets if not p.is_file() or p.read_text() != text]
        if stale:
            verb = "differ" if len(stale) > 1 else "differs"
            print(f"results_page: {' and '.join(stale)} {verb} from what the verdict CSVs give; run `make results-page`",
                  file=sys.stderr)
            return 1
        return 0
    for path, text in targets:
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {_shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
