rule init_model:
    input:
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
    output:
        model=f"{RESULTS}/models/{{dataset}}/{{arch}}/{{variant}}/init.safetensors",
    log:
        f"{LOGS}/init_model/{{dataset}}_{{arch}}_{{variant}}.log",
    conda:
        "../envs/ppp.yaml"
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        model_options=lambda w: config["models"].get(w.arch, {}),
        precode=precode_params(),
        seed=config["seed"],
    script:
        "../scripts/init_model.py"


# training.grouping: cell is one job per trained model (a cluster trains them in parallel); arch trains
# every defence cell of a (dataset, arch) one after another in one job, each into its own files, which
# saves a job's start-up (3-4 s of imports on a 2-core CPU) per cell where a cell trains in seconds.
if config["training"].get("grouping", "cell") == "arch":
    for _arch in config["archs"]:
        _cells = list(defense_cells(_arch))

        rule:
            name:
                f"train_{_arch}"
            input:
                inits=[
                    f"{RESULTS}/models/{{dataset}}/{_arch}/{variant_of(defense)}/init.safetensors"
                    for defense, sigma in _cells
                ],
                meta=f"{RESULTS}/data/{{dataset}}/meta.json",
                train=f"{RESULTS}/data/{{dataset}}/train.safetensors",
                test=f"{RESULTS}/data/{{dataset}}/test.safetensors",
            output:
                models=[
                    f"{RESULTS}/models/{{dataset}}/{_arch}/{defense}/{sigma}/trained.safetensors"
                    for defense, sigma in _cells
                ],
                metrics=[
                    f"{RESULTS}/models/{{dataset}}/{_arch}/{defense}/{sigma}/metrics.json"
                    for defense, sigma in _cells
                ],
            log:
                f"{LOGS}/train/{{dataset}}_{_arch}.log",
            benchmark:
                f"{RESULTS}/benchmarks/train/{{dataset}}_{_arch}.tsv"
            conda:
                "../envs/ppp.yaml"
            threads: 1
            resources:
                mem_mb=4000,
                runtime=min(120 * len(_cells), 2880),
                gpu=gpu_request(),
            params:
                arch=_arch,
                cells=[dict(defense=defense, sigma=sigma) for defense, sigma in _cells],
                model_options=config["models"].get(_arch, {}),
                precode=precode_params(),
                training=training_options(config, _arch),
                noise=noise_options(config),
                seed=config["seed"],
                device=config["device"],
            script:
                "../scripts/train.py"

else:

    rule train:
        input:
            init=lambda w: f"{RESULTS}/models/{w.dataset}/{w.arch}/{variant_of(w.defense)}/init.safetensors",
            meta=f"{RESULTS}/data/{{dataset}}/meta.json",
            train=f"{RESULTS}/data/{{dataset}}/train.safetensors",
            test=f"{RESULTS}/data/{{dataset}}/test.safetensors",
        output:
            model=f"{RESULTS}/models/{{dataset}}/{{arch}}/{{defense}}/{{sigma}}/trained.safetensors",
            metrics=f"{RESULTS}/models/{{dataset}}/{{arch}}/{{defense}}/{{sigma}}/metrics.json",
        log:
            f"{LOGS}/train/{{dataset}}_{{arch}}_{{defense}}_{{sigma}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/train/{{dataset}}_{{arch}}_{{defense}}_{{sigma}}.tsv"
        conda:
            "../envs/ppp.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            gpu=gpu_request(),
        params:
            model_options=lambda w: config["models"].get(w.arch, {}),
            precode=precode_params(),
            training=lambda w: training_options(config, w.arch),
            noise=noise_options(config),
            seed=config["seed"],
            device=config["device"],
        script:
            "../scripts/train.py"
