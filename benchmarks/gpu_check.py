"""The GPU check: the cells that decide whether config/gpu.yaml's budgets work, timed on one GPU in under
8 minutes, offline.

    make gpu-check                                            # or: .venv/bin/python benchmarks/gpu_check.py
    .venv/bin/python benchmarks/gpu_check.py --plan           # the cells it would run, without running them
    .venv/bin/python benchmarks/gpu_check.py --device cpu --iterations 2 --width 8 --victims 2   # a smoke run

ConvNet and ResNet-18 at width 64 on CIFAR-10 (the authors' victims, data/victims/cifar10_128_cvb.npz, first 4),
each cell one batched attack through ppp-bench's code path (ppp.bench, the model, threat model and attack
settings of config/gpu.yaml): IG on the undefended model; IG, the targeted attack and the analytic attack
on PRECODE; IG, the targeted, the latent and the analytic attack on PPP at one sigma per architecture
(the middle of config/gpu.yaml's grid); and the head attack on 4-image updates of the undefended, PRECODE and
PPP models (issue 24); on FedAvg updates (4 images, 2 local steps, issue 31) the surrogate-model attack
on the undefended model, its targeted form on PRECODE, and the head attack with drift correction. One JSON line per cell: arch, width, defense, sigma, attack, median
PSNR and SSIM, seconds, victim-iterations per second, peak GPU memory (MB, torch's allocator), engine, and
GFLOP per victim-iteration with the achieved GFLOP/s where they are counted; then one line with the total
elapsed time. Cells run most informative first (IG undefended, then the targeted attack on PRECODE, ...,
each on both architectures), and none is started once --max-seconds have passed (those are reported as
skipped), so a slow GPU still returns the cells that matter most.

Budgets (iterations per cell): ConvNet 800 (config/gpu.yaml's), ResNet-18 1000 (a third of config/gpu.yaml's
3000) and 1000 for the analytic attack. Estimated from benchmarks/attack_flops.py's counts (4 victims, one
batched pass per iteration; 20 TFLOP/s sustained and 5-10 us per kernel launch, docs/cluster.md): ConvNet
119 GFLOP and 1000-1150 kernel launches per iteration, 6-17 ms; ResNet-18 36 GFLOP and 3000-3200 launches,
16-34 ms; the analytic attack 1-2 ms. That is 2.2-4.8 minutes of attacks for the 16 gradient-matching and analytic cells (the 6 head cells add seconds; the 6 FedAvg cells are not projected: their rows run one by one, the loop engine), plus a few seconds of
model set-up, capture and FLOP counting per cell.

Without a CUDA GPU (and without --device cpu) it prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NO_GPU = "gpu-check: no CUDA GPU on this machine; nothing to check"
ARCHS = ("convnet", "resnet18")
WIDTH = 64
VICTIMS = 4
DATASET = "cifar10"
CONFIG = REPO / "config" / "gpu.yaml"
# PPP's sigma per architecture: the middle of config/gpu.yaml's grid.
PPP_SIGMA = {"convnet": 0.001, "resnet18": 0.01}
# Iterations per architecture for the gradient-matching attacks, and for the analytic attack.
ITERATIONS = {"convnet": 800, "resnet18": 1000}
ANALYTIC_ITERATIONS = 1000
# (defense, attack), most informative first; every one on both architectures.
CELLS = (
    ("none", "ig"),
    ("precode", "ig_targeted"),
    ("ppp", "ig_targeted"),
    ("precode", "ig"),
    ("precode", "analytic"),
    ("ppp", "analytic"),
    ("ppp", "latent"),
    ("ppp", "ig"),
    # The head attack on 4-image updates (issue 24): from the head's gradient, through PRECODE.
    ("none", "head"),
    ("precode", "head"),
    ("ppp", "head"),
    # FedAvg (4 images, 2 local steps at config/gpu.yaml's local lr; issue 31): the attacks that cost one
    # gradient per iteration whatever the steps, on the undefended and PRECODE models.
    ("none", "sme"),
    ("precode", "sme_targeted"),
    ("none", "head_fedavg"),
)
HEAD_IMAGES_PER_UPDATE = 4
FEDAVG_STEPS, FEDAVG_LR = 2, 0.1
# The FedAvg head attack: two rounds of drift correction (config/gpu.yaml's FedAvg settings).
HEAD_FEDAVG_OPTIONS = {"drift_rounds": 2, "tv_weight": 0.002}


def plan(iterations: int | None = None, width: int = WIDTH, victims: int = VICTIMS) -> list[dict]:
    """The cells the check runs, in order."""
    cells = []
    for defense, name in CELLS:
        fedavg = name in ("sme", "sme_targeted", "head_fedavg")
        attack = "head" if name == "head_fedavg" else name
        for arch in ARCHS:
            budget = iterations or (ANALYTIC_ITERATIONS if attack in ("analytic", "head") else ITERATIONS[arch])
            grouped = (attack == "head" or fedavg) and victims >= 4
            cells.append(dict(arch=arch, width=width, dataset=DATASET, defense=defense,
                              sigma=PPP_SIGMA[arch] if defense == "ppp" else 0.0, attack=attack,
                              victims=victims, iterations=budget,
                              images_per_update=HEAD_IMAGES_PER_UPDATE if grouped else 1,
                              local_steps=FEDAVG_STEPS if fedavg else 1, local_lr=FEDAVG_LR if fedavg else 0.01,
                              options=HEAD_FEDAVG_OPTIONS if name == "head_fedavg" else {}))
    return cells


def bench_args(cell: dict, device: str, threads: int, config: Path) -> dict:
    """The options ppp-bench's parser would produce for this cell in batched mode."""
    return dict(arch=cell["arch"], dataset=cell["dataset"], defense=cell["defense"], sigma=cell["sigma"],
                attack=cell["attack"], victims=cell["victims"], images_per_update=cell.get("images_per_update", 1),
                local_steps=cell.get("local_steps", 1), local_lr=cell.get("local_lr", 0.01),
                option=dict(cell.get("options", {})),
                labels=None, iterations=[cell["iterations"]], device=device, mode="batched", engine="auto",
                batch_size=None, width=cell["width"], config=str(config), model_mode=None, precode_code=None,
                tv_weight=None, precision=None, lr=None, restarts=None, init=None, keep_encoder=None,
                init_range=None, first_victim=0, threads=threads, seed=0, victims_file=None)


def run_cell(cell: dict, device: str, threads: int, config: Path) -> dict:
    import torch

    from ppp.bench import _run_mode

    (line,) = _run_mode(bench_args(cell, device, threads, config), "batched")
    seconds = line["seconds"]
    cuda = line["device"].startswith("cuda")
    return dict(
        arch=cell["arch"], width=line["width"], dataset=cell["dataset"], defense=cell["defense"],
        sigma=cell["sigma"], attack=cell["attack"], images_per_update=cell.get("images_per_update", 1),
        local_steps=cell.get("local_steps", 1), options=cell.get("options", {}), victims=line["victims"],
        iterations=line["iterations"],
        median_psnr=line["median_psnr"], median_ssim=line["median_ssim"], mean_psnr=line["mean_psnr"],
        seconds=seconds, victim_iterations_per_second=line["victim_iterations_per_second"],
        ms_per_iteration=round(1000 * seconds / line["iterations"], 3),
        peak_memory_mb=line["peak_memory_mb"], engine=line["engine"],
        gflop_per_victim_iteration=line["gflop_per_victim_iteration"], achieved_gflops=line["achieved_gflops"],
        tv_weight=line["tv_weight"], device=line["device"],
        # Convolutions run in TF32 on Ampere and later unless torch.backends.cudnn.allow_tf32 is off (torch's default).
        gpu=torch.cuda.get_device_name() if cuda else None,
        tf32_conv=bool(torch.backends.cudnn.allow_tf32) if cuda else None,
        tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", action="store_true", help="print the cells (one JSON line each) and run nothing")
    parser.add_argument("--device", default="cuda", help="cuda (default; without one: say so, exit 0) or cpu")
    parser.add_argument("--iterations", type=int, default=None, help="every cell's iterations (smoke runs)")
    parser.add_argument("--width", type=int, default=WIDTH, help=f"model width (default {WIDTH}; smaller for smoke runs)")
    parser.add_argument("--victims", type=int, default=VICTIMS, help=f"victims per cell (default {VICTIMS})")
    parser.add_argument("--max-seconds", type=float, default=450.0,
                        help="start no cell after this many seconds (default 450, leaving room within 8 minutes)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: min(4, cores))")
    parser.add_argument("--config", default=str(CONFIG), help="the preset whose settings the cells use")
    args = parser.parse_args(argv)
    cells = plan(args.iterations, args.width, args.victims)
    if args.plan:
        for cell in cells:
            print(json.dumps(cell), flush=True)
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(NO_GPU, flush=True)
        return 0
    threads = args.threads or min(4, os.cpu_count() or 1)
    started = time.perf_counter()
    done, skipped, failed = 0, [], 0
    for cell in cells:
        if time.perf_counter() - started > args.max_seconds:
            skipped.append(cell)
            print(json.dumps({**cell, "skipped": f"over --max-seconds {args.max_seconds:g}"}), flush=True)
            continue
        try:
            print(json.dumps(run_cell(cell, args.device, threads, Path(args.config))), flush=True)
            done += 1
        except Exception as err:  # one failing cell must not hide the others' numbers
            failed += 1
            print(json.dumps({**cell, "error": f"{type(err).__name__}: {err}"}), flush=True)
    print(json.dumps(dict(gpu_check="done", cells=done, failed=failed, skipped=len(skipped),
                          total_seconds=round(time.perf_counter() - started, 1))), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
