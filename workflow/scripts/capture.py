import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import stages
from ppp.jobs import job
from ppp.models import PrecodeSpec

p, w = snakemake.params, snakemake.wildcards
with job(snakemake, {"num_victims": p.num_victims, "noise": p.noise, "model_mode": p.model_mode}):
    stages.capture_gradients(
        w.arch, w.defense, float(w.sigma), p.noise, w.state, snakemake.input.model, snakemake.input.meta,
        snakemake.input.victims, p.num_victims, p.model_options, PrecodeSpec(**p.precode), p.seed,
        stages.resolve_device(p.device), snakemake.output.gradients, model_mode=p.model_mode)
