"""The MLflow mirror: one run per workflow job, tagged with its rule and wildcards.

Files under results/ are the truth; this only mirrors them. Any logging failure becomes a warning:
a job never fails, and never loses its files, because tracking failed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "ppp"


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
    """Create the backend (database schema) and the experiment once, before parallel jobs log.

    Returns the experiment id. Unlike the per-job mirror, failures here raise: this is the setup job."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    # A tracking server stores (or proxies) artifacts itself; a local backend gets a folder under results/.
    served = tracking_uri.startswith(("http://", "https://"))
    location = Path(artifact_root).resolve().as_uri() if artifact_root and not served else None
    return client.create_experiment(experiment, artifact_location=location)


class JobRun:
    """Context manager: an MLflow run for one job; every method warns instead of raising."""

    def __init__(self, tracking_uri: str | None, experiment: str, run_name: str,
                 tags: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.params = flatten(params or {})
        self.client = None
        self.run_id: str | None = None

    def _warn(self, what: str, err: BaseException) -> None:
        log.warning("MLflow %s failed (results on disk are unaffected): %s: %s", what, type(err).__name__, err)

    def __enter__(self) -> "JobRun":
        if not self.tracking_uri:
            return self
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.tracking_uri)
            experiment = client.get_experiment_by_name(self.experiment)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.experiment)
            run = client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
            self.client, self.run_id = client, run.info.run_id
            params = [Param(k, v) for k, v in self.params.items()]
            for start in range(0, len(params), 100):
                client.log_batch(self.run_id, params=params[start:start + 100])
        except Exception as err:  # noqa: BLE001 - the mirror must never fail a job
            self._warn("run start", err)
        return self

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.client is None:
            return
        try:
            from mlflow.entities import Metric
            import time

            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception as err:  # noqa: BLE001
            self._warn("metric logging", err)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.client is None:
            return
        try:
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, str(value))
        except Exception as err:  # noqa: BLE001
            self._warn("tagging", err)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.client is None:
            return
        try:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as err:  # noqa: BLE001
            self._warn(f"artifact logging of {path}", err)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.client is None:
            return
        try:
            self.client.set_terminated(self.run_id, status="FAILED" if exc_type else "FINISHED")
        except Exception as err:  # noqa: BLE001
            self._warn("run end", err)
