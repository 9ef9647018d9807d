"""The [executor] table of overnight.toml: where runs train (SPEC §12). Its keys, their check, and whether the home
sits on a filesystem other machines can see (`overnight check overnight.toml` says so when it can tell).

    [executor]
    kind = "slurm"            # "local" (default): this machine; "slurm": each run an sbatch job
    partition = "gpu"         # sbatch --partition
    account = "lab"           # sbatch --account
    qos = "normal"            # sbatch --qos
    time_limit = "4:00:00"    # sbatch --time (Slurm's formats); the trainer checkpoints before it
    gpus_per_run = 2          # --gres=gpu:N per node; several: torchrun, one process per GPU
    nodes_per_run = 1         # several: srun torchrun, the rendezvous on the job's first node
    max_parallel_runs = 4     # jobs of this home in the cluster at once
    extra_args = ["--constraint=a100"]   # passed to sbatch as they are
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from daemon.core.errors import OptionsError

KINDS = ("local", "slurm")
KEYS = ("kind", "partition", "account", "qos", "time_limit", "gpus_per_run", "nodes_per_run", "max_parallel_runs",
        "extra_args")
_EXAMPLES = {"kind": 'kind = "slurm"', "partition": 'partition = "gpu"', "account": 'account = "mylab"',
             "qos": 'qos = "normal"', "time_limit": 'time_limit = "12:00:00"', "gpus_per_run": "gpus_per_run = 1",
             "nodes_per_run": "nodes_per_run = 1", "max_parallel_runs": "max_parallel_runs = 4",
             "extra_args": 'extra_args = ["--constraint=a100", "--cpus-per-task=8"]'}
# sbatch --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]], or no limit
_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|"
                   r"UNLIMITED|INFINITE)$", re.IGNORECASE)
# filesystems that live on one machine only: a Slurm node elsewhere cannot see a home on them
LOCAL_ONLY_FS = ("tmpfs", "ramfs", "overlay", "devtmpfs", "squashfs")


def check_table(source: Path | str, table: dict[str, Any]) -> None:
    """Every key of [executor] known and of its type; Slurm's keys only with kind = "slurm"."""
    problems = [p for key, value in table.items() if (p := _problem(key, value))]
    kind = table.get("kind", "local")
    if kind == "local" and not problems:
        slurm_only = [k for k in table if k != "kind"]
        if slurm_only:
            verb = "applies" if len(slurm_only) == 1 else "apply"
            problems.append(f"{', '.join(slurm_only)} {verb} only to kind = \"slurm\" (the local executor trains "
                            f"on this machine: gpus, gpus_per_run and max_parallel_runs at the top level choose "
                            f"its GPUs). Fix: add kind = \"slurm\" under [executor], or remove "
                            f"{', '.join(slurm_only)}")
    if problems:
        err = OptionsError("\n".join(f"{source}: [executor] {p}" for p in problems))
        err.each = [f"{source}: [executor] {p}" for p in problems]
        raise err


def scope_problems(source: Path | str, table: dict[str, Any]) -> list[str]:
    """Options of overnight.toml the local executor reads, set beside a Slurm [executor], which would ignore them:
    said with the fix, never dropped unsaid."""
    executor = table.get("executor")
    if not isinstance(executor, dict) or executor.get("kind") != "slurm":
        return []
    out = []
    local = [k for k in ("gpus", "gpus_per_run", "max_parallel_runs") if k in table]
    if local:
        out.append(f"{source}: {', '.join(local)} at the top level choose{'s' if len(local) == 1 else ''} this "
                   f"machine's GPUs and runs, and [executor] kind = \"slurm\" trains on the cluster instead. Fix: "
                   f"set gpus_per_run and max_parallel_runs under [executor] (each job gets its GPUs from Slurm), and "
                   f"remove {', '.join(local)} from the top level")
    torchrun = table.get("torchrun")
    if isinstance(torchrun, dict) and "nproc_per_node" in torchrun:
        out.append(f"{source}: [torchrun] nproc_per_node is not used with [executor] kind = \"slurm\": a job runs "
                   f"one process per GPU it gets. Fix: set gpus_per_run under [executor], and remove "
                   f"nproc_per_node from [torchrun]")
    return out


def _problem(key: str, value: Any) -> str | None:
    if key not in KEYS:
        close = next(iter(difflib.get_close_matches(key, KEYS, n=1)), None)
        return (f"has no key '{key}'{f' (did you mean {close!r}?)' if close else ''}; allowed: {', '.join(KEYS)}. "
                f"Fix: rename or remove '{key}' under [executor]")
    fix = f"Fix: e.g. {_EXAMPLES[key]} under [executor]"
    if key == "kind" and value not in KINDS:
        return f"kind = {value!r} is not an executor; allowed: {', '.join(KINDS)}. {fix}"
    if key in ("partition", "account", "qos") and not (isinstance(value, str) and value.strip()):
        return f"{key} = {value!r} must be a non-empty string (Slurm's name for it). {fix}"
    if key == "time_limit" and not (isinstance(value, str) and _TIME.match(value.strip())) and \
            not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return (f"time_limit = {value!r} is not a Slurm time (minutes, \"MM:SS\", \"HH:MM:SS\", \"D-HH:MM:SS\" "
                f"or \"UNLIMITED\"). {fix}")
    if key in ("gpus_per_run", "nodes_per_run", "max_parallel_runs"):
        least = 0 if key == "gpus_per_run" else 1
        if not (isinstance(value, int) and not isinstance(value, bool) and least <= value <= 4096):
            return f"{key} = {value!r} must be a whole number {least} .. 4096. {fix}"
    if key == "extra_args" and not (isinstance(value, list) and all(isinstance(a, str) and a.startswith("-")
                                                                    for a in value)):
        return (f"extra_args = {value!r} must be a list of sbatch options, each a string starting with '-' "
                f"(one option a string, \"--name=value\"). {fix}")
    return None


def filesystem_of(path: Path) -> tuple[str, str] | None:
    """(filesystem type, mount point) of the mount holding `path`, from psutil's partitions (the longest mount
    point that contains it); None when it cannot tell."""
    import psutil

    target = str(Path(path).resolve())
    best: tuple[str, str] | None = None
    try:
        parts = psutil.disk_partitions(all=True)
    except OSError:
        return None
    for p in parts:
        mount = p.mountpoint.rstrip("/") or "/"
        inside = target == mount or target.startswith(mount + "/") or mount == "/"
        if inside and (best is None or len(mount) > len(best[1])):
            best = (p.fstype, mount)
    return best


def summary(table: dict[str, Any]) -> str:
    """One line for `overnight check`: the executor and what it asks Slurm for."""
    if table.get("kind", "local") != "slurm":
        return "executor: local (this machine)"
    asked = [f"{k} {table[k]}" for k in KEYS[1:] if k in table and k != "extra_args"]
    extra = f", sbatch {' '.join(table['extra_args'])}" if table.get("extra_args") else ""
    return f"executor: slurm{' (' + ', '.join(asked) + ')' if asked else ''}{extra}"


def shared_fs_warning(home: Path) -> str | None:
    """A warning when the home is on a filesystem of this machine only (tmpfs, overlay, ...): Slurm's nodes
    elsewhere cannot see the run folders. Other types (ext4, xfs, nfs, lustre, ...) are not judged: a local disk
    may be exported, and a single-node cluster sees its own disk."""
    fs = filesystem_of(home)
    if fs is None or fs[0] not in LOCAL_ONLY_FS:
        return None
    return (f"warning: [executor] kind = \"slurm\" needs the home on a filesystem every node sees, but {home} is on "
            f"{fs[0]} (mounted at {fs[1]}), which only this machine sees: jobs on other nodes would not find their "
            f"run folders. Fix: move the home to a shared filesystem (NFS, Lustre, ...) and run the daemon there")
