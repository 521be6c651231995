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
