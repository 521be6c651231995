import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import stages
from ppp.io import read_json
from ppp.jobs import cell_record, job
from ppp.models import PrecodeSpec
from ppp.training import TrainingConfig

p, w, out = snakemake.params, snakemake.wildcards, snakemake.output
params = {"training": p.training, "model": p.model_options, "precode": p.precode, "noise": p.noise}
meta = read_json(snakemake.input.meta)


def train(arch, defense, sigma, init, out_model, out_metrics, run):
    metrics = stages.train_model(
        arch, defense, float(sigma), p.noise, init, snakemake.input.meta, snakemake.input.train,
        snakemake.input.test, p.model_options, PrecodeSpec(**p.precode), TrainingConfig(**p.training), p.seed,
        stages.resolve_device(p.device), out_model, out_metrics)
    run.log_metrics({k: metrics[k] for k in ("test_accuracy", "train_seconds", "steps", "epsilon") if k in metrics})
    # Per-epoch histories (the MLflow UI's learning curves), step = epoch.
    for epoch, (accuracy, loss) in enumerate(zip(metrics["test_accuracy_per_epoch"], metrics["test_loss_per_epoch"]),
                                             start=1):
        run.log_metrics({"test_accuracy_epoch": accuracy, "test_loss_epoch": loss}, step=epoch)
    run.log_artifact(out_metrics)
    run.log_input(f"{w.dataset}/train", meta["sha256"]["train"], snakemake.input.train, "training",
                  {"examples": meta["counts"]["train"]})


if hasattr(p, "cells"):  # training.grouping: arch, one run record per cell as if each were its own job
    with job(snakemake, record=False):
        for cell, init, out_model, out_metrics in zip(p.cells, snakemake.input.inits, out.models, out.metrics):
            wildcards = dict(dataset=w.dataset, arch=p.arch, defense=cell["defense"], sigma=cell["sigma"])
            with cell_record(snakemake, "train", wildcards, params) as run:
                train(p.arch, cell["defense"], cell["sigma"], init, out_model, out_metrics, run)
else:
    with job(snakemake, params) as run:
        train(w.arch, w.defense, w.sigma, snakemake.input.init, out.model, out.metrics, run)
