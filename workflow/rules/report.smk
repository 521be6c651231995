def evaluation_files():
    return expand(f"{RESULTS}/eval/{{dataset}}/{{arch}}/{{state}}/metrics.csv",
                  dataset=list(config["datasets"]), arch=config["archs"], state=config["model_states"])


def utility_files():
    if not config["training"]["enabled"]:
        return []
    return [
        f"{RESULTS}/models/{dataset}/{arch}/{defense}/{sigma}/metrics.json"
        for dataset in config["datasets"]
        for arch in config["archs"]
        for defense, sigma in defense_cells(arch)
    ]


rule aggregate:
    input:
        metrics=evaluation_files(),
        utility=utility_files(),
    output:
        reconstructions=report(f"{RESULTS}/tables/reconstructions.csv", caption="../report/reconstructions.rst", category="Tables"),
        utility=report(f"{RESULTS}/tables/utility.csv", caption="../report/utility.rst", category="Tables"),
        summary=report(f"{RESULTS}/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        findings=report(f"{RESULTS}/tables/findings.csv", caption="../report/findings.rst", category="Tables"),
        worst_case=report(f"{RESULTS}/tables/worst_case.csv", caption="../report/worst_case.rst", category="Tables"),
        privacy_utility=report(f"{RESULTS}/plots/privacy_utility.png", caption="../report/privacy_utility.rst", category="Plots"),
    params:
        verdicts={k: config["report"][k] for k in ("success_ssim", "margin_db", "max_accuracy_drop")},
    log:
        f"{LOGS}/aggregate.log",
    localrule: True
    script:
        "../scripts/aggregate.py"
