#!/usr/bin/env bash
# A node of the test cluster (tests/slurm/start.sh) fails, or comes back. As root.
#
#   tests/slurm/node.sh fail NODE [REASON]   the node dies: its slurmd and every process of its jobs (each job
#                                            step's slurmstepd and all it started) are killed with SIGKILL at
#                                            once, nothing gets to clean up; then the node is marked DOWN, as
#                                            slurmctld itself does once the node has not answered for
#                                            SlurmdTimeout (60 s here) and as an admin or a health check does at
#                                            once. Its jobs end NODE_FAIL (requeued when they allow it).
#   tests/slurm/node.sh return NODE          the node comes back: its slurmd starts again (when it is not
#                                            running) and the node is resumed; waits until it is idle.
#
# The job processes of a node are found by their step sockets in its spool dir (/var/spool/slurmd/NODE/NODE_JOB.STEP,
# each slurmstepd listens on its own), so jobs of the other nodes on this same host are left alone. Never kills by
# process name. Safe to run twice.
set -euo pipefail
RUNDIR=/run/slurm
WAIT_S=${SLURM_WAIT_S:-60}
what=${1:-}; node=${2:-}
[ -n "$node" ] && [[ "$what" =~ ^(fail|return)$ ]] || { echo "usage: $0 fail|return NODE [REASON]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }
log() { echo "[slurm node $(date +%T)] $*"; }
pidfile=$RUNDIR/slurmd-$node.pid
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
slurmd_pid() { [ -s "$pidfile" ] && cat "$pidfile" || true; }

step_pids() {  # the slurmstepd listening on each step socket of the node
  local inodes
  inodes=$(awk -v dir="/var/spool/slurmd/$node/${node}_" 'index($8, dir) == 1 {print $7}' /proc/net/unix | sort -u)
  [ -n "$inodes" ] || return 0
  for fd in /proc/[0-9]*/fd/*; do
    link=$(readlink "$fd" 2>/dev/null) || continue
    case "$link" in socket:\[*\]) grep -qx "${link:8:-1}" <<<"$inodes" && echo "${fd#/proc/}" | cut -d/ -f1 ;; esac
  done | sort -u
}
tree() {  # each pid given and all its descendants
  local p
  for p in "$@"; do echo "$p"; tree $(ps -o pid= --ppid "$p" 2>/dev/null || true); done
}

if [ "$what" = fail ]; then
  reason=${3:-"node failure (tests/slurm/node.sh)"}
  victims=$(slurmd_pid)
  alive "$victims" && kill -STOP "$victims"         # slurmd first: it reports nothing of what follows
  steps=$(step_pids)
  if [ -n "$steps" ]; then
    kill -STOP $steps 2>/dev/null || true           # frozen, so nothing forks or exits cleanly while we look
    for _ in 1 2 3; do all=$(tree $steps | sort -u); kill -STOP $all 2>/dev/null || true; done
    victims="$victims $all"
  fi
  # shellcheck disable=SC2086
  [ -n "${victims// /}" ] && kill -KILL $victims 2>/dev/null || true
  rm -f "$pidfile"
  log "$node died: killed $(wc -w <<<"$victims") processes (slurmd and the processes of its jobs)"
  scontrol update NodeName="$node" State=DOWN Reason="$reason"
  log "$node marked DOWN: $(sinfo -h -n "$node" -o '%T %E')"
else
  if ! alive "$(slurmd_pid)"; then
    /usr/sbin/slurmd -N "$node"                     # forks; writes slurmd-$node.pid
    log "$node: slurmd started again (pid $(cat "$pidfile" 2>/dev/null))"
  fi
  scontrol update NodeName="$node" State=RESUME 2>/dev/null || true  # refused when it is not down: nothing to do
  deadline=$(( $(date +%s) + WAIT_S ))
  while :; do
    state=$(sinfo -h -n "$node" -o %T)
    case "$state" in
      idle|mixed|allocated|completing) break ;;  # up and answering ("idle*": not responding yet)
      down*|drain*|fail*) scontrol update NodeName="$node" State=RESUME 2>/dev/null || true ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "$node not back after ${WAIT_S}s: $(sinfo -h -n "$node" -o '%T %E')" >&2; exit 1
    fi
    sleep 0.3
  done
  log "$node is back: $state"
fi
