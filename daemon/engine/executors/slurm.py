"""The Slurm executor: each run's trainer is one sbatch job; the daemon stays the one queue and the one DB writer.

The daemon writes the job script into the run folder (`job.sh`, atomically), submits it with `sbatch --parsable`,
records the job id (the DB's `job_id`, the run folder's `job.json`) and follows the job through `scontrol` and
`sacct -c` (daemon/engine/executors/slurmctl.py). The trainer is the same command as on the local executor; it has
no stdin from the daemon, so its commands come through the run folder's `commands.txt` (daemon/trainer/commands.py
follows it). The home must be on a filesystem every node sees.

What Slurm does to a job, and what becomes of the run (the rule itself: daemon/engine/endstate.py):
- the time limit nears: `--signal=B:USR1@WARN_S` reaches the batch script, which passes SIGTERM to the trainer: it
  checkpoints and exits, the script exits WARNED_EXIT, and the run is submitted again to resume;
- scancel from outside, the time limit itself, a preemption, a failed node: the job ends CANCELLED / TIMEOUT /
  PREEMPTED / NODE_FAIL: the run is submitted again and resumes from its newest checkpoint;
- `scontrol requeue`, a requeueing preemption, a failed node (jobs are submitted with --requeue): the same job runs
  again; the daemon follows it, and the trainer resumes from its newest checkpoint (the script removes the earlier
  run's result.json);
- a job pending for a reason that does not clear (a bad partition, an impossible request): it is cancelled and the
  run fails with Slurm's reason and the fix;
- the daemon restarts: the jobs run on; the new daemon follows each by its job id, and never submits a second job
  for a run whose job Slurm still knows.
"""
from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any, Mapping

from daemon.core import launch, rundir
from daemon.core.atomic import read_json, write_json, write_text
from daemon.core.errors import ExecutorError
from daemon.core.gpus import Slot
from daemon.core.log import log
from daemon.core.rundir import RunFolder
from daemon.core.timefmt import iso
import daemon.engine.executors.slurmctl as slurmctl
from daemon.engine.executors.slurmctl import JobInfo, SlurmUnreachable

WARN_S = 120  # seconds before the time limit the trainer is told to checkpoint and exit (Slurm may send it 60 s early)
WARNED_EXIT = 75  # the job script's exit code when the time-limit warning stopped the trainer (EX_TEMPFAIL)
POLL_S = 1.0  # Slurm is asked about a job at most this often
SILENT_POLL_S = 30.0  # … and this often while it does not answer (every job of this daemon alike)
_silent_until = 0.0  # monotonic time before which Slurm is not asked (it did not answer the last question)
RDZV_PORT = 29400  # a job over several nodes: torchrun's rendezvous on RDZV_PORT + job id % RDZV_PORTS
RDZV_PORTS = 1000
DEFAULT_PARALLEL = 4  # jobs of this daemon in the cluster at once unless max_parallel_runs says otherwise


class SlurmJob:
    """One run's Slurm job, followed by its id."""

    pid = None  # the trainer runs on a node of the cluster
    outlives_daemon = True

    def __init__(self, job_id: str, run_dir: Path, *, restarts: int = 0, sent: list[str] | None = None) -> None:
        self.job_id, self.run_dir, self.folder = job_id, Path(run_dir), RunFolder(run_dir)
        self.label = f"Slurm job {job_id}"
        self.info: JobInfo | None = None
        self.restarts = restarts  # requeues seen so far: progress.json of this run of the job carries the count
        self.sent = list(sent or [])  # this job's commands so far (commands.txt)
        self.asked = 0.0  # when Slurm was last asked
        self.cancelled = False  # the daemon cancelled it (not someone else)
        self.confirmed = False  # seen ended twice in a row: a state in passing (a requeue's) is not taken for the end
        self.lost = False  # Slurm knows nothing of it any more
        self.refusal: str | None = None  # it cannot ever start: why, with the fix
        self.relaunch: str | None = None  # Slurm holds it after a failed launch: cancelled, a new job goes on
        self.unreachable: str | None = None
        self._withdrawn = False  # cancelled while pending, for a stop, skip or preemption

    # --- following ------------------------------------------------------------------------------------
    def _refresh(self) -> JobInfo | None:
        global _silent_until
        if self.confirmed or self.lost or time.monotonic() - self.asked < POLL_S or time.monotonic() < _silent_until:
            return self.info
        self.asked = time.monotonic()
        try:
            info = slurmctl.job_info(self.job_id)
        except SlurmUnreachable as e:
            # each question waits for scontrol's own timeout (~20 s): no job is asked about for SILENT_POLL_S, so
            # intake and commands go on between
            _silent_until = time.monotonic() + SILENT_POLL_S
            if self.unreachable is None:
                log.warning(f"{self.label}: Slurm does not answer ({e}); following it again when it does")
            self.unreachable = str(e)
            return self.info
        _silent_until, self.unreachable = 0.0, None
        if info is None:
            self.lost = True
            return self.info
        if info.restarts > self.restarts:
            self.restarts = info.restarts
            rundir.append_console(self.run_dir, f"overnight: Slurm requeued {self.label} (restart {info.restarts})"
                                                f"{self._requeued_for()}; it runs again and resumes from its newest "
                                                f"checkpoint")
        if info.state == "PENDING" and info.reason in slurmctl.NEVER_CLEARS and not self.cancelled:
            self.refusal = (f"Slurm cannot start {self.label}: it is pending with reason {info.reason}, which waiting "
                            f"does not clear. Fix: correct [executor] in overnight.toml (partition, account, qos, "
                            f"time_limit, gpus_per_run, nodes_per_run, extra_args) to what the cluster offers "
                            f"(`sinfo`, `scontrol show job {self.job_id}`), then resume the run (overnight resume "
                            f"RUN: a new job continues it)")
            self.cancel()
        elif info.state == "PENDING" and info.reason in slurmctl.HELD_AFTER_FAILURE and not self.cancelled:
            self.relaunch = f"Slurm held {self.label} after a failed launch ({info.reason}); a new job resumes the run"
            self.cancel()
        self.confirmed = info.ended and bool(self.info and self.info.ended)
        self.info = info
        return info

    def _requeued_for(self) -> str:
        """Why Slurm ran the job again, in words ("" when unknown): the job completion log's record of the run that
        ended, when every requeue so far left one (a failed node, a preemption do; `scontrol requeue` does not)."""
        try:
            ended = slurmctl.ended_run(self.job_id)
        except SlurmUnreachable:
            return ""
        if ended is None or ended.restarts + 1 != self.restarts:
            return ""
        many = ended.node and any(c in ended.node for c in "[,")  # the job's node list: which one failed is unknown
        return {"NODE_FAIL": f" after {'a node of ' if many else 'node '}{ended.node} failed under it",
                "PREEMPTED": " after a preemption"}.get(ended.state, "")

    def poll(self) -> int | None:
        info = self._refresh()
        if self.refusal:
            return 1
        if self.relaunch:
            return -15  # ended from outside the trainer, resumable
        if self.lost:
            return self.info.exit_code if self.info and self.info.ended else -9
        return info.exit_code if info and self.confirmed else None

    def wait(self, timeout: float) -> int | None:
        end = time.monotonic() + timeout
        while (rc := self.poll()) is None and time.monotonic() < end:
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
        return rc

    def refused(self) -> str | None:
        return self.refusal

    def interrupted(self) -> str | None:
        """What ended the job from outside the trainer (resumable), once it ended."""
        info, name = self.info, self.label
        if self.relaunch:
            return self.relaunch
        if self.lost:
            return f"Slurm no longer knows {name}"
        if info is None or not info.ended or self.cancelled:
            return None
        if info.exit_code == WARNED_EXIT:
            return f"{name} neared its time limit (Slurm's warning signal); the trainer checkpointed"
        return {"CANCELLED": f"{name} was cancelled from outside (scancel)",
                "TIMEOUT": f"{name} reached its time limit",
                "PREEMPTED": f"Slurm preempted {name}",
                "NODE_FAIL": f"node {info.node} failed under {name}",
                "BOOT_FAIL": f"node {info.node} failed to boot for {name}",
                "DEADLINE": f"{name} reached its deadline"}.get(info.state)

    def waiting(self) -> str | None:
        info = self.info
        if not info or info.state != "PENDING":
            return None
        return f"{self.label} pending" + (f" ({info.reason})" if info.reason not in ("None", "") else "")

    def suspended(self) -> str | None:
        if not self.info or self.info.state != "SUSPENDED":
            return None
        return (f"Slurm suspended {self.label} (a preemption by suspension): its trainer goes on from where it "
                f"stopped when Slurm resumes the job")

    def node(self) -> str | None:
        return self.info.node if self.info else None

    def owns(self, progress: Mapping[str, Any]) -> bool:
        return str(progress.get("job_id")) == self.job_id and int(progress.get("restarts") or 0) == self.restarts

    # --- acting ---------------------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Every command of this job so far, rewritten atomically: the trainer reads the lines it has not seen."""
        if self.info and self.info.ended:
            return False
        self.sent.append(line)
        write_text(self.folder.commands, "".join(f"{c}\n" for c in self.sent))
        return True

    def signal(self, name: str) -> None:
        slurmctl.scancel(self.job_id, name, everything=True)  # the batch script and every process it started

    def cancel(self) -> None:
        self.cancelled = True
        slurmctl.scancel(self.job_id)

    def withdraw_if_pending(self) -> bool:
        """A job still in Slurm's queue would take the request only once it starts (hours, on a busy cluster)."""
        if self.info is None or self.info.state != "PENDING" or self.cancelled:
            return False
        self.cancel()
        self._withdrawn = True
        rundir.append_console(self.run_dir, f"overnight: cancelled {self.label} while it was pending (scancel)")
        return True

    def withdrawn(self) -> bool:
        return self._withdrawn

    def release(self) -> None:
        """The daemon goes away, the job runs on: the next daemon follows it by its id."""


class SlurmExecutor:
    kind = "slurm"
    follows_after_restart = True

    def __init__(self, table: Mapping[str, Any]) -> None:
        self.table = dict(table)
        self.nodes = int(self.table.get("nodes_per_run") or 1)
        self.gpus = int(self.table.get("gpus_per_run") or 0)

    def slots(self, owner: Mapping[str, Any]) -> list[Slot]:
        """The cluster has the GPUs: a slot is a job this daemon may have in it at once."""
        return [Slot()] * int(self.table.get("max_parallel_runs") or DEFAULT_PARALLEL)

    def where(self, slot: Slot, env: Mapping[str, str]) -> str:
        return f"through Slurm, partition {self.table.get('partition') or '(the default)'}"

    def command(self, run_dir: Path, slot: Slot, torchrun: dict[str, Any] | None) -> list[str]:
        """The same trainer as on this machine: one process, torchrun for several GPUs, and `srun torchrun` with a
        rendezvous on the job's first node for several nodes."""
        nproc = max(1, self.gpus)
        if self.nodes <= 1:
            return launch.trainer_command(run_dir, nproc, torchrun)
        table = {**(torchrun or {}), "nnodes": self.nodes, "rdzv_backend": "c10d",
                 "rdzv_endpoint": "$OVERNIGHT_RDZV", "rdzv_id": "$SLURM_JOB_ID"}
        return ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                *launch.trainer_command(run_dir, nproc, table)]

    def sbatch_args(self, run_id: str, run_dir: Path) -> list[str]:
        t, folder = self.table, RunFolder(run_dir)
        args = [f"--job-name={job_name(run_id)}", f"--output={folder.console}", "--open-mode=append",
                f"--chdir={run_dir}", f"--signal=B:USR1@{WARN_S}", "--requeue", f"--nodes={self.nodes}",
                "--ntasks-per-node=1"]
        if self.gpus:
            args.append(f"--gres=gpu:{self.gpus}")
        for key, flag in (("partition", "--partition"), ("account", "--account"), ("qos", "--qos"),
                          ("time_limit", "--time")):
            if t.get(key):
                args.append(f"{flag}={t[key]}")
        return [*args, *(t.get("extra_args") or [])]

    def submit(self, run_id: str, run_dir: Path, command: list[str], env: dict[str, str]) -> SlurmJob:
        missing = slurmctl.available()
        if missing:
            raise ExecutorError(missing)
        folder = RunFolder(run_dir)
        write_text(folder.commands, "")  # a new job starts with no commands
        write_text(folder.job_script, job_script(run_id, run_dir, command, self.nodes))
        folder.job_script.chmod(0o755)
        args = self.sbatch_args(run_id, run_dir)
        if self.gpus:  # Slurm gives the job its GPUs and sets CUDA_VISIBLE_DEVICES itself
            env = {k: v for k, v in env.items() if not k.startswith("CUDA_")}
        job_id = slurmctl.sbatch(folder.job_script, args, {**os.environ, "PYTHONUNBUFFERED": "1", **env},
                                 job_name(run_id))
        write_json(folder.job, {"executor": "slurm", "job_id": job_id, "submitted": iso(),
                                "sbatch": ["sbatch", "--parsable", *args, str(folder.job_script)]})
        rundir.append_console(run_dir, f"overnight: submitted Slurm job {job_id} "
                                       f"({shlex.join(['sbatch', *args, folder.job_script.name])})")
        return SlurmJob(job_id, run_dir)

    def follow(self, run: Mapping[str, Any]) -> SlurmJob | None:
        """The job an earlier daemon submitted for `run`, if Slurm still knows it (running, pending, or ended
        while no daemon watched: its end is then read as if it had just ended)."""
        folder = RunFolder(run["run_dir"])
        job_id = run.get("job_id")
        recorded = bool(job_id)  # the DB's; else job.json's (a daemon that died between sbatch and its DB write)
        job_id = job_id or (read_json(folder.job, {}) or {}).get("job_id")
        if not job_id:
            return None
        if slurmctl.available():
            log.warning(f"{run['id']}: its Slurm job {job_id} cannot be followed without Slurm's tools; the run is "
                        f"queued again")
            return None
        try:
            info = slurmctl.job_info(str(job_id))
        except SlurmUnreachable as e:
            log.warning(f"{run['id']}: cannot ask Slurm about job {job_id} ({e}); following it anyway")
            return SlurmJob(str(job_id), folder.root, sent=_sent(folder))
        if info is None or (info.ended and not recorded):  # job.json of an earlier attempt, long over
            return None
        return SlurmJob(str(job_id), folder.root, restarts=info.restarts, sent=_sent(folder))


def job_name(run_id: str) -> str:
    return f"overnight-{run_id}"


def _sent(folder: RunFolder) -> list[str]:
    try:
        return folder.commands.read_text().splitlines()
    except OSError:
        return []


def job_script(run_id: str, run_dir: Path, command: list[str], nodes: int) -> str:
    """The batch script: the trainer in the background (so the script's traps run while it trains), Slurm's
    time-limit warning passed on as SIGTERM (the trainer checkpoints and exits), the trainer's exit code passed
    on (WARNED_EXIT after the warning)."""
    folder = RunFolder(run_dir)
    argv = " ".join(f'"{word}"' if word.startswith("$") else shlex.quote(word) for word in command)
    rdzv = f"""\
# torchrun's rendezvous: on the job's first node, at the address Slurm reaches it by (its NodeAddr: a node's name
# need not resolve), on a port of this job's own (two jobs whose first node is the same never share a rendezvous)
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
addr=$(scontrol show node -o "$first" | sed -n 's/.* NodeAddr=\\([^ ]*\\).*/\\1/p')
export OVERNIGHT_RDZV="${{addr:-$first}}:$(( {RDZV_PORT} + SLURM_JOB_ID % {RDZV_PORTS} ))"
""" if nodes > 1 else ""
    return f"""#!/bin/bash
# The trainer of overnight run {run_id}, as a Slurm job. Written by the overnight daemon at each submission
# (daemon/engine/executors/slurm.py); the sbatch options are in job.json.
cd {shlex.quote(str(run_dir))} || exit 1
rm -f {shlex.quote(folder.result.name)}  # this run's result only: a requeued job runs this script again
export OVERNIGHT_COMMAND_FILE={shlex.quote(str(folder.commands))} PYTHONUNBUFFERED=1
{rdzv}echo "[$(date '+%F %T.%3N')] overnight: Slurm job $SLURM_JOB_ID on $(hostname)" \
  "(restart ${{SLURM_RESTART_COUNT:-0}})"
warned=0
trap 'warned=1; kill -TERM "$trainer" 2>/dev/null' USR1
trap 'kill -TERM "$trainer" 2>/dev/null' TERM
{argv} </dev/null &
trainer=$!
while :; do wait "$trainer"; rc=$?; kill -0 "$trainer" 2>/dev/null || break; done
if [ "$warned" = 1 ] && [ "$rc" = 0 ]; then exit {WARNED_EXIT}; fi
exit "$rc"
"""
