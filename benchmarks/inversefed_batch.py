"""ppp's Inverting Gradients against inversefed's own, on client updates of several images.

Both attack the same model (the preset's MLP, initialised as the workflow initialises it), the same victims
(the authors' sets, consecutive updates of --images-per-update images) and the same budget (the preset's
iterations and TV, signed Adam lr 0.1 with the 3/8-5/8-7/8 decay, box, randn start, one restart, known
labels), one after the other in one process. Reconstructions are matched to each update's images (least
total MSE) before PSNR and SSIM. inversefed is imported from the folder named by ANCHOR_INVERSEFED (see
../shared/anchors/README.md); none of its code is in this project.

    ANCHOR_INVERSEFED=/tmp/anchors/ig .venv/bin/python benchmarks/inversefed_batch.py --dataset cifar10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from ppp.attacks import ServerView, build_attack
from ppp.bench import VICTIM_FILES, preset_settings
from ppp.client import ClientSetting, client_update, form_updates
from ppp.data import DATASETS, REPO_ROOT, load_victims
from ppp.defenses import build_defense
from ppp.metrics import image_metrics
from ppp.models import build_model
from ppp.seeding import derive_seed, seeded
from ppp.stages import match_reconstructions


class NormalisedInput(torch.nn.Module):
    """The same network taking normalised images, as inversefed's reconstructor expects."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x * self.model.std + self.model.mean)


def matched_quality(images, reconstructions, updates):
    quality = []
    for members in updates:
        order = match_reconstructions(images[members], reconstructions[members])
        quality += [image_metrics(images[i], reconstructions[members[order[k]]]) for k, i in enumerate(members)]
    ssim = torch.tensor([q["ssim"] for q in quality])
    psnr = torch.tensor([q["psnr"] for q in quality])
    return dict(median_ssim=round(float(ssim.median()), 4), mean_ssim=round(float(ssim.mean()), 4),
                median_psnr=round(float(psnr.median()), 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10", choices=sorted(VICTIM_FILES))
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--victims", type=int, default=8)
    parser.add_argument("--images-per-update", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=None, help="default: the preset's")
    parser.add_argument("--first-victim", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the attacks' seeds (both implementations)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = os.environ.get("ANCHOR_INVERSEFED")
    if not root or not os.path.isfile(os.path.join(root, "inversefed", "__init__.py")):
        sys.exit("set ANCHOR_INVERSEFED to the folder that holds the inversefed package")
    sys.path.insert(0, root)
    import inversefed

    settings = preset_settings(REPO_ROOT / "config" / "config.yaml", args.arch, {})
    attack_options = {**settings["attack"], "progress_every": 0}
    iterations = args.iterations or int(attack_options["iterations"])
    attack_options["iterations"] = iterations
    facts = DATASETS[args.dataset]
    images, labels = load_victims(REPO_ROOT / "data" / "victims" / VICTIM_FILES[args.dataset], args.dataset, 32)
    images = images[args.first_victim: args.first_victim + args.victims]
    labels = labels[args.first_victim: args.first_victim + args.victims]
    setting = ClientSetting(args.images_per_update)
    updates = form_updates(images.shape[0], setting.images)
    with seeded(0):
        model = build_model(args.arch, images.shape[1:], facts["num_classes"], facts["mean"], facts["std"], None,
                            settings["model_options"]).eval()
    none = build_defense("none")
    shared = [client_update(model, images[m], labels[m], setting, none, torch.Generator().manual_seed(0))
              for m in updates]
    gradients = {n: torch.stack([g[n] for g in shared]) for n in shared[0]}
    common = dict(dataset=args.dataset, arch=args.arch, victims=len(updates) * setting.images,
                  images_per_update=setting.images, iterations=iterations, tv_weight=attack_options["tv_weight"],
                  threads=args.threads, seed=args.seed)

    started = time.perf_counter()
    view = ServerView(model, gradients, labels[:len(updates) * setting.images].clone(), settings["model_mode"],
                      images_per_update=setting.images)
    result = build_attack("ig", **attack_options)(view, seed=derive_seed(args.seed, "bench"))
    seconds = time.perf_counter() - started
    print(json.dumps(dict(common, implementation="ppp", engine=result.engine, seconds=round(seconds, 2),
                          **matched_quality(images, result.images, updates))), flush=True)

    config = dict(signed=True, boxed=True, cost_fn="sim", indices="def", weights="equal", lr=0.1, optim="adam",
                  restarts=1, max_iterations=iterations, total_variation=attack_options["tv_weight"], init="randn",
                  filter="none", lr_decay=True, scoring_choice="loss")
    wrapped = NormalisedInput(model).eval()
    mean, std = model.mean, model.std
    reconstructions = []
    started = time.perf_counter()
    for u, members in enumerate(updates):
        torch.manual_seed(derive_seed(args.seed, "inversefed", u))
        reconstructor = inversefed.GradientReconstructor(wrapped, (mean, std), config, num_images=setting.images)
        target = [gradients[n][u] for n, _ in model.named_parameters()]
        output, _ = reconstructor.reconstruct(target, labels[members], img_shape=tuple(images.shape[1:]))
        reconstructions.append((output.detach() * std + mean).clamp(0, 1))
    seconds = time.perf_counter() - started
    print(json.dumps(dict(common, implementation="inversefed", engine="inversefed", seconds=round(seconds, 2),
                          **matched_quality(images, torch.cat(reconstructions), updates))), flush=True)


if __name__ == "__main__":
    main()
