"""The MLflow mirror while the workflow runs: the follower, overlapping and killed passes, exactly one run
per record; end to end, a finished job's run is in MLflow while Snakemake still runs."""

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ppp.tracking import RECORD_TAG, JobRecord, Mirror, configure_mirror_process, mirror_records, sqlite_uri

REPO = Path(__file__).resolve().parent.parent

# Job runs nested under an invocation's parent run: name, status, record id, the parent's invocation id.
NESTED = """
SELECT r.name, r.status, rid.value, inv.value FROM runs r
JOIN tags parent ON parent.run_uuid = r.run_uuid AND parent.key = 'mlflow.parentRunId'
JOIN tags kind ON kind.run_uuid = parent.value AND kind.key = 'ppp.kind' AND kind.value = 'invocation'
JOIN tags inv ON inv.run_uuid = parent.value AND inv.key = 'ppp.invocation_id'
LEFT JOIN tags rid ON rid.run_uuid = r.run_uuid AND rid.key = 'ppp.record_id'
WHERE r.lifecycle_stage = 'active'
"""


def nested_runs(db: Path) -> list[tuple]:
    """Read-only (never creates the database: that would race the mirror's own set-up)."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as connection:
            return connection.execute(NESTED).fetchall()
    except sqlite3.Error:  # tables not created yet
        return []


def record_ids(records: Path) -> set[str]:
    return {json.loads(p.read_text())["record_id"] for p in records.glob("*.json")}


def assert_each_record_is_one_nested_run(client, records: Path, experiment: str) -> list:
    """Every record is exactly one (active, terminated) run, nested under an invocation's parent run."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=5000)
    parents = {r.info.run_id for r in runs if r.data.tags.get("ppp.kind") == "invocation"}
    jobs = [r for r in runs if r.info.run_id not in parents]
    by_record: dict[str, int] = {}
    for run in jobs:
        by_record[run.data.tags[RECORD_TAG]] = by_record.get(run.data.tags[RECORD_TAG], 0) + 1
    expected = record_ids(records)
    assert expected <= set(by_record), f"lost: {expected - set(by_record)}"
    assert {k: n for k, n in by_record.items() if n > 1} == {}, "duplicated"
    assert all(r.data.tags["mlflow.parentRunId"] in parents for r in jobs)
    assert all(r.info.status in ("FINISHED", "FAILED") for r in jobs)
    return jobs


def _write_records(records, worker, count, pause_s, keep_writing=None, max_count=2000):
    """`count` records; with `keep_writing` (an Event that is set while writing must go on), more until it is
    cleared, so that a test's event happens while records still arrive however slow the machine is."""
    index = 0
    while index < count or (keep_writing is not None and keep_writing.is_set() and index < max_count):
        with JobRecord(records, f"attack/w{worker}/r{index}", {"rule": "attack"}, {"worker": worker}) as run:
            run.log_metrics({f"m{k}": float(k) for k in range(150)})
        index += 1
        time.sleep(pause_s)


def start_follower(records: Path, uri: str, invocation_id: str, log_path: Path, parent_pid: int | None = None,
                   interval_s: float = 0.2, python_options: tuple[str, ...] = ()) -> subprocess.Popen:
    command = [sys.executable, *python_options, "-m", "ppp.tracking", "follow", "--records", str(records), "--uri", uri,
               "--experiment", "exp", "--invocation-id", invocation_id,
               "--invocation", json.dumps({"run_name": f"snakemake {invocation_id[:4]}"}),
               "--parent-pid", str(parent_pid or os.getpid()), "--interval", str(interval_s)]
    return subprocess.Popen(command, stderr=open(log_path, "w"))


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def followers_of(uri: str) -> list[int]:
    """Live follower processes logging to `uri`."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            command = (proc / "cmdline").read_bytes().split(b"\0")
            if b"follow" in command and uri.encode() in command and alive(int(proc.name)):
                found.append(int(proc.name))
    return found


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for that signal (SigCgt in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(mask >> (signum - 1) & 1)


def test_a_follower_told_to_finish_as_it_starts_still_logs_everything(tmp_path):
    """A workflow that ends before the follower has imported MLflow: the finish signal is not its death."""
    from mlflow.tracking import MlflowClient

    records, uri = tmp_path / "mlflow" / "records", sqlite_uri(tmp_path / "mlflow" / "m.db")
    _write_records(records, 0, 2, 0)
    # -X importtime logs each import as it finishes: the signal comes before MLflow's (about 2 s) has.
    follower = start_follower(records, uri, "c" * 32, tmp_path / "f.log", interval_s=30,
                              python_options=("-X", "importtime"))
    deadline = time.time() + 300
    while not catches(follower.pid, signal.SIGUSR1):
        assert follower.poll() is None and time.time() < deadline, (tmp_path / "f.log").read_text()[-2000:]
        time.sleep(0.005)
    # Read before signalling: the scenario (MLflow not yet imported when the signal is sent) is then checked
    # without a race against the follower's import going on after the signal.
    imported = {line.rsplit("|", 1)[1].strip() for line in (tmp_path / "f.log").read_text().splitlines()
                if line.startswith("import time:")}
    follower.send_signal(signal.SIGUSR1)
    assert "mlflow" not in imported
    assert follower.wait(timeout=120) == 0, (tmp_path / "f.log").read_text()
    client = MlflowClient(uri)
    assert len(assert_each_record_is_one_nested_run(client, records, "exp")) == 2
    parent = client.search_runs([client.get_experiment_by_name("exp").experiment_id], "tags.`ppp.kind` = 'invocation'")
    assert [p.info.status for p in parent] == ["FINISHED"]
    assert "nested under run" in (tmp_path / "f.log").read_text()


def test_two_followers_and_eight_writers_with_a_follower_killed_mirror_each_record_exactly_once(tmp_path):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    records, db = tmp_path / "mlflow" / "records", tmp_path / "mlflow" / "m.db"
    uri = sqlite_uri(db)
    _write_records(records, "seed", 1, 0)
    killed, survivor = "a" * 32, "b" * 32
    a = start_follower(records, uri, killed, tmp_path / "a.log")
    b = start_follower(records, uri, survivor, tmp_path / "b.log")
    # Generous deadlines: under load (make run beside the suite) MLflow's import alone can take a minute.
    deadline = time.time() + 600
    while not nested_runs(db) and time.time() < deadline:  # a follower is up (MLflow imported)
        time.sleep(0.05)
    assert nested_runs(db), "no follower mirrored the seed record within 600 s"
    context = multiprocessing.get_context("spawn")
    keep_writing = context.Event()
    keep_writing.set()  # writers go on past their 10 records until the kill below: no race with a slow follower
    writers = [context.Process(target=_write_records, args=(records, w, 10, 0.3, keep_writing)) for w in range(8)]
    for writer in writers:
        writer.start()
    # Kill -9 the first follower as soon as it has made a second run of a writer's record, while records
    # still arrive: it is then mid-pass, most often with that run just created (RUNNING).
    while time.time() < deadline and sum(inv == killed and not name.startswith("attack/wseed")
                                         for name, _, _, inv in nested_runs(db)) < 2:
        time.sleep(0.01)
    at_kill = [status for name, status, _, inv in nested_runs(db) if inv == killed]
    writing = all(w.is_alive() for w in writers)
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    keep_writing.clear()
    for writer in writers:
        writer.join(timeout=600)
    assert len(at_kill) >= 2, f"the first follower made {len(at_kill)} runs within 600 s"
    assert writing and all(w.exitcode == 0 for w in writers)
    b.send_signal(signal.SIGUSR2)  # the workflow failed (onerror): a last pass, then end the parent run
    assert b.wait(timeout=120) == 0, (tmp_path / "b.log").read_text()
    mirror_records(records, uri, "exp", None)  # a final pass finds nothing left
    client = MlflowClient(uri)
    jobs = assert_each_record_is_one_nested_run(client, records, "exp")
    assert len(jobs) == len(record_ids(records)) >= 81
    # Both followers mirrored (the killed one's first run was complete: only a RUNNING run is redone).
    assert {inv for _, _, _, inv in nested_runs(db)} == {killed, survivor}
    redone = client.search_runs([jobs[0].info.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    print(f"killed follower: runs {at_kill} when killed; {len(redone)} run(s) it left RUNNING redone")
    parents = {r.data.tags["ppp.invocation_id"]: r.info.status for r in client.search_runs(
        [client.get_experiment_by_name("exp").experiment_id], "tags.`ppp.kind` = 'invocation'")}
    assert parents == {killed: "RUNNING", survivor: "FAILED"}  # kill -9 ran no handler
    assert set(json.loads((records.parent / "mirrored.json").read_text())) == record_ids(records)


def _records_with_an_attachment(records: Path, artifact: Path) -> None:
    with JobRecord(records, "attack/mnist/ig", {"rule": "attack"}, {"attack": "ig"}) as run:
        run.log_metrics({"loss": 0.5}, step=3)
        run.log_artifact(artifact)
    with JobRecord(records, "evaluate/mnist", {"rule": "evaluate"}) as run:
        run.attach_metrics("attack/mnist/ig", {"ssim_median": 0.25})
        run.attach_metrics("attack/mnist/ig", {"ssim_median_checked": 0.3}, step=10)
        run.attach_artifact("attack/mnist/ig", artifact.with_name("picture.png"), "reconstruction")
        run.log_metrics({"cells": 1.0})


@pytest.mark.parametrize("interrupted", ["before_the_ledger", "before_the_run_ended"])
def test_a_pass_interrupted_after_creating_a_run_leaves_no_duplicate(tmp_path, monkeypatch, caplog, interrupted):
    """A pass that dies between creating a run and writing the ledger: the next pass finds the run by its
    record id; it keeps a completed run and deletes and redoes a run left RUNNING."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    import ppp.tracking

    records, uri = tmp_path / "records", sqlite_uri(tmp_path / "m.db")
    artifact = tmp_path / "table.csv"
    artifact.write_text("a\n1\n")
    artifact.with_name("picture.png").write_bytes(b"\x89PNG not really")
    _records_with_an_attachment(records, artifact)
    mirror = Mirror(records, uri, "exp", tmp_path / "artifacts", {"run_name": "snakemake 1"}, "f" * 32)
    if interrupted == "before_the_ledger":  # the evaluate run ended and attached its metrics; no ledger
        write = ppp.tracking._write_json
        ledger_writes = []

        def failing_write(path, data):
            if path.name == "mirrored.json":
                ledger_writes.append(path)
                if len(ledger_writes) == 2:
                    raise OSError("killed")
            write(path, data)

        monkeypatch.setattr(ppp.tracking, "_write_json", failing_write)
    else:  # the attack run is created and has its metrics, not its artifact nor its end
        monkeypatch.setattr(MlflowClient, "log_artifact", lambda *a, **k: (_ for _ in ()).throw(OSError("killed")))
    with caplog.at_level(logging.WARNING):
        assert mirror.run() is None
    assert "MLflow mirror to " in caplog.text and " failed" in caplog.text and str(records) in caplog.text
    monkeypatch.undo()
    parent = mirror.run(finish="FINISHED")  # the next pass, same invocation
    client = MlflowClient(uri)
    jobs = assert_each_record_is_one_nested_run(client, records, "exp")
    assert len(jobs) == 2 and all(r.data.tags["mlflow.parentRunId"] == parent for r in jobs)
    attack = next(r for r in jobs if r.info.run_name == "attack/mnist/ig")
    assert attack.data.metrics == {"loss": 0.5, "ssim_median": 0.25, "ssim_median_checked": 0.3}
    assert len(client.get_metric_history(attack.info.run_id, "ssim_median")) == 1
    assert [m.step for m in client.get_metric_history(attack.info.run_id, "ssim_median_checked")] == [10]
    # The evaluate job's picture of the attack, once, on the attack's run.
    assert [a.path for a in client.list_artifacts(attack.info.run_id)] == ["reconstruction", "table.csv"]
    assert [a.path for a in client.list_artifacts(attack.info.run_id, "reconstruction")] == [
        "reconstruction/picture.png"]
    experiment_id = attack.info.experiment_id
    deleted = client.search_runs([experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert len(deleted) == (1 if interrupted == "before_the_run_ended" else 0)
    assert len(client.search_runs([experiment_id], "tags.`ppp.kind` = 'invocation'")) == 1
    assert client.get_run(parent).info.status == "FINISHED"


def test_tracking_down_is_one_warning_and_the_next_pass_logs_every_record_once(tmp_path, caplog, monkeypatch):
    """A backend that fails (here a database path that cannot be created, then can): one warning naming
    where the records wait, then every record mirrored once by the same follower's next pass."""
    from mlflow.tracking import MlflowClient

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, "")  # restored afterwards, whatever the test sets
        monkeypatch.delenv(name)
    configure_mirror_process()  # as the follower does
    records = tmp_path / "mlflow" / "records"
    _write_records(records, 0, 3, 0)
    blocker = tmp_path / "store"
    blocker.write_text("")
    uri = sqlite_uri(blocker / "m.db")
    mirror = Mirror(records, uri, "exp", None, {"run_name": "snakemake"}, "e" * 32)
    with caplog.at_level(logging.WARNING):
        assert mirror.run() is None and mirror.run() is None and mirror.run(finish="FINISHED") is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"wait in {records}/" in warnings[0].getMessage()
    blocker.unlink()
    blocker.mkdir()
    _write_records(records, 1, 2, 0)
    parent = mirror.run(finish="FINISHED")
    assert parent and mirror.ok
    jobs = assert_each_record_is_one_nested_run(MlflowClient(uri), records, "exp")
    assert len(jobs) == 5
    # An MLflow server that is down fails a pass within seconds, not after MLflow's retries of minutes,
    # with one warning (not one per retry).
    _write_records(records, 2, 1, 0)
    caplog.clear()
    started = time.time()
    with caplog.at_level(logging.WARNING):
        assert Mirror(records, "http://127.0.0.1:9", "exp").run() is None
    assert time.time() - started < 30
    assert [r.name for r in caplog.records] == ["ppp.tracking"]


def test_the_follower_ends_when_the_process_that_started_it_is_killed(tmp_path):
    """Snakemake killed with kill -9 runs no handler: the follower sees it is gone, logs what is pending
    and ends the invocation's parent run as KILLED."""
    from mlflow.tracking import MlflowClient

    records, db = tmp_path / "mlflow" / "records", tmp_path / "mlflow" / "m.db"
    uri = sqlite_uri(db)
    _write_records(records, 0, 2, 0)
    # A stand-in for Snakemake: starts the follower, then waits to be killed.
    starter = subprocess.Popen([sys.executable, "-c", f"""
import os, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_tracking_live import start_follower
from pathlib import Path
follower = start_follower(Path({str(records)!r}), {uri!r}, "d" * 32, Path({str(tmp_path / 'f.log')!r}),
                          interval_s=30)
print(follower.pid, flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    follower_pid = int(starter.stdout.readline())
    deadline = time.time() + 600
    while len(nested_runs(db)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(nested_runs(db)) >= 2, (tmp_path / "f.log").read_text()[-2000:]
    _write_records(records, 1, 1, 0)  # finished after the last pass: the one at the end logs it
    os.kill(starter.pid, signal.SIGKILL)
    starter.wait()
    killed_at = time.time()
    # It checks its parent every 0.2 s; the bound is wide so that a loaded machine does not fail the test.
    while alive(follower_pid) and time.time() < killed_at + 120:
        time.sleep(0.1)
    assert not alive(follower_pid), "the follower outlived Snakemake by 120 s"
    client = MlflowClient(uri)
    assert len(assert_each_record_is_one_nested_run(client, records, "exp")) == 3
    parent = client.search_runs([client.get_experiment_by_name("exp").experiment_id], "tags.`ppp.kind` = 'invocation'")
    assert [p.info.status for p in parent] == ["KILLED"]




@pytest.mark.e2e
def test_jobs_runs_appear_in_mlflow_while_the_workflow_runs_and_survive_kill_9_and_resume(tmp_path):
    """Snakemake on the tiny config up to training (8 jobs), mirrored every second: a finished job's run is
    nested under the invocation's parent run while Snakemake still runs; Snakemake is then killed with
    kill -9 and resumed (tools/run_workflow.sh, as `make run`); in the end every record is one run."""
    from mlflow.tracking import MlflowClient

    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    shutil.copy(REPO / "data" / "victims" / "mnist_128_cvb.npz", tmp_path / "victims.npz")
    config["datasets"]["mnist"]["victims"] = str(tmp_path / "victims.npz")
    config["mlflow"] = {**config.get("mlflow", {}), "mirror_interval_s": 1}
    config["training"]["grouping"] = "cell"  # several training jobs: some finish while others run
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    wrapper = [str(REPO / "tools" / "run_workflow.sh"), str(Path(sys.executable).parent / "snakemake"),
               "-s", str(REPO / "Snakefile"), "--cores", "2", "--configfile", str(tmp_path / "config.yaml"),
               "--until", "train"]
    mlflow_dir = tmp_path / "results" / "mlflow"
    db, records = mlflow_dir / "mlflow.db", mlflow_dir / "records"
    uri = sqlite_uri(db)
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(wrapper, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    seen: list[tuple] = []
    while first.poll() is None and time.time() < deadline and not seen:
        seen = nested_runs(db)
        time.sleep(0.2)
    found_at, running = time.time(), first.poll() is None
    assert seen and running, (tmp_path / "first.log").read_text()[-3000:]
    name, _, record_id, first_invocation = seen[0]
    record = next(r for r in (json.loads(p.read_text()) for p in records.glob("*.json")) if r["record_id"] == record_id)
    latency = found_at - record["end_ms"] / 1000
    print(f"{name}: its run was in MLflow {latency:.1f} s after the job ended, Snakemake still running")
    assert latency < 60
    # kill -9 mid-way: the follower ends by itself, ending its parent run as KILLED.
    os.kill(first.pid, signal.SIGKILL)  # the wrapper exec'd Snakemake
    first.wait()
    killed_at = time.time()
    while followers_of(uri) and time.time() < killed_at + 120:
        time.sleep(0.2)
    assert not followers_of(uri), "the follower outlived a killed Snakemake"
    resumed = subprocess.run(wrapper, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not followers_of(uri), "the follower outlived the workflow"
    client = MlflowClient(uri)
    jobs = assert_each_record_is_one_nested_run(client, records, "ppp")
    assert {r.data.tags["rule"] for r in jobs} == {"prepare_data", "init_model", "train"}
    parents = {r.data.tags["ppp.invocation_id"]: r.info.status for r in client.search_runs(
        [client.get_experiment_by_name("ppp").experiment_id], "tags.`ppp.kind` = 'invocation'")}
    assert len(parents) == 2 and parents.pop(first_invocation) == "KILLED" and list(parents.values()) == ["FINISHED"]


def _free_port() -> int:
    import socket

    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_mlflow_server(store: Path, port: int, log_path: Path) -> subprocess.Popen:
    """A real `mlflow server` on loopback, in its own process group (it forks workers), ready to answer."""
    import urllib.request

    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", sqlite_uri(store / "mlflow.db"),
         "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=open(log_path, "a"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        assert server.poll() is None, log_path.read_text()[-2000:]
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        time.sleep(0.5)
    raise AssertionError(f"mlflow server did not answer in 300 s: {log_path.read_text()[-2000:]}")


def _stop_hard(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


def _job_runs(client, experiment: str) -> int:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0
    return len([r for r in client.search_runs([found.experiment_id], max_results=5000)
                if r.data.tags.get("ppp.kind") != "invocation"])


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_a_real_mlflow_server_down_at_start_then_killed_mid_run_gets_every_record_exactly_once(tmp_path):
    """Issue 18, with a real `mlflow server` process: down when the workflow starts, then up, then killed
    (kill -9 on its process group) while jobs go on writing their records, then started again on the same
    port and store. Jobs only write local records, so they never wait on the server; the follower warns
    once, naming where the records wait, and every record becomes exactly one run."""
    from mlflow.tracking import MlflowClient

    store, records, port = tmp_path / "server", tmp_path / "mlflow" / "records", _free_port()
    store.mkdir()
    uri, log_path = f"http://127.0.0.1:{port}", tmp_path / "follower.log"
    follower = start_follower(records, uri, "f" * 32, log_path, interval_s=0.5)
    server = None
    try:
        _write_records(records, 0, 2, 0)
        _wait_for(lambda: "MLflow mirror to" in log_path.read_text(), 300, "the warning")
        warning = next(line for line in log_path.read_text().splitlines() if "MLflow mirror to" in line)
        assert f"MLflow mirror to {uri} failed" in warning and f"wait in {records}/" in warning, warning
        server = _start_mlflow_server(store, port, tmp_path / "server.log")
        client = MlflowClient(uri)
        _wait_for(lambda: _job_runs(client, "exp") == 2, 300, "the 2 waiting runs once the server is up")
        _write_records(records, 1, 2, 0)
        _wait_for(lambda: _job_runs(client, "exp") == 4, 300, "the next 2 runs")
        _stop_hard(server)
        _write_records(records, 2, 3, 0)  # jobs finish while the server is gone
        time.sleep(3)  # several of the follower's passes fail meanwhile
        assert follower.poll() is None, "the follower must outlive the server"
        server = _start_mlflow_server(store, port, tmp_path / "server.log")
        _wait_for(lambda: _job_runs(client, "exp") == 7, 300, "the 3 waiting runs after the restart")
        follower.send_signal(signal.SIGUSR1)
        assert follower.wait(timeout=300) == 0
        log_text = log_path.read_text()
        assert log_text.count("MLflow mirror to") == 1, log_text
        jobs = assert_each_record_is_one_nested_run(client, records, "exp")
        assert len(jobs) == 7
    finally:
        if follower.poll() is None:
            follower.kill()
        if server is not None:
            _stop_hard(server)
