from dataclasses import asdict

from ppp.verdicts import Thresholds


rule aggregate:
    input:
        metrics=evaluation_files(),
        utility=utility_files(),
        grids=reconstruction_grids(),  # for the parent MLflow run, beside the figures made here
    output:
        reconstructions=report(
            f"{RESULTS}/tables/reconstructions.csv",
            caption="../report/reconstructions.rst",
            category="Tables",
        ),
        utility=report(
            f"{RESULTS}/tables/utility.csv",
            caption="../report/utility.rst",
            category="Tables",
        ),
        summary=report(
            f"{RESULTS}/tables/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        verdicts=report(
            f"{RESULTS}/tables/verdicts.csv",
            caption="../report/verdicts.rst",
            category="Study",
        ),
        findings=report(
            f"{RESULTS}/tables/findings.csv",
            caption="../report/findings.rst",
            category="Tables",
        ),
        worst_case=report(
            f"{RESULTS}/tables/worst_case.csv",
            caption="../report/worst_case.rst",
            category="Tables",
        ),
        privacy_utility=report(
            f"{RESULTS}/plots/privacy_utility.png",
            caption="../report/privacy_utility.rst",
            category="Figures",
        ),
        learning_curves=report(
            f"{RESULTS}/plots/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="Figures",
        ),
        batch_size=report(
            f"{RESULTS}/plots/batch_size.png",
            caption="../report/batch_size.rst",
            category="Figures",
        ),
        worst_case_plot=report(
            f"{RESULTS}/plots/worst_case.png",
            caption="../report/worst_case_plot.rst",
            category="Figures",
        ),
        # The landing page's preset and verdict tables; workflow/report/workflow.rst includes it.
        landing=report(
            f"{RESULTS}/report/landing.rst",
            caption="../report/landing.rst",
            category="Study",
        ),
    log:
        f"{LOGS}/aggregate.log",
    localrule: True
    conda:
        "../envs/ppp.yaml"
    params:
        preset={
            k: config[k]
            for k in (
                "datasets",
                "archs",
                "model_states",
                "defenses",
                "attacks",
                "client",
                "attack",
                "training",
            )
            if k in config
        },
        verdicts=asdict(Thresholds.from_report(config["report"])),
    script:
        "../scripts/aggregate.py"
