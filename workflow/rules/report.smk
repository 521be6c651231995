rule aggregate:
    input:
        metrics=evaluation_files(),
        utility=utility_files(),
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
            category="Plots",
        ),
    log:
        f"{LOGS}/aggregate.log",
    localrule: True
    conda:
        "../envs/ppp.yaml"
    params:
        verdicts={
            k: config["report"][k]
            for k in ("success_ssim", "margin_db", "max_accuracy_drop")
        },
    script:
        "../scripts/aggregate.py"
