import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import stages
from ppp.jobs import job
from ppp.models import PrecodeSpec

with job(snakemake, {"model": snakemake.params.model_options, "precode": snakemake.params.precode}):
    stages.init_model(snakemake.wildcards.arch, snakemake.wildcards.variant, snakemake.input.meta,
                      snakemake.params.model_options, PrecodeSpec(**snakemake.params.precode),
                      snakemake.params.seed, snakemake.output.model)
