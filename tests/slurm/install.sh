#!/usr/bin/env bash
# Install Debian's Slurm (slurm-wlm) and munge for the test suite's single-node cluster, quietly, as root, without
# starting any service (a temporary policy-rc.d keeps the packages' init scripts from starting the daemons:
# tests/slurm/start.sh starts them itself, so it knows their PIDs). Does nothing when they are installed.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "installing slurm-wlm and munge needs root" >&2; exit 1; }
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null; then
  exit 0
fi
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: 9 packages instead of 43 (hdf5, rrd, influxdb, ... are not needed)
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
