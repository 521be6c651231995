"""One function per workflow stage: files in, files out. Usable from Snakemake, a notebook or a shell.

Each function validates what it reads, names the offending file or key on failure, and writes its
outputs atomically, so a crash leaves either the old file or none.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ppp import data as data_lib
from ppp.attacks import ServerView, build_attack
from ppp.attacks.labels import label_accuracy
from ppp.attacks.registry import attack_needs_precode
from ppp.client import ClientSetting, client_update, dpsgd_epsilon, form_updates
from ppp.defenses import build_defense
from ppp.gradients import set_model_mode
from ppp.io import ArtifactError, load_tensors, read_json, save_tensors, sha256, tensor_metadata, write_json
from ppp.metrics import image_metrics
from ppp.models import PrecodeSpec, StagedNet, build_model
from ppp.seeding import derive_seed, generator, seeded
from ppp.training import TrainingConfig, correct_predictions, test_pass, train

log = logging.getLogger(__name__)
GRAD_PREFIX = "grad/"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available (use 'auto' or 'cpu')")
    return device


# --- data -------------------------------------------------------------------------------------------

def prepare_data(dataset: str, options: dict, seed: int, out_train: str, out_test: str, out_meta: str) -> dict:
    """Both splits of a dataset as uint8 tensors, and its meta.json: shapes, classes, normalisation
    (the registry's, the config's, or computed from the training split) and checksums."""
    data_lib.known_facts(dataset, options)  # a user's dataset without channels fails before loading
    size = int(options.get("image_size", 32))
    counts, splits = {}, {}
    for split, limit in (("train", options.get("train_examples")), ("test", options.get("test_examples"))):
        loaded = data_lib.load_split(dataset, options, train=split == "train")
        if loaded.images.shape[0] == 0:
            raise ArtifactError(f"datasets.{dataset}: the {split} split is empty")
        chosen = data_lib.subsample(loaded, limit, generator(derive_seed(seed, "subset", dataset, split)))
        splits[split] = data_lib.Split(data_lib.resize_uint8(chosen.images, size), chosen.labels)
    facts = data_lib.dataset_facts(dataset, options, splits["train"])
    for split, part in splits.items():
        if part.images.shape[1] != facts["channels"]:
            raise ArtifactError(f"datasets.{dataset}: expected {facts['channels']} channels, "
                                f"the source gives {part.images.shape[1]}")
        if int(part.labels.min()) < 0 or int(part.labels.max()) >= facts["num_classes"]:
            raise ArtifactError(f"datasets.{dataset}: {split} labels must be in 0..{facts['num_classes'] - 1}, "
                                f"got {int(part.labels.min())}..{int(part.labels.max())}")
    for split, out in (("train", out_train), ("test", out_test)):
        save_tensors(out, {"images": splits[split].images, "labels": splits[split].labels})
        counts[split] = int(splits[split].images.shape[0])
    meta = dict(dataset=dataset, channels=facts["channels"], image_size=size, num_classes=facts["num_classes"],
                mean=list(facts["mean"]), std=list(facts["std"]), source=options.get("source", "bundled"),
                counts=counts, sha256={"train": sha256(out_train), "test": sha256(out_test)})
    write_json(out_meta, meta)
    return meta


def prepare_victims(dataset: str, path: str, image_size: int, count: int, out: str,
                    facts: dict | None = None, draw: int | None = None, base_seed: int = 0) -> dict:
    """The victims every cell attacks: the first `count` of a victim file (`path` an .npz), or, with
    `draw`, a class-balanced seeded draw from the prepared test split (`path` its safetensors)."""
    digest = sha256(path)
    if draw is not None:
        images, labels = load_split_tensors(path)
        num_classes = int((facts or {}).get("num_classes", int(labels.max()) + 1))
        chosen = data_lib.draw_victims(labels, count, draw, num_classes, base_seed, dataset)
        save_tensors(out, {"images": images[chosen], "labels": labels[chosen], "test_index": chosen},
                     metadata={"source": str(path), "source_sha256": digest, "draw": str(draw)})
        return {"victims": count, "source": str(path), "sha256": digest, "draw": draw,
                "labels": [int(v) for v in labels[chosen]]}
    images, labels = data_lib.load_victims(path, dataset, image_size, facts)
    if images.shape[0] < count:
        raise ArtifactError(f"{path}: has {images.shape[0]} victims, the config asks for {count}")
    save_tensors(out, {"images": images[:count], "labels": labels[:count]},
                 metadata={"source": str(path), "source_sha256": digest})
    return {"victims": count, "source": str(path), "sha256": digest}


def load_split_tensors(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    t = load_tensors(path, required=("images", "labels"))
    return data_lib.to_float(t["images"]), t["labels"].long()


# --- models -----------------------------------------------------------------------------------------

def make_model(arch: str, meta: dict, model_options: dict, precode: PrecodeSpec | None) -> StagedNet:
    in_shape = (meta["channels"], meta["image_size"], meta["image_size"])
    return build_model(arch, in_shape, meta["num_classes"], tuple(meta["mean"]), tuple(meta["std"]),
                       precode=precode, options=model_options)


def save_model(model: StagedNet, path: str, info: dict) -> None:
    save_tensors(path, model.state_dict(), metadata={"ppp": json.dumps(info, sort_keys=True)})


def load_model(path: str, arch: str, meta: dict, model_options: dict, precode: PrecodeSpec | None) -> StagedNet:
    model = make_model(arch, meta, model_options, precode)
    state = load_tensors(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"{path}: checkpoint does not fit {arch} "
                            f"({'with' if precode else 'without'} PRECODE): {str(err).splitlines()[0]}") from None
    return model


def init_model(arch: str, variant: str, meta_path: str, model_options: dict, precode: PrecodeSpec,
               seed: int, out: str) -> None:
    meta = read_json(meta_path)
    with seeded(derive_seed(seed, "init", meta["dataset"], arch, variant)):
        model = make_model(arch, meta, model_options, precode if variant == "precode" else None)
    save_model(model, out, dict(arch=arch, variant=variant, dataset=meta["dataset"]))


def train_model(arch: str, defense_name: str, noise_scale: float, noise: dict, init_path: str,
                meta_path: str, train_path: str, test_path: str, model_options: dict,
                precode: PrecodeSpec | None, training: TrainingConfig, seed: int, device: torch.device,
                out_model: str, out_metrics: str) -> dict:
    meta = read_json(meta_path)
    defense = build_defense(defense_name, noise_scale, **noise)
    model = load_model(init_path, arch, meta, model_options, precode if defense.needs_precode else None)
    images, labels = load_split_tensors(train_path)
    test_images, test_labels = load_split_tensors(test_path)
    cell_seed = derive_seed(seed, "train", meta["dataset"], arch, defense_name, noise_scale)
    # Test accuracy after every epoch, so that a reader sees whether training had levelled off; the
    # last epoch's per-example correctness is the trained model's (the test pass is seeded).
    evaluated, losses = [], []

    def after_epoch(epoch: int) -> float:
        correct, loss = test_pass(model, test_images, test_labels, device, cell_seed)
        evaluated[:] = [correct]
        losses.append(loss)
        return float(correct.float().mean())

    summary = train(model, defense, images, labels, training, cell_seed, device, after_epoch=after_epoch)
    correct = evaluated[0] if evaluated else correct_predictions(model, test_images, test_labels, device, cell_seed)
    summary["test_accuracy"] = float(correct.float().mean())
    summary["test_accuracy_per_epoch"] = summary.pop("per_epoch")
    summary["test_loss_per_epoch"] = losses
    summary["test_correct"] = "".join("1" if c else "0" for c in correct.tolist())
    metrics = dict(dataset=meta["dataset"], arch=arch, defense=defense_name, noise_scale=noise_scale,
                   training=asdict(training), **summary)
    save_model(model.cpu(), out_model, dict(arch=arch, defense=defense_name, noise_scale=noise_scale))
    write_json(out_metrics, metrics)
    return metrics


# --- client: the shared gradient ---------------------------------------------------------------------

def capture_gradients(arch: str, defense_name: str, noise_scale: float, noise: dict, state: str,
                      model_path: str, meta_path: str, victims_path: str, num_victims: int,
                      model_options: dict, precode: PrecodeSpec, seed: int, device: torch.device,
                      out: str, model_mode: str = "eval", setting: ClientSetting | None = None) -> dict:
    """The defended update of each client, stacked over updates, computed with the model in the
    protocol's `model_mode` (eval or train). Each update holds `setting.images` victims (consecutive,
    disjoint: ppp.client.form_updates) and is the gradient (one local step) or the FedAvg
    pseudo-gradient (several). Labels are stored flat, update after update."""
    setting = setting or ClientSetting()
    meta = read_json(meta_path)
    defense = build_defense(defense_name, noise_scale, **noise)
    model = load_model(model_path, arch, meta, model_options, precode if defense.needs_precode else None)
    set_model_mode(model.to(device), model_mode)
    victims = load_tensors(victims_path, required=("images", "labels"))
    images, labels = victims["images"][:num_victims], victims["labels"][:num_victims]
    if images.shape[0] < num_victims:
        raise ArtifactError(f"{victims_path}: has {images.shape[0]} victims, {num_victims} requested")
    updates = form_updates(num_victims, setting.images)
    per_update = []
    for u, members in enumerate(updates):
        if setting.is_single_gradient:  # the study's original seeds: one image, one gradient
            update_seed = derive_seed(seed, "capture", meta["dataset"], arch, defense_name, noise_scale, state, u)
        else:
            update_seed = derive_seed(seed, "capture", meta["dataset"], arch, defense_name, noise_scale, state,
                                      setting.name, u)
        with seeded(update_seed, device):
            per_update.append(client_update(model, images[members].to(device), labels[members].to(device),
                                            setting, defense, generator(update_seed, device)))
    stacked = {GRAD_PREFIX + n: torch.stack([g[n] for g in per_update]) for n in per_update[0]}
    used = sum(updates, [])
    stacked["labels"] = labels[used].clone()
    info = {"defense": defense_name, "noise_scale": str(noise_scale), "state": state,
            "num_victims": str(len(used)), "model_mode": model_mode, "images_per_update": str(setting.images),
            "local_steps": str(setting.local_steps), "local_lr": str(setting.local_lr),
            "local_batch": str(setting.local_batch)}
    if defense.per_example:
        info["epsilon_per_update"] = f"{dpsgd_epsilon(noise_scale, setting.local_steps, defense.delta):.6g}"
    save_tensors(out, stacked, metadata=info)
    return info


# --- server: the attack -----------------------------------------------------------------------------

@dataclass(frozen=True)
class AttackCell:
    """One cell an attack job reconstructs: its shared updates, the weights they were computed with, the
    cell's seed and its output file."""

    gradients_path: str
    model_path: str
    has_precode: bool
    seed: int
    out: str


def run_attack(arch: str, attack_name: str, attack_options: dict, has_precode: bool, model_path: str,
               meta_path: str, gradients_path: str, model_options: dict, precode: PrecodeSpec, seed: int,
               device: torch.device, out: str,
               progress: Callable[[int, torch.Tensor], None] | None = None, model_mode: str = "eval",
               setting: ClientSetting | None = None, server_knows_local_hyperparameters: bool = True) -> dict:
    """Reconstruct every update's images of one cell (run_attack_cells with one cell)."""
    cell = AttackCell(gradients_path, model_path, has_precode, seed, out)
    return run_attack_cells(arch, attack_name, attack_options, [cell], meta_path, model_options, precode, device,
                            progress=None if progress is None else lambda step, losses: progress(step, losses[0]),
                            model_mode=model_mode, setting=setting,
                            server_knows_local_hyperparameters=server_knows_local_hyperparameters)[0]


def run_attack_cells(arch: str, attack_name: str, attack_options: dict, cells: list[AttackCell], meta_path: str,
                     model_options: dict, precode: PrecodeSpec, device: torch.device,
                     progress: Callable[[int, list[torch.Tensor]], None] | None = None, model_mode: str = "eval",
                     setting: ClientSetting | None = None,
                     server_knows_local_hyperparameters: bool = True) -> list[dict]:
    """Reconstruct every update's images of each cell, writing each cell's own file.

    Cells whose updates were computed with the same weights (the same file, with or without PRECODE) are
    attacked in one optimisation: their updates are rows of one engine pass, each started from its own
    cell's seed, so a cell gets what it gets alone up to floating-point summation order, and the machine
    works on more rows per pass (benchmarks/README.md, "Where the minutes go"). The server knows the
    number of images per update; the local steps and learning rate only where
    `server_knows_local_hyperparameters` (otherwise it simulates one step: it matches the update as a
    gradient). `progress(step, losses)` gets one (updates, restarts) tensor per cell. Returns one summary
    per cell, in order."""
    setting = setting or ClientSetting()
    if attack_needs_precode(attack_name) and not all(c.has_precode for c in cells):
        raise ValueError(f"attack {attack_name!r} targets PRECODE; a cell's model has none")
    meta = read_json(meta_path)
    options = dict(attack_options)
    check_images = int(options.pop("convergence_images", 0))
    attack = build_attack(attack_name, **options)
    # The convergence check: a cell's first updates again at half the budget (ppp.verdicts).
    half_attack = build_attack(attack_name, **{**options, "iterations": attack.iterations // 2, "progress_every": 0}) \
        if check_images and attack.iterations >= 2 else None
    told = server_knows_local_hyperparameters
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, cell in enumerate(cells):
        groups.setdefault((cell.model_path, cell.has_precode), []).append(i)
    summaries: list[dict | None] = [None] * len(cells)
    for (model_path, has_precode), members in groups.items():
        model = load_model(model_path, arch, meta, model_options, precode if has_precode else None).to(device)
        shared = [_load_updates(cells[i].gradients_path, setting) for i in members]
        names = set(shared[0][0])
        for (gradients, _), i in zip(shared, members):
            if set(gradients) != names:
                raise ArtifactError(f"{cells[i].gradients_path}: its gradients name other parameters than "
                                    f"{cells[members[0]].gradients_path} (same model {model_path})")
        counts = [next(iter(g.values())).shape[0] for g, _ in shared]
        gradients = {n: torch.cat([g[n] for g, _ in shared]) for n in names}
        labels = torch.cat([lab for _, lab in shared])
        # The server sees labels only where the config says it knows them.
        view = ServerView(model, gradients, labels if attack.labels == "known" else None, model_mode,
                          images_per_update=setting.images, local_steps=setting.local_steps if told else 1,
                          local_lr=setting.local_lr, local_batch=setting.local_batch if told else 0)
        seeds = [cells[i].seed for i, n in zip(members, counts) for _ in range(n)]
        victim_ids = [u for n in counts for u in range(n)]
        bounds = [sum(counts[:k]) for k in range(len(counts) + 1)]

        def split_progress(step: int, losses: torch.Tensor, bounds=bounds) -> None:
            progress(step, [losses[bounds[k]:bounds[k + 1]] for k in range(len(bounds) - 1)])

        per_update = setting.images
        check_rows: list[int] = []
        if half_attack is not None:
            checked = -(-check_images // per_update)  # whole updates, at least one
            check_rows = [bounds[k] + u for k in range(len(counts)) for u in range(min(checked, counts[k]))]
        half_images = None
        if check_rows and accepts_update_iterations(attack):
            # The convergence check's updates are more rows of the same passes, each run at half the budget
            # with its own schedule: what a run at half the budget gives them, without a second optimisation's
            # fixed cost per iteration (benchmarks/README.md, "Where the minutes go").
            both = _with_rows_again(view, check_rows)
            result = attack(both, seed=seeds + [seeds[r] for r in check_rows],
                            progress=split_progress if progress else None,
                            victim_ids=victim_ids + [victim_ids[r] for r in check_rows],
                            update_iterations=[attack.iterations] * len(seeds) + [half_attack.iterations] * len(check_rows))
            result, half = _split_rows(attack.finish(result, view), len(seeds), per_update)
        else:
            result = attack.finish(attack(view, seed=seeds, progress=split_progress if progress else None,
                                          victim_ids=victim_ids), view)
            half = None
            if check_rows:
                sub = _rows_of(view, check_rows)
                half = half_attack.finish(half_attack(sub, seed=[seeds[r] for r in check_rows],
                                                      victim_ids=[victim_ids[r] for r in check_rows]), sub)
        if half is not None:
            half_images = torch.full_like(result.images, float("nan"))
            for j, r in enumerate(check_rows):
                half_images[r * per_update:(r + 1) * per_update] = half.images[j * per_update:(j + 1) * per_update]
        peak = peak_memory_mb(device)
        for k, i in enumerate(members):
            lo, hi = bounds[k], bounds[k + 1]
            images = result.images[lo * per_update: hi * per_update]
            tensors = {"images": images, "labels": result.labels[lo * per_update: hi * per_update],
                       "gradient_loss": result.gradient_loss[lo:hi], "restart_losses": result.restart_losses[lo:hi]}
            if half_images is not None:
                tensors["images_half"] = half_images[lo * per_update: hi * per_update]
            save_tensors(cells[i].out, tensors,
                         metadata={"attack": attack_name, "seconds": f"{result.seconds:.3f}",
                                   "iterations": str(attack.iterations),
                                   "engine": str(result.engine), "images_per_update": str(setting.images),
                                   "local_steps": str(setting.local_steps), "labels": attack.labels,
                                   "cells_in_pass": str(len(members))})
            summaries[i] = {"seconds": result.seconds, "gradient_loss_mean": float(result.gradient_loss[lo:hi].mean()),
                            "victims": int(images.shape[0]), "updates": hi - lo, "cells_in_pass": len(members),
                            "peak_memory_mb": peak, "engine": result.engine,
                            "oom_retries": result.oom_retries, "rows_per_pass": result.chunk_rows,
                            "image_iterations_per_second":
                                result.images.shape[0] * attack.iterations / max(result.seconds, 1e-9)}
        if result.oom_retries:
            log.warning("attack: ran out of memory %d time(s); finished with %d rows per pass", result.oom_retries,
                        result.chunk_rows)
        log.info("attack done: %d images of %d cell(s) in %d updates in %.1f s (engine %s), peak memory %.0f MB",
                 result.images.shape[0], len(members), bounds[-1], result.seconds, result.engine, peak)
    return summaries


def accepts_update_iterations(attack) -> bool:
    """Whether an attack takes a budget per update (its convergence-check rows then join its main pass)."""
    return "update_iterations" in inspect.signature(attack.__call__).parameters


def _rows_of(view: ServerView, rows: list[int]) -> ServerView:
    """The server's view of some of its updates (in that order, repeats allowed)."""
    labels = None if view.labels is None else view.labels.view(view.num_updates, -1)[rows].flatten()
    return ServerView(view.model, {n: g[rows] for n, g in view.gradients.items()}, labels, view.model_mode,
                      images_per_update=view.images_per_update, local_steps=view.local_steps, local_lr=view.local_lr,
                      local_batch=view.local_batch)


def _with_rows_again(view: ServerView, rows: list[int]) -> ServerView:
    """The view with some of its updates appended once more."""
    return _rows_of(view, list(range(view.num_updates)) + list(rows))


def _split_rows(result, first: int, per_update: int):
    """An attack's result on `first` updates and then more, as two results."""
    def updates(part: slice):
        pixels = slice(None if part.start is None else part.start * per_update,
                       None if part.stop is None else part.stop * per_update)
        return dataclasses.replace(
            result, images=result.images[pixels], labels=result.labels[pixels],
            gradient_loss=result.gradient_loss[part], restart_losses=result.restart_losses[part],
            iterations=None if result.iterations is None else result.iterations[part],
            images_half=None if result.images_half is None else result.images_half[pixels])
    return updates(slice(None, first)), updates(slice(first, None))


def _load_updates(gradients_path: str, setting: ClientSetting) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A cell's shared updates (name -> (updates, *shape)) and their labels, checked against the setting."""
    shared = load_tensors(gradients_path, required=("labels",))
    gradients = {k[len(GRAD_PREFIX):]: v for k, v in shared.items() if k.startswith(GRAD_PREFIX)}
    if not gradients:
        raise ArtifactError(f"{gradients_path}: holds no gradients ({GRAD_PREFIX}<parameter> tensors)")
    updates = next(iter(gradients.values())).shape[0]
    if shared["labels"].shape[0] != updates * setting.images:
        raise ArtifactError(f"{gradients_path}: {shared['labels'].shape[0]} labels for {updates} "
                            f"updates of {setting.images} images (client setting {setting.name})")
    return gradients, shared["labels"]


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- evaluation -------------------------------------------------------------------------------------

def parse_cell(reconstructions_path: str) -> dict:
    """The cell of .../attacks/{dataset}/{arch}/{client}/{defense}/{sigma}/{state}/{attack}/reconstructions.safetensors."""
    parts = Path(reconstructions_path).parts
    if len(parts) < 8:
        raise ValueError(f"{reconstructions_path}: not an attacks/<dataset>/<arch>/<client>/<defense>/<sigma>/"
                         "<state>/<attack>/ path")
    dataset, arch, client, defense, sigma, state, attack = parts[-8:-1]
    setting = ClientSetting.parse(client)
    if setting.name != client:  # e.g. b4s2: a FedAvg path names its local lr (b4s2lr0.1)
        raise ValueError(f"{reconstructions_path}: client setting {client!r} is not a setting's name "
                         f"(FedSGD b<images>s1, FedAvg b<images>s<local steps>lr<local lr>)")
    # local_lr keys the setting: FedAvg's own rate, 0.0 for FedSGD (where it plays no role); local_batch its
    # images per local step, 0 for all of them.
    return dict(dataset=dataset, arch=arch, batch_size=setting.images, local_steps=setting.local_steps,
                local_lr=setting.key_lr, local_batch=setting.local_batch, defense=defense, noise_scale=float(sigma),
                attack=attack, model_state=state)


def cell_setting(cell: dict) -> ClientSetting:
    """The client setting of a parsed cell (parse_cell; FedSGD's lr, 0.0 there, is the class default)."""
    images, steps = int(cell["batch_size"]), int(cell["local_steps"])
    if steps == 1:
        return ClientSetting(images, steps)
    return ClientSetting(images, steps, float(cell["local_lr"]), int(cell.get("local_batch", 0) or 0))


def attack_run_name(reconstructions_path: str) -> str:
    """The run name of the attack job that wrote these reconstructions (rule, then its wildcards)."""
    return "/".join(["attack", *Path(reconstructions_path).parts[-8:-1]])


def match_reconstructions(originals: torch.Tensor, reconstructions: torch.Tensor) -> list[int]:
    """For each original of one update, the reconstruction assigned to it: the assignment with the least
    total MSE (scipy's linear_sum_assignment, as breaching's compute_batch_order matches), since the
    attacker's order of an update's images is arbitrary."""
    if originals.shape[0] == 1:
        return [0]
    from scipy.optimize import linear_sum_assignment

    errors = (originals.flatten(1).double()[:, None, :] - reconstructions.flatten(1).double()[None, :, :]).pow(2).mean(2)
    rows, columns = linear_sum_assignment(errors.numpy())
    order = [0] * originals.shape[0]
    for r, c in zip(rows, columns):
        order[int(r)] = int(c)
    return order


def strongest_per_defense(entries: list[tuple]) -> list[tuple]:
    """Of (cell, row, median SSIM, median PSNR) entries, the strongest attack's per defence and sigma
    (highest median SSIM, ties: the higher PSNR, then the first), as ppp.report ranks attacks; in the
    order of ppp.figures.DEFENSE_ORDER, then sigma."""
    from ppp.figures import DEFENSE_ORDER

    strongest: dict[tuple, tuple] = {}
    for entry in entries:
        cell, _, ssim, psnr = entry
        key = (cell["defense"], cell["noise_scale"])
        if key not in strongest or (ssim, psnr) > strongest[key][2:]:
            strongest[key] = entry
    rank = {d: i for i, d in enumerate(DEFENSE_ORDER)}
    return [strongest[k] for k in sorted(strongest, key=lambda k: (rank.get(k[0], len(rank)), k[1]))]


def evaluate_cells(reconstruction_paths: list[str], victims_path: str, out_csv: str, out_grid: str,
                   grid_images: int = 8, lpips=None, out_images: str | None = None,
                   ) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, str],
                              dict[str, dict[int, float]]]:
    """Per-victim MSE, PSNR and SSIM of every cell; only this stage reads both victims and reconstructions.

    An update's reconstructions are first matched to its originals (match_reconstructions); metrics are
    per image after matching, and `label_accuracy` is the share of the update's labels the attack used
    that are right (as a multiset; 1 where the server knows them). Writes one CSV row per victim per cell
    and a grid (originals above one row per defence and sigma: its strongest attack's matched
    reconstructions, each captioned with PSNR and SSIM); returns each cell's mean metrics keyed for the
    evaluate run, each cell's mean and median metrics keyed by the attack run that made it (so every
    attack run shows its own quality), and, with `out_images` (a folder), each attack run's own small
    grid (its originals above its reconstructions) written there, and per attack run the median SSIM of
    its convergence-checked images at half and at the full budget, keyed by iteration. `lpips`
    (ppp.lpips_metric.load_lpips) adds LPIPS; without it the column stays empty."""
    import pandas as pd

    from ppp.figures import GridRow, client_label, defense_label, reconstruction_grid, reconstruction_pair
    from ppp.report import RECONSTRUCTION_COLUMNS, write_csv

    victims = load_tensors(victims_path, required=("images", "labels"))
    rows, grid_rows, means, per_attack_run, ssim_steps = [], [], {}, {}, {}
    for path in reconstruction_paths:
        cell = parse_cell(path)
        loaded = load_tensors(path, required=("images",))
        recon = loaded["images"]
        if recon.shape[0] > victims["images"].shape[0] or recon.shape[1:] != victims["images"].shape[1:]:
            raise ArtifactError(f"{path}: reconstructions {tuple(recon.shape)} do not match the victims "
                                f"{tuple(victims['images'].shape)} of {victims_path}")
        group = cell["batch_size"]
        if recon.shape[0] % group:
            raise ArtifactError(f"{path}: {recon.shape[0]} reconstructions are not whole updates of {group} images")
        used_labels = loaded.get("labels", victims["labels"][:recon.shape[0]])
        true_labels = victims["labels"][:recon.shape[0]]
        accuracy = label_accuracy(used_labels, true_labels, group) if bool((used_labels >= 0).all()) \
            else torch.full((recon.shape[0] // group,), float("nan"), dtype=torch.float64)
        half = loaded.get("images_half")
        if half is not None and half.shape != recon.shape:
            raise ArtifactError(f"{path}: images_half {tuple(half.shape)} differ from images {tuple(recon.shape)}")
        matched = torch.empty_like(recon)
        cell_rows = []
        for u in range(recon.shape[0] // group):
            members = list(range(u * group, (u + 1) * group))
            order = match_reconstructions(victims["images"][members], recon[members])
            # The half-budget run is matched on its own: its images may sit in another order. Only a cell's
            # first updates have one (NaN elsewhere).
            checked = half is not None and bool(torch.isfinite(half[members]).all())
            order_half = match_reconstructions(victims["images"][members], half[members]) if checked else None
            for slot, i in enumerate(members):
                image = recon[u * group + order[slot]]
                matched[i] = image
                ssim_half = float("nan") if not checked else image_metrics(
                    victims["images"][i], half[u * group + order_half[slot]])["ssim"]
                cell_rows.append(dict(cell, victim=i, update_id=u, label=int(victims["labels"][i]),
                                      label_accuracy=float(accuracy[u]),
                                      **image_metrics(victims["images"][i], image),
                                      lpips=lpips(victims["images"][i], image) if lpips else float("nan"),
                                      ssim_half=ssim_half))
        rows += cell_rows
        key = f"{cell['attack']}.{cell['defense']}.{cell['noise_scale']:g}"
        if (group, cell["local_steps"]) != (1, 1):
            key += f".{cell_setting(cell).name}"  # b4s1, b4s2lr0.1
        own = {}
        for metric in ("mse", "psnr", "ssim") + (("lpips",) if lpips else ()):
            values = torch.tensor([r[metric] for r in cell_rows], dtype=torch.float64)
            own[f"{metric}_mean"], own[f"{metric}_median"] = float(values.mean()), float(values.quantile(0.5))
            means[f"{metric}_mean.{key}"] = own[f"{metric}_mean"]
        per_attack_run[attack_run_name(path)] = own
        # SSIM along the attack's budget, on the images it ran again at half the budget (the
        # convergence check): the median at half and at the full budget, keyed by iteration.
        iterations = int(tensor_metadata(path).get("iterations", 0))
        checked = [r for r in cell_rows if math.isfinite(r["ssim_half"])]
        if iterations >= 2 and checked:
            halves = torch.tensor([r["ssim_half"] for r in checked], dtype=torch.float64)
            finals = torch.tensor([r["ssim"] for r in checked], dtype=torch.float64)
            ssim_steps[attack_run_name(path)] = {iterations // 2: float(halves.quantile(0.5)),
                                                 iterations: float(finals.quantile(0.5))}
        grid_rows.append((cell, GridRow(f"{defense_label(cell['defense'], cell['noise_scale'])}\n{cell['attack']}",
                                        matched, [r["psnr"] for r in cell_rows], [r["ssim"] for r in cell_rows]),
                          own["ssim_median"], own["psnr_median"]))
    write_csv(pd.DataFrame(rows, columns=RECONSTRUCTION_COLUMNS), out_csv)
    n = max((r.images.shape[0] for _, r, _, _ in grid_rows), default=1)
    first = grid_rows[0][0] if grid_rows else None
    setting = "" if first is None else (
        f"{first['dataset']} / {first['arch']}, "
        f"{client_label(first['batch_size'], first['local_steps'], first['local_lr'], first['local_batch'])}, "
        f"{first['model_state']} model: originals, then the strongest attack per defence")
    reconstruction_grid(victims["images"][:n], [row for _, row, _, _ in strongest_per_defense(grid_rows)], out_grid,
                        max_images=grid_images, title=setting)
    images = {}
    if out_images is not None:
        os.makedirs(out_images, exist_ok=True)
        for path, (cell, row, _, _) in zip(reconstruction_paths, grid_rows):
            out = os.path.join(out_images, f"{cell['defense']}_{cell['noise_scale']:g}_{cell['attack']}.png")
            reconstruction_pair(victims["images"][:n], row, out, max_images=grid_images, title=attack_run_name(path))
            images[attack_run_name(path)] = out
    return means, per_attack_run, images, ssim_steps
