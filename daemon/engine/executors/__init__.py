"""Executors: where a run's trainer runs. The one seam between the supervisor and the machines.

The supervisor asks an executor for the slots runs may take (`slots`), starts a trainer with `submit` and gets a
`Job` back: the handle it polls, commands, signals and cancels, whatever runs the trainer. Two are built:
`local` (a subprocess of the daemon, daemon/engine/executors/local.py: today's behaviour) and `slurm` (an sbatch
job per run, daemon/engine/executors/slurm.py). Another scheduler (SkyPilot, Ray) plugs in here: one module with
an `Executor` and its `Job`, and a line in `for_config`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol

from daemon.core.gpus import Slot


class Job(Protocol):
    """One trainer attempt as the supervisor sees it."""

    pid: int | None  # the local process (None: it runs elsewhere, a Slurm job)
    job_id: str | None  # the scheduler's id (None: a local process)
    label: str  # how messages name it: "PID 123", "Slurm job 12"
    outlives_daemon: bool  # it runs on when the daemon stops (a Slurm job), and the next daemon follows it

    def poll(self) -> int | None:
        """None while it runs (or waits to run again); then its exit code (negative: killed by that signal)."""

    def wait(self, timeout: float) -> int | None:
        """`poll` after waiting up to `timeout` seconds for the end."""

    def command(self, line: str) -> bool:
        """Send one command (pause, resume, stop); False when it is gone."""

    def signal(self, name: str) -> None:
        """Send a signal ("SIGTERM", "SIGKILL", "SIGCONT") to every process of the trainer."""

    def cancel(self) -> None:
        """End it now (SIGKILL; scancel)."""

    def withdraw_if_pending(self) -> bool:
        """A stop, skip or preemption of a job that has not started: cancelled now (True), not when it starts."""

    def withdrawn(self) -> bool:
        """It was withdrawn before it started: the request it was withdrawn for decides how its run ends."""

    def release(self) -> None:
        """The daemon is going away: a local trainer is told (EOF: checkpoint and exit); a Slurm job runs on."""

    def owns(self, progress: Mapping[str, Any]) -> bool:
        """progress.json was written by this attempt (not by an earlier one)."""

    def refused(self) -> str | None:
        """Once ended: why it could never run (Slurm's reason, with the fix); the run fails with it."""

    def interrupted(self) -> str | None:
        """Once ended: what ended it from outside the trainer (a scancel, a time limit, a failed node), in words;
        None when the trainer's own result decides."""

    def waiting(self) -> str | None:
        """Why it is not running yet (a Slurm job pending: its reason); None when it runs."""

    def suspended(self) -> str | None:
        """Why it is held still from outside (a Slurm job suspended: preemption by suspension); None otherwise."""

    def node(self) -> str | None:
        """The machine it runs on (None: this one, or not known yet)."""


class Executor(Protocol):
    kind: str
    follows_after_restart: bool  # its jobs outlive the daemon, and a new daemon follows them by job id

    def slots(self, owner: Mapping[str, Any]) -> list[Slot]:
        """Where runs may train side by side now (a GpuChoiceError when the owner's choice cannot be met)."""

    def where(self, slot: Slot, env: Mapping[str, str]) -> str:
        """Where a trainer started now runs, for its console line."""

    def command(self, run_dir: Path, slot: Slot, torchrun: dict[str, Any] | None) -> list[str]:
        """The trainer's command line for `slot` (with the owner's [torchrun] table)."""

    def submit(self, run_id: str, run_dir: Path, command: list[str], env: dict[str, str]) -> Job:
        """Start the trainer `command` for `run_dir` (an ExecutorError when the scheduler refuses it)."""

    def follow(self, run: Mapping[str, Any]) -> Job | None:
        """A job an earlier daemon started for `run` that is still alive, to follow again; None if none."""


def executor_table(owner: Mapping[str, Any]) -> dict[str, Any]:
    """overnight.toml's [executor] table (validated by daemon/core/options.py), empty for the default."""
    return dict(owner.get("executor") or {})


def for_config(owner: Mapping[str, Any]) -> Executor:
    """The executor the owner chose: `[executor] kind`, "local" by default."""
    table = executor_table(owner)
    if table.get("kind", "local") == "slurm":
        from daemon.engine.executors.slurm import SlurmExecutor
        return SlurmExecutor(table)
    from daemon.engine.executors.local import LocalExecutor
    return LocalExecutor()
