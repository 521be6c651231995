rule mlflow_init:
    output:
        ready=f"{RESULTS}/mlflow/ready.json",
    log:
        f"{LOGS}/mlflow_init.log",
    localrule: True
    script:
        "../scripts/mlflow_init.py"
