import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import stages
from ppp.io import read_json
from ppp.jobs import job

params = {"victims": snakemake.input.victims, "count": snakemake.params.num_victims, "draw": snakemake.params.draw}
with job(snakemake, params) as run:
    meta = read_json(snakemake.input.meta)
    info = stages.prepare_victims(snakemake.wildcards.dataset, snakemake.input.victims, meta["image_size"],
                                   snakemake.params.num_victims, snakemake.output.victims, facts=meta,
                                   draw=snakemake.params.draw, base_seed=snakemake.params.seed)
    run.log_input(f"{snakemake.wildcards.dataset}/victims", info["sha256"], info["source"], "victims",
                  {"examples": info["victims"], "draw": info.get("draw")})
