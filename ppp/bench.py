"""ppp-bench: time the attack engine and measure what it reconstructs, all victims batched against one
victim after another.

    ppp-bench --arch lenet --defense none --victims 16 --iterations 100 --device cpu
    ppp-bench --arch convnet --dataset cifar10 --victims 4 --iterations 50,100,200 --mode batched
    ppp-bench --arch mlp --dataset cifar10 --victims 8 --images-per-update 4 --local-steps 2 --mode batched

Uses real victim images (the authors' sets committed under data/victims), captures their defended
gradients from a freshly initialised model, attacks them, and prints one JSON object per mode and budget
(speed, and the PSNR/SSIM of the reconstructions). With `--images-per-update B` (and `--local-steps S`) the
victims form client updates of B images (S local SGD steps, FedAvg) as the workflow forms them; each update's
reconstructions are matched to its images before PSNR/SSIM, and the speed is in image-iterations per second. The model, the threat model and the attack settings are
those of the preset (`--config`, default config/config.yaml) for the architecture, unless a flag
overrides them. Each mode runs in its own process, so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time

VICTIM_FILES = {"mnist": "mnist_128_cvb.npz", "cifar10": "cifar10_128_cvb.npz"}
ARCHS = ("mlp", "lenet", "convnet", "resnet18")
# Attack settings a command-line flag may override; the rest come from the preset.
OVERRIDES = ("lr", "tv_weight", "restarts", "init", "precode_code", "keep_encoder", "precision", "labels")


def preset_settings(config_path, arch: str, overrides: dict) -> dict:
    """The model options, PRECODE, threat model and attack options the preset uses for `arch`, with
    the command line's overrides: the benchmark measures what the workflow runs."""
    from ppp.config import attack_options, client_settings, load_preset, model_mode, noise_options

    config = load_preset(config_path)  # merged over config/config.yaml, as `snakemake --configfile` does
    # The preset's own options at the client setting benchmarked, where it sweeps that setting.
    # FedAvg settings are named by their lr too (b4s2lr0.1): the one at the benchmark's lr, else the first.
    wanted = (overrides.get("images_per_update") or 1, overrides.get("local_steps") or 1)
    same = [s for s in client_settings(config, arch) if (s.images, s.local_steps) == wanted]
    same.sort(key=lambda s: s.local_steps > 1 and s.local_lr != overrides.get("local_lr", s.local_lr))
    client = same[0].name if same else None
    model_options = dict(config.get("models", {}).get(arch, {}))
    if overrides.get("width"):
        model_options["width"] = overrides["width"]
    if overrides.get("init_range") is not None:
        model_options["init_range"] = overrides["init_range"]
    attack = attack_options(config, arch, overrides.get("attack"), client)
    attack.update({k: overrides[k] for k in OVERRIDES if overrides.get(k) is not None})
    attack.update(overrides.get("option") or {})
    return dict(model_options=model_options, precode=dict(config["precode"]), attack=attack, noise=noise_options(config),
                model_mode=overrides.get("model_mode") or model_mode(config, arch))


def flops_per_victim_iteration(model, names: list[str], gradients: dict, image: "torch.Tensor",
                               label: "torch.Tensor", tv_weight: float) -> int:
    """FLOPs of one victim's attack iteration as the math states it (torch's FLOP counter over the loop
    formulation: forward, backward with a graph, and the backward to the image); the same for every
    engine, so achieved GFLOP/s compare across engines and against the machine's peak."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ppp.attacks.engine import RowObjective

    objective = RowObjective(model, names, label[:1], [gradients[n][:1] for n in names], tv_weight)
    x = ((image[:1] - model.mean[0]) / model.std[0]).detach()
    with FlopCounterMode(display=False) as counter:
        objective.loop(x, torch.arange(1))
    return int(counter.get_total_flops())


def _run_mode(args: dict, mode: str) -> list[dict]:
    import torch

    from ppp.attacks.engine import ServerView
    from ppp.attacks.labels import label_accuracy
    from ppp.attacks.registry import ATTACKS, build_attack
    from ppp.client import ClientSetting, client_update, form_updates
    from ppp.data import DATASETS, REPO_ROOT, load_victims
    from ppp.defenses import build_defense
    from ppp.gradients import select_parameters, set_model_mode
    from ppp.metrics import image_metrics
    from ppp.models import PrecodeSpec, build_model
    from ppp.seeding import derive_seed, generator, seeded
    from ppp.stages import match_reconstructions, peak_memory_mb, resolve_device

    torch.set_num_threads(args["threads"])
    # A one-time cost of the process, not of the attack: torch.func (the vmap engine) imports
    # torch._dynamo, 1-1.7 s here. Paid before the clock starts, in both modes alike.
    import torch._dynamo  # noqa: F401
    device = resolve_device(args["device"])
    facts = DATASETS[args["dataset"]]
    settings = preset_settings(args["config"] or REPO_ROOT / "config" / "config.yaml", args["arch"], args)
    if args.get("victim_draw") is not None:
        # As the workflow's `victims: draw`: a class-balanced draw from the bundled test split.
        from ppp.data import draw_victims, load_split, resize_uint8, to_float
        split = load_split(args["dataset"], {"source": "bundled"}, train=False)
        chosen = draw_victims(split.labels, args["victims"], args["victim_draw"], facts["num_classes"],
                              args["draw_seed"], args["dataset"])
        images, labels = to_float(resize_uint8(split.images[chosen], 32)), split.labels[chosen].long()
    else:
        path = args["victims_file"] or REPO_ROOT / "data" / "victims" / VICTIM_FILES[args["dataset"]]
        images, labels = load_victims(path, args["dataset"], 32)
    first = args["first_victim"]
    images, labels = images[first: first + args["victims"]], labels[first: first + args["victims"]]
    defense = build_defense(args["defense"], args["sigma"], **settings["noise"])
    precode = PrecodeSpec(**settings["precode"]) if defense.needs_precode else None
    with seeded(args["seed"]):
        model = build_model(args["arch"], images.shape[1:], facts["num_classes"], facts["mean"], facts["std"],
                            precode, settings["model_options"]).to(device)
    set_model_mode(model, settings["model_mode"])
    setting = ClientSetting(args["images_per_update"], args["local_steps"], args["local_lr"],
                            args.get("local_batch") or 0)
    updates = form_updates(images.shape[0], setting.images)
    images, labels = images[:len(updates) * setting.images], labels[:len(updates) * setting.images]
    per_victim = []
    for u, members in enumerate(updates):
        with seeded(derive_seed(args["seed"], "capture", u), device):
            per_victim.append(client_update(model, images[members].to(device), labels[members].to(device), setting,
                                            defense, generator(derive_seed(args["seed"], "noise", u), device)))
    gradients = {n: torch.stack([g[n] for g in per_victim]) for n in per_victim[0]}
    known = settings["attack"].get("labels", "known") == "known"

    def view_of(rows):
        return ServerView(model, {n: g[rows] for n, g in gradients.items()},
                          labels.view(len(updates), -1)[rows].flatten() if known else None, settings["model_mode"],
                          images_per_update=setting.images, local_steps=setting.local_steps,
                          local_lr=setting.local_lr, local_batch=setting.local_batch)
    selection = ATTACKS[args["attack"]].fixed.get("selection")
    flops = None  # counted for the gradient-matching attacks with a fixed selection
    if selection is not None and setting.is_single_gradient:
        matched = select_parameters(model, selection, settings["attack"].get("keep_encoder", False))
        flops = flops_per_victim_iteration(model, matched, gradients, images[:1].to(device), labels[:1].to(device),
                                           settings["attack"].get("tv_weight", 0.0))
    lines = []
    for iterations in args["iterations"] or [int(settings["attack"].get("iterations", 100))]:
        options = {k: v for k, v in settings["attack"].items() if k != "convergence_images"}  # a workflow check
        attack = build_attack(args["attack"], **{**options, "iterations": iterations, "progress_every": 0,
                                                 "engine": args["engine"] if mode == "batched" else "loop",
                                                 "batch_size": args["batch_size"]})
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        half_images = None
        if mode == "batched":
            result = attack.finish(attack(view_of(slice(None)), seed=args["seed"]), view_of(slice(None)))
            reconstructions, engine, used_labels = result.images, result.engine, result.labels
            half_images = result.images_half
        else:
            results = [attack.finish(attack(view_of(slice(u, u + 1)), seed=args["seed"], victim_ids=[u]),
                                     view_of(slice(u, u + 1))) for u in range(len(updates))]
            reconstructions = torch.cat([r.images for r in results])
            used_labels = torch.cat([r.labels for r in results])
            engine = "loop"
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        quality = []
        for members in updates:
            order = match_reconstructions(images[members], reconstructions[members])
            quality += [image_metrics(images[i], reconstructions[members[order[k]]]) for k, i in enumerate(members)]
        half_ssim = []
        if half_images is not None:
            for members in updates:
                order = match_reconstructions(images[members], half_images[members])
                half_ssim += [image_metrics(images[i], half_images[members[order[k]]])["ssim"]
                              for k, i in enumerate(members)]
        n = images.shape[0]
        psnr = torch.tensor([q["psnr"] for q in quality])
        ssim = torch.tensor([q["ssim"] for q in quality])
        lines.append(dict(
            mode=mode, engine=engine, arch=args["arch"], dataset=args["dataset"], defense=args["defense"],
            sigma=args["sigma"], attack=args["attack"], victims=n, first_victim=first, iterations=iterations,
            model_mode=settings["model_mode"], width=settings["model_options"].get("width"),
            init_range=settings["model_options"].get("init_range"),
            tv_weight=settings["attack"].get("tv_weight"), lr=settings["attack"].get("lr"),
            restarts=settings["attack"].get("restarts"), precode_code=settings["attack"].get("precode_code"),
            keep_encoder=settings["attack"].get("keep_encoder"), precision=settings["attack"].get("precision", "float32"),
            images_per_update=setting.images, local_steps=setting.local_steps,
            local_lr=setting.local_lr if setting.local_steps > 1 else None, local_batch=setting.local_batch,
            updates=len(updates),
            labels="known" if known else "inferred",
            label_accuracy=None if known or bool((used_labels < 0).any())
            else round(float(label_accuracy(used_labels, labels, setting.images).mean()), 4),
            device=str(device), threads=args["threads"], seconds=round(seconds, 3),
            victim_iterations_per_second=round(n * iterations / seconds, 2),
            image_iterations_per_second=round(n * iterations / seconds, 2),
            gflop_per_victim_iteration=round(flops / 1e9, 4) if flops else None,
            achieved_gflops=round(flops * n * iterations / seconds / 1e9, 2) if flops else None,
            peak_memory_mb=round(peak_memory_mb(device), 1),
            mean_psnr=round(float(psnr.mean()), 3), median_psnr=round(float(psnr.median()), 3),
            mean_ssim=round(float(ssim.mean()), 4), median_ssim=round(float(ssim.median()), 4),
            median_ssim_half_budget=round(float(torch.tensor(half_ssim).median()), 4) if half_ssim else None,
            victim_draw=args.get("victim_draw"), ssim_per_image=[round(float(v), 4) for v in ssim],
            batch_size=args["batch_size"], options=args.get("option") or {}, torch=torch.__version__))
    return lines


def _child(args: dict, mode: str, queue) -> None:
    try:
        queue.put(_run_mode(args, mode))
    except Exception as err:  # reported by the parent
        queue.put([{"mode": mode, "error": f"{type(err).__name__}: {err}"}])


def main(argv: list[str] | None = None) -> int:
    from ppp.attacks.registry import ATTACKS

    parser = argparse.ArgumentParser(prog="ppp-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="lenet", choices=ARCHS)
    parser.add_argument("--dataset", default="mnist", choices=sorted(VICTIM_FILES))
    parser.add_argument("--defense", default="none",
                        choices=["none", "noise", "precode", "ppp", "ppp_encoder", "ppp_no_decoder", "dpsgd"])
    parser.add_argument("--sigma", type=float, default=0.0, help="noise scale for noise and ppp")
    parser.add_argument("--attack", default="ig", choices=sorted(ATTACKS))
    parser.add_argument("--victims", type=int, default=16, help="victim images (whole updates of them are used)")
    parser.add_argument("--images-per-update", type=int, default=1, help="images in one client update")
    parser.add_argument("--local-steps", type=int, default=1, help="local SGD steps per update (FedAvg > 1)")
    parser.add_argument("--local-lr", type=float, default=0.01, help="the client's local learning rate")
    parser.add_argument("--local-batch", type=int, default=0,
                        help="images per local step (FedAvg on mini-batches; default 0: all of the update's)")
    parser.add_argument("--labels", default=None, choices=["known", "inferred"], help="override the preset's")
    parser.add_argument("--iterations", type=_int_list, default=None,
                        help="attack iterations; a comma list (50,100,200) runs one attack per budget "
                             "(default: the preset's for the architecture)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--mode", default="both", choices=["both", "batched", "sequential"])
    parser.add_argument("--engine", default="auto", choices=["auto", "per_layer", "vmap"],
                        help="row engine of the batched mode (sequential is always the loop)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per vectorised pass (default: all)")
    parser.add_argument("--width", type=int, default=None, help="model width (default: the preset's)")
    parser.add_argument("--config", default=None,
                        help="the preset whose model, threat model and attack settings are used, merged over "
                             "config/config.yaml as snakemake --configfile merges it (default: config/config.yaml)")
    parser.add_argument("--model-mode", default=None, choices=["eval", "train"], help="override the preset's")
    parser.add_argument("--precode-code", default=None, choices=["sample", "mean"], help="override the preset's")
    parser.add_argument("--tv-weight", type=float, default=None, help="override the preset's")
    parser.add_argument("--precision", default=None, choices=["float32", "bfloat16", "auto"],
                        help="the objective's precision (bfloat16: autocast; auto: bfloat16 where native); override "
                             "the preset's")
    parser.add_argument("--lr", type=float, default=None, help="override the preset's")
    parser.add_argument("--restarts", type=int, default=None, help="override the preset's")
    parser.add_argument("--init", default=None, choices=["randn", "rand"], help="override the preset's")
    parser.add_argument("--keep-encoder", action="store_const", const=True, default=None,
                        help="the targeted attack also matches PRECODE's encoder; override the preset's")
    parser.add_argument("--init-range", type=float, default=None,
                        help="LeNet's uniform init range (0: PyTorch's default init); override the preset's")
    parser.add_argument("--first-victim", type=int, default=0, help="attack victims from this index on")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", type=_attack_option, action="append", default=None, metavar="KEY=VALUE",
                        help="any attack option (YAML value), e.g. drift_rounds=2 or alpha_lr=0.01; repeatable")
    parser.add_argument("--victims-file", default=None, help="a victim .npz (default: the authors' set)")
    parser.add_argument("--victim-draw", type=int, default=None,
                        help="attack draw k of class-balanced victims from the bundled test split (the workflow's "
                             "victims: draw with victim_draw k; --victims of them) instead of a victim file")
    parser.add_argument("--draw-seed", type=int, default=0, help="the base seed of the draw (the config's seed)")
    args = vars(parser.parse_args(argv))
    args["option"] = dict(args["option"] or [])
    from ppp.attacks.registry import attack_needs_precode
    from ppp.defenses import DEFENSES
    if attack_needs_precode(args["attack"]) and not DEFENSES[args["defense"]].needs_precode:
        parser.error(f"--attack {args['attack']} needs a PRECODE defence (precode or a ppp variant)")
    modes = ["batched", "sequential"] if args["mode"] == "both" else [args["mode"]]
    context = multiprocessing.get_context("spawn")
    status = 0
    for mode in modes:
        queue = context.Queue()
        process = context.Process(target=_child, args=(args, mode, queue))
        process.start()
        results = queue.get()
        process.join()
        for result in results:
            print(json.dumps(result), flush=True)
            status |= "error" in result
    return status


def _attack_option(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):  # YAML 1.1 reads 1e-2 (no dot) as a string: a number was meant
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return key.strip(), parsed


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


if __name__ == "__main__":
    sys.exit(main())
