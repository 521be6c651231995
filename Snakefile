# ppp: gradient leakage, PRECODE, the targeted attack and PPP as one workflow.
#   snakemake --cores 2                                  # offline default (config/config.yaml)
#   snakemake --cores 8 --configfile config/paper.yaml   # the paper grid
from snakemake.utils import min_version

from ppp.config import ConfigError, check_victim_files, validate_config

min_version("9.0")


configfile: "config/config.yaml"


# The report's landing page: the study's questions, the preset and the verdicts (ppp.landing).
report: "workflow/report/workflow.rst"


try:
    validate_config(config)
    check_victim_files(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None


include: "workflow/rules/common.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/capture.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        tables=expand(
            "results/tables/{table}.csv",
            table=["reconstructions", "utility", "summary", "findings", "worst_case"],
        ),
        privacy_utility="results/plots/privacy_utility.png",
        batch_size="results/plots/batch_size.png",
        worst_case="results/plots/worst_case.png",
        landing="results/report/landing.rst",
        grids=reconstruction_grids(),
