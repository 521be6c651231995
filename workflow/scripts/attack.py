import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

import logging

from ppp import stages
from ppp.client import ClientSetting
from ppp.jobs import job
from ppp.models import PrecodeSpec
from ppp.seeding import derive_seed

p, w = snakemake.params, snakemake.wildcards
setting = ClientSetting.parse(w.client, p.local_lr)
with job(snakemake, {"attack_options": p.attack_options, "model_mode": p.model_mode,
                     "images_per_update": setting.images, "local_steps": setting.local_steps,
                     "local_lr": setting.local_lr,
                     "server_knows_local_hyperparameters": p.server_knows_local_hyperparameters}) as run:
    def progress(step, losses):
        logging.info("iteration %d: gradient loss mean %.4f, min %.4f", step, float(losses.mean()), float(losses.min()))
        run.log_metrics({"gradient_loss_mean": float(losses.mean())}, step=step)

    # One image and one step keep the study's original seeds.
    cell = (w.dataset, w.arch, w.defense, w.sigma, w.state, w.attack)
    seed = derive_seed(p.seed, "attack", *cell) if setting.is_single_gradient else \
        derive_seed(p.seed, "attack", *cell, w.client)
    summary = stages.run_attack(
        w.arch, w.attack, p.attack_options, p.has_precode, snakemake.input.model, snakemake.input.meta,
        snakemake.input.gradients, p.model_options, PrecodeSpec(**p.precode), seed,
        stages.resolve_device(p.device), snakemake.output.reconstructions, progress=progress,
        model_mode=p.model_mode, setting=setting,
        server_knows_local_hyperparameters=p.server_knows_local_hyperparameters)
    run.log_metrics({"attack_seconds": summary["seconds"], "final_gradient_loss": summary["gradient_loss_mean"],
                     "peak_memory_mb": summary["peak_memory_mb"],
                     "image_iterations_per_second": summary["image_iterations_per_second"]})
    run.set_tags({"attack_engine": summary["engine"]})
