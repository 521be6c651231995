# When the workflow ends. The MLflow mirror: jobs leave run records under results/mlflow/records/;
# when the workflow ends (successfully or not), the records this invocation added are logged as runs
# nested under one parent run. One process writes the backend, so parallel jobs never race on it.
# On failure, each failed job's error is printed as one line (the file or key, and what is wrong).
import getpass
import subprocess
import sys
import time

WORKFLOW_STARTED = time.time()


def git_commit():
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=workflow.basedir,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def mirror_to_mlflow():
    if not config["mlflow"]["enabled"]:
        return
    from ppp.jobs import RECORDS_DIR, tracking_settings
    from ppp.tracking import mirror_records

    settings = tracking_settings(config)
    invocation = {
        "run_name": "snakemake " + time.strftime("%Y-%m-%d %H:%M:%S"),
        "mlflow.user": getpass.getuser(),
        "mlflow.source.name": "Snakefile",
        "configfiles": " ".join(map(str, workflow.configfiles)),
    }
    commit = git_commit()
    if commit:
        invocation["mlflow.source.git.commit"] = commit
    parent = mirror_records(
        RECORDS_DIR,
        settings["uri"],
        settings["experiment"],
        f"{RESULTS}/mlflow/artifacts",
        invocation,
    )
    if parent:
        print(
            f"MLflow: this run's jobs are nested under run {parent} of experiment "
            f"{settings['experiment']!r} at {settings['uri']}"
        )


onsuccess:
    mirror_to_mlflow()


def report_failures():
    from ppp.jobs import failures_since

    lines = failures_since(WORKFLOW_STARTED)
    for line in lines:
        print(f"ppp: error in {line}", file=sys.stderr)
    if lines:
        print(
            f"ppp: {len(lines)} job(s) failed; their logs are under {LOGS}/, finished outputs are kept "
            "and the next run continues from them",
            file=sys.stderr,
        )


onerror:
    report_failures()
    mirror_to_mlflow()
