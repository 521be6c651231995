import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import stages
from ppp.io import read_json
from ppp.jobs import job
from ppp.models import PrecodeSpec
from ppp.training import TrainingConfig

p, w = snakemake.params, snakemake.wildcards
with job(snakemake, {"training": p.training, "model": p.model_options, "precode": p.precode,
                     "noise": p.noise}) as run:
    metrics = stages.train_model(
        w.arch, w.defense, float(w.sigma), p.noise, snakemake.input.init, snakemake.input.meta,
        snakemake.input.train, snakemake.input.test, p.model_options, PrecodeSpec(**p.precode),
        TrainingConfig(**p.training), p.seed, stages.resolve_device(p.device),
        snakemake.output.model, snakemake.output.metrics)
    run.log_metrics({k: metrics[k] for k in ("test_accuracy", "train_seconds", "steps", "epsilon") if k in metrics})
    run.log_artifact(snakemake.output.metrics)
    meta = read_json(snakemake.input.meta)
    run.log_input(f"{w.dataset}/train", meta["sha256"]["train"], snakemake.input.train, "training",
                  {"examples": meta["counts"]["train"]})
