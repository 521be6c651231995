"""What every workflow job does around its stage: threads, logging to the rule's log, the run record.

Takes Snakemake's `snakemake` object duck-typed (input, output, params, wildcards, threads, log, rule),
so the library still never imports Snakemake.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

import torch

from ppp.tracking import JobRecord, resolve_tracking_uri

RECORDS_DIR = "results/mlflow/records"
# One line per failed job (its error), printed by the workflow's onerror handler: a bad input shows on
# the console as the file or key and what is wrong, not as "check log file(s)".
FAILURES_DIR = "results/logs/failures"


def library_versions() -> dict[str, str]:
    import platform

    import numpy

    import ppp

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "ppp": getattr(ppp, "__version__", "0")}


def failure_line(rule: str, wildcards: dict, err: BaseException) -> str:
    where = ", ".join(f"{k}={v}" for k, v in wildcards.items())
    message = " ".join(str(err).split()) or type(err).__name__
    return f"{rule}{f' ({where})' if where else ''}: {message}"


def configure(threads: int, log_path: str | None) -> None:
    # Snakemake exports OMP_NUM_THREADS from `threads`; torch's own pool must follow it too.
    torch.set_num_threads(max(1, int(threads)))
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _common_params(smk) -> dict:
    # What makes runs comparable across invocations: the seed and device the job ran with, and the
    # libraries' versions (the git commit and user are set by the mirror, once per invocation).
    # The CPU and threads too: the same job's time differs 2x between CPUs (README, "Time").
    from ppp.hardware import cpu_model

    return {"seed": smk.config.get("seed"), "device": smk.config.get("device"), "host.cpu": cpu_model(),
            "host.threads": int(smk.threads), **{f"version.{k}": v for k, v in library_versions().items()}}


# The line `ppp.run_timing` reads from each job's log: CPU seconds per job, which Snakemake's benchmark
# files under-count (they sample the process every few seconds and miss the time after the last sample).
PROCESS_TIME_FORMAT = "job finished: %.2f s wall since the process started, %.2f s CPU, %d torch thread(s)"


def process_wall_seconds() -> float:
    """Seconds since this process started. On Linux both ends are read on the boot-time clock: psutil's
    create_time adds the start to /proc/stat's btime, a whole second that also drifts from the wall clock,
    which put a job's process up to a second before Snakemake's own stamp of the job's start."""
    import time

    try:
        with open("/proc/self/stat") as stat:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, ValueError, IndexError):  # not Linux
        import psutil

        return time.time() - psutil.Process().create_time()


def log_process_time() -> None:
    import psutil

    times = psutil.Process().cpu_times()
    wall = process_wall_seconds()
    logging.getLogger("ppp.jobs").info(PROCESS_TIME_FORMAT, wall, times.user + times.system,
                                       torch.get_num_threads())


def _records_dir(smk) -> str | None:
    return RECORDS_DIR if smk.config.get("mlflow", {}).get("enabled", True) else None


@contextlib.contextmanager
def job(smk, params: dict | None = None, record: bool = True) -> Iterator[JobRecord | None]:
    """Set up a job from the snakemake object and yield its run record (mirrored to MLflow; nothing is
    recorded when tracking is off). With `record=False` the job records its cells itself (cell_record)
    and None is yielded."""
    configure(smk.threads, smk.log[0] if len(smk.log) else None)
    wildcards = {k: v for k, v in smk.wildcards.items()}
    run_name = "/".join([smk.rule] + [str(v) for v in wildcards.values()])
    failure = os.path.join(FAILURES_DIR, run_name.replace("/", "__") + ".txt")
    with contextlib.suppress(OSError):
        os.remove(failure)
    try:
        if not record:
            yield None
        else:
            tags = {"rule": smk.rule, **{f"wildcard.{k}": v for k, v in wildcards.items()}}
            with JobRecord(_records_dir(smk), run_name, tags,
                           {**_common_params(smk), **wildcards, **(params or {})}) as run:
                yield run
        log_process_time()
    except Exception as err:
        logging.getLogger("ppp.jobs").exception("job failed")
        with contextlib.suppress(OSError):
            os.makedirs(FAILURES_DIR, exist_ok=True)
            with open(failure, "w") as handle:
                handle.write(failure_line(smk.rule, wildcards, err) + "\n")
        raise


def cell_record(smk, stage: str, wildcards: dict, params: dict | None = None) -> JobRecord:
    """The run record of one cell of a job that computes several (capture, attack): named and tagged as
    if the cell were its own job of rule `stage`, with the Snakemake rule that ran it as a tag."""
    run_name = "/".join([stage] + [str(v) for v in wildcards.values()])
    tags = {"rule": stage, "snakemake_rule": smk.rule, **{f"wildcard.{k}": v for k, v in wildcards.items()}}
    return JobRecord(_records_dir(smk), run_name, tags, {**_common_params(smk), **wildcards, **(params or {})})


def failures_since(started: float) -> list[str]:
    """The one-line errors of the jobs that failed since `started` (a time.time())."""
    lines = []
    if os.path.isdir(FAILURES_DIR):
        for name in sorted(os.listdir(FAILURES_DIR)):
            path = os.path.join(FAILURES_DIR, name)
            with contextlib.suppress(OSError):
                if os.path.getmtime(path) >= started:
                    with open(path) as handle:
                        lines.append(handle.read().strip())
    return lines


def tracking_settings(config: dict) -> dict:
    """Where the mirror logs; read from the config at run time (not a rule param, so changing the
    tracking server never re-runs finished jobs)."""
    mlflow_config = config.get("mlflow", {})
    if not mlflow_config.get("enabled", True):
        return {"uri": None, "experiment": None}
    uri = resolve_tracking_uri(mlflow_config.get("tracking_uri"), "results/mlflow/mlflow.db")
    return {"uri": uri, "experiment": mlflow_config.get("experiment", "ppp")}
