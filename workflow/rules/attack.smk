rule attack:
    input:
        gradients=f"{RESULTS}/gradients/{{dataset}}/{{arch}}/{{defense}}/{{sigma}}/{{state}}.safetensors",
        model=model_state_path,
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
    output:
        reconstructions=f"{RESULTS}/attacks/{{dataset}}/{{arch}}/{{defense}}/{{sigma}}/{{state}}/{{attack}}/reconstructions.safetensors",
    params:
        attack_options=lambda w: attack_options(config, w.arch, w.attack),
        model_options=lambda w: config["models"].get(w.arch, {}),
        precode=precode_params(),
        model_mode=lambda w: model_mode(config, w.arch),
        has_precode=lambda w: needs_precode(w.defense),
        seed=config["seed"],
        device=config["device"],
    log:
        f"{LOGS}/attack/{{dataset}}_{{arch}}_{{defense}}_{{sigma}}_{{state}}_{{attack}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/attack/{{dataset}}_{{arch}}_{{defense}}_{{sigma}}_{{state}}_{{attack}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=gpu_request(),
    script:
        "../scripts/attack.py"


def cell_reconstructions(wildcards):
    """Every attack cell of one (dataset, arch, state), in the order of the config."""
    return [
        f"{RESULTS}/attacks/{c['dataset']}/{c['arch']}/{c['defense']}/{c['sigma']}/{c['state']}/{c['attack']}/reconstructions.safetensors"
        for c in attack_cells()
        if (c["dataset"], c["arch"], c["state"]) == (wildcards.dataset, wildcards.arch, wildcards.state)
    ]


# One job per (dataset, arch, state) evaluates all its cells: metrics take milliseconds, a job seconds.
rule evaluate:
    input:
        reconstructions=cell_reconstructions,
        victims=f"{RESULTS}/data/{{dataset}}/victims.safetensors",
    output:
        metrics=f"{RESULTS}/eval/{{dataset}}/{{arch}}/{{state}}/metrics.csv",
        grid=report(
            f"{RESULTS}/plots/reconstructions_{{dataset}}_{{arch}}_{{state}}.png",
            caption="../report/overview.rst",
            category="Reconstructions",
        ),
    params:
        grid_images=config["report"]["grid_images"],
    log:
        f"{LOGS}/evaluate/{{dataset}}_{{arch}}_{{state}}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/evaluate.py"
