# One attack job per (dataset, arch, client, state, attack) reconstructs every defence cell the attack
# applies to, each into its own file; cells sharing a model are rows of one optimisation
# (ppp.stages.run_attack_cells). With attack.grouping: cell, one job per cell instead. The cells are fixed
# by the config per (arch, client setting), so each (arch, client, attack[, cell]) gets its own rule with
# its cells as named outputs.
for _arch, _client, _attack, _group, _cells in [
    (arch, client, attack, group, cells)
    for arch in config["archs"]
    for client in client_names(arch)
    for attack in config["attacks"]
    for group, cells in attack_groups(arch, client, attack)
]:
    if _cells:

        rule:
            name:
                f"attack_{_arch}_{_client}_{_attack}{_group}"
            input:
                gradients=[
                    f"{RESULTS}/gradients/{{dataset}}/{_arch}/{_client}/{defense}/{sigma}/{{state}}.safetensors"
                    for defense, sigma in _cells
                ],
                models=lambda w, arch=_arch, cells=_cells: cell_models(w, arch, cells),
                meta=f"{RESULTS}/data/{{dataset}}/meta.json",
            output:
                reconstructions=[
                    f"{RESULTS}/attacks/{{dataset}}/{_arch}/{_client}/{defense}/{sigma}/{{state}}/{_attack}/reconstructions.safetensors"
                    for defense, sigma in _cells
                ],
            log:
                f"{LOGS}/attack/{{dataset}}_{_arch}_{_client}_{{state}}_{_attack}{_group}.log",
            benchmark:
                f"{RESULTS}/benchmarks/attack/{{dataset}}_{_arch}_{_client}_{{state}}_{_attack}{_group}.tsv"
            # Longest first, so that no long job starts last while the other cores idle.
            priority: attack_cost(_arch, _client, _attack, _cells)
            conda:
                "../envs/ppp.yaml"
            threads: 1
            resources:
                mem_mb=4000,
                runtime=min(240 * len(_cells), 2880),  # minutes: the old per-cell limit, capped at 2 days
                gpu=gpu_request(),
            params:
                arch=_arch,
                client=_client,
                attack=_attack,
                cells=[
                    dict(
                        defense=defense,
                        sigma=sigma,
                        has_precode=needs_precode(defense),
                    )
                    for defense, sigma in _cells
                ],
                attack_options=attack_options(config, _arch, _attack, _client),
                model_options=config["models"].get(_arch, {}),
                precode=precode_params(),
                model_mode=model_mode(config, _arch),
                local_lr=client_setting(config, _arch, _client).local_lr,
                server_knows_local_hyperparameters=server_knows(
                    config, "local_hyperparameters"
                ),
                seed=config["seed"],
                device=config["device"],
            script:
                "../scripts/attack.py"


# One job per (dataset, arch, client, state) evaluates all its cells: metrics take milliseconds, a job seconds.
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
        # One small grid per attack run (its originals and reconstructions), for the MLflow UI.
        images=directory(
            f"{RESULTS}/eval/{{dataset}}/{{arch}}/{{client}}/{{state}}/images"
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
