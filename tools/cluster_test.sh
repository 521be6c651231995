#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, the tiny workflow submitted through
# workflow/profiles/slurm with an MLflow tracking server, and three checks:
#   1. every non-local job went through sbatch;
#   2. the tables equal those of a local run of the same config;
#   3. every job is a run in the MLflow server, and runs appear there while the workflow still runs.
# Needs root on Debian (installs slurmctld, slurmd, slurm-client and munge when missing). Starts its
# own daemons with their own config, ports and state under a temporary folder, and stops only the
# processes it started. Usage: make cluster-test   (or: bash tools/cluster_test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY="$REPO/.venv/bin/python"
SLURM_PORT_BASE=${SLURM_PORT_BASE:-6917}
MLFLOW_TEST_PORT=${MLFLOW_TEST_PORT:-5077}

[ "$(id -u)" = 0 ] || { echo "cluster-test: needs root (it starts munge and SLURM daemons)"; exit 2; }
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
  echo "cluster-test: installing SLURM and munge from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi

WORK=$(mktemp -d /tmp/ppp-cluster-test.XXXXXX)
MARKER="# written by ppp tools/cluster_test.sh"
STARTED_PIDS=()
cleanup() {
  local status=$?
  for pid in "${STARTED_PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pidfile in "$WORK"/slurmd.pid "$WORK"/slurmctld.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  [ -f "$WORK/munged.pid" ] && kill "$(cat "$WORK/munged.pid")" 2>/dev/null || true
  if [ -n "${SYSTEM_CONF:-}" ] && [ -f "$SYSTEM_CONF" ] && head -1 "$SYSTEM_CONF" | grep -qF "$MARKER"; then
    rm -f "$SYSTEM_CONF"
  fi
  sleep 1
  if [ "$status" = 0 ]; then rm -rf "$WORK"; else echo "cluster-test: FAILED; logs kept in $WORK"; fi
  exit "$status"
}
trap cleanup EXIT

# munge: reuse a running munged, otherwise start one and remember it.
if ! pgrep -x munged >/dev/null; then
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged --pid-file="$WORK/munged.pid.tmp" 2>/dev/null || \
    runuser -u munge -- /usr/sbin/munged
  sleep 1
  pgrep -x munged -n > "$WORK/munged.pid"
fi

# srun inside a job reads /etc/slurm/slurm.conf (SLURM_CONF is not passed on to job steps), so the
# config goes there; an existing one that is not ours is left alone and the test stops.
SYSTEM_CONF=/etc/slurm/slurm.conf
MARKER="# written by ppp tools/cluster_test.sh"
if [ -e "$SYSTEM_CONF" ] && ! head -1 "$SYSTEM_CONF" | grep -qF "$MARKER"; then
  echo "cluster-test: $SYSTEM_CONF exists and is not ours; not touching a configured SLURM"; exit 2
fi
export SLURM_CONF="$SYSTEM_CONF"
mkdir -p /etc/slurm
MEMORY=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
mkdir -p "$WORK/state" "$WORK/spool"
cat > "$SLURM_CONF" <<CONF
$MARKER
ClusterName=ppptest
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=$SLURM_PORT_BASE
SlurmdPort=$((SLURM_PORT_BASE + 1))
AuthType=auth/munge
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$((MEMORY / 2)) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
slurmctld
slurmd -N localhost
for _ in $(seq 60); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || { echo "cluster-test: node did not become idle (state: $state)"; exit 1; }
echo "cluster-test: one-node SLURM cluster up (config $SLURM_CONF)"

"$REPO/.venv/bin/mlflow" server --backend-store-uri "sqlite:///$WORK/mlflow.db" \
  --artifacts-destination "$WORK/mlflow-artifacts" --host 127.0.0.1 --port "$MLFLOW_TEST_PORT" \
  > "$WORK/mlflow-server.log" 2>&1 &
STARTED_PIDS+=("$!")
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$MLFLOW_TEST_PORT/health" >/dev/null && break
  sleep 1
done
echo "cluster-test: MLflow server on http://127.0.0.1:$MLFLOW_TEST_PORT"

# The tiny config, with an absolute victims path so both runs read the same file.
"$PY" - "$REPO" "$WORK" <<'PYCONF'
import sys, yaml
repo, work = sys.argv[1:]
config = yaml.safe_load(open(f"{repo}/config/test.yaml"))
config["datasets"]["mnist"]["victims"] = f"{repo}/data/victims/mnist_128_cvb.npz"
local = dict(config, mlflow={"enabled": False})
yaml.safe_dump(config, open(f"{work}/cluster.yaml", "w"))
yaml.safe_dump(local, open(f"{work}/local.yaml", "w"))
PYCONF

echo "cluster-test: local reference run"
"$PY" -m snakemake -s "$REPO/Snakefile" --directory "$WORK/local" --configfile "$WORK/local.yaml" \
  --cores 2 --quiet > "$WORK/local.log" 2>&1

echo "cluster-test: cluster run through workflow/profiles/slurm"
# No slurmdbd here: check job states with squeue instead of sacct (see docs/cluster.md).
# In the background: while it runs, the server is polled for a job's run nested under the invocation's.
MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_TEST_PORT" timeout -k 10 900 \
  "$PY" -m snakemake -s "$REPO/Snakefile" --directory "$WORK/cluster" --configfile "$WORK/cluster.yaml" \
  --profile "$REPO/workflow/profiles/slurm" --jobs 4 --slurm-status-command squeue \
  --slurm-init-seconds-before-status-checks 2 --seconds-between-status-checks 2 \
  > "$WORK/cluster.log" 2>&1 &
WORKFLOW_PID=$!
STARTED_PIDS+=("$WORKFLOW_PID")
"$PY" - "$MLFLOW_TEST_PORT" "$WORKFLOW_PID" > "$WORK/live.txt" <<'PYLIVE'
import sys, time
from mlflow.tracking import MlflowClient
port, pid = sys.argv[1], int(sys.argv[2])
client = MlflowClient(f"http://127.0.0.1:{port}")

def running():
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

while running():
    experiment = client.get_experiment_by_name("ppp")
    parents = experiment and client.search_runs([experiment.experiment_id], "tags.`ppp.kind` = 'invocation'")
    nested = parents and client.search_runs(
        [experiment.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}' and attributes.status = 'FINISHED'",
        max_results=1)
    if nested and running():
        print(nested[0].info.run_name, round(time.time() - nested[0].info.end_time / 1000, 1))
        break
    time.sleep(2)
PYLIVE
wait "$WORKFLOW_PID" || { tail -40 "$WORK/cluster.log"; exit 1; }

"$PY" - "$WORK" "$MLFLOW_TEST_PORT" <<'PYCHECK'
import re, sys
import pandas as pd
from mlflow.tracking import MlflowClient
work, port = sys.argv[1:]
log = open(f"{work}/cluster.log").read()
submitted = set(re.findall(r"SLURM jobid (\d+)", log)) | set(re.findall(r"SLURM run ID: \S+.*?jobid (\d+)", log))
stats = log.split("Job stats:")[1].split("total")[0]
counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^([\w.+-]+)\s+(\d+)\s*$", stats, re.M)}
local_rules = {"aggregate", "all"}
expected = sum(n for rule, n in counts.items() if rule not in local_rules)
assert len(submitted) == expected, f"{len(submitted)} SLURM jobs submitted, {expected} expected: {counts}"
print(f"cluster-test: {expected} jobs went through sbatch ({len(submitted)} SLURM job ids)")
for table in ("reconstructions", "utility", "summary"):
    a = pd.read_csv(f"{work}/local/results/tables/{table}.csv")
    b = pd.read_csv(f"{work}/cluster/results/tables/{table}.csv")
    pd.testing.assert_frame_equal(a, b)
print("cluster-test: tables equal the local run's")
client = MlflowClient(f"http://127.0.0.1:{port}")
experiment = client.get_experiment_by_name("ppp")
runs = client.search_runs([experiment.experiment_id], max_results=1000)
parents = [r for r in runs if r.data.tags.get("ppp.kind") == "invocation"]
jobs = [r for r in runs if "rule" in r.data.tags]
rules = sorted({r.data.tags["rule"] for r in jobs})
assert len(parents) == 1 and all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in jobs)
assert len(jobs) >= expected and all(r.info.status == "FINISHED" for r in runs), (len(jobs), rules)
print(f"cluster-test: {len(jobs)} MLflow runs nested under one invocation in the server ({', '.join(rules)})")
live = open(f"{work}/live.txt").read().split()
assert live, "no job's run was in the MLflow server while the workflow ran"
print(f"cluster-test: {live[0]}'s run was in the server {live[1]} s after the job ended, while the workflow ran")
PYCHECK
echo "cluster-test: passed"
