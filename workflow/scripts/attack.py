import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

import logging

from ppp import stages
from ppp.jobs import job
from ppp.models import PrecodeSpec
from ppp.seeding import derive_seed

p, w = snakemake.params, snakemake.wildcards
with job(snakemake, {"attack_options": p.attack_options, "model_mode": p.model_mode}) as run:
    def progress(step, losses):
        logging.info("iteration %d: gradient loss mean %.4f, min %.4f", step, float(losses.mean()), float(losses.min()))
        run.log_metrics({"gradient_loss_mean": float(losses.mean())}, step=step)

    seed = derive_seed(p.seed, "attack", w.dataset, w.arch, w.defense, w.sigma, w.state, w.attack)
    summary = stages.run_attack(
        w.arch, w.attack, p.attack_options, p.has_precode, snakemake.input.model, snakemake.input.meta,
        snakemake.input.gradients, p.model_options, PrecodeSpec(**p.precode), seed,
        stages.resolve_device(p.device), snakemake.output.reconstructions, progress=progress,
        model_mode=p.model_mode)
    run.log_metrics({"attack_seconds": summary["seconds"], "final_gradient_loss": summary["gradient_loss_mean"],
                     "peak_memory_mb": summary["peak_memory_mb"]})
    run.set_tags({"attack_engine": summary["engine"]})
