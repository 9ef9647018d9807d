"""The trainer's command line: one process, or one run over several processes through torchrun (no torch here).

One process: `python -m daemon.trainer RUN_DIR`. Several (SPEC §12): torch's own launcher, torchrun, started as
`python -m daemon.trainer.torchrun --nproc-per-node K [options of the [torchrun] table] -m daemon.trainer RUN_DIR`.
`daemon.trainer.torchrun` is torchrun's `main` (the same arguments, the same elastic agent) with two additions: when
a worker was killed by a signal, the launcher ends by that signal too, so the daemon sees what it sees when a
single trainer is killed (a negative return code: resumable) instead of torchrun's plain exit code 1; and a worker
that dies after rank 0 wrote the result of a run that ended (completed, stopped) leaves it so: exit code 0.

A single node always gets `--standalone` (a rendezvous on a free local port) unless the table names a rendezvous
or a master address, so two runs side by side never collide on torchrun's default port 29500.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# The keys of overnight.toml's [torchrun] table: torchrun's own options (written with dashes on its command line),
# with the types accepted. Options that would change where workers write (log_dir, redirects, tee) are left out:
# the workers' output is the run's console.log.
TORCHRUN_KEYS: dict[str, tuple[type, ...]] = {
    "nproc_per_node": (int,),
    "nnodes": (int, str),  # 2, or "MIN:MAX" for an elastic range
    "node_rank": (int,),
    "rdzv_backend": (str,),
    "rdzv_endpoint": (str,),
    "rdzv_id": (str,),
    "rdzv_conf": (str,),
    "master_addr": (str,),
    "master_port": (int,),
    "local_addr": (str,),
    "max_restarts": (int,),
    "monitor_interval": (int, float),
}
# Keys that mean "more than this machine": with any of them the launcher is torchrun even for one process per node.
MULTI_NODE_KEYS = ("nnodes", "node_rank", "rdzv_endpoint", "rdzv_backend", "rdzv_id", "master_addr", "master_port")
# A worker's exit code when it failed only because another rank vanished (a collective lost its peer): not a
# failure of its own. The launcher ignores it when it decides how the group died.
PEER_LOST_EXIT = 3
# A worker's exit code when it ran out of memory and wrote the next rung of the retry ladder (daemon/trainer/oom.py)
# to the file RETRY_FILE_ENV names: a single-node launcher then starts every worker again, RETRY_OPTIONS_ENV
# holding that rung, and they resume from the last checkpoint (what one process does in-process).
OOM_RETRY_EXIT = 4
RETRY_FILE_ENV = "OVERNIGHT_OOM_RETRY_FILE"
RETRY_OPTIONS_ENV = "OVERNIGHT_OOM_RETRY_OPTIONS"
LAUNCHER_MODULE = "daemon.trainer.torchrun"
TRAINER_MODULE = "daemon.trainer"


def multi_node(torchrun: dict[str, Any] | None) -> bool:
    """The [torchrun] table joins this machine to others (more than one node, or a rendezvous of its own)."""
    table = torchrun or {}
    nnodes = table.get("nnodes")
    if nnodes is not None and str(nnodes).strip() not in ("1", "1:1"):
        return True
    return any(table.get(k) is not None for k in MULTI_NODE_KEYS if k != "nnodes")


def nproc_for(gpu_set_size: int, torchrun: dict[str, Any] | None) -> int:
    """Processes per node for one run: `nproc_per_node` of [torchrun] when given, else one per GPU of the run's
    GPU set, else 1 (the CPU)."""
    given = (torchrun or {}).get("nproc_per_node")
    if isinstance(given, int) and not isinstance(given, bool) and given >= 1:
        return given
    return max(1, int(gpu_set_size))


def trainer_command(run_dir: Path | str, nproc: int = 1, torchrun: dict[str, Any] | None = None) -> list[str]:
    """The argv that starts the trainer of `run_dir` with `nproc` processes on this node."""
    if nproc <= 1 and not multi_node(torchrun) and "nproc_per_node" not in (torchrun or {}):
        return [sys.executable, "-m", TRAINER_MODULE, str(run_dir)]  # one process, unless the owner asked for torchrun
    table = {k: v for k, v in (torchrun or {}).items() if k != "nproc_per_node" and v is not None}
    table.setdefault("max_restarts", 0)
    argv = [sys.executable, "-m", LAUNCHER_MODULE, "--nproc-per-node", str(max(1, nproc))]
    if not multi_node(torchrun):
        argv.append("--standalone")  # a free port for this run's rendezvous: runs side by side never collide
    for key in sorted(table):
        argv += [f"--{key.replace('_', '-')}", str(table[key])]
    return [*argv, "-m", TRAINER_MODULE, str(run_dir)]


def is_trainer_cmdline(cmd: list[str]) -> bool:
    """A trainer's command line, of either shape: `... -m daemon.trainer RUN_DIR` (a single trainer, torchrun's
    launcher, and each worker, which torchrun starts as `python -u -m daemon.trainer RUN_DIR`)."""
    return len(cmd) >= 3 and cmd[-3] == "-m" and cmd[-2] == TRAINER_MODULE
