import copy
import logging
from pathlib import Path

import pytest
import yaml

from ppp.config import ConfigError, validate_config
from ppp.tracking import JobRun, init_backend, sqlite_uri

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml", "test.yaml"])
def test_presets_validate(name):
    config = validate_config(yaml.safe_load((REPO / "config" / name).read_text()))
    assert config["mlflow"]["experiment"]  # defaults filled in


@pytest.mark.parametrize("change,key", [
    (lambda c: c["archs"].append("vgg"), "archs.1"),
    (lambda c: c["noise"].__setitem__("scales", [-1]), "noise.scales.0"),
    (lambda c: c["attack"]["defaults"].__setitem__("iterations", 0), "attack.defaults.iterations"),
    (lambda c: c.__setitem__("colour", "red"), "(top level)"),
])
def test_a_bad_value_names_the_key(change, key):
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    change(config)
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert f"'{key}'" in str(info.value)


def test_enum_errors_say_what_is_allowed():
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["defenses"] = ["dp"]
    with pytest.raises(ConfigError, match=r"allowed: \['none', 'noise', 'precode', 'ppp'\]"):
        validate_config(copy.deepcopy(config))


def test_job_run_logs_to_sqlite(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = sqlite_uri(tmp_path / "m.db")
    init_backend(uri, "exp", tmp_path / "artifacts")
    artifact = tmp_path / "table.csv"
    artifact.write_text("a,b\n1,2\n")
    with JobRun(uri, "exp", "attack/mnist", {"rule": "attack"}, {"attack": {"iterations": 5}}) as run:
        run.log_metrics({"ssim": 0.5})
        run.log_artifact(artifact)
    client = MlflowClient(uri)
    logged = client.get_run(run.run_id)
    assert logged.data.params["attack.iterations"] == "5"
    assert logged.data.metrics["ssim"] == 0.5 and logged.data.tags["rule"] == "attack"
    assert logged.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["table.csv"]


def test_job_run_warns_instead_of_failing(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        with JobRun(f"sqlite:///{blocker}/sub/m.db", "exp", "x") as run:
            run.log_metrics({"a": 1.0})
            run.log_artifact(tmp_path / "missing.csv")
    assert run.client is None
    assert "MLflow run start failed" in caplog.text
