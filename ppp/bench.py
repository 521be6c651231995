"""ppp-bench: time the attack engine, all victims batched against one victim after another.

    ppp-bench --arch lenet --defense none --victims 16 --iterations 100 --device cpu

Uses real victim images (the authors' sets committed under data/victims), captures their defended
gradients from a freshly initialised model, attacks them, and prints one JSON object per mode and line.
Each mode runs in its own process, so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time

DEFAULT_OPTIONS = {"mlp": {"width": 1024}, "lenet": {}, "convnet": {"width": 8}, "resnet18": {"width": 16}}
VICTIM_FILES = {"mnist": "mnist_128_cvb.npz", "cifar10": "cifar10_128_cvb.npz"}


def _run_mode(args: dict, mode: str) -> dict:
    import torch

    from ppp.attacks.engine import GradientMatchingProblem, ServerView, optimise
    from ppp.data import DATASETS, REPO_ROOT, load_victims
    from ppp.defenses import build_defense
    from ppp.gradients import select_parameters, shared_gradient
    from ppp.metrics import image_metrics
    from ppp.models import PrecodeSpec, build_model
    from ppp.seeding import derive_seed, generator, seeded
    from ppp.stages import peak_memory_mb, resolve_device

    torch.set_num_threads(args["threads"])
    # A one-time cost of the process, not of the attack: the first torch.optim optimiser (and torch.func)
    # imports torch._dynamo, about 1 s here. Paid before the clock starts, in both modes alike.
    import torch._dynamo  # noqa: F401
    device = resolve_device(args["device"])
    facts = DATASETS[args["dataset"]]
    path = args["victims_file"] or REPO_ROOT / "data" / "victims" / VICTIM_FILES[args["dataset"]]
    images, labels = load_victims(path, args["dataset"], 32)
    images, labels = images[: args["victims"]], labels[: args["victims"]]
    defense = build_defense(args["defense"], args["sigma"])
    options = {**DEFAULT_OPTIONS[args["arch"]], **({"width": args["width"]} if args["width"] else {})}
    with seeded(args["seed"]):
        model = build_model(args["arch"], images.shape[1:], facts["num_classes"], facts["mean"], facts["std"],
                            PrecodeSpec() if defense.needs_precode else None, options).to(device)
    groups = model.parameter_groups()
    per_victim = []
    for i in range(images.shape[0]):
        with seeded(derive_seed(args["seed"], "capture", i), device):
            grads = shared_gradient(model, images[i:i + 1].to(device), labels[i:i + 1].to(device))
        per_victim.append(defense(grads, groups, generator(derive_seed(args["seed"], "noise", i), device)))
    gradients = {n: torch.stack([g[n] for g in per_victim]) for n in per_victim[0]}
    selection = "before_precode" if args["attack"] == "ig_targeted" else "all"
    problem = GradientMatchingProblem(
        names=select_parameters(model, selection), iterations=args["iterations"], lr=0.1, tv_weight=1e-6,
        restarts=1, init="randn", signed=True, boxed=True, lr_decay=True,
        engine=args["engine"] if mode == "batched" else "loop", chunk_rows=args["batch_size"])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if mode == "batched":
        result = optimise(ServerView(model, gradients, labels), labels, problem, seed=args["seed"])
        reconstructions, engine = result.images, result.engine
    else:
        reconstructions = torch.cat([
            optimise(ServerView(model, {n: g[i:i + 1] for n, g in gradients.items()}, labels[i:i + 1]),
                     labels[i:i + 1], problem, seed=args["seed"], victim_ids=[i]).images
            for i in range(images.shape[0])])
        engine = "loop"
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak_mb = peak_memory_mb(device)
    psnr = [image_metrics(images[i], reconstructions[i])["psnr"] for i in range(images.shape[0])]
    n = images.shape[0]
    return dict(mode=mode, engine=engine, arch=args["arch"], dataset=args["dataset"], defense=args["defense"],
                attack=args["attack"], victims=n, iterations=args["iterations"], device=str(device),
                threads=args["threads"], seconds=round(seconds, 3),
                victim_iterations_per_second=round(n * args["iterations"] / seconds, 2),
                peak_memory_mb=round(peak_mb, 1), mean_psnr=round(sum(psnr) / n, 3),
                batch_size=args["batch_size"], torch=torch.__version__)


def _child(args: dict, mode: str, queue) -> None:
    try:
        queue.put(_run_mode(args, mode))
    except Exception as err:  # reported by the parent
        queue.put({"mode": mode, "error": f"{type(err).__name__}: {err}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ppp-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="lenet", choices=sorted(DEFAULT_OPTIONS))
    parser.add_argument("--dataset", default="mnist", choices=sorted(VICTIM_FILES))
    parser.add_argument("--defense", default="none", choices=["none", "noise", "precode", "ppp"])
    parser.add_argument("--sigma", type=float, default=0.0, help="noise scale for noise and ppp")
    parser.add_argument("--attack", default="ig", choices=["ig", "ig_targeted"])
    parser.add_argument("--victims", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--mode", default="both", choices=["both", "batched", "sequential"])
    parser.add_argument("--engine", default="auto", choices=["auto", "per_layer", "vmap"],
                        help="row engine of the batched mode (sequential is always the loop)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per vectorised pass (default: all)")
    parser.add_argument("--width", type=int, default=None, help="model width (default: the default preset's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--victims-file", default=None, help="a victim .npz (default: the authors' set)")
    args = vars(parser.parse_args(argv))
    if args["attack"] == "ig_targeted" and args["defense"] not in ("precode", "ppp"):
        parser.error("--attack ig_targeted needs --defense precode or ppp")
    modes = ["batched", "sequential"] if args["mode"] == "both" else [args["mode"]]
    context = multiprocessing.get_context("spawn")
    status = 0
    for mode in modes:
        queue = context.Queue()
        process = context.Process(target=_child, args=(args, mode, queue))
        process.start()
        result = queue.get()
        process.join()
        print(json.dumps(result), flush=True)
        status |= "error" in result
    return status


if __name__ == "__main__":
    sys.exit(main())
