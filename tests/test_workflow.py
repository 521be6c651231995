"""End to end: the Snakemake workflow on the tiny config, in a temporary working directory."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ppp.report import RECONSTRUCTION_COLUMNS, UTILITY_COLUMNS

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def snakemake(workdir: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def planned_rules(output: str) -> set[str]:
    """Rule names in the 'Job stats' table of a dry run."""
    if "Job stats" not in output:
        return set()
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1) for m in re.finditer(r"^([a-z0-9_.+-]+)\s+\d+\s*$", table, re.M)}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    assert config["datasets"]["mnist"]["victims"] == "draw"  # drawn from the test split, as the default's
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, "--cores", "2")
    return workdir, config


def test_tables_have_one_row_per_victim_per_cell(finished_run):
    workdir, config = finished_run
    tables = workdir / "results" / "tables"
    recon = pd.read_csv(tables / "reconstructions.csv")
    assert list(recon.columns) == RECONSTRUCTION_COLUMNS
    # none, noise, precode, ppp, dpsgd with ig, plus ig_targeted, latent and analytic on precode and
    # ppp: 11 cells.
    # Each at one image per update and at one FedAvg update of 2 images in 2 local steps of 1 image.
    cells = recon.groupby(["batch_size", "local_steps", "defense", "noise_scale", "attack"]).size()
    assert len(cells) == 22 and set(cells) == {config["attack"]["defaults"]["victims"]}
    assert set(zip(recon.batch_size, recon.local_steps)) == {(1, 1), (2, 2)}
    # FedAvg's rate keys its setting (config/test.yaml's client.local_lr); FedSGD's is 0.
    assert set(zip(recon.local_steps, recon.local_lr)) == {(1, 0.0), (2, config["client"]["local_lr"])}
    assert set(zip(recon.local_steps, recon.local_batch)) == {(1, 0), (2, 1)}  # full batch is 0
    assert (recon[recon.batch_size == 2].update_id == 0).all()
    assert recon[recon.batch_size == 1].update_id.tolist()[:2] == [0, 1]
    assert (recon.label_accuracy == 1).all()  # the server is told the labels here
    assert recon[["mse", "psnr", "ssim"]].notna().all().all()
    utility = pd.read_csv(tables / "utility.csv")
    assert list(utility.columns) == UTILITY_COLUMNS and len(utility) == 5
    dp = utility[utility.defense == "dpsgd"]
    assert (dp.epsilon > 0).all() and utility[utility.defense != "dpsgd"].epsilon.isna().all()
    assert utility.test_accuracy.between(0, 1).all()
    assert utility.test_accuracy_ci95.between(0, 0.2).all() and (utility.test_examples == 128).all()
    summary = pd.read_csv(tables / "summary.csv")
    assert {"ssim_mean", "psnr_median", "success_rate", "test_accuracy", "cell_strongest_attack",
            "cell_strongest_ssim_median", "ssim_median_ci_low", "ssim_median_ci_high", "batch_size",
            "local_steps", "label_accuracy"} <= set(summary.columns)
    assert (summary.ssim_median_ci_low <= summary.ssim_median).all()
    assert (summary.ssim_median <= summary.ssim_median_ci_high).all()
    for _, ppp_rows in summary[summary.defense == "ppp"].groupby(["batch_size", "local_steps"]):
        assert (ppp_rows.cell_strongest_ssim_median == ppp_rows.ssim_median.max()).all()
    findings = pd.read_csv(tables / "findings.csv")
    assert len(findings) == 2 and {"batch_size", "local_steps"} <= set(findings.columns) and {"F1_ig_leaks_undefended", "F2_targeted_breaks_precode_ig_does_not",
                                   "F3_ppp_defeats_every_attack", "F4_ppp_keeps_accuracy", "ppp_protecting_sigma",
                                   "acc_drop_ppp_ci_low"} <= set(findings.columns)
    worst = pd.read_csv(tables / "worst_case.csv")
    assert len(worst) == 10 and set(worst.columns) >= {"strongest_attack", "strongest_ssim_median", "protected",
                                                     "acc_drop", "epsilon"}
    assert set(worst[worst.defense == "ppp"].attacks_tried.iloc[0].split(";")) == {
        "ig", "ig_targeted", "latent", "analytic"}
    # Every claim three-valued, with its interval; two images per cell decide nothing (report.min_units).
    verdicts = pd.read_csv(tables / "verdicts.csv")
    assert set(verdicts.claim) == {"F1", "F2", "F3", "F4", "protects"} and set(verdicts.verdict) == {"undecided"}
    assert len(verdicts[verdicts.claim == "protects"]) == 8 and (verdicts["images"] == 2).all()
    # Every cell's first image (its first update: both images at 2 per update) was attacked again at half the
    # budget (attack.convergence_images: 1).
    one = recon[recon.batch_size == 1]
    assert one[one.victim == 0].ssim_half.notna().all() and one[one.victim == 1].ssim_half.isna().all()
    assert recon[recon.batch_size == 2].ssim_half.notna().all()
    # The victims are a class-balanced draw from the test split: distinct labels here.
    assert recon[recon.batch_size == 1].groupby("victim").label.first().nunique() == 2
    for plot in ("privacy_utility.png", "batch_size.png", "learning_curves.png",
                 "reconstructions_mnist_mlp_b1s1_init.png", "reconstructions_mnist_mlp_b2s2lr0.1m1_init.png"):
        assert (workdir / "results" / "plots" / plot).stat().st_size > 1000


def test_every_job_is_an_mlflow_run_nested_under_the_invocation(finished_run):
    from mlflow.tracking import MlflowClient

    workdir, _ = finished_run
    client = MlflowClient(f"sqlite:///{workdir / 'results' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ppp")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ppp.kind") == "invocation"]
    assert len(parents) == 1  # the re-run test below runs after this one and only dry-runs
    jobs = [r for r in runs if r not in parents]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in jobs)
    rules = {r.data.tags["rule"] for r in jobs}
    assert {"prepare_data", "train", "capture", "attack", "evaluate", "aggregate"} <= rules
    attack_runs = [r for r in jobs if r.data.tags["rule"] == "attack"]
    assert len(attack_runs) == 22 and all("wildcard.client" in r.data.tags for r in attack_runs)
    assert {r.data.params["images_per_update"] for r in attack_runs} == {"1", "2"}
    assert {r.data.params["attack"] for r in attack_runs} == {"ig", "ig_targeted", "latent", "analytic"}
    # A client setting's own attack budget (config/test.yaml: 12 iterations under FedAvg, 20 elsewhere).
    assert {(r.data.params["images_per_update"], r.data.params["attack_options.iterations"]) for r in attack_runs
            if r.data.params["attack"] == "ig"} == {("1", "20"), ("2", "12")}
    assert all(r.info.status == "FINISHED" for r in runs)
    # Each attack run carries its own cell's quality (attached by the evaluate job), equal to the table's.
    recon = pd.read_csv(workdir / "results" / "tables" / "reconstructions.csv")
    for run in attack_runs:
        tags = run.data.tags
        cell = recon[(recon.defense == tags["wildcard.defense"]) & (recon.attack == tags["wildcard.attack"])
                     & (recon.noise_scale == float(tags["wildcard.sigma"]))
                     & (recon.batch_size == int(tags["wildcard.client"][1:].split("s")[0]))]
        assert run.data.metrics["ssim_median"] == pytest.approx(cell.ssim.median(), abs=1e-6)
        assert run.data.metrics["psnr_mean"] == pytest.approx(cell.psnr.mean(), abs=1e-4)
    # Params that compare across runs, and who ran what from which commit.
    for run in jobs:
        assert {"seed", "device", "version.torch", "version.ppp", "host.cpu", "host.threads"} <= set(run.data.params)
        assert run.data.tags.get("mlflow.user") and run.data.tags.get("mlflow.source.git.commit") is not None
    # The data a job read is an MLflow dataset input with its checksum.
    prepare = next(r for r in jobs if r.data.tags["rule"] == "prepare_data")
    inputs = client.get_run(prepare.info.run_id).inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"mnist/train", "mnist/test"}
    assert all(len(i.dataset.digest) >= 16 for i in inputs)
    # The study's answer on the parent run: the verdict table and its counts.
    parent = client.get_run(parents[0].info.run_id)
    assert {"verdicts.csv", "verdicts.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert parent.data.metrics["verdicts_undecided"] == len(pd.read_csv(workdir / "results" / "tables" / "verdicts.csv"))


def test_every_attack_run_shows_its_reconstruction_and_every_training_run_its_curves(finished_run):
    """What a researcher opens in the MLflow UI: each attack run's own images (originals above its
    reconstructions), each training run's test accuracy and loss per epoch, the same numbers as the
    files, and the parent run's figures beside the verdict table."""
    from mlflow.tracking import MlflowClient

    workdir, config = finished_run
    results = workdir / "results"
    client = MlflowClient(f"sqlite:///{results / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ppp")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    attacks = [r for r in runs if r.data.tags.get("rule") == "attack"]
    assert len(attacks) == 22
    for run in attacks:
        tags = run.data.tags
        images = [a.path for a in client.list_artifacts(run.info.run_id, "reconstruction")]
        sigma = f"{float(tags['wildcard.sigma']):g}"
        assert images == [f"reconstruction/{tags['wildcard.defense']}_{sigma}_{tags['wildcard.attack']}.png"], images
        # The run's picture is the one under results/ (the files are the truth).
        local = client.download_artifacts(run.info.run_id, images[0], str(workdir / "downloads" / run.info.run_id))
        on_disk = results / "eval" / tags["wildcard.dataset"] / tags["wildcard.arch"] / tags["wildcard.client"] / \
            tags["wildcard.state"] / "images" / Path(images[0]).name
        assert Path(local).read_bytes() == on_disk.read_bytes()
        # Its loss at every progress step, and the SSIM of its checked images at half and at the full budget.
        iterations = int(run.data.params["attack_options.iterations"])
        if run.data.params.get("attack_options.progress_every") not in (None, "0"):  # not set in test.yaml
            assert len(client.get_metric_history(run.info.run_id, "gradient_loss_mean")) >= 1
        ssim = client.get_metric_history(run.info.run_id, "ssim_median_checked")
        assert sorted(m.step for m in ssim) == [iterations // 2, iterations]
        assert all(-1 <= m.value <= 1 for m in ssim)
    # A cell is found by its params with the UI's search.
    found = client.search_runs([experiment.experiment_id], "params.defense = 'ppp' and params.attack = 'latent' "
                               "and params.client = 'b2s2lr0.1m1' and params.sigma = '0.1' and params.dataset = 'mnist'")
    assert [r.info.run_name for r in found] == ["attack/mnist/mlp/b2s2lr0.1m1/ppp/0.1/init/latent"]
    utility = pd.read_csv(results / "tables" / "utility.csv")
    training = [r for r in runs if r.data.tags.get("rule") == "train"]
    assert len(training) == len(utility) == 5
    for run in training:
        history = client.get_metric_history(run.info.run_id, "test_accuracy_epoch")
        losses = client.get_metric_history(run.info.run_id, "test_loss_epoch")
        row = utility[(utility.defense == run.data.params["defense"])
                      & (utility.noise_scale == float(run.data.params["sigma"]))].iloc[0]
        expected = [float(a) for a in str(row.test_accuracy_per_epoch).split(";")]
        assert [m.step for m in history] == list(range(1, config["training"]["epochs"] + 1))
        assert [m.value for m in history] == pytest.approx(expected, abs=1e-4)
        assert len(losses) == len(history) and all(0 < m.value < 20 for m in losses)
    parent = next(r for r in runs if r.data.tags.get("ppp.kind") == "invocation")
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert figures == {f"figures/{name}.png" for name in ("privacy_utility", "batch_size", "learning_curves",
                                                          "worst_case")} | {"figures/reconstructions"}
    grids = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "figures/reconstructions")}
    assert grids == {p.name for p in (results / "plots").glob("reconstructions_*.png")} and len(grids) == 2
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "verdicts.json",
                                                      str(workdir / "downloads"))).read_text())
    assert table["columns"][:2] == ["claim", "verdict"] and len(table["data"]) == len(
        pd.read_csv(results / "tables" / "verdicts.csv"))


def test_the_report_opens_on_the_questions_the_preset_and_the_verdicts_with_every_figure(finished_run):
    workdir, _ = finished_run
    snakemake(workdir, "--report", str(workdir / "report.html"))
    html = (workdir / "report.html").read_text()
    verdicts = pd.read_csv(workdir / "results" / "tables" / "verdicts.csv")
    for text in ("does PRECODE, and PPP on top of it", "The preset that ran", "The answer",
                 f"{len(verdicts)} verdicts", "F1 IG leaks", "Does the defence protect?", "What to look at"):
        assert text in html, text
    assert "has not finished here yet" not in html
    plots = ["privacy_utility", "batch_size", "learning_curves", "worst_case", "reconstructions_mnist_mlp_b1s1_init",
             "reconstructions_mnist_mlp_b2s2lr0.1m1_init"]
    for plot in plots:
        assert f'"results/plots/{plot}.png": {{"name": "{plot}.png"' in html, plot


def test_a_second_make_run_logs_nothing_twice(finished_run):
    """Nothing to do: no job runs, so no run, metric or image is logged again (files and MLflow agree)."""
    from mlflow.tracking import MlflowClient

    workdir, _ = finished_run
    client = MlflowClient(f"sqlite:///{workdir / 'results' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ppp")

    def state():
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        return sorted((r.info.run_id, len(r.data.metrics), len(client.get_metric_history(r.info.run_id, "test_accuracy_epoch")))
                      for r in runs)

    before = state()
    snakemake(workdir, "--cores", "1")
    assert state() == before


def test_look_screenshots_the_report_and_the_mlflow_ui(finished_run, tmp_path):
    """make look on the finished run, as a person would: every screenshot exists and shows something
    (not a blank or one-colour page), and the MLflow UI it started is gone afterwards."""
    import shutil

    from PIL import Image

    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                   None)
    if browser is None:
        pytest.skip("no headless Chromium here (apt-get install chromium)")
    workdir, _ = finished_run
    done = subprocess.run([sys.executable, str(REPO / "tools" / "look.py"), "--configfile",
                           str(workdir / "config.yaml"), "--results", str(workdir / "results")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    shots = {p.name: p for p in (workdir / "results" / "look").glob("*.png")}
    assert set(shots) == {"report_landing.png", "report_figure.png", "mlflow_runs.png", "mlflow_attack_run.png",
                          "mlflow_training_run.png", "mlflow_verdicts.png"}
    for name, path in shots.items():
        image = np.asarray(Image.open(path).convert("L"))
        assert image.std() > 10 and len(np.unique(image)) > 20, f"{name} looks blank"
    # The attack run's page shows its picture: the screenshot holds the originals' white strokes on black.
    attack = np.asarray(Image.open(shots["mlflow_attack_run.png"]).convert("L"))
    assert (attack < 30).mean() > 0.01
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(workdir / "results" / "mlflow" / "mlflow.db") not in processes, "the MLflow UI still runs"


def test_rerun_does_nothing_and_new_victims_rerun_only_what_depends_on_them(finished_run):
    workdir, _ = finished_run
    assert planned_rules(snakemake(workdir, "-n")) == set()
    # Another draw of victims: everything from the victims on, nothing before them.
    planned = planned_rules(snakemake(workdir, "-n", "--config", "victim_draw=1"))
    assert {"prepare_victims", "capture_mlp_b1s1", "attack_mlp_b1s1_ig", "evaluate", "aggregate"} <= planned
    assert not {rule for rule in planned if rule.startswith(("prepare_data", "init_model", "train"))}
    arrays = dict(np.load(REPO / "data" / "victims" / "mnist_128_cvb.npz"))
    arrays["images"] = arrays["images"][::-1].copy()
    arrays["labels"] = arrays["labels"][::-1].copy()
    np.savez(workdir / "other_victims.npz", **arrays)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["datasets"]["mnist"]["victims"] = str(workdir / "other_victims.npz")
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    planned = planned_rules(snakemake(workdir, "-n"))
    # Capture and attack have a rule per architecture and client setting (and attack): capture_mlp_b1s1,
    # attack_mlp_b1s1_ig, ...
    assert {"prepare_victims", "capture_mlp_b1s1", "capture_mlp_b2s2lr0.1m1", "attack_mlp_b1s1_ig",
            "attack_mlp_b2s2lr0.1m1_analytic", "evaluate", "aggregate"} <= planned
    assert not {rule for rule in planned if rule.startswith(("prepare_data", "init_model", "train"))}


def test_attack_jobs_per_cell_write_the_same_files_as_one_job_per_attack(tmp_path):
    """attack.grouping: cell (the deep nets' cells take many minutes) splits each attack's job into one job
    per defence cell, named by it; the files the study writes stay the same."""
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    outputs, rules = {}, {}
    for grouping in ("attack", "cell"):
        workdir = tmp_path / grouping
        workdir.mkdir()
        config["attack"]["grouping"] = grouping
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        text = snakemake(workdir, "-n")
        rules[grouping] = {r for r in planned_rules(text) if r.startswith("attack_")}
        outputs[grouping] = {path for line in text.splitlines() if line.strip().startswith("output:")
                             for path in line.split("output:", 1)[1].strip().split(", ")}
    assert "attack_mlp_b1s1_ig" in rules["attack"] and "attack_mlp_b1s1_ig" not in rules["cell"]
    assert {"attack_mlp_b1s1_ig_none_0", "attack_mlp_b1s1_ig_precode_0"} <= rules["cell"]
    assert len(rules["cell"]) > len(rules["attack"])
    assert outputs["cell"] == outputs["attack"] and any("/attacks/" in p for p in outputs["cell"])
    # A run of the undefended cells only (F1), then the whole grid: the finished cells are kept.
    workdir = tmp_path / "cell"
    snakemake(workdir, "--cores", "2", "--config", "defenses=[none]")
    planned = planned_rules(snakemake(workdir, "-n"))
    assert {"capture_mlp_b1s1_precode_0", "attack_mlp_b1s1_ig_precode_0"} <= planned
    assert not {r for r in planned if r.endswith("_none_0")}, planned


def test_bad_config_gets_one_message_naming_the_key(tmp_path):
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["attack"]["defaults"]["iterations"] = -3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "-n"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "config key 'attack.defaults.iterations'" in done.stdout + done.stderr


def test_an_image_folder_dataset_named_by_the_user_runs_end_to_end(tmp_path):
    """A user's own images: an ImageFolder under a name of their choosing, classes and normalisation
    computed from the data, attacked and trained like the field's datasets."""
    from PIL import Image

    from ppp.data import load_victims

    images, labels = load_victims(REPO / "data" / "victims" / "mnist_128_cvb.npz", "mnist", 32)
    keep = (labels < 4).nonzero().flatten()[:40]  # four classes: the data decides num_classes
    for split, part in (("train", keep[:32]), ("test", keep[32:])):
        for i in part.tolist():
            folder = tmp_path / "scans" / split / f"{int(labels[i])}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((images[i, 0].numpy() * 255).round().astype(np.uint8), "L").save(folder / f"{i}.png")
    np.savez(tmp_path / "victims.npz", images=(images[keep[:2]].numpy() * 255).round().astype(np.uint8),
             labels=labels[keep[:2]].numpy())
    config = {
        "seed": 0, "device": "cpu",
        "datasets": {"my_scans": {"source": "imagefolder", "root": str(tmp_path / "scans"), "channels": 1,
                                  "victims": str(tmp_path / "victims.npz")}},
        "archs": ["mlp"], "models": {"mlp": {"width": 32}}, "precode": {"bottleneck_size": 8},
        "defenses": ["none", "precode"], "noise": {"scales": [0.1]},
        "training": {"epochs": 1, "batch_size": 8}, "attacks": ["ig", "ig_targeted"],
        "attack": {"defaults": {"victims": 2, "iterations": 10}}, "mlflow": {"enabled": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path, "--cores", "2")
    meta = yaml.safe_load((tmp_path / "results" / "data" / "my_scans" / "meta.json").read_text())
    assert meta["num_classes"] == 4 and meta["channels"] == 1 and 0 < meta["mean"][0] < 0.5
    recon = pd.read_csv(tmp_path / "results" / "tables" / "reconstructions.csv")
    assert set(recon.dataset) == {"my_scans"} and len(recon) == 3 * 2  # none/ig, precode/ig, precode/ig_targeted
    utility = pd.read_csv(tmp_path / "results" / "tables" / "utility.csv")
    assert set(utility.defense) == {"none", "precode"} and (utility.test_examples == 8).all()


def test_make_run_resumes_after_kill_9_and_never_unlocks_a_live_run(tmp_path, finished_run):
    """tools/run_workflow.sh (make run): a second start while a run is going is refused; after the run
    is killed with SIGKILL mid-way, the next start removes the stale lock, keeps what was complete and
    gives the tables an uninterrupted run gives."""
    import os
    import signal
    import time

    reference, config = finished_run
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    wrapper = [str(REPO / "tools" / "run_workflow.sh"), str(Path(sys.executable).parent / "snakemake"),
               "-s", str(REPO / "Snakefile"), "--cores", "2", "--configfile", str(tmp_path / "config.yaml")]
    first = subprocess.Popen(wrapper, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    attacks = tmp_path / "results" / "attacks"
    deadline = time.time() + 300
    # Some attacks finished and registered by Snakemake (a just-written output still counts as incomplete).
    while time.time() < deadline and len(list(attacks.rglob("reconstructions.safetensors"))) < 4:
        time.sleep(0.5)
    time.sleep(3)
    # The refusal is only tested against a live run: a first run that ended (failed, or finished every job)
    # is a different failure and says so.
    assert first.poll() is None, f"the first run ended (exit {first.returncode}) before the second start"
    second = subprocess.run(wrapper, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "another 'make run' is running" in second.stderr
    os.kill(first.pid, signal.SIGKILL)  # the wrapper exec'd Snakemake: this is its main process
    first.wait()
    assert not (tmp_path / "results" / "tables" / "summary.csv").exists()
    done_before = {p: p.stat().st_mtime for p in attacks.rglob("reconstructions.safetensors")}
    resumed = subprocess.run(wrapper, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "removing its stale lock and resuming" in resumed.stdout
    complete = {p: t for p, t in done_before.items() if p.stat().st_mtime == t}
    assert complete, "every finished attack was redone"
    for table in ("reconstructions.csv", "utility.csv", "findings.csv"):
        assert (tmp_path / "results" / "tables" / table).read_text() == \
            (reference / "results" / "tables" / table).read_text(), table


def test_a_full_disk_fails_its_job_with_one_line_and_the_next_run_gives_a_clean_runs_tables(tmp_path, finished_run):
    """A real full disk: results/attacks/ is a small tmpfs (needs root, as CI runs; skipped otherwise), so
    attack jobs fail part-way with ENOSPC at the write. Each failed job is one line naming the file and
    the cause, no half-written file is left, and after space is freed (the tmpfs remounted larger) the next
    `make run` keeps every finished attack and ends with the tables of the uninterrupted run."""
    import os

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    reference, config = finished_run
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    attacks = tmp_path / "results" / "attacks"
    attacks.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(attacks)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    wrapper = [str(REPO / "tools" / "run_workflow.sh"), str(Path(sys.executable).parent / "snakemake"),
               "-s", str(REPO / "Snakefile"), "--cores", "2", "--configfile", str(tmp_path / "config.yaml")]
    try:
        full = subprocess.run(wrapper, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert full.returncode != 0, full.stderr[-3000:]
        lines = [line for line in full.stderr.splitlines() if line.startswith("ppp: error in ")]
        assert lines, full.stderr[-3000:]
        for line in lines:
            assert re.fullmatch(r"ppp: error in attack_mlp_\S+ \(.*\): results/attacks/\S+\.safetensors: could not "
                                r"be written: No space left on device \(errno 28\); nothing was left there .*", line), line
        assert not [p for p in (tmp_path / "results").rglob("*.part")]
        done_before = {p: p.stat().st_mtime for p in attacks.rglob("reconstructions.safetensors")}
        assert done_before and not (tmp_path / "results" / "tables" / "summary.csv").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(attacks)], check=True)  # space freed
        resumed = subprocess.run(wrapper, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
        assert {p: p.stat().st_mtime for p in done_before} == done_before, "a finished attack was redone"
        for table in ("reconstructions", "utility", "summary", "findings", "worst_case"):
            assert (tmp_path / "results" / "tables" / f"{table}.csv").read_bytes() == \
                (reference / "results" / "tables" / f"{table}.csv").read_bytes(), table
    finally:
        subprocess.run(["umount", "-l", str(attacks)], check=False)


def test_make_timing_reads_every_finished_jobs_process_time(finished_run):
    """The per-rule timing a user sends (make timing): every job that ran ppp's code wrote its process's
    wall and CPU seconds to its log, and the report names the CPU the jobs ran on."""
    from ppp.run_timing import load_run, report

    workdir, _ = finished_run
    # The fixture's run is the first invocation in this directory; later tests re-run parts of it.
    first = min((workdir / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    run = load_run(workdir, first)
    scripted = [j for j in run.jobs if j.rule != "all"]
    assert scripted and all(j.cpu_s is not None and j.cpu_s > 0 for j in scripted), \
        [j.rule for j in scripted if j.cpu_s is None]
    # A job's process lies within Snakemake's start and end of it (1 s: the Snakemake log's stamps).
    assert all(0 < j.process_wall_s <= (j.end - j.start).total_seconds() + 1 for j in scripted)
    text = report(workdir, log=first)
    assert "The jobs ran on: " in text and "| attack_" in text


@pytest.mark.parametrize("preset", ["config.yaml", "paper.yaml"])
def test_the_workflow_attacks_exactly_the_cells_ppp_config_enumerates(tmp_path, preset):
    """The jobs Snakemake plans and ppp.config.attack_cells (which the GPU projection counts) are one grid:
    every enumerated cell has its reconstructions file planned, and no attack output is planned beyond
    them (client settings' own attacks and defences, PRECODE-only attacks, noise grids included)."""
    from ppp.config import attack_cells, load_preset

    config = load_preset(REPO / "config" / preset)
    for dataset in config["datasets"].values():
        dataset["victims"] = "draw"  # the authors' victim files need not exist for a plan
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    text = snakemake(tmp_path, "-n")
    planned = {path for line in text.splitlines() if line.strip().startswith("output:")
               for path in line.split("output:", 1)[1].strip().split(", ")
               if "/attacks/" in path and path.endswith("reconstructions.safetensors")}
    enumerated = {f"results/attacks/{c['dataset']}/{c['arch']}/{c['client']}/{c['defense']}/{c['sigma']}/"
                  f"{c['state']}/{c['attack']}/reconstructions.safetensors" for c in attack_cells(config)}
    assert len(enumerated) > 100
    assert planned == enumerated
