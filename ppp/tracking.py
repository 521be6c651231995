"""The MLflow mirror: every workflow job leaves a run record; one process at a time mirrors them to MLflow.

Files under results/ are the truth; MLflow only mirrors them. A job never imports MLflow: it writes a
JSON record of its params, tags, metrics and artifacts (`JobRecord`, atomic, under
results/mlflow/records/), which costs nothing at start-up and cannot race other jobs on the backend.
While the workflow runs, a follower process (`python -m ppp.tracking follow`, started by Snakemake's
`onstart`) mirrors the new records every few seconds as runs nested under the invocation's parent run;
`onsuccess`/`onerror` have it do a last pass and end the parent. Each pass holds a file lock and finds
runs by their record id, so every record becomes exactly one run even when passes overlap or are killed.
Any logging failure becomes a warning: a job never fails, and never loses its files, because tracking failed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "ppp"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def sqlite_uri(path: str | os.PathLike) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def resolve_tracking_uri(configured: str | None, default_db: str | os.PathLike) -> str:
    """MLFLOW_TRACKING_URI wins, then the config's tracking_uri, then the local SQLite database."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or sqlite_uri(default_db)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def init_backend(tracking_uri: str, experiment: str, artifact_root: str | os.PathLike | None) -> str:
    """Create the backend (database schema) and the experiment if they do not exist; the experiment id.
    Failures raise (mirror_records turns them into a warning)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
        tags = found.tags
    else:
        # A tracking server stores (or proxies) artifacts itself; a local backend gets a folder under results/.
        served = tracking_uri.startswith(("http://", "https://"))
        location = Path(artifact_root).resolve().as_uri() if artifact_root and not served else None
        experiment_id, tags = client.create_experiment(experiment, artifact_location=location), {}
    if EXPERIMENT_KIND_TAG not in tags:
        # MLflow 3's UI opens an experiment without a kind on its GenAI pages (traces); this one is
        # model training, so it opens on the runs table.
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
    return experiment_id


def _write_json(path: Path, data: Any) -> None:
    """Atomic (a temporary file renamed over `path`); here, not ppp.io, because that imports torch and the
    follower stays light."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _record_file_name(run_name: str) -> str:
    return run_name.replace("/", "__").replace(os.sep, "__") + ".json"


class JobRecord:
    """Context manager: the run record of one job, written (atomically) when the job ends, with status
    FINISHED or FAILED. Methods only collect; nothing here can fail a job."""

    def __init__(self, records_dir: str | os.PathLike | None, run_name: str,
                 tags: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None):
        self.path = Path(records_dir) / _record_file_name(run_name) if records_dir else None
        self.run_name = run_name
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.params = flatten(params or {})
        self.metrics: list[tuple[str, float, int, int]] = []  # key, value, timestamp ms, step
        self.artifacts: list[tuple[str, str | None]] = []
        self.inputs: list[dict] = []  # datasets the job read (MLflow run inputs)
        self.attachments: list[dict] = []  # metrics for another job's run (the evaluate job's per-cell quality)
        self.parent: dict = dict(artifacts=[], tables=[], metrics={})  # for the invocation's parent run
        self.start_ms = int(time.time() * 1000)

    def __enter__(self) -> "JobRecord":
        return self

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self.metrics.extend((k, float(v), now, int(step or 0)) for k, v in metrics.items())

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.artifacts.append((str(Path(path).resolve()), artifact_path))

    def log_input(self, name: str, digest: str, source: str, context: str, profile: Mapping | None = None) -> None:
        """A dataset the job read, with its checksum: an MLflow dataset input of the run."""
        self.inputs.append(dict(name=name, digest=digest, source=source, context=context,
                                profile=json.dumps(dict(profile or {}), sort_keys=True)))

    def attach_metrics(self, run_name: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Metrics that belong to another job's run (found by its run name when mirrored), at `step`."""
        self.attachments.append(dict(run_name=run_name, metrics={k: float(v) for k, v in metrics.items()},
                                     timestamp=int(time.time() * 1000), step=int(step)))

    def attach_artifact(self, run_name: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file that belongs to another job's run (the evaluate job's picture of an attack's
        reconstructions, found by the attack run's name when mirrored)."""
        self.attachments.append(dict(run_name=run_name, metrics={}, timestamp=int(time.time() * 1000),
                                     artifacts=[(str(Path(path).resolve()), artifact_path)]))

    def log_parent_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file for the invocation's parent run (the study's answer: its verdict table)."""
        self.parent["artifacts"].append((str(Path(path).resolve()), artifact_path))

    def log_parent_table(self, csv_path: str | os.PathLike, artifact_file: str,
                         first_columns: list[str] | None = None) -> None:
        """A CSV shown as a table on the parent run (MLflow's log_table, a JSON artifact its UI renders),
        with `first_columns` moved to the left (what a reader looks for before scrolling)."""
        self.parent["tables"].append((str(Path(csv_path).resolve()), artifact_file, list(first_columns or [])))

    def log_parent_metrics(self, metrics: Mapping[str, float]) -> None:
        self.parent["metrics"].update({k: float(v) for k, v in metrics.items()})

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path is None:
            return
        record = dict(record_id=uuid.uuid4().hex, run_name=self.run_name, tags=self.tags, params=self.params,
                      metrics=self.metrics, artifacts=self.artifacts, inputs=self.inputs,
                      attachments=self.attachments, parent=self.parent, start_ms=self.start_ms,
                      end_ms=int(time.time() * 1000), status="FAILED" if exc_type else "FINISHED")
        try:
            _write_json(self.path, record)
        except Exception as err:  # noqa: BLE001 - the mirror must never fail a job
            log.warning("run record %s could not be written (results are unaffected): %s", self.path, err)


RECORD_TAG = "ppp.record_id"
INVOCATION_TAG = "ppp.invocation_id"


def _read_records(records_dir: Path) -> list[dict]:
    records = []
    for path in sorted(records_dir.glob("*.json")):
        try:
            record = json.loads(path.read_bytes().decode("utf-8"))
            if not isinstance(record, dict) or "start_ms" not in record:
                raise ValueError("not a run record")
            records.append(record)
        except (OSError, ValueError) as err:  # truncated, empty, not UTF-8 or not a record
            log.warning("skipping unreadable run record %s (truncated or not a run record: %s)", path, err)
    return records


def _tag_filter(key: str, value: str) -> str:
    """A search filter on a tag whose value is an id (hex: nothing to quote)."""
    return f"tags.`{key}` = '{value}'"


def _latest_run_id(client, experiment_id: str, run_name: str) -> str | None:
    """The newest run of that name (a job mirrored by an earlier pass or invocation)."""
    quoted = run_name.replace("'", "\\'")
    found = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{quoted}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One mirror pass at a time per records directory (the follower, the follower of a killed invocation
    still finishing, a final pass); the kernel drops the lock when its holder dies, even by kill -9."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class Mirror:
    """Mirrors the pending run records of one workflow invocation as runs nested under its parent run.

    `run` is one pass; call it as often as wanted. The parent run is created at the first pass with
    records and found again by its `ppp.invocation_id` tag, so the follower and a final pass in another
    process share it. Which records are mirrored is kept in `mirrored.json` beside the records directory;
    each run also carries its record's id (tag `ppp.record_id`), so a pass killed between creating a run
    and writing the ledger never makes a second run of that record."""

    def __init__(self, records_dir: str | os.PathLike, tracking_uri: str, experiment: str,
                 artifact_root: str | os.PathLike | None = None, invocation: Mapping[str, Any] | None = None,
                 invocation_id: str | None = None, started_ms: int | None = None):
        self.records_dir = Path(records_dir)
        self.ledger_path = self.records_dir.parent / "mirrored.json"
        self.lock_path = self.records_dir.parent / "mirrored.json.lock"
        self.tracking_uri, self.experiment, self.artifact_root = tracking_uri, experiment, artifact_root
        info = {k: str(v) for k, v in (invocation or {}).items()}
        self.run_name = info.pop("run_name", "snakemake")
        self.info = info
        # Every job run carries who ran it and from which commit, as the parent does.
        self.shared = {k: v for k, v in info.items() if k.startswith("mlflow.")}
        # A given id may name a parent that another process created; a fresh one cannot.
        self.shared_parent = invocation_id is not None
        self.invocation_id = invocation_id or uuid.uuid4().hex
        self.started_ms = started_ms
        self.client: Any = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.run_ids: dict[str, str] = {}  # run name -> run id, for attached metrics
        self.ok = True  # whether the last pass succeeded
        self.warned = False

    def _ledger(self) -> set[str]:
        # A lost or corrupt ledger costs only lookups: runs are found by their record id.
        try:
            return set(json.loads(self.ledger_path.read_text())) if self.ledger_path.exists() else set()
        except (OSError, json.JSONDecodeError):
            return set()

    def pending(self) -> list[dict]:
        """The records not mirrored yet, oldest first."""
        if not self.records_dir.is_dir():
            return []
        mirrored = self._ledger()
        return sorted((r for r in _read_records(self.records_dir) if r.get("record_id") not in mirrored),
                      key=lambda r: r["start_ms"])

    def run(self, finish: str | None = None) -> str | None:
        """One pass: mirror the pending records, then, with `finish` (FINISHED, FAILED or KILLED), end the
        parent run (FAILED if a job failed). The parent run's id, or None when there is none or MLflow
        failed: a warning (once per Mirror), and the next pass retries."""
        return self._guarded(lambda: self._pass(finish))

    def connect(self) -> None:
        """Set up the backend now (the follower, at start: the first job's run then shows sooner)."""
        self._guarded(self._connect)

    def _guarded(self, work: Callable[[], Any]) -> Any:
        try:
            with _exclusive(self.lock_path):
                result = work()
        except Exception as err:  # noqa: BLE001 - the mirror must never fail the workflow
            self.ok, self.client, self.parent_id = False, None, None  # reconnect next pass (a restarted server)
            if not self.warned:
                self.warned = True
                log.warning("MLflow mirror to %s failed (results are unaffected; the run records wait in %s/ and "
                            "the next mirror pass logs them): %s: %s", self.tracking_uri, self.records_dir,
                            type(err).__name__, " ".join(str(err).split())[:500])
            return None
        if not self.ok:
            log.info("MLflow mirror works again; the records that waited are logged")
        self.ok = True
        return result

    def _pass(self, finish: str | None) -> str | None:
        pending = self.pending()
        if not pending and not (finish and (self.parent_id or self.shared_parent)):
            return self.parent_id
        client, experiment_id = self._connect()
        parent = self._parent(create=bool(pending), start_ms=pending[0]["start_ms"] if pending else None)
        for record in pending:
            self.run_ids[record["run_name"]] = self._mirror(record, parent)
        # Then the metrics some records attach to other runs (all of the pass's runs exist by now); a
        # record is in the ledger once its attachments are logged.
        mirrored = self._ledger()
        for record in pending:
            self._attach(record)
            self._to_parent(record, parent)
            mirrored.add(record["record_id"])
            _write_json(self.ledger_path, sorted(mirrored))
        if finish and parent:
            failed = client.search_runs([experiment_id], f"{_tag_filter('mlflow.parentRunId', parent)} and "
                                        "attributes.status = 'FAILED'", max_results=1)
            client.set_terminated(parent, status="FAILED" if failed and finish == "FINISHED" else finish,
                                  end_time=int(time.time() * 1000))
        return parent

    def _connect(self) -> tuple[Any, str]:
        if self.client is None:
            from mlflow.tracking import MlflowClient

            self.experiment_id = init_backend(self.tracking_uri, self.experiment, self.artifact_root)
            self.client = MlflowClient(self.tracking_uri)
        return self.client, self.experiment_id

    def _parent(self, create: bool, start_ms: int | None) -> str | None:
        if self.parent_id is None:
            found = self.client.search_runs([self.experiment_id], _tag_filter(INVOCATION_TAG, self.invocation_id),
                                            max_results=1)
            if found:
                self.parent_id = found[0].info.run_id
            elif create:
                self.parent_id = self.client.create_run(
                    self.experiment_id, run_name=self.run_name, start_time=self.started_ms or start_ms,
                    tags={"ppp.kind": "invocation", INVOCATION_TAG: self.invocation_id, **self.info}).info.run_id
        return self.parent_id

    def _mirror(self, record: dict, parent: str) -> str:
        """One record as one run; its id. A run an interrupted pass left behind is kept when it was
        completed (terminated) and deleted and redone when it was not (still RUNNING: its metrics may be
        partial)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

        client = self.client
        found = client.search_runs([self.experiment_id], _tag_filter(RECORD_TAG, record["record_id"]),
                                   max_results=10)
        complete = [r.info.run_id for r in found if r.info.status != "RUNNING"][:1]
        for run in found:
            if run.info.run_id not in complete:
                client.delete_run(run.info.run_id)
        if complete:
            run_id = complete[0]
        else:
            tags = {**self.shared, **record["tags"], "mlflow.parentRunId": parent, RECORD_TAG: record["record_id"]}
            run_id = client.create_run(self.experiment_id, run_name=record["run_name"],
                                       start_time=record["start_ms"], tags=tags).info.run_id
            params = [Param(k, v) for k, v in record["params"].items()]
            metrics = [Metric(k, v, ts, step) for k, v, ts, step in record["metrics"]]
            for start in range(0, max(len(params), len(metrics)), 100):
                client.log_batch(run_id, params=params[start:start + 100], metrics=metrics[start:start + 100])
            if record.get("inputs"):
                client.log_inputs(run_id, datasets=[
                    DatasetInput(Dataset(name=i["name"], digest=i["digest"][:36], source_type="local",
                                         source=json.dumps({"uri": i["source"]}), profile=i["profile"]),
                                 tags=[InputTag("mlflow.data.context", i["context"])])
                    for i in record["inputs"]])
            for path, artifact_path in record["artifacts"]:
                if Path(path).exists():
                    client.log_artifact(run_id, path, artifact_path)
            client.set_terminated(run_id, status=record["status"], end_time=record["end_ms"])
        return run_id

    def _to_parent(self, record: dict, parent: str) -> None:
        """What a record leaves for the parent run. Logged again after an interrupted pass: an artifact
        or table overwrites itself, and MLflow keeps one copy of an identical metric."""
        import pandas as pd
        from mlflow.entities import Metric

        own = record.get("parent") or {}
        for path, artifact_path in own.get("artifacts", []):
            if Path(path).exists():
                self.client.log_artifact(parent, path, artifact_path)
        for path, artifact_file, *first in own.get("tables", []):
            if Path(path).exists():
                data = pd.read_csv(path)
                front = [c for c in (first[0] if first else []) if c in data.columns]
                data = data[front + [c for c in data.columns if c not in front]]
                self.client.log_table(parent, data=data, artifact_file=artifact_file)
        if own.get("metrics"):
            self.client.log_batch(parent, metrics=[Metric(k, v, record["end_ms"], 0)
                                                   for k, v in own["metrics"].items()])

    def _attach(self, record: dict) -> None:
        """Metrics and files for another job's run, found by its name. Logged again after an interrupted
        pass: MLflow keeps one copy of an identical metric, and a file overwrites itself."""
        from mlflow.entities import Metric

        for attached in record.get("attachments", []):
            target = self.run_ids.get(attached["run_name"]) or _latest_run_id(self.client, self.experiment_id,
                                                                               attached["run_name"])
            if target is None:
                log.warning("MLflow: no run named %s to attach metrics to", attached["run_name"])
                continue
            if attached["metrics"]:
                step = attached.get("step", 0)
                self.client.log_batch(target, metrics=[Metric(k, v, attached["timestamp"], step)
                                                       for k, v in attached["metrics"].items()])
            for path, artifact_path in attached.get("artifacts", []):
                if Path(path).exists():
                    self.client.log_artifact(target, path, artifact_path)


def mirror_records(records_dir: str | os.PathLike, tracking_uri: str, experiment: str,
                   artifact_root: str | os.PathLike | None, invocation: Mapping[str, Any] | None = None,
                   ) -> str | None:
    """Log every record not mirrored before as a run nested under one new, finished parent run; returns
    the parent run's id, or None when there was nothing new or MLflow failed (a warning)."""
    return Mirror(records_dir, tracking_uri, experiment, artifact_root, invocation).run(finish="FINISHED")


def configure_mirror_process() -> None:
    """For a process that runs mirror passes (the follower; the final pass when there is none): a server
    that is down fails a pass in seconds, not after MLflow's retries of about 4 minutes per request (the
    next pass retries anyway), and says so in one warning, not one per retry; no set-up chatter, and no
    "View run at" line (and request) per run logged to a server."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow.tracking  # noqa: F401 - it sets its loggers' levels on import: first, then ours

    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


# How the workflow tells the follower to end: a last pass, then the parent run gets this status.
FINISH_SIGNALS = {signal.SIGUSR1: "FINISHED", signal.SIGUSR2: "FAILED", signal.SIGTERM: "KILLED"}


def finish_on_signals() -> list[str]:
    """The list a finish signal appends its status to; installed before anything slow, since a signal's
    default action would end the process without its last pass."""
    finish: list[str] = []
    for signum in FINISH_SIGNALS:
        signal.signal(signum, lambda received, _frame: finish.append(FINISH_SIGNALS[received]))
    return finish


def follow(mirror: Mirror, parent_pid: int, interval_s: float, finish: list[str]) -> int:
    """Mirror every `interval_s` seconds until a finish signal (`finish_on_signals`) or until the process
    that started us (Snakemake) is gone; then a last pass ends the parent run (KILLED when Snakemake
    died). Exit status 0 when that pass logged everything, 1 when records wait (the warning said where)."""
    mirror.connect()
    due = 0.0
    while not finish:
        if os.getppid() != parent_pid:  # re-parented: Snakemake was killed (kill -9 runs no handler)
            finish.append("KILLED")
            break
        if time.monotonic() >= due:
            mirror.run()
            due = time.monotonic() + interval_s
        time.sleep(min(0.2, interval_s))
    parent = mirror.run(finish=finish[0])
    if parent and mirror.ok:
        log.info("this run's jobs are MLflow runs nested under run %s of experiment %r at %s", parent,
                 mirror.experiment, mirror.tracking_uri)
    return 0 if mirror.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppp.tracking", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("follow", help="mirror new run records while the workflow runs (started by "
                                  "the workflow's onstart handler)")
    command.add_argument("--records", required=True, help="the run records' directory")
    command.add_argument("--uri", required=True, help="the MLflow tracking URI")
    command.add_argument("--experiment", required=True)
    command.add_argument("--artifact-root", help="where a local backend keeps artifacts")
    command.add_argument("--invocation-id", required=True, help="identifies the parent run (tag ppp.invocation_id)")
    command.add_argument("--invocation", default="{}", help="the parent run's name and tags, as JSON")
    command.add_argument("--started-ms", type=int, help="the parent run's start time")
    command.add_argument("--parent-pid", type=int, required=True, help="the Snakemake process; we end with it")
    command.add_argument("--interval", type=float, default=15.0, help="seconds between passes")
    args = parser.parse_args(argv)
    finish = finish_on_signals()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ppp: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    mirror = Mirror(args.records, args.uri, args.experiment, args.artifact_root, json.loads(args.invocation),
                    args.invocation_id, args.started_ms)
    configure_mirror_process()  # imports MLflow (about 2 s) now, not when the first job has finished
    return follow(mirror, args.parent_pid, args.interval, finish)


if __name__ == "__main__":
    sys.exit(main())
