"""Where a workflow run's minutes go: job start-up, each stage's work, and Snakemake's own time.

    .venv/bin/python benchmarks/wall_split.py [RUN_DIR] [--cores 2]

Reads the newest Snakemake log of RUN_DIR (.snakemake/log/) for each job's start and end (1 s
resolution) and each job's own log (results/logs/..., millisecond timestamps) for when the job's Python
had imported torch and ppp and began its stage. Start-up is a job's start to its first log line (the
interpreter, imports, Snakemake's script preamble); the rest of the job is its stage's work. Snakemake's
own time is what is left of the cores' wall time: the start before the first job, the scheduling gaps
where a core waits, and the end after the last job (the MLflow mirror's last pass included).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path

from ppp.run_timing import newest_snakemake_log, parse_snakemake_log

STAGES = [("attack_", "attacks"), ("train", "training"), ("evaluate", "evaluation"),
          ("aggregate", "evaluation"), ("capture_", "data, models, captures"),
          ("prepare_", "data, models, captures"), ("init_model", "data, models, captures")]


def stage_of(rule: str) -> str:
    return next((name for prefix, name in STAGES if rule.startswith(prefix)), rule)


def first_log_time(path: Path) -> datetime | None:
    try:
        for line in path.read_text().splitlines():
            m = re.match(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
            if m:
                return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", nargs="?", default=".")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    run = Path(args.run_dir)
    log = newest_snakemake_log(run)
    parsed = parse_snakemake_log(log)
    started, ended, jobs = parsed.started, parsed.ended, parsed.jobs
    rows: dict[str, dict[str, float]] = {}
    for job in jobs:
        seconds = (job.end - job.start).total_seconds()
        first = first_log_time(run / job.log) if job.log else None
        startup = min(max((first - job.start).total_seconds(), 0.0), seconds) if first else 0.0
        row = rows.setdefault(stage_of(job.rule), {"jobs": 0, "startup": 0.0, "work": 0.0})
        row["jobs"] += 1
        row["startup"] += startup
        row["work"] += seconds - startup
    wall = (ended - started).total_seconds()
    busy = sum(r["startup"] + r["work"] for r in rows.values())
    print(f"Snakemake log {log.name}: {len(jobs)} jobs, {wall / 60:.1f} min wall on {args.cores} cores "
          f"({wall * args.cores / 60:.1f} core-minutes)\n")
    print("| part | jobs | job-minutes | share of core time |")
    print("| --- | --- | --- | --- |")
    total = wall * args.cores
    print(f"| job start-up (interpreter, imports) | {sum(r['jobs'] for r in rows.values())} | "
          f"{sum(r['startup'] for r in rows.values()) / 60:.1f} | "
          f"{sum(r['startup'] for r in rows.values()) / total:.0%} |")
    for name in sorted(rows, key=lambda n: -rows[n]["work"]):
        print(f"| {name} (work) | {rows[name]['jobs']} | {rows[name]['work'] / 60:.1f} | "
              f"{rows[name]['work'] / total:.0%} |")
    print(f"| Snakemake: start, scheduling gaps, end (idle cores) | | {(total - busy) / 60:.1f} | "
          f"{(total - busy) / total:.0%} |")


if __name__ == "__main__":
    main()
