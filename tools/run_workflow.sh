#!/usr/bin/env bash
# `make run`: Snakemake on this checkout, resuming by itself after a crash.
#
# A run killed with kill -9 (power loss, the OOM killer) leaves Snakemake's lock behind, and its next
# start fails with "Directory cannot be locked". This wrapper holds a kernel lock (flock) while it runs,
# which dies with its process, so holding it proves that no other `make run` is alive here. A
# Snakemake lock left then is stale unless a snakemake started by hand in this directory is still
# running; that one is never unlocked. Job processes of the killed run that are still finishing are
# waited for. The run itself uses --rerun-incomplete, so half-written outputs are redone and complete
# ones are kept.
#   usage: tools/run_workflow.sh SNAKEMAKE [snakemake arguments...]
set -euo pipefail
snakemake_bin="$1"
shift
mkdir -p .snakemake
exec 9>.snakemake/ppp-run.flock
if ! flock --nonblock 9; then
  echo "ppp: another 'make run' is running in $PWD; wait for it to finish (or stop it) first" >&2
  exit 1
fi

# Snakemake processes working in this directory, other than us: the main process of a run started by
# hand (never unlocked from under it), or job processes left by a killed run (waited for).
processes_here() {
  local pid cmd
  for pid in $(pgrep -f "$1" || true); do
    [ "$pid" = "$$" ] && continue
    [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$PWD" ] || continue
    cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
    case "$cmd" in *run_workflow.sh*) continue ;; esac
    echo "$pid"
  done
}

if [ -n "$(ls -A .snakemake/locks 2>/dev/null)" ]; then
  main=$(processes_here 'bin/snakemake')
  if [ -n "$main" ]; then
    echo "ppp: a snakemake run is still going in $PWD (pid $(echo $main | tr '\n' ' ')); not unlocking it" >&2
    exit 1
  fi
  jobs=$(processes_here '\.snakemake/scripts/')
  if [ -n "$jobs" ]; then
    echo "ppp: waiting for $(echo "$jobs" | wc -l) job(s) of the interrupted run to end"
    while [ -n "$(processes_here '\.snakemake/scripts/')" ]; do sleep 2; done
  fi
  echo "ppp: the previous run was interrupted; removing its stale lock and resuming"
  "$snakemake_bin" --unlock "$@" > /dev/null
fi
exec "$snakemake_bin" --rerun-incomplete "$@"
