import copy
import logging
from pathlib import Path

import pytest
import yaml

from ppp.config import ConfigError, load_preset, merge_config, validate_config
from ppp.tracking import JobRecord, mirror_records, sqlite_uri

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_presets_validate(name):
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    overlay = yaml.safe_load((REPO / "config" / name).read_text())
    config = load_preset(REPO / "config" / name)  # as snakemake --configfile merges it over the default
    assert config["mlflow"]["experiment"]  # defaults filled in
    assert set(config["archs"]) == set(overlay.get("archs", default["archs"]))


def test_the_deep_cpu_preset_runs_the_cells_it_names_over_the_default():
    """config/deep_cpu.yaml (issue 30) merged over the default: the default's per-architecture lists (FedAvg,
    4-image updates) must not leak into the deep nets, and every cell keeps 16 images."""
    from ppp.config import (attack_options, attack_runs_on, client_attacks, client_settings, client_victims,
                            defense_scales)

    config = load_preset(REPO / "config" / "deep_cpu.yaml")
    assert config["archs"] == ["convnet", "resnet18"] and not config["training"]["enabled"]
    assert config["models"]["convnet"]["width"] == config["models"]["resnet18"]["width"] == 64
    assert config["models"]["resnet18"]["norm_groups"] == 2 and config["threat_model"]["model_mode"] == "eval"
    budgets = {"convnet": 200, "resnet18": 400}
    for arch in config["archs"]:
        settings = client_settings(config, arch)
        assert [(s.images, s.local_steps) for s in settings] == [(1, 1)]
        assert client_victims(config, arch, settings[0].name) == 16
        assert client_attacks(config, arch, settings[0].name) == ["ig", "ig_targeted", "analytic"]
        assert attack_options(config, arch, "ig")["iterations"] == budgets[arch]
        # ConvNet's targeted and analytic attacks at the budgets where they converge (benchmarks/README.md)
        assert attack_options(config, arch, "ig_targeted")["iterations"] == {"convnet": 600, "resnet18": 400}[arch]
        assert attack_options(config, arch, "analytic")["iterations"] == {"convnet": 3200, "resnet18": 400}[arch]
        assert attack_options(config, arch, "ig")["convergence_images"] == 4
        assert len(defense_scales(config, arch, "ppp")) == 1
    assert [d for d in config["defenses"] if attack_runs_on(config, "ig", d)] == ["none", "precode"]


def test_the_paper_preset_runs_the_authors_grid_on_every_architecture():
    """config/paper.yaml merged over the default: the default's CPU sizing for the MLP and LeNet (200 and
    1000 iterations, LeNet's one sigma and 5 epochs, its FedAvg settings, IG kept off the PPP variants)
    must not leak into the paper's grid."""
    from ppp.config import (attack_options, attack_runs_on, client_settings, defense_scales, training_options,
                            victims_per_cell)

    config = load_preset(REPO / "config" / "paper.yaml")
    grid = [0.0001, 0.001, 0.01, 0.1, 1.0]
    assert config["archs"] == ["mlp", "lenet", "convnet", "resnet18"]
    assert config["dpsgd"]["noise_multipliers"] == [0.5, 1.0]
    for arch in config["archs"]:
        assert [(s.images, s.local_steps) for s in client_settings(config, arch)] == [(1, 1)], arch
        assert victims_per_cell(config, arch) == 128
        assert training_options(config, arch)["epochs"] == 50, arch
        assert defense_scales(config, arch, "ppp") == grid, arch
        for attack in ("ig", "ig_targeted", "latent"):
            options = attack_options(config, arch, attack)
            assert (options["iterations"], options["lr"], options["tv_weight"]) == (7000, 0.1, 1e-6), (arch, attack)
        assert attack_options(config, arch, "analytic")["iterations"] == 7000
        assert all(attack_runs_on(config, "ig", d, arch) for d in config["defenses"]), arch


def test_a_preset_merges_over_the_default_as_snakemake_configfile_does(tmp_path):
    """Nested dicts merge key by key, lists and scalars are replaced, the default file is left alone."""
    base = {"attack": {"defaults": {"iterations": 10, "lr": 0.1}}, "archs": ["mlp", "lenet"]}
    merged = merge_config(copy.deepcopy(base), {"attack": {"defaults": {"iterations": 20}}, "archs": ["convnet"]})
    assert merged == {"attack": {"defaults": {"iterations": 20, "lr": 0.1}}, "archs": ["convnet"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_preset(bad)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_preset(tmp_path / "missing.yaml")


def test_the_benchmark_measures_the_deep_preset_as_the_workflow_runs_it():
    """ppp-bench --config config/deep_cpu.yaml: the preset over the default (it was read alone and failed),
    so the benchmark's ResNet-18 gets the preset's budget, TV and contrast step."""
    from ppp.bench import preset_settings

    settings = preset_settings(REPO / "config" / "deep_cpu.yaml", "resnet18", {"attack": "ig"})
    assert settings["model_options"] == {"width": 64, "norm_groups": 2}
    assert settings["attack"]["iterations"] == 400 and settings["attack"]["tv_weight"] == 0.01
    assert settings["attack"]["contrast"] == "max_in_box"


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
    with pytest.raises(ConfigError, match=r"'defenses.0'.*allowed: \['none', 'noise', 'precode', 'ppp', 'ppp_encoder'"):
        validate_config(copy.deepcopy(config))


def test_job_records_are_mirrored_once_nested_under_one_invocation(tmp_path):
    from mlflow.tracking import MlflowClient

    records, uri = tmp_path / "records", sqlite_uri(tmp_path / "m.db")
    artifact = tmp_path / "table.csv"
    artifact.write_text("a,b\n1,2\n")
    with JobRecord(records, "attack/mnist/ig", {"rule": "attack"}, {"attack": "ig", "options": {"iterations": 5}}) as run:
        run.log_metrics({"loss": 0.5}, step=10)
        run.log_metrics({"ssim": 0.7})
        run.log_artifact(artifact)
    with pytest.raises(RuntimeError):
        with JobRecord(records, "train/mnist", {"rule": "train"}):
            raise RuntimeError("job failed")
    parent_id = mirror_records(records, uri, "exp", tmp_path / "artifacts", {"run_name": "snakemake now"})
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("exp").experiment_id])}
    assert set(runs) == {"snakemake now", "attack/mnist/ig", "train/mnist"}
    attack = runs["attack/mnist/ig"]
    assert attack.data.tags["mlflow.parentRunId"] == parent_id == runs["snakemake now"].info.run_id
    assert attack.data.params["attack"] == "ig" and attack.data.params["options.iterations"] == "5"
    assert attack.data.metrics["ssim"] == 0.7 and attack.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(attack.info.run_id, "loss")] == [10]
    assert [a.path for a in client.list_artifacts(attack.info.run_id)] == ["table.csv"]
    assert runs["train/mnist"].info.status == "FAILED" and runs["snakemake now"].info.status == "FAILED"
    # A second mirror logs nothing new; a re-run job's new record is mirrored under a new parent.
    assert mirror_records(records, uri, "exp", tmp_path / "artifacts") is None
    with JobRecord(records, "train/mnist", {"rule": "train"}):
        pass
    second = mirror_records(records, uri, "exp", tmp_path / "artifacts")
    nested = client.search_runs([attack.info.experiment_id], f"tags.mlflow.parentRunId = '{second}'")
    assert [r.info.run_name for r in nested] == ["train/mnist"] and nested[0].info.status == "FINISHED"


def test_mirror_failure_is_a_warning_and_keeps_the_records(tmp_path, caplog):
    records = tmp_path / "records"
    with JobRecord(records, "x") as run:
        run.log_metrics({"a": 1.0})
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        assert mirror_records(records, f"sqlite:///{blocker}/sub/m.db", "exp", None) is None
    assert f"MLflow mirror to sqlite:///{blocker}/sub/m.db failed" in caplog.text
    assert list(records.glob("*.json")) and not (tmp_path / "mirrored.json").exists()


def test_every_config_key_in_the_schema_is_described():
    """The schema is the config's reference (README): a key without a description is undocumented."""
    import yaml

    from ppp.config import SCHEMA_PATH

    missing = []

    def walk(node, path):
        if not isinstance(node, dict):
            return
        for key, sub in (node.get("properties") or {}).items():
            if isinstance(sub, dict) and "description" not in sub and "$ref" not in sub:
                missing.append(f"{path}{key}")
            walk(sub, f"{path}{key}.")
        for child in ("additionalProperties", "items"):
            walk(node.get(child), path)
        for name, sub in (node.get("$defs") or {}).items():
            walk(sub, f"$defs.{name}.")

    walk(yaml.safe_load(SCHEMA_PATH.read_text()), "")
    assert not missing, missing


def _write_record(records, index):
    with JobRecord(records, f"attack/mnist/mlp/none/0/init/ig{index}", {"rule": "attack"}, {"attack": f"ig{index}"}) as run:
        run.log_metrics({"loss": float(index)})


def test_eight_jobs_recording_at_once_lose_no_run_and_attached_metrics_find_their_run(tmp_path):
    import multiprocessing

    from mlflow.tracking import MlflowClient

    records, uri = tmp_path / "records", sqlite_uri(tmp_path / "m.db")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_record, args=(records, i)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    with JobRecord(records, "evaluate/mnist/mlp/init", {"rule": "evaluate"}) as run:
        run.attach_metrics("attack/mnist/mlp/none/0/init/ig3", {"ssim_median": 0.25})
    mirror_records(records, uri, "exp", None, {"run_name": "snakemake now"})
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("exp").experiment_id])}
    assert {f"attack/mnist/mlp/none/0/init/ig{i}" for i in range(8)} <= set(runs) and len(runs) == 10
    assert runs["attack/mnist/mlp/none/0/init/ig3"].data.metrics == {"loss": 3.0, "ssim_median": 0.25}
    # An evaluation re-run alone attaches to the attack run an earlier invocation mirrored.
    with JobRecord(records, "evaluate/mnist/mlp/init", {"rule": "evaluate"}) as run:
        run.attach_metrics("attack/mnist/mlp/none/0/init/ig5", {"ssim_median": 0.5})
    mirror_records(records, uri, "exp", None)
    assert client.get_run(runs["attack/mnist/mlp/none/0/init/ig5"].info.run_id).data.metrics["ssim_median"] == 0.5
