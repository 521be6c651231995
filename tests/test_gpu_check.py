"""`make gpu-check` (benchmarks/gpu_check.py), config/gpu.yaml and its cost projection
(benchmarks/attack_flops.py), on a machine without a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
NO_GPU = "gpu-check: no CUDA GPU on this machine; nothing to check"
CELL_KEYS = {"arch", "width", "defense", "sigma", "attack", "median_psnr", "median_ssim", "seconds",
             "victim_iterations_per_second", "peak_memory_mb", "engine"}


def no_gpu_env() -> dict:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one


def run_check(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=no_gpu_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0():
    result = run_check()
    assert result.returncode == 0, result.stderr
    assert result.stdout == NO_GPU + "\n"


def test_the_make_target_runs_the_check():
    dry = subprocess.run(["make", "-n", "gpu-check"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "benchmarks/gpu_check.py" in dry.stdout
    # Run the target itself only where the venv is up to date (make would otherwise install it first).
    if subprocess.run(["make", "-q", ".venv/.ppp-installed"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip(".venv is not up to date: make gpu-check would install it first")
    result = subprocess.run(["make", "-s", "gpu-check"], cwd=REPO, env=no_gpu_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == NO_GPU + "\n"


def test_the_plan_is_convnet_and_resnet18_at_width_64_on_cifar10():
    result = run_check("--plan")
    assert result.returncode == 0, result.stderr
    cells = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(c["arch"], c["width"], c["dataset"], c["victims"]) for c in cells} == {
        ("convnet", 64, "cifar10", 4), ("resnet18", 64, "cifar10", 4)}
    per_arch = {arch: {(c["defense"], c["attack"]) for c in cells if c["arch"] == arch}
                for arch in ("convnet", "resnet18")}
    wanted = {("none", "ig"), ("precode", "ig"), ("precode", "ig_targeted"), ("precode", "analytic"),
              ("ppp", "ig"), ("ppp", "ig_targeted"), ("ppp", "latent"), ("ppp", "analytic"),
              ("none", "head"), ("precode", "head"), ("ppp", "head"),
              ("none", "sme"), ("precode", "sme_targeted")}
    assert per_arch == {"convnet": wanted, "resnet18": wanted}
    assert len(cells) == 28
    fedavg = [c for c in cells if c["local_steps"] > 1]
    assert {(c["defense"], c["attack"]) for c in fedavg} == {("none", "sme"), ("precode", "sme_targeted"), ("none", "head")}
    assert all(c["images_per_update"] == 4 for c in fedavg)
    assert [c["options"] for c in fedavg if c["attack"] == "head"] == [{"drift_rounds": 2, "tv_weight": 0.002}] * 2
    # The head attack on client updates of 4 images; every other cell on one image per update.
    assert {c["images_per_update"] for c in cells if c["attack"] == "head"} == {4}
    assert {c["images_per_update"] for c in cells if c["attack"] != "head" and c["local_steps"] == 1} == {1}
    # One PPP sigma per architecture, inside config/gpu.yaml's grid; no sigma elsewhere.
    grid = yaml.safe_load((REPO / "config" / "gpu.yaml").read_text())["noise"]["per_arch"]
    for arch in ("convnet", "resnet18"):
        sigmas = {c["sigma"] for c in cells if c["arch"] == arch and c["defense"] == "ppp"}
        assert len(sigmas) == 1 and sigmas <= set(grid[arch]["scales"])
    assert all(c["sigma"] == 0 for c in cells if c["defense"] != "ppp")
    # The most informative cells first: IG on the undefended models, then the targeted attack on PRECODE.
    assert [(c["defense"], c["attack"]) for c in cells[:4]] == [("none", "ig")] * 2 + [("precode", "ig_targeted")] * 2
    # Budgets that fit 8 minutes on one GPU by the projection in the script's docstring.
    # The surrogate-model cells' iteration is one gradient of a 4-image row: counted like IG's.
    assert sum(c["iterations"] for c in cells if c["attack"] not in ("analytic", "head")) <= 8 * 800 + 8 * 1000


def test_a_smoke_run_on_the_cpu_runs_every_cell():
    result = run_check("--device", "cpu", "--iterations", "2", "--width", "8", "--victims", "2", "--threads", "1",
                       timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    cells, total = lines[:-1], lines[-1]
    assert len(cells) == 28
    for cell in cells:
        assert "error" not in cell and "skipped" not in cell, cell
        assert CELL_KEYS <= set(cell), CELL_KEYS - set(cell)
        assert cell["width"] == 8 and cell["iterations"] == 2 and cell["victims"] == 2
    assert {c["engine"] for c in cells if c["attack"] == "analytic"} == {"batched"}
    assert {c["engine"] for c in cells if c["attack"] not in ("analytic", "head", "sme", "sme_targeted")} == {"per_layer"}
    assert {c["engine"] for c in cells if c["attack"] in ("sme", "sme_targeted")} == {"loop"}
    assert total["gpu_check"] == "done" and total["cells"] == 28 and total["failed"] == 0
    assert total["total_seconds"] > 0


def test_the_gpu_preset_validates_alone_and_merged_over_the_default():
    from ppp.config import load_preset, validate_config

    alone = validate_config(yaml.safe_load((REPO / "config" / "gpu.yaml").read_text()))
    assert alone["mlflow"]["experiment"]
    config = load_preset(REPO / "config" / "gpu.yaml")  # as snakemake --configfile merges it
    assert config["archs"] == ["mlp", "lenet", "convnet", "resnet18"]
    assert config["models"]["convnet"]["width"] == 64 and config["models"]["resnet18"]["width"] == 64
    assert config["attacks"] == ["ig", "ig_targeted", "latent", "analytic", "head", "sme", "sme_targeted"]
    assert config["defenses"] == ["none", "noise", "precode", "ppp", "ppp_encoder", "dpsgd"]
    assert config["device"] == "auto"
    # The default's MLP sweep is replaced, not merged into (gpu.yaml names its own, with 8 images).
    assert [u["images"] for u in config["client"]["per_arch"]["mlp"]["updates"]] == [1, 4, 8, 4]
    assert {u.get("local_steps", 1) for u in config["client"]["updates"]} == {1, 2}


def test_the_flop_count_of_convnet_width_64_is_the_benchmarks_figure():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from attack_flops import measure

    from ppp.config import load_preset

    config = load_preset(REPO / "config" / "gpu.yaml")
    cell = dict(dataset="cifar10", arch="convnet", client="b1s1", images=1, local_steps=1, local_lr=0.1,
                attack="ig", precode=False)
    counted = measure(config, cell)
    # benchmarks/README.md, "Achieved GFLOP/s": 29.7 GFLOP per victim-iteration (ppp-bench's counter).
    assert counted["flops_per_victim_iteration"] == pytest.approx(29.7e9, rel=0.01)
    assert counted["engine"] == "per_layer" and counted["ops_per_iteration"] > 100


def test_the_projection_counts_the_cells_the_workflow_runs():
    """benchmarks/attack_flops.py plans each client setting's own attacks and attack_defenses, as
    workflow/rules/common.smk does (ppp.config.attack_applies): ResNet-18's FedAvg update in gpu.yaml is
    attacked by the head and surrogate-model attacks only, not by unrolled IG."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from attack_flops import attack_plan

    from ppp.config import load_preset

    cells = attack_plan(load_preset(REPO / "config" / "gpu.yaml"))
    fedavg = {c["attack"] for c in cells if c["arch"] == "resnet18" and c["local_steps"] == 2}
    assert fedavg == {"head", "sme", "sme_targeted"}
    assert all(c["defense"] not in ("ppp", "ppp_encoder") for c in cells if c["attack"] == "ig")
    default = attack_plan(load_preset(REPO / "config" / "config.yaml"))
    lenet_fedavg_head = {c["defense"] for c in default if c["client"] == "b4s2lr0.01" and c["attack"] == "head"}
    assert lenet_fedavg_head == {"none", "ppp_encoder"}  # the setting's own attack_defenses
