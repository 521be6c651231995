import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import stages
from ppp.jobs import job
from ppp.lpips_metric import load_lpips

with job(snakemake) as run:
    summary, per_attack_run = stages.evaluate_cells(snakemake.input.reconstructions, snakemake.input.victims,
                                    snakemake.output.metrics, snakemake.output.grid,
                                    grid_images=snakemake.params.grid_images,
                                    lpips=load_lpips(snakemake.params.lpips, snakemake.params.lpips_weights))
    run.log_metrics(summary)
    for run_name, metrics in per_attack_run.items():
        run.attach_metrics(run_name, metrics)
    run.log_artifact(snakemake.output.metrics)
    run.log_artifact(snakemake.output.grid)
