import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import stages
from ppp.client import ClientSetting
from ppp.jobs import cell_record, job
from ppp.models import PrecodeSpec

p, w = snakemake.params, snakemake.wildcards
setting = ClientSetting.parse(p.client, p.local_lr)
params = {"num_victims": p.num_victims, "noise": p.noise, "model_mode": p.model_mode,
          "images_per_update": setting.images, "local_steps": setting.local_steps, "local_lr": setting.local_lr,
          "local_batch": setting.local_batch}
with job(snakemake, record=False):
    for cell, model, out in zip(p.cells, snakemake.input.models, snakemake.output.gradients):
        wildcards = dict(dataset=w.dataset, arch=p.arch, client=p.client, defense=cell["defense"],
                         sigma=cell["sigma"], state=w.state)
        with cell_record(snakemake, "capture", wildcards, params) as run:
            info = stages.capture_gradients(
                p.arch, cell["defense"], float(cell["sigma"]), p.noise, w.state, model, snakemake.input.meta,
                snakemake.input.victims, p.num_victims, p.model_options, PrecodeSpec(**p.precode), p.seed,
                stages.resolve_device(p.device), out, model_mode=p.model_mode, setting=setting)
            if "epsilon_per_update" in info:
                run.log_metrics({"epsilon_per_update": float(info["epsilon_per_update"])})
