"""Create the MLflow backend and experiment once, before parallel jobs log to it."""
import logging

from ppp.io import write_json
from ppp.jobs import configure, tracking_settings
from ppp.tracking import init_backend

configure(1, snakemake.log[0])
settings = tracking_settings(snakemake.config)
experiment_id = None
try:
    experiment_id = init_backend(settings["uri"], settings["experiment"], "results/mlflow/artifacts")
    logging.info("MLflow experiment %r (id %s) at %s", settings["experiment"], experiment_id, settings["uri"])
except Exception as err:  # the mirror never fails the workflow
    logging.warning("MLflow backend could not be created (%s); jobs will warn and carry on", err)
write_json(snakemake.output.ready, {**settings, "experiment_id": experiment_id})
