rule attack:
    input:
        gradients=f"{RESULTS}/gradients/{{dataset}}/{{arch}}/{{client}}/{{defense}}/{{sigma}}/{{state}}.safetensors",
        model=model_state_path,
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
    output:
        reconstructions=f"{RESULTS}/attacks/{{dataset}}/{{arch}}/{{client}}/{{defense}}/{{sigma}}/{{state}}/{{attack}}/reconstructions.safetensors",
    log:
        f"{LOGS}/attack/{{dataset}}_{{arch}}_{{client}}_{{defense}}_{{sigma}}_{{state}}_{{attack}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/attack/{{dataset}}_{{arch}}_{{client}}_{{defense}}_{{sigma}}_{{state}}_{{attack}}.tsv"
    conda:
        "../envs/ppp.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=gpu_request(),
    params:
        attack_options=lambda w: attack_options(config, w.arch, w.attack),
        model_options=lambda w: config["models"].get(w.arch, {}),
        precode=precode_params(),
        model_mode=lambda w: model_mode(config, w.arch),
        has_precode=lambda w: needs_precode(w.defense),
        local_lr=lambda w: client_setting(config, w.arch, w.client).local_lr,
        server_knows_local_hyperparameters=server_knows(config, "local_hyperparameters"),
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/attack.py"


# One job per (dataset, arch, state) evaluates all its cells: metrics take milliseconds, a job seconds.
rule evaluate:
    input:
        reconstructions=cell_reconstructions,
        victims=f"{RESULTS}/data/{{dataset}}/victims.safetensors",
    output:
        metrics=f"{RESULTS}/eval/{{dataset}}/{{arch}}/{{client}}/{{state}}/metrics.csv",
        grid=report(
            f"{RESULTS}/plots/reconstructions_{{dataset}}_{{arch}}_{{client}}_{{state}}.png",
            caption="../report/overview.rst",
            category="Reconstructions",
        ),
    log:
        f"{LOGS}/evaluate/{{dataset}}_{{arch}}_{{client}}_{{state}}.log",
    conda:
        "../envs/ppp.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        grid_images=config["report"]["grid_images"],
        lpips=config["report"]["lpips"],
        lpips_weights=config["report"]["lpips_weights"],
    script:
        "../scripts/evaluate.py"
