# The two commands of the quick start, plus helpers. Every target creates .venv first if it is
# missing or older than the pinned dependencies.
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
CONFIG ?= config/config.yaml
SNAKEMAKE_ARGS ?=
MLFLOW_PORT ?= 5000
BIN := $(VENV)/bin
STAMP := $(VENV)/.ppp-installed

.PHONY: timing run test lint ui look mlflow-server cluster-test dry-run paper-dry-run clean-results venv gpu-check results-page

# Resumes by itself after a crash or kill -9 (tools/run_workflow.sh): a stale lock is removed only when
# no run is alive here, and half-written outputs are redone.
run: $(STAMP)
	bash tools/run_workflow.sh $(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

# Where the last run's time went: per rule and per job, wall, start-up and CPU seconds, and the CPU model
# (ppp/run_timing.py). RUN_TIMING_ARGS="--log .snakemake/log/X.snakemake.log" picks an older run.
timing: $(STAMP)
	$(BIN)/python -m ppp.run_timing . $(RUN_TIMING_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The workflow's conventions: Snakemake's linter, snakefmt, and the per-rule conda env in step with the pins.
lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile $(CONFIG)
	$(BIN)/snakefmt --check .
	$(BIN)/python tools/conda_env.py --check

dry-run: $(STAMP)
	$(BIN)/snakemake -n --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

paper-dry-run: $(STAMP)
	$(BIN)/snakemake -n --configfile config/paper.yaml --quiet rules

# ConvNet and ResNet-18 at width 64 on CIFAR-10, the cells that decide config/gpu.yaml's budgets, timed on
# one GPU in under 8 minutes (benchmarks/gpu_check.py; one JSON line per cell). Without a CUDA GPU it says
# so in one line and exits 0. GPU_CHECK_ARGS=--plan lists the cells without running them.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# docs/results.md and the README's answer table from the two draws' verdict CSVs under docs/results/
# (tools/results_page.py; --check only compares).
results-page: $(STAMP)
	$(BIN)/python tools/results_page.py

# The MLflow UI over the workflow's local SQLite backend, on this machine only.
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/results/mlflow/mlflow.db \
		--default-artifact-root $(CURDIR)/results/mlflow/artifacts --host 127.0.0.1 --port $(MLFLOW_PORT)

# What a researcher sees of the finished study (after make run): builds the report
# (results/report/report.html, also logged to the study's parent MLflow run), starts the MLflow UI on
# localhost, and saves screenshots of the report's landing page, a figure, the runs table, an attack run's
# reconstruction, a training run's curves and the verdict table under results/look/ (headless Chromium:
# Debian's chromium, installed with apt-get where missing and run as root). The UI is stopped afterwards.
look: $(STAMP)
	$(BIN)/python tools/look.py --configfile $(CONFIG) --install

# An MLflow tracking server for cluster runs: point jobs at it with
# MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT). Binds to this machine only unless MLFLOW_HOST is set.
MLFLOW_HOST ?= 127.0.0.1
mlflow-server: $(STAMP)
	mkdir -p results/mlflow-server
	$(BIN)/mlflow server --backend-store-uri sqlite:///$(CURDIR)/results/mlflow-server/mlflow.db \
		--artifacts-destination $(CURDIR)/results/mlflow-server/artifacts \
		--host $(MLFLOW_HOST) --port $(MLFLOW_PORT)

# A real one-node SLURM cluster on this machine (root, Debian): runs config/test.yaml through
# workflow/profiles/slurm with an MLflow server, checks the results against a local run, cleans up.
cluster-test: $(STAMP)
	bash tools/cluster_test.sh

venv: $(STAMP)

# A new .venv takes about 6.5 GB (torch's CUDA build) plus pip's unpacking: say so before pip fills the disk.
VENV_FREE_KB ?= 8000000
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || { free_kb=$$(df -Pk . | awk 'NR == 2 {print $$4}'); \
	  if [ "$$free_kb" -lt $(VENV_FREE_KB) ]; then \
	    echo "ppp: creating $(VENV) needs about $$(($(VENV_FREE_KB) / 1000000)) GB free in $(CURDIR); $$((free_kb / 1000000)) GB are free (VENV_FREE_KB=0 skips this check)" >&2; exit 1; fi; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

clean-results:
	rm -rf results .snakemake
