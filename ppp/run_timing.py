"""Where a workflow run's time went, per rule and per job, and on which CPU: what a user sends when the
default takes longer on their machine than the README says.

Reads a run directory's newest Snakemake log (.snakemake/log/: each job's rule, threads and start and end,
1 s resolution), each job's own log (its last line gives the process's wall and CPU seconds, written by
`ppp.jobs`; Snakemake's benchmark files under-count CPU time: they sample every few seconds) and the run
records (results/mlflow/records/: the CPU the jobs ran on). Start-up is Snakemake's wall time for the job
less the job's process: Snakemake's own scheduling of it. CPU seconds over wall seconds and threads
shows a job that waited (for a core, for I/O) rather than computed.

    python -m ppp.run_timing [RUN_DIR] [--log .snakemake/log/X.snakemake.log]     # or: make timing
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ppp.hardware import host_description

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]{8} \d{4})\]$")


@dataclass
class Job:
    rule: str
    start: datetime
    end: datetime | None = None
    threads: int = 1
    log: str | None = None
    benchmark: str | None = None
    wildcards: str = ""
    process_wall_s: float | None = None  # the job's Python process, from its log's last line
    cpu_s: float | None = None

    @property
    def seconds(self) -> float:
        """Snakemake's wall time for the job (1 s resolution), or the process's where that is longer."""
        scheduled = (self.end - self.start).total_seconds() if self.end else 0.0
        return max(scheduled, self.process_wall_s or 0.0)


@dataclass
class SnakemakeLog:
    path: Path
    started: datetime
    ended: datetime
    cores: int | None
    jobs: list[Job] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return (self.ended - self.started).total_seconds()


def snakemake_logs(run_dir: Path) -> list[Path]:
    """The run directory's Snakemake logs, oldest first."""
    logs = sorted((run_dir / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise FileNotFoundError(f"no Snakemake log under {run_dir / '.snakemake' / 'log'}: run the workflow first")
    return logs


def newest_snakemake_log(run_dir: Path) -> Path:
    return snakemake_logs(run_dir)[-1]


def parse_snakemake_log(path: Path) -> SnakemakeLog:
    """The finished jobs of one Snakemake invocation's log."""
    text = path.read_text()
    jobs: dict[int, Job] = {}
    current: datetime | None = None
    last: datetime | None = None
    pending: Job | None = None
    pending_id: int | None = None
    for raw in text.splitlines():
        line = raw.strip()
        stamp = _STAMP.match(line)
        if stamp:
            current = last = datetime.strptime(stamp.group(1), "%a %b %d %H:%M:%S %Y")
            continue
        rule = re.match(r"^(?:local)?rule ([\w.+-]+):$", line)  # attack_lenet_b4s2lr0.1_head
        if rule and current is not None:
            pending, pending_id = Job(rule.group(1), current), None
            continue
        if pending is not None and raw.startswith("    "):
            key, _, value = line.partition(": ")
            value = value.rstrip(",")
            if key == "jobid":
                pending_id = int(value)
                jobs[pending_id] = pending
            elif key == "threads":
                pending.threads = int(value)
            elif key == "log":
                pending.log = value.split(", ")[0]
            elif key == "benchmark":
                pending.benchmark = value
            elif key == "wildcards":
                pending.wildcards = value
            continue
        pending = None
        finished = re.match(r"^Finished jobid: (\d+)", line)
        if finished and int(finished.group(1)) in jobs:
            jobs[int(finished.group(1))].end = current
    started = re.search(r"Date: ([\d-]+ [\d:]+)", text)
    cores = re.search(r"^Provided cores: (\d+)", text, re.M)
    begin = datetime.strptime(started.group(1), "%Y-%m-%d %H:%M:%S") if started else (last or datetime.now())
    return SnakemakeLog(path, begin, last or begin, int(cores.group(1)) if cores else None,
                        [j for j in jobs.values() if j.end is not None])


_PROCESS_TIME = re.compile(r"job finished: ([\d.]+) s wall since the process started, ([\d.]+) s CPU")


def read_process_time(log_path: Path) -> tuple[float, float] | None:
    """(wall s, CPU s) of a job's process from the last line `ppp.jobs` writes to its log; None where the
    log is missing or the job wrote none (a failed job, a rule without a Python script)."""
    try:
        found = _PROCESS_TIME.findall(log_path.read_text(errors="replace"))
    except OSError:
        return None
    return (float(found[-1][0]), float(found[-1][1])) if found else None


def recorded_hosts(records_dir: Path) -> dict[str, int]:
    """The CPUs that the run's jobs recorded (param host.cpu), with how many records name each."""
    hosts: dict[str, int] = {}
    for path in records_dir.glob("*.json"):
        try:
            params = json.loads(path.read_text()).get("params", {})
        except (OSError, ValueError):
            continue
        if isinstance(params, dict) and params.get("host.cpu"):
            hosts[params["host.cpu"]] = hosts.get(params["host.cpu"], 0) + 1
    return hosts


def newest_run_with_jobs(run_dir: Path) -> SnakemakeLog:
    """The newest invocation that ran jobs: a `make run` with nothing left to do, or a dry run, writes a
    log of its own and must not hide the run before it."""
    logs = snakemake_logs(run_dir)
    for path in reversed(logs):
        run = parse_snakemake_log(path)
        if run.jobs:
            return run
    return parse_snakemake_log(logs[-1])


def load_run(run_dir: Path, log: Path | None = None) -> SnakemakeLog:
    """An invocation's jobs (the newest that ran any unless `log` names one), with each job process's
    wall and CPU seconds from its own log."""
    run = parse_snakemake_log(log) if log else newest_run_with_jobs(run_dir)
    for job in run.jobs:
        measured = read_process_time(run_dir / job.log) if job.log else None
        if measured:
            job.process_wall_s, job.cpu_s = measured
    return run


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}"


def timing_table(run: SnakemakeLog, longest: int = 10) -> str:
    """Markdown: per rule (jobs, threads, wall and CPU seconds), then the longest jobs."""
    rules: dict[str, list[Job]] = {}
    for job in run.jobs:
        rules.setdefault(job.rule, []).append(job)
    lines = ["| rule | jobs | threads | wall s (sum) | wall s (longest) | start-up s (sum) | CPU s (sum) | "
             "CPU / (process wall x threads) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rule, jobs in sorted(rules.items(), key=lambda item: -sum(j.seconds for j in item[1])):
        wall = sum(j.seconds for j in jobs)
        timed = [j for j in jobs if j.cpu_s is not None]
        cpu = sum(j.cpu_s for j in timed) if timed else None
        process = sum(j.process_wall_s * j.threads for j in timed)
        busy = cpu / process if timed and process > 0 else None
        startup = sum(j.seconds - j.process_wall_s for j in timed) if timed else None
        threads = "/".join(str(t) for t in sorted({j.threads for j in jobs}))
        lines.append(f"| {rule} | {len(jobs)} | {threads} | {_fmt(wall)} | {_fmt(max(j.seconds for j in jobs))} | "
                     f"{_fmt(startup)} | {_fmt(cpu)} | {'-' if busy is None else f'{busy:.0%}'} |")
    lines += ["", f"The {longest} longest jobs:", "", "| rule | wildcards | threads | wall s | CPU s |",
              "| --- | --- | --- | --- | --- |"]
    for job in sorted(run.jobs, key=lambda j: -j.seconds)[:longest]:
        lines.append(f"| {job.rule} | {job.wildcards} | {job.threads} | {_fmt(job.seconds)} | {_fmt(job.cpu_s)} |")
    return "\n".join(lines)


def report(run_dir: Path, longest: int = 10, log: Path | None = None) -> str:
    run = load_run(run_dir, log)
    hosts = recorded_hosts(run_dir / "results" / "mlflow" / "records")
    ran_on = "; ".join(f"{cpu} ({n} records)" for cpu, n in sorted(hosts.items(), key=lambda h: -h[1]))
    head = [f"Snakemake log: {run.path.name}", f"Jobs: {len(run.jobs)}, wall {run.wall_s / 60:.1f} min on "
            f"{run.cores or '?'} cores (first log line to the last finished job)",
            f"This machine: {host_description()}"]
    if ran_on:
        head.append(f"The jobs ran on: {ran_on}")
    return "\n".join(head) + "\n\n" + timing_table(run, longest)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ppp.run_timing", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default=".", help="the workflow's working directory (default: .)")
    parser.add_argument("--log", type=Path, help="a Snakemake log of RUN_DIR/.snakemake/log (default: the newest)")
    parser.add_argument("--longest", type=int, default=10, help="how many of the longest jobs to list")
    args = parser.parse_args(argv)
    try:
        print(report(Path(args.run_dir), args.longest, args.log))
    except FileNotFoundError as err:
        print(f"ppp.run_timing: {err}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
