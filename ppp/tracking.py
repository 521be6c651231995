"""The MLflow mirror: every workflow job leaves a run record; one process mirrors them to MLflow.

Files under results/ are the truth; MLflow only mirrors them. A job never imports MLflow: it writes a
JSON record of its params, tags, metrics and artifacts (`JobRecord`, atomic, under
results/mlflow/records/), which costs nothing at start-up and cannot race other jobs on the backend.
Snakemake's `onsuccess`/`onerror` handlers then call `mirror_records` once per invocation, which logs the
records not yet mirrored as runs nested under one parent run for that invocation. Any logging failure
becomes a warning: a job never fails, and never loses its files, because tracking failed.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

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

    def attach_metrics(self, run_name: str, metrics: Mapping[str, float]) -> None:
        """Metrics that belong to another job's run (found by its run name when mirrored)."""
        self.attachments.append(dict(run_name=run_name, metrics={k: float(v) for k, v in metrics.items()},
                                     timestamp=int(time.time() * 1000)))

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path is None:
            return
        from ppp.io import write_json

        record = dict(record_id=uuid.uuid4().hex, run_name=self.run_name, tags=self.tags, params=self.params,
                      metrics=self.metrics, artifacts=self.artifacts, inputs=self.inputs,
                      attachments=self.attachments, start_ms=self.start_ms,
                      end_ms=int(time.time() * 1000), status="FAILED" if exc_type else "FINISHED")
        try:
            write_json(self.path, record)
        except Exception as err:  # noqa: BLE001 - the mirror must never fail a job
            log.warning("run record %s could not be written (results are unaffected): %s", self.path, err)


def _read_records(records_dir: Path) -> list[dict]:
    records = []
    for path in sorted(records_dir.glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            log.warning("skipping unreadable run record %s: %s", path, err)
    return records


def _latest_run_id(client, experiment_id: str, run_name: str) -> str | None:
    """The newest run of that name (a job mirrored by an earlier invocation)."""
    quoted = run_name.replace("'", "\\'")
    found = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{quoted}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None


def mirror_records(records_dir: str | os.PathLike, tracking_uri: str, experiment: str,
                   artifact_root: str | os.PathLike | None, invocation: Mapping[str, Any] | None = None,
                   ) -> str | None:
    """Log every record not mirrored before as a run nested under one new parent run (the workflow
    invocation); returns the parent run's id, or None when there was nothing new or MLflow failed.

    Which records are mirrored is kept in `mirrored.json` beside the records directory, so a re-run
    mirrors only the jobs it ran. Failures are warnings: the records stay and the next call retries."""
    records_dir = Path(records_dir)
    ledger_path = records_dir.parent / "mirrored.json"
    try:
        mirrored = set(json.loads(ledger_path.read_text())) if ledger_path.exists() else set()
    except (OSError, json.JSONDecodeError):
        mirrored = set()
    pending = [r for r in _read_records(records_dir) if r.get("record_id") not in mirrored] \
        if records_dir.is_dir() else []
    if not pending:
        return None
    from ppp.io import write_json

    try:
        from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
        from mlflow.tracking import MlflowClient

        experiment_id = init_backend(tracking_uri, experiment, artifact_root)
        client = MlflowClient(tracking_uri)
        info = {k: str(v) for k, v in (invocation or {}).items()}
        parent = client.create_run(experiment_id, run_name=info.pop("run_name", "snakemake"),
                                   start_time=min(r["start_ms"] for r in pending),
                                   tags={"ppp.kind": "invocation", **info})
        parent_id = parent.info.run_id
        # Every job run carries who ran it and from which commit, as the parent does.
        shared = {k: v for k, v in info.items() if k.startswith("mlflow.")}
        run_ids: dict[str, str] = {}
        failed = False
        for record in sorted(pending, key=lambda r: r["start_ms"]):
            tags = {**shared, **record["tags"], "mlflow.parentRunId": parent_id}
            run = client.create_run(experiment_id, run_name=record["run_name"], start_time=record["start_ms"],
                                    tags=tags)
            run_id = run.info.run_id
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
            run_ids[record["run_name"]] = run_id
            failed = failed or record["status"] != "FINISHED"
            mirrored.add(record["record_id"])
            write_json(ledger_path, sorted(mirrored))
        for record in pending:
            for attached in record.get("attachments", []):
                target = run_ids.get(attached["run_name"]) or _latest_run_id(client, experiment_id,
                                                                             attached["run_name"])
                if target is None:
                    log.warning("MLflow: no run named %s to attach metrics to", attached["run_name"])
                    continue
                client.log_batch(target, metrics=[Metric(k, v, attached["timestamp"], 0)
                                                  for k, v in attached["metrics"].items()])
        client.set_terminated(parent_id, status="FAILED" if failed else "FINISHED",
                              end_time=max(r["end_ms"] for r in pending))
        return parent_id
    except Exception as err:  # noqa: BLE001 - the mirror must never fail the workflow
        log.warning("MLflow mirror failed (results on disk are unaffected; the next run retries): %s: %s",
                    type(err).__name__, err)
        return None
