# The MLflow mirror: jobs leave run records under results/mlflow/records/; while the workflow runs, a
# follower process (started at onstart, python -m ppp.tracking follow) logs the new ones every
# mlflow.mirror_interval_s seconds as runs nested under this invocation's parent run, so finished jobs
# show in MLflow while the rest run. Jobs never talk to MLflow, so parallel jobs never race on it. When
# the workflow ends (successfully or not) the follower does a last pass and ends the parent run.
# On failure, each failed job's error is printed as one line (the file or key, and what is wrong).
import getpass
import json
import os
import signal
import subprocess
import sys
import time
import uuid

WORKFLOW_STARTED = time.time()
# Names this invocation's parent run (tag ppp.invocation_id): the follower and a final pass share it.
INVOCATION_ID = uuid.uuid4().hex
MIRROR = {}


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


def invocation_tags():
    invocation = {
        "run_name": "snakemake " + time.strftime("%Y-%m-%d %H:%M:%S"),
        "mlflow.user": getpass.getuser(),
        "mlflow.source.name": "Snakefile",
        "configfiles": " ".join(map(str, workflow.configfiles)),
    }
    commit = git_commit()
    if commit:
        invocation["mlflow.source.git.commit"] = commit
    return invocation


def start_mirror_follower():
    """onstart (never on dry runs): the follower, in its own session so that Ctrl-C reaches only
    Snakemake (which then runs onerror); it ends by itself when this process is gone (kill -9).
    """
    if not config["mlflow"]["enabled"]:
        return
    from ppp.jobs import RECORDS_DIR, tracking_settings

    settings = tracking_settings(config)
    MIRROR["invocation"] = invocation_tags()
    command = [
        sys.executable,
        "-m",
        "ppp.tracking",
        "follow",
        "--records",
        RECORDS_DIR,
        "--uri",
        settings["uri"],
        "--experiment",
        settings["experiment"],
        "--artifact-root",
        f"{RESULTS}/mlflow/artifacts",
        "--invocation-id",
        INVOCATION_ID,
        "--invocation",
        json.dumps(MIRROR["invocation"]),
        "--started-ms",
        str(int(WORKFLOW_STARTED * 1000)),
        "--parent-pid",
        str(os.getpid()),
        "--interval",
        str(config["mlflow"]["mirror_interval_s"]),
    ]
    # ppp is importable here (the Snakefile imports it); make it so for the follower too.
    path = os.pathsep.join(
        filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])
    )
    try:
        MIRROR["follower"] = subprocess.Popen(
            command, start_new_session=True, env={**os.environ, "PYTHONPATH": path}
        )
    except OSError as err:
        print(
            f"ppp: the MLflow follower did not start ({err}); runs are logged when the workflow ends",
            file=sys.stderr,
        )


def finish_mirror(status):
    """onsuccess/onerror: the follower does its last pass and ends the parent run with `status`; without
    a live follower (it could not start, or crashed), that pass runs here."""
    if not config["mlflow"]["enabled"]:
        return
    follower = MIRROR.get("follower")
    if follower is not None and follower.poll() is None:
        follower.send_signal(signal.SIGUSR1 if status == "FINISHED" else signal.SIGUSR2)
        try:
            if follower.wait(timeout=900) in (0, 1):
                return  # 0: all logged; 1: records wait, and the follower's warning said where
        except subprocess.TimeoutExpired:
            follower.kill()  # its half-logged run, if any, is redone by the next pass
            print(
                "ppp: the MLflow mirror did not finish in 15 minutes; the run records wait in "
                "results/mlflow/records/ for the next run",
                file=sys.stderr,
            )
            return
    from ppp.jobs import RECORDS_DIR, tracking_settings
    from ppp.tracking import Mirror, configure_mirror_process

    configure_mirror_process()
    settings = tracking_settings(config)
    mirror = Mirror(
        RECORDS_DIR,
        settings["uri"],
        settings["experiment"],
        f"{RESULTS}/mlflow/artifacts",
        MIRROR.get("invocation") or invocation_tags(),
        INVOCATION_ID,
        int(WORKFLOW_STARTED * 1000),
    )
    parent = mirror.run(finish=status)
    if parent:
        print(
            f"ppp: this run's jobs are MLflow runs nested under run {parent} of experiment "
            f"{settings['experiment']!r} at {settings['uri']}",
            file=sys.stderr,
        )


onstart:
    start_mirror_follower()


onsuccess:
    finish_mirror("FINISHED")


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
    finish_mirror("FAILED")
