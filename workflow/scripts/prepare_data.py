import ppp_path  # noqa: F401  (first: ppp from this checkout, in any software environment)

from ppp import stages
from ppp.jobs import job

with job(snakemake, {"options": snakemake.params.options}) as run:
    meta = stages.prepare_data(snakemake.wildcards.dataset, snakemake.params.options, snakemake.params.seed,
                               snakemake.output.train, snakemake.output.test, snakemake.output.meta)
    run.log_metrics({f"{split}_examples": n for split, n in meta["counts"].items()})
    run.log_artifact(snakemake.output.meta)
    for split in ("train", "test"):
        run.log_input(f"{meta['dataset']}/{split}", meta["sha256"][split], snakemake.output[split], split,
                      {"examples": meta["counts"][split], "source": meta["source"]})
