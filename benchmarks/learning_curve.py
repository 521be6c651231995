"""Learning curves of the workflow's own training (issue 23): test accuracy after every epoch of the
undefended model and the defended models the verdicts compare with it, the epoch at which the plateau rule
(ppp.verdicts.plateaued) first holds, and each defended model's paired accuracy drop at the undefended
model's plateau epoch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning_curve.py --dataset cifar10 --arch lenet --epochs 40
    .venv/bin/python benchmarks/learning_curve.py --plot benchmarks/learning_curves.png --markdown  # no training

Training is the workflow's, step for step: the data from ppp.stages.prepare_data with the preset's dataset
options, the shared initialisation from ppp.stages.init_model (one per model variant), the defence from
ppp.defenses.build_defense with the preset's noise options, ppp.training.train with the preset's
TrainingConfig for the architecture (only `epochs` raised to the cap) and the cell seed
ppp.stages.train_model derives, and the seeded per-example test pass ppp.stages.train_model runs after every
epoch. Nothing in ppp.training depends on the number of epochs (no schedule), so epoch e of a longer run is
the model the workflow trains with `training.epochs: e`; `--verify-epochs N` checks this against
ppp.stages.train_model itself on one defended cell.

A curve stops once the plateau rule has held for `--hold` consecutive epochs (and at least `--past` epochs
past its first plateau). Its plateau epoch is the first at which the rule holds; its stable plateau epoch
the first of the unbroken run of such epochs that ends it (they differ where a one-epoch dip satisfied the
rule before the curve rose again). A defended curve runs at least to both of the undefended model's (and
to the preset's epoch count), where its paired drop is taken (ppp.verdicts.paired_accuracy_drop over the
per-example correctness on the test split), and the drop is also kept at every epoch both curves reached.
One JSON line per (dataset, arch, defence, sigma) is appended to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_TAG = "plateau-stop"
DEFAULT_CELLS = ["none:0", "precode:0", "ppp:0.01", "ppp:0.1", "ppp:1.0", "ppp_encoder:0.1"]


class Stop(Exception):
    """Raised from the per-epoch hook to end a curve once it has plateaued long enough."""


def parse_cell(text: str) -> tuple[str, float]:
    defense, _, sigma = text.partition(":")
    return defense, float(sigma or 0)


def load_config(path: list[str]) -> dict:
    """The preset merged over config/config.yaml key by key, as `snakemake --configfile` does."""
    from ppp.config import load_preset

    return load_preset(path)


def plateau_flags(curve: list[float], thresholds) -> list[bool]:
    from ppp.verdicts import plateaued

    return [plateaued(curve[:e], thresholds) for e in range(1, len(curve) + 1)]


def first_plateau(curve: list[float], thresholds) -> int | None:
    flags = plateau_flags(curve, thresholds)
    return flags.index(True) + 1 if True in flags else None


def stable_plateau(curve: list[float], thresholds) -> int | None:
    """The first epoch of the unbroken run of epochs at which the rule holds that ends the curve (None
    where it does not hold at the last epoch): where the curve has stayed level, not a one-epoch dip."""
    flags = plateau_flags(curve, thresholds)
    if not flags or not flags[-1]:
        return None
    start = len(flags)
    while start > 1 and flags[start - 2]:
        start -= 1
    return start


def should_stop(curve: list[float], thresholds, hold: int, past: int, at_least: int) -> bool:
    """The rule has held for the last `hold` epochs, `past` epochs have passed since it first held, and
    the curve has reached `at_least` epochs."""
    flags = plateau_flags(curve, thresholds)
    first = first_plateau(curve, thresholds)
    return (len(curve) >= at_least and first is not None and len(curve) - first >= past
            and len(flags) >= hold and all(flags[-hold:]))


def train_curve(arch, defense_name, sigma, config, paths, meta, training, cap, thresholds, hold, past,
                at_least, device, log) -> dict:
    """Train one cell as ppp.stages.train_model does, recording the seeded per-example test correctness
    after every epoch; stop early per `should_stop`."""
    import torch

    from ppp import stages
    from ppp.config import noise_options, sigma_label
    from ppp.defenses import build_defense
    from ppp.models import PrecodeSpec
    from ppp.seeding import derive_seed
    from ppp.training import TrainingConfig, correct_predictions, train

    noise = noise_options(config)
    defense = build_defense(defense_name, sigma, **noise)
    variant = "precode" if defense.needs_precode else "plain"
    precode = PrecodeSpec(**config["precode"])
    model = stages.load_model(str(paths["init"][variant]), arch, meta, config["models"].get(arch, {}),
                              precode if defense.needs_precode else None)
    images, labels = stages.load_split_tensors(str(paths["train"]))
    test_images, test_labels = stages.load_split_tensors(str(paths["test"]))
    cell_seed = derive_seed(config["seed"], "train", meta["dataset"], arch, defense_name, float(sigma))
    config_cap = TrainingConfig(**{**training, "epochs": cap})
    curve, correct, train_s, eval_s = [], [], [], []
    clock = {"mark": time.perf_counter()}

    def after_epoch(epoch: int) -> float:
        entered = time.perf_counter()
        train_s.append(entered - clock["mark"])
        hits = correct_predictions(model, test_images, test_labels, device, cell_seed)
        correct.append(hits.numpy().astype(bool))
        curve.append(float(hits.float().mean()))
        clock["mark"] = time.perf_counter()
        eval_s.append(clock["mark"] - entered)
        log(f"  {defense_name} {sigma_label(sigma)} epoch {epoch}: {curve[-1]:.4f} "
            f"(train {train_s[-1]:.1f} s, test {eval_s[-1]:.1f} s)")
        if should_stop(curve, thresholds, hold, past, at_least):
            raise Stop
        return curve[-1]

    try:
        train(model, defense, images, labels, config_cap, cell_seed, device, after_epoch=after_epoch)
        stopped = "cap"
    except Stop:
        stopped = "plateau"
    return dict(defense=defense_name, sigma=float(sigma), curve=curve, correct=correct, train_s=train_s,
                eval_s=eval_s, stopped=stopped, cell_seed=cell_seed)


def verify(arch, defense_name, sigma, config, paths, training, epochs, seed, device, result, workdir) -> dict:
    """Train the cell with ppp.stages.train_model itself at `epochs` epochs and compare."""
    from ppp import stages
    from ppp.config import noise_options
    from ppp.defenses import DEFENSES
    from ppp.models import PrecodeSpec
    from ppp.training import TrainingConfig

    out = Path(workdir) / "verify"
    out.mkdir(parents=True, exist_ok=True)
    defense_variant = "precode" if DEFENSES[defense_name].needs_precode else "plain"
    metrics = stages.train_model(arch, defense_name, float(sigma), noise_options(config),
                                 str(paths["init"][defense_variant]), str(paths["meta"]), str(paths["train"]),
                                 str(paths["test"]), config["models"].get(arch, {}), PrecodeSpec(**config["precode"]),
                                 TrainingConfig(**{**training, "epochs": epochs}), seed, device,
                                 str(out / "trained.safetensors"), str(out / "metrics.json"))
    ours = "".join("1" if c else "0" for c in result["correct"][epochs - 1])
    same = (metrics["test_accuracy_per_epoch"] == result["curve"][:epochs] and metrics["test_correct"] == ours)
    return dict(defense=defense_name, sigma=float(sigma), epochs=epochs, identical=bool(same),
                workflow_curve=metrics["test_accuracy_per_epoch"], curve=result["curve"][:epochs])


def drop_at(reference, other, epoch):
    """Paired drop (reference minus other) at `epoch` (1-based), or None where a curve is shorter."""
    import numpy as np

    from ppp.verdicts import paired_accuracy_drop

    if epoch is None or epoch > len(reference["correct"]) or epoch > len(other["correct"]):
        return None
    estimate, low, high = paired_accuracy_drop(reference["correct"][epoch - 1].astype(np.float64),
                                               other["correct"][epoch - 1].astype(np.float64))
    return [round(estimate, 4), round(low, 4), round(high, 4)]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run(args) -> None:
    import torch

    from ppp import stages
    from ppp.config import training_options
    from ppp.hardware import cpu_features, cpu_model
    from ppp.io import read_json
    from ppp.models import PrecodeSpec
    from ppp.verdicts import Thresholds

    torch.set_num_threads(args.threads)
    config = load_config(args.configfile)
    thresholds = Thresholds()
    device = stages.resolve_device(args.device)
    seed = int(config["seed"])
    dataset, arch = args.dataset, args.arch
    work = Path(args.workdir)
    data_dir = work / "data" / dataset
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {"train": data_dir / "train.safetensors", "test": data_dir / "test.safetensors",
             "meta": data_dir / "meta.json", "init": {}}
    options = {k: v for k, v in config["datasets"][dataset].items() if k != "victims"}  # data_options
    stages.prepare_data(dataset, options, seed, str(paths["train"]), str(paths["test"]), str(paths["meta"]))
    meta = read_json(str(paths["meta"]))
    for variant in ("plain", "precode"):
        paths["init"][variant] = work / "models" / dataset / arch / variant / "init.safetensors"
        paths["init"][variant].parent.mkdir(parents=True, exist_ok=True)
        stages.init_model(arch, variant, str(paths["meta"]), config["models"].get(arch, {}),
                          PrecodeSpec(**config["precode"]), seed, str(paths["init"][variant]))
    training = training_options(config, arch)
    default_epochs = int(training["epochs"])
    cells = [parse_cell(c) for c in args.cells]
    if cells[0] != ("none", 0.0):
        cells = [("none", 0.0)] + [c for c in cells if c != ("none", 0.0)]

    def log(text):
        print(text, file=sys.stderr, flush=True)

    log(f"{dataset} {arch}: {meta['counts']} examples, training {training}, cap {args.epochs} epochs")
    results = []
    reference = train_curve(arch, "none", 0.0, config, paths, meta, training, args.epochs, thresholds,
                            args.hold, args.past, 1, device, log)
    results.append(reference)
    ref_plateau = first_plateau(reference["curve"], thresholds)
    ref_stable = stable_plateau(reference["curve"], thresholds)
    log(f"  undefended plateau epoch: {ref_plateau} (stable from {ref_stable})")
    # Every defended curve reaches the undefended model's plateau epochs (and the preset's epochs), where
    # its paired drop is taken; without an undefended plateau, the cap.
    at_least = max(ref_plateau or args.epochs, ref_stable or args.epochs, default_epochs)
    for defense, sigma in cells[1:]:
        results.append(train_curve(arch, defense, sigma, config, paths, meta, training, args.epochs, thresholds,
                                   args.hold, args.past, at_least, device, log))
    checks = []
    if args.verify_epochs:
        target = results[-1]
        checks.append(verify(arch, target["defense"], target["sigma"], config, paths, training,
                             args.verify_epochs, seed, device, target, work))
        log(f"  verify: {checks[-1]}")
    common = {"dataset": dataset, "arch": arch, "train_examples": meta["counts"]["train"],
              "test_examples": meta["counts"]["test"], "image_size": meta["image_size"],
              "batch_size": training["batch_size"], "lr": training["lr"], "optimizer": training["optimizer"],
              "precision": training.get("precision", "float32"),
              "default_epochs": default_epochs, "cap_epochs": args.epochs, "hold": args.hold,
              "plateau_rule": {"epochs": thresholds.plateau_epochs, "gain": thresholds.plateau_gain},
              "threads": torch.get_num_threads(), "device": str(device), "cpu": cpu_model(),
              "cpu_features": cpu_features(), "torch": torch.__version__, "commit": git_commit(),
              "config": args.configfile, "date": time.strftime("%Y-%m-%d"), "tag": args.tag}
    with open(args.out, "a") as handle:
        for result in results:
            curve = result["curve"]
            plateau = first_plateau(curve, thresholds)
            best = max(curve)

            def correct_at(epoch, result=result, curve=curve):
                if not epoch or epoch > len(curve):
                    return None
                return "".join("1" if c else "0" for c in result["correct"][epoch - 1])

            line = dict(common, defense=result["defense"], sigma=result["sigma"], epochs_run=len(curve),
                        stopped=result["stopped"], curve=[round(a, 4) for a in curve],
                        rule_holds="".join("1" if f else "0" for f in plateau_flags(curve, thresholds)),
                        plateau_epoch=plateau, stable_plateau_epoch=stable_plateau(curve, thresholds),
                        best=round(best, 4), best_epoch=curve.index(best) + 1,
                        last=round(curve[-1], 4),
                        seconds_per_epoch=round(statistics.median(result["train_s"]), 2),  # the first has warm-up
                        train_seconds=round(sum(result["train_s"]), 1),
                        test_seconds_per_epoch=round(statistics.median(result["eval_s"]), 2),
                        reference_plateau_epoch=ref_plateau, reference_stable_plateau_epoch=ref_stable,
                        accuracy_at_reference_plateau=(round(curve[ref_plateau - 1], 4)
                                                       if ref_plateau and ref_plateau <= len(curve) else None),
                        drop_at_reference_plateau=drop_at(reference, result, ref_plateau),
                        accuracy_at_reference_stable_plateau=(round(curve[ref_stable - 1], 4)
                                                              if ref_stable and ref_stable <= len(curve) else None),
                        drop_at_reference_stable_plateau=drop_at(reference, result, ref_stable),
                        drop_at_default_epochs=drop_at(reference, result, default_epochs),
                        # [estimate, low, high] at every epoch both curves reached
                        drop_per_epoch=[drop_at(reference, result, e)
                                        for e in range(1, min(len(curve), len(reference["curve"])) + 1)],
                        correct_at_reference_plateau=correct_at(ref_plateau),
                        correct_at_reference_stable_plateau=correct_at(ref_stable),
                        verified=[c for c in checks if (c["defense"], c["sigma"]) == (result["defense"], result["sigma"])]
                        or None)
            handle.write(json.dumps(line) + "\n")
            print(json.dumps({k: v for k, v in line.items() if k not in ("correct_at_reference_plateau",
                                                                          "correct_at_reference_stable_plateau",
                                                                          "drop_per_epoch")}), flush=True)


def plot(results_path: str, out: str) -> None:
    """One panel per (dataset, arch): test accuracy per epoch, one line per defence and sigma (its longest
    record: runs of one cell agree epoch for epoch, training being deterministic), the undefended curve's
    plateau epochs (as shown) and the preset's epoch count marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    latest = {}
    for text in Path(results_path).read_text().splitlines():
        if text.strip():
            line = json.loads(text)
            key = (line["dataset"], line["arch"], line["defense"], line["sigma"])
            if key in latest:
                short, long = sorted((latest[key]["curve"], line["curve"]), key=len)
                if long[:len(short)] != short:
                    print(f"warning: two runs of {key} differ", file=sys.stderr)
            if key not in latest or len(line["curve"]) > len(latest[key]["curve"]):
                latest[key] = line
    datasets = sorted({d for d, _, _, _ in latest}, key=lambda d: (d != "mnist", d))
    archs = sorted({a for _, a, _, _ in latest}, key=lambda a: (a != "mlp", a))
    fig, axes = plt.subplots(len(datasets), len(archs), figsize=(6.4 * len(archs), 4.6 * len(datasets)),
                             squeeze=False)
    styles = {("none", 0.0): ("black", "-", "o"), ("precode", 0.0): ("tab:blue", "-", "s"),
              ("ppp", 0.01): ("tab:green", "--", "^"), ("ppp", 0.1): ("tab:orange", "--", "v"),
              ("ppp", 1.0): ("tab:red", "--", "D"), ("ppp_encoder", 0.1): ("tab:purple", ":", "x")}
    order = {"none": 0, "precode": 1, "ppp": 2, "ppp_encoder": 3}
    for i, dataset in enumerate(datasets):
        for j, arch in enumerate(archs):
            ax = axes[i][j]
            lines = [v for (d, a, _, _), v in latest.items() if (d, a) == (dataset, arch)]
            if not lines:
                ax.set_visible(False)
                continue
            lines.sort(key=lambda v: (order.get(v["defense"], 9), v["defense"], v["sigma"]))
            for v in lines:
                color, style, marker = styles.get((v["defense"], v["sigma"]), (None, "-", "."))
                epochs = range(1, len(v["curve"]) + 1)
                label = "undefended" if v["defense"] == "none" else (
                    v["defense"] if v["defense"] == "precode" else f"{v['defense']} σ={v['sigma']:g}")
                ax.plot(epochs, [100 * a for a in v["curve"]], color=color, linestyle=style, marker=marker,
                        markersize=3.5, linewidth=1.5, label=label)
            ref = lines[0]
            # from the record (decided on the unrounded accuracies, as the workflow does)
            first = ref["plateau_epoch"] if ref["defense"] == "none" else None
            stable = ref.get("stable_plateau_epoch") if ref["defense"] == "none" else None
            ax.axvline(ref["default_epochs"], color="grey", linestyle=":", linewidth=1.2,
                       label=f"preset: {ref['default_epochs']} epochs")
            if first:
                ax.axvline(first, color="black", linestyle="--", linewidth=1.0, alpha=0.7,
                           label=f"undefended plateau: epoch {first}")
            if stable and stable != first:
                ax.axvline(stable, color="black", linestyle="-.", linewidth=1.0, alpha=0.7,
                           label=f"undefended stable plateau: epoch {stable}")
            ax.set_title(f"{dataset} {arch} ({ref['train_examples']} training, {ref['test_examples']} test images)",
                         fontsize=12)
            ax.set_xlabel("epoch", fontsize=11)
            ax.set_ylabel("test accuracy (%)", fontsize=11)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8.5, loc="lower right", ncol=2)
    fig.suptitle("Test accuracy per epoch of the workflow's training (benchmarks/learning_curve.py)\n"
                 "plateau: first epoch where the best of the last 2 epochs is < 0.5 points above the best before",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def markdown(results_path: str, tag: str = DEFAULT_TAG) -> str:
    """Markdown tables of --out's latest records with `tag`, one per (dataset, arch)."""
    latest = {}
    for text in Path(results_path).read_text().splitlines():
        if text.strip():
            line = json.loads(text)
            if line.get("tag", DEFAULT_TAG) != tag:
                continue
            latest[(line["dataset"], line["arch"], line["defense"], line["sigma"])] = line
    order = {"none": 0, "precode": 1, "ppp": 2, "ppp_encoder": 3}

    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}"

    def drop(value):
        return "-" if not value else f"{100 * value[0]:+.1f} [{100 * value[1]:+.1f}, {100 * value[2]:+.1f}]"

    out = []
    keys = sorted({(d, a) for d, a, _, _ in latest}, key=lambda k: (k[0] != "mnist", k[0], k[1] != "mlp", k[1]))
    for dataset, arch in keys:
        lines = sorted((v for (d, a, _, _), v in latest.items() if (d, a) == (dataset, arch)),
                       key=lambda v: (order.get(v["defense"], 9), v["defense"], v["sigma"]))
        ref = lines[0]
        p, s = ref.get("reference_plateau_epoch"), ref.get("reference_stable_plateau_epoch")
        out.append(f"**{dataset} {arch}** ({ref['train_examples']} training images; preset {ref['default_epochs']} "
                   f"epochs; undefended plateau at epoch {p}, stable from epoch {s}; s/epoch on 1 thread)\n")
        out.append(f"| defence | sigma | test accuracy (%) per epoch | plateau epoch (stable) | best (epoch) | "
                   f"s/epoch | drop at epoch {ref['default_epochs']} (preset) | drop at epoch {p} (plateau) | "
                   f"drop at epoch {s} (stable plateau) |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for v in lines:
            curve = " ".join(f"{100 * a:.1f}" for a in v["curve"])
            out.append(f"| {v['defense']} | {v['sigma']:g} | {curve} | {v['plateau_epoch']} ({v.get('stable_plateau_epoch')}) | "
                       f"{pct(v['best'])} ({v['best_epoch']}) | {v['seconds_per_epoch']:.1f} | "
                       f"{drop(v['drop_at_default_epochs']) if v['defense'] != 'none' else '-'} | "
                       f"{drop(v['drop_at_reference_plateau']) if v['defense'] != 'none' else '-'} | "
                       f"{drop(v.get('drop_at_reference_stable_plateau')) if v['defense'] != 'none' else '-'} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["mnist", "cifar10"])
    parser.add_argument("--arch")
    parser.add_argument("--epochs", type=int, default=40, help="cap on the epochs of every curve")
    parser.add_argument("--cells", nargs="+", default=DEFAULT_CELLS,
                        help="defence:sigma pairs (the undefended model is always trained first)")
    parser.add_argument("--hold", type=int, default=4, help="stop once the plateau rule held this many epochs")
    parser.add_argument("--past", type=int, default=2, help="and at least this many epochs past its first plateau")
    parser.add_argument("--configfile", nargs="+", default=[str(REPO / "config" / "config.yaml")],
                        help="presets merged in order over config/config.yaml, as snakemake --configfile")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/ppp-learning-curve-py")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results-learning-curve.jsonl"))
    parser.add_argument("--verify-epochs", type=int, default=0,
                        help="also train the last cell with ppp.stages.train_model at this many epochs and compare")
    parser.add_argument("--plot", help="write the figure of --out's curves to this PNG (alone: no training)")
    parser.add_argument("--markdown", action="store_true", help="print --out's curves as markdown tables")
    parser.add_argument("--tag", default=DEFAULT_TAG,
                        help="label of this run's records; --markdown prints the records with this tag")
    args = parser.parse_args()
    if args.dataset or args.arch:
        if not (args.dataset and args.arch):
            parser.error("--dataset and --arch go together")
        run(args)
    if args.plot:
        plot(args.out, args.plot)
    if args.markdown:
        print(markdown(args.out, args.tag))


if __name__ == "__main__":
    main()
