#!/usr/bin/env bash
# Stop what tests/slurm/start.sh started: cancel jobs, then TERM (later KILL) exactly the PIDs
# recorded in the daemons' pid files. Never kills by process name.
#   SLURM_STOP_MUNGE=0 leaves munged running (default 1: stop it too)
set -uo pipefail
RUNDIR=/run/slurm
log() { echo "[slurm stop $(date +%T)] $*"; }

# a pid file left from an earlier boot may name a pid another program has now: only a slurm or munge daemon counts
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null && grep -qxE 'slurm.*|munged' "/proc/$1/comm" 2>/dev/null; }
pid_of() { [ -s "$1" ] && cat "$1" || true; }
stop_pid() {                      # stop_pid NAME PID
  local name=$1 pid=$2
  alive "$pid" || { log "$name not running"; return 0; }
  kill -TERM "$pid"
  for _ in $(seq 1 100); do alive "$pid" || { log "$name ($pid) stopped"; return 0; }; sleep 0.1; done
  log "$name ($pid) ignored TERM for 10 s; sending KILL"; kill -KILL "$pid" 2>/dev/null; sleep 0.2
}

CTLD=$(pid_of $RUNDIR/slurmctld.pid)

# 1. cancel all jobs so no slurmstepd/job processes outlive slurmd
if alive "$CTLD" && squeue -h >/dev/null 2>&1; then
  jobs=$(squeue -h -o %i | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"; scancel $jobs 2>/dev/null
    kw=$(scontrol show config 2>/dev/null | awk '/^KillWait/{print $3}'); kw=${kw:-30}
    for _ in $(seq 1 $(( (kw + 10) * 2 ))); do [ -z "$(squeue -h -o %i)" ] && break; sleep 0.5; done
    [ -n "$(squeue -h -o %i)" ] && log "WARNING: jobs still present: $(squeue -h -o '%i %T' | tr '\n' ' ')"
  fi
fi

# 2. daemons: each node's slurmd (slurmd-NODE.pid; slurmd.pid from a one-node start) first, so none spins trying to
#    reach slurmctld
for pf in $RUNDIR/slurmd*.pid; do
  [ -e "$pf" ] || continue
  stop_pid "$(basename "$pf" .pid)" "$(pid_of "$pf")"; rm -f "$pf"
done
stop_pid slurmctld "$CTLD"
rm -f $RUNDIR/slurmctld.pid

if [ "${SLURM_STOP_MUNGE:-1}" = 1 ]; then
  stop_pid munged "$(pid_of /run/munge/munged.pid)"
  rm -f /run/munge/munged.pid
fi
exit 0
