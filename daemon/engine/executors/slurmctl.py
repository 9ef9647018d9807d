"""Slurm's command-line tools, called through subprocess: sbatch, scontrol, sacct, scancel (no slurmdbd needed).

A job's state comes from `scontrol show job -o` while slurmctld remembers the job (MinJobAge after its end), then
from `sacct -c` (the jobcomp file: finished jobs only). pyslurm binds one Slurm release only, and submitit polls
plain `sacct`, which fails without an accounting database: the CLIs work on every cluster.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from daemon.core.errors import ExecutorError, ExecutorUnreachable

TIMEOUT_S = 30  # a slurmctld that does not answer in this long is treated as unreachable for this pass
# job states after which nothing of the job runs any more (Slurm's JOB_STATE_CODES)
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
         "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"}
# reasons a pending job keeps until someone changes it: waiting cannot help (Slurm's "Job Reason Codes")
NEVER_CLEARS = {"BadConstraints", "DependencyNeverSatisfied", "PartitionConfig", "PartitionNodeLimit",
                "PartitionTimeLimit", "InvalidAccount", "InvalidQOS", "AccountNotAllowed",
                "QOSMaxWallDurationPerJobLimit", "QOSMaxNodePerJobLimit", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob", "AssocMaxWallDurationPerJobLimit",
                "AssocMaxNodesPerJobLimit", "AssocMaxCpuPerJobLimit"}
# reasons Slurm holds a job after it failed to start it (a node that came back, a launch that failed): a new job
# starts where this one cannot (an admin's own hold, JobHeldAdmin, is left to the admin)
HELD_AFTER_FAILURE = {"launch_failed_requeued_held"}


class SlurmUnreachable(RuntimeError):
    """slurmctld did not answer (down, restarting, overloaded): the job's state is unknown for now."""


@dataclass(frozen=True)
class JobInfo:
    """What Slurm says about one job."""

    state: str  # RUNNING, PENDING, COMPLETED, CANCELLED, TIMEOUT, NODE_FAIL, ...
    reason: str  # why it is pending, or how it ended ("None" when nothing to say)
    exit_code: int | None  # the batch script's: negative = the signal that ended it; None before it ends
    node: str | None  # where it runs (its first node), None before it is placed
    restarts: int  # times Slurm requeued it

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def available() -> str | None:
    """None when the Slurm client tools are here; else what is missing, with the fix."""
    missing = [tool for tool in ("sbatch", "scontrol", "scancel") if shutil.which(tool) is None]
    if missing:
        return (f"Slurm's {', '.join(missing)} not found on PATH. Fix: run the daemon on a Slurm login or submit "
                f"node (with the Slurm client tools and a slurm.conf), or set [executor] kind = \"local\"")
    return None


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise SlurmUnreachable(f"{argv[0]} did not answer in {TIMEOUT_S} s") from e
    except FileNotFoundError as e:
        raise SlurmUnreachable(available() or str(e)) from e


# sbatch's words when slurmctld did not take the request (it may take the next): not a refusal of the job
_UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Slurm temporarily unable",
                "Zero Bytes were transmitted", "Transport endpoint", "Connection refused", "Connection timed out")


def sbatch(script: Path, args: list[str], env: dict[str, str], name: str) -> str:
    """Submit `script` as job `name`; its job id. Slurm's refusal is an ExecutorError with sbatch's own words; a
    slurmctld that did not answer is ExecutorUnreachable (the run waits for it)."""
    try:
        res = subprocess.run(["sbatch", "--parsable", *args, str(script)], capture_output=True, text=True,
                             timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        found = _submitted_as(name)  # it may have gone through just before the wait ended: never a second job
        if found:
            return found
        raise ExecutorUnreachable(f"sbatch did not answer in {TIMEOUT_S} s") from None
    if res.returncode != 0:
        said = " ".join((res.stderr or res.stdout).split()) or f"exit code {res.returncode}"
        if any(words in said for words in _UNREACHABLE):
            raise ExecutorUnreachable(said)
        raise ExecutorError(f"Slurm refused the job: {said}. Fix: correct the [executor] table of overnight.toml "
                            f"(partition, account, qos, time_limit, gpus_per_run, nodes_per_run, extra_args: see "
                            f"`sinfo` for what the cluster offers), then resume the run (overnight resume RUN)")
    return res.stdout.strip().split(";")[0]  # "ID" or "ID;cluster"


def _submitted_as(name: str) -> str | None:
    """The id of a live job named `name`, if slurmctld answers and has one."""
    try:
        res = _run(["squeue", "-h", "--name", name, "-o", "%i"])
    except SlurmUnreachable as e:
        raise ExecutorUnreachable(f"sbatch did not answer in {TIMEOUT_S} s, nor squeue after it ({e})") from None
    ids = res.stdout.split() if res.returncode == 0 else []
    return ids[-1] if ids else None


def job_info(job_id: str) -> JobInfo | None:
    """The job's state; None when Slurm knows nothing of it (purged, and not in the jobcomp log)."""
    res = _run(["scontrol", "show", "job", "-o", job_id])
    if res.returncode == 0 and "JobState=" in res.stdout:
        return _from_scontrol(res.stdout)
    if "Invalid job id" not in res.stderr:
        raise SlurmUnreachable(" ".join(res.stderr.split()) or f"scontrol exit code {res.returncode}")
    return ended_run(job_id)


def _from_scontrol(text: str) -> JobInfo:
    fields = dict(re.findall(r"(\w+)=(\S*)", text))
    state = fields.get("JobState", "UNKNOWN")
    node = fields.get("BatchHost") or fields.get("NodeList")
    return JobInfo(state, fields.get("Reason", "None"), _exit_code(fields.get("ExitCode")) if state in ENDED else None,
                   None if node in (None, "", "(null)") else node.split(",")[0], int(fields.get("Restarts") or 0))


def ended_run(job_id: str) -> JobInfo | None:
    """How the job's newest ended run ended, from the job completion log (`sacct -c`: finished runs only; its
    `restarts`: the records before it); None when it has none."""
    res = _run(["sacct", "-c", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode,NodeList"])
    rows = [line.split("|") for line in res.stdout.splitlines() if line.split("|")[0] == job_id]
    if res.returncode != 0 or not rows:
        return None
    _, state, code, node = rows[-1][:4]  # a requeued job appears once per run; the last is the latest
    state = state.split()[0]  # "CANCELLED by 0"
    return JobInfo(state, "None", _exit_code(code), node or None, len(rows) - 1)


def _exit_code(text: str | None) -> int | None:
    """Slurm's "code:signal" as a Popen return code: the signal (negative) when there was one."""
    m = re.match(r"(\d+):(\d+)", text or "")
    if not m:
        return None
    code, sig = int(m.group(1)), int(m.group(2))
    if sig:
        return -sig
    return -(code - 128) if 128 < code < 160 else code  # the script's `exit $rc` of a trainer killed by a signal


def scancel(job_id: str, signal: str | None = None, *, everything: bool = False) -> None:
    """Cancel the job, or send it a signal: `everything` reaches the batch script and all its children (plain
    `scancel -s` leaves the batch step out)."""
    argv = ["scancel", *(["-s", signal.removeprefix("SIG")] if signal else []), *(["-f"] if everything else []),
            job_id]
    _run(argv)
