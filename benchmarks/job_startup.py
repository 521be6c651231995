"""Where a workflow job's start-up goes: each step timed in a fresh interpreter, median of 5.

    .venv/bin/python benchmarks/job_startup.py

Prints one line per step: the Python interpreter alone, torch, the library a job imports
(ppp.stages and ppp.jobs, torch included), that plus constructing a torch.optim optimiser (which imports
torch._dynamo), and what every job paid before run records replaced
per-job MLflow logging (importing mlflow and opening a SQLite-backed MlflowClient).
"""

import statistics
import subprocess
import sys
import tempfile
import time

STEPS = {
    "python -c pass": "pass",
    "import torch": "import torch",
    "import ppp.stages, ppp.jobs (a job's imports)": "from ppp import stages, jobs",
    "  + a torch.optim.Adam (once per training and attack job)":
        "from ppp import stages, jobs; import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])",
    "import mlflow + MlflowClient on SQLite (per job before)":
        "import mlflow; from mlflow.tracking import MlflowClient; "
        "c = MlflowClient('sqlite:///{db}'); c.search_experiments()",
}


def seconds(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = f"{tmp}/mlflow.db"
        seconds(STEPS["import mlflow + MlflowClient on SQLite (per job before)"].format(db=db))  # create the schema
        for name, code in STEPS.items():
            times = [seconds(code.format(db=db)) for _ in range(5)]
            print(f"{name:58s} {statistics.median(times):6.2f} s")


if __name__ == "__main__":
    main()
