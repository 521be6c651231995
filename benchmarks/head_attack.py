"""The head attack's limits (issue 24): feature recovery and image quality per setting on LeNet.

For each setting, 16 class-balanced test images (ppp.data.draw_victims, draw --draw) form updates of B
images (consecutive, so labels are distinct unless the setting repeats them); the client's update is
ppp.client.client_update with the setting's defence; the head attack (ppp.attacks.head) recovers the
features and inverts them at the default's budget (1000 iterations, lr 0.1, TV 0.002). Per setting:
the relative error of the recovered head inputs (each image matched to its nearest estimate within its
update; for PRECODE also PRECODE's inputs through the encoder), the share of images recovered to 1e-3,
the fit's residual, the label-inference accuracy (LLG, when the server does not know the labels) and
the median SSIM of the images (matched per update, as the study does).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/head_attack.py --dataset cifar10 --out benchmarks/results-head-attack.jsonl
    .venv/bin/python benchmarks/head_attack.py --markdown --out benchmarks/results-head-attack.jsonl   # table only
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ppp.attacks import ServerView, build_attack  # noqa: E402
from ppp.attacks.head import head_module, recover_head_inputs, recover_precode_inputs  # noqa: E402
from ppp.attacks.labels import infer_update_labels, label_accuracy  # noqa: E402
from ppp.client import ClientSetting, client_update  # noqa: E402
from ppp.data import DATASETS, draw_victims, load_bundled, resize_uint8, to_float  # noqa: E402
from ppp.defenses import build_defense  # noqa: E402
from ppp.metrics import image_metrics  # noqa: E402
from ppp.models import PrecodeSpec, build_model  # noqa: E402
from ppp.stages import match_reconstructions  # noqa: E402

# (name, images per update, local steps, defence, sigma, label order): "balanced" keeps the draw's
# round-robin classes (distinct within 4 or 8), "pairs" makes every update two pairs of one label each.
SETTINGS = [
    ("B=1", 1, 1, "none", 0.0, "balanced"),
    ("B=4", 4, 1, "none", 0.0, "balanced"),
    ("B=8", 8, 1, "none", 0.0, "balanced"),
    ("B=16", 16, 1, "none", 0.0, "balanced"),
    ("B=4, one repeated label", 4, 1, "none", 0.0, "one_pair"),
    ("B=4, two repeated labels", 4, 1, "none", 0.0, "pairs"),
    ("B=4, labels inferred", 4, 1, "none", 0.0, "inferred"),
    ("B=4, noise 0.01", 4, 1, "noise", 0.01, "balanced"),
    ("B=4, noise 0.1", 4, 1, "noise", 0.1, "balanced"),
    ("B=4, noise 1", 4, 1, "noise", 1.0, "balanced"),
    ("B=4, DP-SGD z=1", 4, 1, "dpsgd", 1.0, "balanced"),
    ("B=4, PRECODE", 4, 1, "precode", 0.0, "balanced"),
    ("B=4, PPP 1 (paper)", 4, 1, "ppp", 1.0, "balanced"),
    ("B=4, ppp_encoder 0.1", 4, 1, "ppp_encoder", 0.1, "balanced"),
    ("B=4, ppp_encoder 1", 4, 1, "ppp_encoder", 1.0, "balanced"),
    ("B=4, FedAvg 2 steps lr 0.1", 4, 2, "none", 0.0, "balanced"),
    ("B=4, FedAvg 2 steps lr 0.1, features held fixed", 4, 2, "none", 0.0, "balanced"),
    ("B=4, FedAvg 2 steps lr 0.01", 4, 2, "none", 0.0, "balanced"),
    ("B=4, FedAvg 2 steps lr 0.1, labels inferred", 4, 2, "none", 0.0, "inferred"),
    ("B=4, FedAvg 2 steps lr 0.1, PRECODE", 4, 2, "precode", 0.0, "balanced"),
    ("B=4, FedAvg 2 steps lr 0.1, PPP 1 (paper)", 4, 2, "ppp", 1.0, "balanced"),
    ("B=4, FedAvg 2 steps lr 0.1, ppp_encoder 1", 4, 2, "ppp_encoder", 1.0, "balanced"),
    ("B=8, FedAvg 2 steps lr 0.1", 8, 2, "none", 0.0, "balanced"),
]


def victims(dataset: str, count: int, draw: int, order: str):
    split = load_bundled(dataset, {}, train=False)
    images = split.images if split.images.shape[-1] == 32 else resize_uint8(split.images, 32)
    pool = draw_victims(split.labels, 4 * count, draw, 10, 0, dataset)
    labels = split.labels[pool]
    if order in ("pairs", "one_pair"):
        # Updates of (a, a, b, b) or (a, a, b, c): the first images of each class in the draw.
        by_class = {c: pool[labels == c].tolist() for c in range(10)}
        chosen = []
        for u in range(count // 4):
            a, b, c = (2 * u) % 10, (2 * u + 1) % 10, (2 * u + 5) % 10
            take = [a, a, b, b] if order == "pairs" else [a, a, b, c]
            for cls in take:
                chosen.append(by_class[cls].pop(0))
        index = torch.tensor(chosen)
    else:
        index = pool[:count]
    return to_float(images[index]), split.labels[index]


def relative_errors(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per image, the relative error of its matched estimate (within its update)."""
    out = []
    for est, true in zip(estimate.double(), truth.double()):
        order = match_reconstructions(true, est)
        out.append((est[order] - true).norm(dim=-1) / true.norm(dim=-1))
    return torch.cat(out)


def run(dataset: str, name: str, group: int, steps: int, defense_name: str, sigma: float, order: str,
        draw: int, iterations: int, seed: int, peel: bool = True, refine: int = 0, tv: float = 0.002) -> dict:
    facts = DATASETS[dataset]
    images, labels = victims(dataset, 16, draw, order)
    precode = defense_name in ("precode", "ppp", "ppp_encoder")
    torch.manual_seed(seed)
    model = build_model("lenet", (facts["channels"], 32, 32), 10, facts["mean"], facts["std"],
                        PrecodeSpec() if precode else None).eval()
    defense = build_defense(defense_name, sigma, max_grad_norm=1.0) if defense_name != "none" else build_defense("none")
    local_lr = 0.01 if "lr 0.01" in name else 0.1
    setting = ClientSetting(images=group, local_steps=steps, local_lr=local_lr)
    _, head = head_module(model)
    gen = torch.Generator().manual_seed(seed)
    updates, head_truth, precode_truth = [], [], []
    head_drift, layer_drift = [], {}
    for start in range(0, len(images), group):
        seen = {"head": [], "precode": []}  # every forward's inputs: FedAvg's local steps one after another
        hooks = [head.register_forward_hook(lambda m, i, o: seen["head"].append(i[0].detach()))]
        if precode:
            hooks.append(model.bottleneck.encoder.register_forward_hook(
                lambda m, i, o: seen["precode"].append(i[0].detach())))
        torch.manual_seed(seed + start)
        updates.append(client_update(model, images[start:start + group], labels[start:start + group], setting,
                                     defense, gen))
        for hook in hooks:
            hook.remove()
        head_truth.append(seen["head"][0])
        precode_truth.append(seen["precode"][0] if precode else None)
        if steps > 1:
            # How far FedAvg's second step reads different features, and how far one step moves each layer.
            first, second = seen["head"][0], seen["head"][1]
            head_drift.append((second - first).norm(dim=-1) / first.norm(dim=-1))
            for pname, p in model.named_parameters():
                if pname.endswith("weight"):
                    first_step = torch.autograd.grad(
                        torch.nn.functional.cross_entropy(model(images[start:start + group]),
                                                          labels[start:start + group]), p)[0]
                    layer_drift.setdefault(pname, []).append(float(local_lr * first_step.norm() / p.detach().norm()))
    grads = {n: torch.stack([u[n] for u in updates]) for n in updates[0]}
    owner = model.classifier_weight_name().rpartition(".")[0]
    known = order != "inferred"
    inferred = infer_update_labels(model, grads, group, "auto" if group > 1 else "idlg")
    started = time.perf_counter()
    fit_labels = labels if known else inferred
    per_step = "features held fixed" not in name
    recovery = recover_head_inputs(grads[f"{owner}.weight"], grads[f"{owner}.bias"], head.weight, head.bias,
                                   fit_labels.view(-1, group), local_steps=steps, local_lr=local_lr,
                                   search_labels=not known, per_step=per_step)
    fit_seconds = time.perf_counter() - started
    errors = relative_errors(recovery.features, torch.stack(head_truth))
    line = dict(dataset=dataset, setting=name, images_per_update=group, local_steps=steps, local_lr=local_lr,
                defense=defense_name, sigma=sigma, labels="known" if known else "inferred", draw=draw,
                victims=len(images), head_error_median=float(errors.median()),
                head_exact_share=float((errors < 1e-3).double().mean()),
                residual_median=float(recovery.residual.median()), fit_seconds=round(fit_seconds, 2),
                label_accuracy=float(label_accuracy(inferred, labels, group).mean()),
                label_accuracy_after_search=float(label_accuracy(recovery.labels.flatten(), labels, group).mean())
                if not known else None, peel=peel)
    if steps > 1:
        line.update(head_drift_median=float(torch.cat(head_drift).median()),
                    layer_step_median={n: round(float(torch.tensor(v).median()), 3) for n, v in layer_drift.items()})
    if precode:
        view = ServerView(model, grads, labels, "eval", images_per_update=group, local_steps=steps,
                          local_lr=local_lr)
        precode_errors = relative_errors(recover_precode_inputs(view, recovery), torch.stack(precode_truth))
        line.update(precode_error_median=float(precode_errors.median()),
                    precode_exact_share=float((precode_errors < 1e-3).double().mean()))
    attack = build_attack("head", iterations=iterations, lr=0.1, tv_weight=tv,
                          labels="known" if known else "inferred", peel=peel, per_step=per_step,
                          refine_iterations=refine)
    view = ServerView(model, grads, labels if known else None, "eval", images_per_update=group, local_steps=steps,
                      local_lr=local_lr)
    result = attack(view, seed=seed)
    ssims = []
    for start in range(0, len(images), group):
        originals, recon = images[start:start + group], result.images[start:start + group]
        order_ = match_reconstructions(originals, recon)
        ssims += [image_metrics(o, recon[k])["ssim"] for o, k in zip(originals, order_)]
    line.update(ssim_median=float(torch.tensor(ssims).median()), attack_seconds=round(result.seconds, 1))
    return line


def markdown(path: Path) -> str:
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    out = ["| dataset | setting | head-input error (median) | recovered to 1e-3 | PRECODE-input error | fit residual "
           "| LLG label accuracy (after the fit's search) | median SSIM |", "|---|---|---|---|---|---|---|---|"]
    for x in lines:
        if "refused" in x:
            out.append(f"| {x['dataset']} | {x['setting']} | refused: {x['refused']} | | | | | |")
            continue
        pre = f"{x['precode_error_median']:.1e} ({x['precode_exact_share']:.0%})" if "precode_error_median" in x else "-"
        out.append(f"| {x['dataset']} | {x['setting']} | {x['head_error_median']:.1e} | {x['head_exact_share']:.0%} | "
                   f"{pre} | {x['residual_median']:.0e} | {x['label_accuracy']:.2f}"
                   + (f" ({x['label_accuracy_after_search']:.2f})" if x.get("label_accuracy_after_search") is not None
                      else "") + f" | {x['ssim_median']:.2f} |")
    drift = [x for x in lines if "head_drift_median" in x]
    if drift:
        out += ["", "| dataset | FedAvg setting | head inputs moved by the first local step (median, relative) "
                "| weights moved by one local step (median, relative; each weight in model order: conv1, conv2, conv3, [PRECODE encoder, decoder,] head) |",
                "|---|---|---|---|"]
        for x in drift:
            steps = ", ".join(f"{v:.3f}" for v in x["layer_step_median"].values())
            out.append(f"| {x['dataset']} | {x['setting']} | {x['head_drift_median']:.2f} | {steps} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["mnist", "cifar10"])
    parser.add_argument("--settings", nargs="*", help="names from SETTINGS (default all)")
    parser.add_argument("--draw", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results-head-attack.jsonl"))
    parser.add_argument("--no-peel", action="store_true",
                        help="invert the head's (or PRECODE's) input itself, not peeled back (setting names get ', no peel')")
    parser.add_argument("--refine", type=int, default=0,
                        help="the attack's refine_iterations (setting names get ', refined N')")
    parser.add_argument("--tv", type=float, default=0.002, help="the inversion's TV weight (setting names get ', TV x')")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(Path(args.out)))
        return
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    for name, group, steps, defense, sigma, order in SETTINGS:
        if args.settings and name not in args.settings:
            continue
        try:
            line = run(args.dataset, name, group, steps, defense, sigma, order, args.draw, args.iterations, args.seed,
                       peel=not args.no_peel, refine=args.refine, tv=args.tv)
            if args.no_peel:
                line["setting"] += ", no peel"
            if args.refine:
                line["setting"] += f", refined {args.refine}"
            if args.tv != 0.002:
                line["setting"] += f", TV {args.tv:g}"
        except ValueError as err:  # e.g. more images than the head has classes
            line = dict(dataset=args.dataset, setting=name, images_per_update=group, refused=str(err))
        line.update(commit=commit, cpu=platform.machine(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
        print(json.dumps(line), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
