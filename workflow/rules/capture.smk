rule capture:
    input:
        model=model_state_path,
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
        victims=f"{RESULTS}/data/{{dataset}}/victims.safetensors",
    output:
        gradients=f"{RESULTS}/gradients/{{dataset}}/{{arch}}/{{client}}/{{defense}}/{{sigma}}/{{state}}.safetensors",
    log:
        f"{LOGS}/capture/{{dataset}}_{{arch}}_{{client}}_{{defense}}_{{sigma}}_{{state}}.log",
    conda:
        "../envs/ppp.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=gpu_request(),
    params:
        model_options=lambda w: config["models"].get(w.arch, {}),
        precode=precode_params(),
        model_mode=lambda w: model_mode(config, w.arch),
        num_victims=lambda w: client_victims(config, w.arch, w.client),
        noise=noise_options(config),
        local_lr=lambda w: client_setting(config, w.arch, w.client).local_lr,
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/capture.py"
