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

.PHONY: run test ui dry-run paper-dry-run clean-results venv

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

dry-run: $(STAMP)
	$(BIN)/snakemake -n --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

paper-dry-run: $(STAMP)
	$(BIN)/snakemake -n --configfile config/paper.yaml --quiet rules

# The MLflow UI over the workflow's local SQLite backend, on this machine only.
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/results/mlflow/mlflow.db \
		--default-artifact-root $(CURDIR)/results/mlflow/artifacts --host 127.0.0.1 --port $(MLFLOW_PORT)

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

clean-results:
	rm -rf results .snakemake
