import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import stages
from ppp.jobs import job
from ppp.lpips_metric import load_lpips

out = snakemake.output
with job(snakemake) as run:
    summary, per_attack_run, images, ssim_steps = stages.evaluate_cells(
        snakemake.input.reconstructions, snakemake.input.victims, out.metrics, out.grid,
        grid_images=snakemake.params.grid_images,
        lpips=load_lpips(snakemake.params.lpips, snakemake.params.lpips_weights), out_images=out.images)
    run.log_metrics(summary)
    for run_name, metrics in per_attack_run.items():
        run.attach_metrics(run_name, metrics)
    for run_name, steps in ssim_steps.items():
        for step, ssim in steps.items():
            run.attach_metrics(run_name, {"ssim_median_checked": ssim}, step=step)
    # Each attack run shows its own originals and reconstructions (the attack job never sees the originals).
    for run_name, path in images.items():
        run.attach_artifact(run_name, path, "reconstruction")
    run.log_artifact(out.metrics)
    run.log_artifact(out.grid)
