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

STAGES = [("attack_", "attacks"), ("train", "training"), ("evaluate", "evaluation"),
          ("aggregate", "evaluation"), ("capture_", "data, models, captures"),
          ("prepare_", "data, models, captures"), ("init_model", "data, models, captures")]


def stage_of(rule: str) -> str:
    return next((name for prefix, name in STAGES if rule.startswith(prefix)), rule)


def parse_snakemake_log(path: Path) -> tuple[datetime, datetime, list[dict]]:
    text = path.read_text()
    stamp = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]{8} \d{4})\]$")
    jobs, current_time, pending = {}, None, None
    first = last = None
    for line in text.splitlines():
        m = stamp.match(line.strip())
        if m:
            current_time = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            first = first or current_time
            last = current_time
            continue
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            pending = {"rule": m.group(1), "start": current_time}
            continue
        if pending is not None:
            m = re.match(r"^log: (\S+?),?$", line.strip())
            if m:
                pending["log"] = m.group(1)
            m = re.match(r"^jobid: (\d+)$", line.strip())
            if m:
                jobs[int(m.group(1))] = pending
                pending = None
                continue
        m = re.match(r"^Finished jobid: (\d+)", line.strip())
        if m and int(m.group(1)) in jobs:
            jobs[int(m.group(1))]["end"] = current_time
    started = datetime.strptime(re.search(r"Date: ([\d-]+ [\d:]+)", text).group(1), "%Y-%m-%d %H:%M:%S")
    return started, last, [j for j in jobs.values() if "end" in j]


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
    log = max((run / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    started, ended, jobs = parse_snakemake_log(log)
    rows: dict[str, dict[str, float]] = {}
    for job in jobs:
        seconds = (job["end"] - job["start"]).total_seconds()
        first = first_log_time(run / job["log"]) if job.get("log") else None
        startup = min(max((first - job["start"]).total_seconds(), 0.0), seconds) if first else 0.0
        row = rows.setdefault(stage_of(job["rule"]), {"jobs": 0, "startup": 0.0, "work": 0.0})
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
