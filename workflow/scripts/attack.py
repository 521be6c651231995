import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

import contextlib
import logging

from ppp import stages
from ppp.client import ClientSetting
from ppp.hardware import resolve_precision
from ppp.jobs import cell_record, job
from ppp.models import PrecodeSpec
from ppp.seeding import derive_seed

p, w = snakemake.params, snakemake.wildcards
setting = ClientSetting.parse(p.client, p.local_lr)
params = {"attack_options": p.attack_options, "model_mode": p.model_mode, "images_per_update": setting.images,
          "local_steps": setting.local_steps, "local_lr": setting.local_lr, "local_batch": setting.local_batch,
          "server_knows_local_hyperparameters": p.server_knows_local_hyperparameters}


def cell_seed(cell):
    # One image and one step keep the study's original seeds.
    parts = (w.dataset, p.arch, cell["defense"], cell["sigma"], w.state, p.attack)
    return derive_seed(p.seed, "attack", *parts) if setting.is_single_gradient else \
        derive_seed(p.seed, "attack", *parts, p.client)


with job(snakemake, record=False), contextlib.ExitStack() as records:
    # One run record per cell, as if each cell were its own job (MLflow shows cells, not passes).
    runs = [records.enter_context(cell_record(snakemake, "attack", dict(
        dataset=w.dataset, arch=p.arch, client=p.client, defense=c["defense"], sigma=c["sigma"], state=w.state,
        attack=p.attack), params)) for c in p.cells]

    def progress(step, losses):
        logging.info("iteration %d: gradient loss mean %.4f, min %.4f", step,
                     sum(float(x.sum()) for x in losses) / sum(x.numel() for x in losses),
                     min(float(x.min()) for x in losses))
        for run, cell_losses in zip(runs, losses):
            run.log_metrics({"gradient_loss_mean": float(cell_losses.mean())}, step=step)

    cells = [stages.AttackCell(gradients, model, c["has_precode"], cell_seed(c), out)
             for c, gradients, model, out in zip(p.cells, snakemake.input.gradients, snakemake.input.models,
                                                 snakemake.output.reconstructions)]
    device = stages.resolve_device(p.device)
    # precision: auto resolves per machine (bfloat16 where native): record what ran.
    precision = resolve_precision(p.attack_options.get("precision", "float32"), device)
    logging.info("attack precision: %s (attack.precision: %s)", precision, p.attack_options.get("precision", "float32"))
    summaries = stages.run_attack_cells(
        p.arch, p.attack, p.attack_options, cells, snakemake.input.meta, p.model_options, PrecodeSpec(**p.precode),
        device, progress=progress, model_mode=p.model_mode, setting=setting,
        server_knows_local_hyperparameters=p.server_knows_local_hyperparameters)
    for run, summary in zip(runs, summaries):
        run.log_metrics({"attack_seconds": summary["seconds"], "final_gradient_loss": summary["gradient_loss_mean"],
                         "peak_memory_mb": summary["peak_memory_mb"],
                         "image_iterations_per_second": summary["image_iterations_per_second"],
                         "oom_retries": summary["oom_retries"]})
        run.set_tags({"attack_engine": summary["engine"], "cells_in_pass": summary["cells_in_pass"],
                      "rows_per_pass": str(summary["rows_per_pass"] or "all"), "attack_precision": precision})
