import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import stages
from ppp.jobs import job

with job(snakemake) as run:
    summary = stages.evaluate_cells(snakemake.input.reconstructions, snakemake.input.victims,
                                    snakemake.output.metrics, snakemake.output.grid,
                                    grid_images=snakemake.params.grid_images)
    run.log_metrics(summary)
    run.log_artifact(snakemake.output.metrics)
    run.log_artifact(snakemake.output.grid)
