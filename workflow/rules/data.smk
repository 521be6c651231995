rule prepare_data:
    input:
        source=data_source_files,
    output:
        train=f"{RESULTS}/data/{{dataset}}/train.safetensors",
        test=f"{RESULTS}/data/{{dataset}}/test.safetensors",
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
    log:
        f"{LOGS}/prepare_data/{{dataset}}.log",
    conda:
        "../envs/ppp.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        options=data_options,
        seed=config["seed"],
    script:
        "../scripts/prepare_data.py"


rule prepare_victims:
    input:
        victims=victims_source,
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
    output:
        victims=f"{RESULTS}/data/{{dataset}}/victims.safetensors",
    log:
        f"{LOGS}/prepare_victims/{{dataset}}.log",
    conda:
        "../envs/ppp.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        num_victims=max_victims(config),
        draw=victims_draw,
        seed=config["seed"],
    script:
        "../scripts/prepare_victims.py"
