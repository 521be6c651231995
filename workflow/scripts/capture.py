import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import stages
from ppp.client import ClientSetting
from ppp.jobs import job
from ppp.models import PrecodeSpec

p, w = snakemake.params, snakemake.wildcards
setting = ClientSetting.parse(w.client, p.local_lr)
with job(snakemake, {"num_victims": p.num_victims, "noise": p.noise, "model_mode": p.model_mode,
                     "images_per_update": setting.images, "local_steps": setting.local_steps,
                     "local_lr": setting.local_lr}) as run:
    info = stages.capture_gradients(
        w.arch, w.defense, float(w.sigma), p.noise, w.state, snakemake.input.model, snakemake.input.meta,
        snakemake.input.victims, p.num_victims, p.model_options, PrecodeSpec(**p.precode), p.seed,
        stages.resolve_device(p.device), snakemake.output.gradients, model_mode=p.model_mode, setting=setting)
    if "epsilon_per_update" in info:
        run.log_metrics({"epsilon_per_update": float(info["epsilon_per_update"])})
