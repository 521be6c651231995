"""FLOPs of one attack iteration per architecture, and the projected GPU cost of a preset (docs/cluster.md,
"GPU preset: projected cost").

    .venv/bin/python benchmarks/attack_flops.py --configfile config/gpu.yaml          # the tables of docs/cluster.md
    .venv/bin/python benchmarks/attack_flops.py --configfile config/gpu.yaml --json   # JSON lines
    .venv/bin/python benchmarks/attack_flops.py --configfile config/gpu.yaml --launch-us 10 --grouping cell

What is counted: torch's FLOP counter (torch.utils.flop_counter.FlopCounterMode) over one row of the
attack's objective and its gradient with respect to the image, in the loop formulation
(ppp.attacks.engine.RowObjective.loop: the forward, the backward with create_graph, and the backward of
that backward to the image; ppp-bench's `gflop_per_victim_iteration` counts the same), for one victim of
each (dataset, architecture, client setting, attack) that the preset attacks, at the preset's widths and
on the model the attack runs on (PRECODE's for ig_targeted, latent and analytic, and for IG on PRECODE
cells). The analytic attack's iteration is the feature inversion's forward and backward
(ppp.attacks.analytic, FeatureMatching or SpanMatching). For an update of B images the row's FLOPs are
divided by B: a "victim-iteration" is one image's share of one iteration. FLOPs are counted as the math
states them, not as the batched `per_layer` engine computes them (it never forms a Linear layer's per-row
weight gradient, so it does fewer on the MLP); that makes the figure engine-independent, as in
benchmarks/README.md, "Achieved GFLOP/s". Everything runs on PyTorch's meta device (shapes only, no
arithmetic): about 40 seconds of one CPU core for config/gpu.yaml; nothing here needs a GPU.

The plan is the preset's attack cells as ppp.config.attack_cells enumerates them for the workflow too
(datasets x archs x client settings x defence cells x model states x attacks, the PRECODE-only attacks on
PRECODE cells only), after merging the preset over config/config.yaml key by key as Snakemake's
--configfile does (snakemake.utils.update_config). Victim-iterations of a cell are its victims x
iterations x restarts (patience, i.e. early stopping, would only lower them). Where an attack job
optimises the cells that share a model as rows of one pass (ppp.stages.run_attack_cells; --grouping), the
passes are counted as such.

Projected GPU time of a pass = max(FLOPs / sustained throughput, launch floor). Throughput: --tflops,
default 20 (the assumption of benchmarks/README.md, "Projection for a GPU": about 30% of an H100/H200
SXM's 67 TFLOP/s dense FP32). Launch floor: iterations x kernel-launching operations per iteration x
--launch-us (default 5): a GPU cannot finish an iteration faster than the host launches its kernels.
Operations are counted with a TorchDispatchMode over one evaluation through the engine the workflow would
run (views, detach and allocations left out); a batched pass launches the same kernels whatever its rows
(once per chunk of attack.memory_budget_mb or attack.batch_size), the loop engine once per row.
Training jobs are projected the same way from one training step (forward, backward, Adam; DP-SGD as two).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ppp.config import load_preset  # noqa: E402  (the checkout's ppp, after its path)

ARCH_ORDER = ("mlp", "lenet", "convnet", "resnet18")


def attack_plan(config: dict) -> list[dict]:
    """Every attack cell of the preset (ppp.config.attack_cells, which the workflow's jobs enumerate
    too), with its victims, iterations, restarts and how its rows are chunked."""
    import ppp.config as pc
    from ppp.defenses import DEFENSES

    cells = []
    for cell in pc.attack_cells(config):
        arch, client, attack = cell["arch"], cell["client"], cell["attack"]
        setting = pc.client_setting(config, arch, client)
        options = pc.attack_options(config, arch, attack, client)
        cells.append(dict(
            cell, images=setting.images, local_steps=setting.local_steps, local_lr=setting.local_lr,
            precode=DEFENSES[cell["defense"]].needs_precode,
            victims=pc.client_victims(config, arch, client),
            iterations=int(options.get("iterations", 4800)),
            restarts=int(options.get("restarts", 1)),
            memory_budget_mb=options.get("memory_budget_mb"),
            batch_size=options.get("batch_size")))
    return cells


# Operations that launch no kernel: allocations and metadata (views are recognised by their schema).
NO_KERNEL = {"aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty", "aten.new_empty_strided",
             "aten.detach", "aten.alias", "aten.lift_fresh", "aten._to_copy.no_op", "aten.set_"}


class OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten operations dispatched that launch a kernel on a GPU (views, detach and
    allocations left out): a proxy for the kernel launches, which bound a small iteration's time."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and str(func.overloadpacket) not in NO_KERNEL:
            self.count += 1
        return func(*args, **(kwargs or {}))


_MODELS: dict[tuple, torch.nn.Module] = {}


def build(config: dict, dataset: str, arch: str, precode: bool, device: str = "meta"):
    """The preset's model of `arch` for `dataset` (PRECODE's where `precode`), in the threat model's
    mode; on the meta device by default (shapes only: FLOPs and operations are counted without
    computing anything)."""
    from ppp.config import model_mode
    from ppp.data import DATASETS
    from ppp.gradients import set_model_mode
    from ppp.models import PrecodeSpec, build_model

    key = (dataset, arch, precode, device)
    if key not in _MODELS:
        facts = DATASETS[dataset]
        size = int(config["datasets"][dataset].get("image_size", 32))
        spec = PrecodeSpec(**config["precode"]) if precode else None
        torch.manual_seed(0)
        with torch.device(device):
            model = build_model(arch, (facts["channels"], size, size), facts["num_classes"], facts["mean"],
                                facts["std"], spec, dict(config.get("models", {}).get(arch, {})))
        set_model_mode(model, model_mode(config, arch))
        for p in model.parameters():
            p.requires_grad_(True)
        _MODELS[key] = model
    return _MODELS[key]


def measure(config: dict, cell: dict, rows: int = 2, device: str = "meta") -> dict:
    """One kind of row (dataset, arch, client setting, attack, model with or without PRECODE): FLOPs per
    victim-iteration (one image's share of one row's iteration, loop formulation), the kernel-launching
    operations of one iteration (of one row for the loop engine, which runs rows one after another; of
    a pass over `rows` rows for the batched engines, whose operations do not grow with the rows), the
    engine the workflow runs, and the bytes autograd keeps for one row (what attack.memory_budget_mb
    divides into rows per pass, ppp.attacks.engine.rows_per_chunk)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ppp.attacks.analytic import FeatureMatching, SpanMatching, features_before_precode
    from ppp.attacks.engine import GradientMatching, GradientMatchingProblem, RowObjective
    from ppp.attacks.registry import ATTACKS
    from ppp.config import attack_options
    from ppp.gradients import select_parameters
    from ppp.precode import code_mode

    model = build(config, cell["dataset"], cell["arch"], cell["precode"], device)
    options = attack_options(config, cell["arch"], cell["attack"], cell["client"])
    images = cell["images"]
    shape = model.in_shape if images == 1 else (images, *model.in_shape)
    x = torch.randn(rows, *shape, device=device)
    labels = (torch.arange(rows * images) % 10).to(device)
    labels = labels if images == 1 else labels.view(rows, images)
    tv_weight = float(options.get("tv_weight", 0.0))
    latent = None
    if cell["attack"] == "analytic":  # feature inversion: a forward and a backward per iteration
        with torch.no_grad():
            width = features_before_precode(model, torch.rand(1, *model.in_shape, device=device)).shape[1]
        if images == 1:
            objective = FeatureMatching(model, torch.randn(rows, width, device=device), tv_weight,
                                        options.get("feature_loss", "mse"))
        else:
            spans = torch.linalg.qr(torch.randn(rows, width + 1, images, device=device))[0].transpose(1, 2)
            objective = SpanMatching(model, spans, tv_weight)
        one, engine = objective, "batched"
    else:
        names = select_parameters(model, ATTACKS[cell["attack"]].fixed.get("selection", "all"),
                                  bool(options.get("keep_encoder", False)))
        params = dict(model.named_parameters())
        targets = [torch.randn(rows, *params[n].shape, device=device) for n in names]
        is_latent = cell["attack"] == "latent"
        problem = GradientMatchingProblem(
            names=names, iterations=1, lr=0.1, tv_weight=tv_weight, restarts=1, init="randn", signed=True,
            boxed=True, lr_decay=False, engine=options.get("engine", "auto"), latent=is_latent,
            local_steps=cell["local_steps"], local_lr=cell["local_lr"])
        objective = GradientMatching(model, labels, targets, problem, x)
        engine = objective.engine
        one = RowObjective(model, names, labels, targets, tv_weight, cell["local_steps"], cell["local_lr"])
        if is_latent:
            latent = torch.zeros(rows, *shape[:-3], model.bottleneck.bottleneck_size, device=device)
    per_row = engine == "loop"
    ops, saved = OpCounter(), [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    codes = code_mode(model, options.get("precode_code", "mean")) if model.has_precode else contextlib.nullcontext()
    with codes:
        with FlopCounterMode(display=False) as counter, ops if per_row else contextlib.nullcontext(), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            if isinstance(one, RowObjective):
                one.loop(x[:1], torch.arange(1), None if latent is None else latent[:1])
            else:
                one.evaluate(x[:1], torch.arange(1), None)
        if not per_row:
            with ops:
                objective.evaluate(x, torch.arange(rows), latent)
    return dict(flops_per_victim_iteration=counter.get_total_flops() / images, ops_per_iteration=ops.count,
                ops_scale_with_rows=per_row, engine=engine, saved_mb_per_row=saved[0] / 2**20)


def training_plan(config: dict) -> list[dict]:
    """Every train job of the preset (workflow/rules/common.smk's utility_files): its steps, and the
    test-set evaluations after each epoch."""
    import numpy as np

    from ppp.config import defense_applies, defense_scales, training_options
    from ppp.data import BUNDLED_DIR
    from ppp.defenses import DEFENSES, uses_noise

    if not config["training"].get("enabled", True):
        return []
    jobs = []
    for dataset, options in config["datasets"].items():
        if options.get("source", "bundled") != "bundled":
            continue  # sizes known only from the data; the GPU preset uses the bundled subsets
        with np.load(options.get("path") or BUNDLED_DIR / f"{dataset}.npz") as data:
            train, test = len(data["train_labels"]), len(data["test_labels"])
        train = min(train, options.get("train_examples") or train)
        test = min(test, options.get("test_examples") or test)
        for arch in config["archs"]:
            opts = training_options(config, arch)
            n = min(train, opts.get("max_train_examples") or train)
            for defense in config["defenses"]:
                if not defense_applies(config, arch, defense):
                    continue
                for sigma in (defense_scales(config, arch, defense) if uses_noise(defense) else [0]):
                    jobs.append(dict(dataset=dataset, arch=arch, defense=defense, sigma=sigma,
                                     precode=DEFENSES[defense].needs_precode, dpsgd=defense == "dpsgd",
                                     steps=n // int(opts["batch_size"]) * int(opts["epochs"]),
                                     batch_size=int(opts["batch_size"]), test_images=test * int(opts["epochs"])))
    return jobs


def measure_training_step(config: dict, job: dict) -> dict:
    """FLOPs and kernel-launching operations of one plain training step (forward, backward, Adam) and the
    FLOPs of one test image's forward pass, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from ppp.gradients import shared_gradient
    from torch.optim import Adam

    model = build(config, job["dataset"], job["arch"], job["precode"])
    mode = model.training
    model.train()
    x = torch.rand(job["batch_size"], *model.in_shape, device="meta")
    y = (torch.arange(job["batch_size"]) % 10).to("meta")
    params = dict(model.named_parameters())
    optimizer = Adam(list(params.values()), lr=1e-3)
    ops = OpCounter()
    with FlopCounterMode(display=False) as counter, ops:
        grads = shared_gradient(model, x, y)
        for name, p in params.items():
            p.grad = grads[name]
        optimizer.step()
    for p in params.values():
        p.grad = None
    model.eval()
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        model(torch.rand(1, *model.in_shape, device="meta"))
    model.train(mode)
    return dict(step_flops=counter.get_total_flops(), step_ops=ops.count, test_flops=forward.get_total_flops())


def training_projection(config: dict, tflops: float, launch_us: float) -> list[dict]:
    """Per train job: FLOPs and projected seconds, max(FLOPs / throughput, steps x operations x launch).
    DP-SGD's per-example clipping (Opacus) is counted as twice a plain step: a rough figure."""
    jobs = training_plan(config)
    kinds: dict[tuple, dict] = {}
    for job in jobs:
        key = (job["dataset"], job["arch"], job["precode"])
        if key not in kinds:
            kinds[key] = measure_training_step(config, job)
        kind = kinds[key]
        factor = 2 if job["dpsgd"] else 1
        flops = job["steps"] * kind["step_flops"] * factor + job["test_images"] * kind["test_flops"]
        job.update(flops=flops, compute_s=flops / (tflops * 1e12),
                   latency_s=job["steps"] * kind["step_ops"] * factor * launch_us * 1e-6)
        job["projected_s"] = max(job["compute_s"], job["latency_s"])
    return jobs


def grouped_workflow() -> bool:
    """Whether an attack job optimises the cells that share a model as rows of one pass
    (ppp.stages.run_attack_cells), or each cell on its own (one job per cell)."""
    import ppp.stages

    return hasattr(ppp.stages, "run_attack_cells")


def attack_passes(cells: list[dict], grouped: bool) -> list[list[dict]]:
    """The optimisations the attack jobs run: per (dataset, arch, client, state, attack) job, one per
    model its cells share (the initialisation of the plain or the PRECODE variant; a trained cell's own
    checkpoint), or one per cell."""
    passes: dict[tuple, list[dict]] = {}
    for i, cell in enumerate(cells):
        if not grouped:
            key = (i,)
        else:
            model = cell["precode"] if cell["state"] == "init" else (cell["defense"], cell["sigma"])
            key = (cell["dataset"], cell["arch"], cell["client"], cell["state"], cell["attack"], model)
        passes.setdefault(key, []).append(cell)
    return list(passes.values())


def projection(config: dict, tflops: float, launch_us: float, grouped: bool) -> tuple[list[dict], list[dict]]:
    """Per measured kind (dataset, arch, client, attack, PRECODE or not): FLOPs and operations; per pass:
    FLOPs and projected seconds, max(FLOPs / throughput, iterations x operations per iteration x
    launch_us), where a batched pass's operations repeat per chunk of rows (attack.memory_budget_mb or
    attack.batch_size) and the loop's per row. Returns (kinds, passes)."""
    cells = attack_plan(config)
    kinds: dict[tuple, dict] = {}
    out = []
    for members in attack_passes(cells, grouped):
        first = members[0]
        key = (first["dataset"], first["arch"], first["client"], first["attack"], first["precode"])
        if key not in kinds:
            kinds[key] = dict(dataset=first["dataset"], arch=first["arch"], client=first["client"],
                              attack=first["attack"], precode=first["precode"], **measure(config, first))
        kind = kinds[key]
        rows = sum(c["victims"] // c["images"] * c["restarts"] for c in members)
        chunk = rows
        if kind["engine"] != "batched":  # the analytic attack's objective is never chunked
            budget, fixed = first["memory_budget_mb"], first["batch_size"]
            if budget:
                fits = max(1, int(budget // max(kind["saved_mb_per_row"], 1e-9)))
                chunk = min(fits, fixed) if fixed else fits
            elif fixed:
                chunk = fixed
        chunks = math.ceil(rows / chunk)
        ops = kind["ops_per_iteration"] * (rows if kind["ops_scale_with_rows"] else chunks)
        vi = sum(c["victims"] * c["iterations"] * c["restarts"] for c in members)
        flops = vi * kind["flops_per_victim_iteration"]
        iterations = first["iterations"]
        compute_s = flops / (tflops * 1e12)
        latency_s = iterations * ops * launch_us * 1e-6
        out.append(dict(dataset=first["dataset"], arch=first["arch"], client=first["client"],
                        state=first["state"], attack=first["attack"], precode=first["precode"], cells=len(members),
                        rows=rows, chunks=chunks, engine=kind["engine"], iterations=iterations,
                        victim_iterations=vi, flops=flops, compute_s=compute_s, latency_s=latency_s,
                        projected_s=max(compute_s, latency_s)))
    return list(kinds.values()), out


def summary(kinds: list[dict], passes: list[dict], grouped: bool = True) -> list[dict]:
    """One row per architecture: single-image IG FLOPs per victim-iteration (CIFAR-10 and MNIST), the
    plan's attack jobs, cells, victim-iterations and FLOPs, and the projected GPU-minutes (FLOP-bound,
    and with the latency floor)."""
    rows = []
    for arch in [a for a in ARCH_ORDER if any(p["arch"] == a for p in passes)]:
        own = [p for p in passes if p["arch"] == arch]
        ig = {k["dataset"]: k["flops_per_victim_iteration"] for k in kinds
              if k["arch"] == arch and k["attack"] == "ig" and k["client"] == "b1s1" and not k["precode"]}
        jobs = {(p["dataset"], p["client"], p["state"], p["attack"]) for p in own}
        rows.append(dict(
            arch=arch, attack_jobs=len(jobs) if grouped else sum(p["cells"] for p in own), cells=sum(p["cells"] for p in own), passes=len(own),
            gflop_ig_cifar10=ig.get("cifar10", math.nan) / 1e9, gflop_ig_mnist=ig.get("mnist", math.nan) / 1e9,
            victim_iterations=sum(p["victim_iterations"] for p in own), pflop=sum(p["flops"] for p in own) / 1e15,
            compute_min=sum(p["compute_s"] for p in own) / 60, projected_min=sum(p["projected_s"] for p in own) / 60,
            latency_bound_passes=sum(p["latency_s"] > p["compute_s"] for p in own)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", action="append", default=[],
                        help="preset(s) merged over config/config.yaml, as snakemake --configfile (default: none)")
    parser.add_argument("--tflops", type=float, default=20.0,
                        help="sustained throughput of the GPU in TFLOP/s (default 20: about 30%% of an H100/H200 "
                             "SXM's 67 TFLOP/s dense FP32)")
    parser.add_argument("--launch-us", type=float, default=5.0,
                        help="host microseconds per kernel-launching operation, the latency floor (default 5)")
    parser.add_argument("--grouping", default="auto", choices=["auto", "model", "cell"],
                        help="model: an attack job's cells that share a model are rows of one pass "
                             "(ppp.stages.run_attack_cells); cell: one pass per cell; auto: what this checkout does")
    parser.add_argument("--json", action="store_true", help="JSON lines: per kind, per pass, per arch, training")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_preset(args.configfile, base=REPO / "config" / "config.yaml")  # as snakemake --configfile
    grouped = grouped_workflow() if args.grouping == "auto" else args.grouping == "model"
    kinds, passes = projection(config, args.tflops, args.launch_us, grouped)
    rows = summary(kinds, passes, grouped)
    trainings = training_projection(config, args.tflops, args.launch_us)
    train = dict(train_jobs=len(trainings), train_steps=sum(j["steps"] for j in trainings),
                 train_pflop=sum(j["flops"] for j in trainings) / 1e15,
                 train_compute_min=sum(j["compute_s"] for j in trainings) / 60,
                 train_projected_min=sum(j["projected_s"] for j in trainings) / 60)
    total = dict(attack_jobs=sum(r["attack_jobs"] for r in rows), cells=sum(r["cells"] for r in rows),
                 victim_iterations=sum(r["victim_iterations"] for r in rows), pflop=sum(r["pflop"] for r in rows),
                 compute_min=sum(r["compute_min"] for r in rows), projected_min=sum(r["projected_min"] for r in rows))
    rounded = lambda d: {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}  # noqa: E731
    if args.json:
        for kind in kinds:
            print(json.dumps(rounded({"kind": True, **kind})))
        for one in passes:
            print(json.dumps(rounded({"pass": True, **one})))
        for row in rows:
            print(json.dumps(rounded(row)))
        print(json.dumps(rounded({**train, "total": True, **total, "grouped": grouped,
                                  "tflops": args.tflops, "launch_us": args.launch_us})))
        return 0
    print(f"Attack passes: {'cells sharing a model are rows of one pass' if grouped else 'one per cell'}; "
          f"{args.tflops:g} TFLOP/s sustained, {args.launch_us:g} us per kernel-launching operation.")
    print()
    print("| dataset | arch | client | attack | model | engine | GFLOP per victim-iteration | kernel ops per iteration | MB per row |")
    print("| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: |")
    for k in kinds:
        ops = f"{k['ops_per_iteration']:.0f}" + (" per row" if k["ops_scale_with_rows"] else " per pass")
        print(f"| {k['dataset']} | {k['arch']} | {k['client']} | {k['attack']} | {'precode' if k['precode'] else 'plain'} "
              f"| {k['engine']} | {k['flops_per_victim_iteration'] / 1e9:.3f} | {ops} | {k['saved_mb_per_row']:.0f} |")
    print()
    by = defaultdict(lambda: defaultdict(float))
    for one in passes:
        entry = by[(one["arch"], one["client"])]
        entry["jobs"] += 0
        entry["cells"] += one["cells"]
        entry["vi"] += one["victim_iterations"]
        entry["compute"] += one["compute_s"]
        entry["projected"] += one["projected_s"]
        entry["latency_bound"] += one["latency_s"] > one["compute_s"]
        entry["passes"] += 1
    print("| arch | client | cells | passes (latency-bound) | victim-iterations | GPU-minutes FLOP-bound | with the latency floor |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for (arch, client), e in by.items():
        print(f"| {arch} | {client} | {e['cells']:.0f} | {e['passes']:.0f} ({e['latency_bound']:.0f}) | {e['vi']:,.0f} | "
              f"{e['compute'] / 60:.1f} | {e['projected'] / 60:.1f} |")
    print()
    print("| arch | GFLOP per victim-iteration (IG, one image; CIFAR-10 / MNIST) | attack jobs | cells | victim-iterations "
          "| PFLOP | GPU-minutes FLOP-bound | with the latency floor |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['arch']} | {r['gflop_ig_cifar10']:.3f} / {r['gflop_ig_mnist']:.3f} | {r['attack_jobs']} | {r['cells']} | "
              f"{r['victim_iterations']:,} | {r['pflop']:.2f} | {r['compute_min']:.1f} | {r['projected_min']:.1f} |")
    print(f"| **attacks** | | {total['attack_jobs']} | {total['cells']} | {total['victim_iterations']:,} | "
          f"{total['pflop']:.2f} | {total['compute_min']:.1f} | {total['projected_min']:.1f} |")
    print(f"| **training** | | {train['train_jobs']} jobs | | {train['train_steps']:,} steps | {train['train_pflop']:.2f} | "
          f"{train['train_compute_min']:.1f} | {train['train_projected_min']:.1f} |")
    print(f"| **total** | | | | | {total['pflop'] + train['train_pflop']:.2f} | "
          f"{total['compute_min'] + train['train_compute_min']:.1f} | "
          f"{total['projected_min'] + train['train_projected_min']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
