# One capture job per (dataset, arch, client setting, state) computes every defence cell's shared updates, each
# into its own file (a cell takes well under a second; a job costs seconds of start-up); with
# attack.grouping: cell, one job per cell (common.smk, cell_groups).
for _arch, _client, _group, _cells in [
    (arch, client, group, cells)
    for arch in config["archs"]
    for client in client_names(arch)
    for group, cells in cell_groups(list(defense_cells(arch, client)))
]:

    rule:
        name:
            f"capture_{_arch}_{_client}{_group}"
        input:
            models=lambda w, arch=_arch, cells=_cells: cell_models(w, arch, cells),
            meta=f"{RESULTS}/data/{{dataset}}/meta.json",
            victims=f"{RESULTS}/data/{{dataset}}/victims.safetensors",
        output:
            gradients=[
                f"{RESULTS}/gradients/{{dataset}}/{_arch}/{_client}/{defense}/{sigma}/{{state}}.safetensors"
                for defense, sigma in _cells
            ],
        log:
            f"{LOGS}/capture/{{dataset}}_{_arch}_{_client}_{{state}}{_group}.log",
        conda:
            "../envs/ppp.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
            gpu=gpu_request(),
        params:
            arch=_arch,
            client=_client,
            cells=[dict(defense=defense, sigma=sigma) for defense, sigma in _cells],
            model_options=config["models"].get(_arch, {}),
            precode=precode_params(),
            model_mode=model_mode(config, _arch),
            num_victims=client_victims(config, _arch, _client),
            noise=noise_options(config),
            local_lr=client_setting(config, _arch, _client).local_lr,
            seed=config["seed"],
            device=config["device"],
        script:
            "../scripts/capture.py"
