"""The local executor: the trainer is a subprocess of the daemon, on this machine (the default).

Commands go down its stdin pipe, one a line; EOF on that pipe (the daemon closed it, or died) makes the trainer
checkpoint and exit, and so does the parent-death signal. It runs in a session of its own, so Ctrl-C reaches the
daemon only, and signals go to its process group (and, under torchrun, to each worker's).
"""
from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from daemon.core import gpus, launch
from daemon.core.gpus import Slot


@dataclass
class LocalJob:
    """A trainer subprocess: the Popen, and the supervisor's view of it."""

    proc: subprocess.Popen
    job_id: None = None
    outlives_daemon = False  # EOF on its stdin (or the parent-death signal) stops it

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def label(self) -> str:
        return f"PID {self.proc.pid}"

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def command(self, line: str) -> bool:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"{line}\n".encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def signal(self, name: str) -> None:
        signal_group(self.proc.pid, name)

    def cancel(self) -> None:
        self.signal("SIGKILL")

    def release(self) -> None:
        """EOF on its stdin: it checkpoints and exits."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass

    def owns(self, progress: Mapping[str, Any]) -> bool:
        return progress.get("pid") == self.proc.pid

    def refused(self) -> str | None:
        return None

    def interrupted(self) -> str | None:
        return None  # a signal from outside shows as a negative exit code

    def waiting(self) -> str | None:
        return None

    def suspended(self) -> str | None:
        return None

    def withdraw_if_pending(self) -> bool:
        return False  # a local trainer starts at once

    def withdrawn(self) -> bool:
        return False

    def node(self) -> str | None:
        return None


class LocalExecutor:
    kind = "local"
    follows_after_restart = False  # a trainer never outlives its daemon

    def slots(self, owner: Mapping[str, Any]) -> list[Slot]:
        return gpus.plan(owner, os.environ)

    def where(self, slot: Slot, env: Mapping[str, str]) -> str:
        return f"{slot.label}; CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r}"

    def command(self, run_dir: Path, slot: Slot, torchrun: dict[str, Any] | None) -> list[str]:
        """One process, or torchrun with one process per GPU of the slot (daemon/core/launch.py)."""
        return launch.trainer_command(run_dir, launch.nproc_for(len(slot.devices), torchrun), torchrun)

    def submit(self, run_id: str, run_dir: Path, command: list[str], env: dict[str, str]) -> LocalJob:
        """Launch the trainer with stdin as its command pipe and console.log as stdout+stderr."""
        with open(Path(run_dir) / "console.log", "ab") as console:
            proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=console, stderr=subprocess.STDOUT, cwd=run_dir,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                start_new_session=True,  # Ctrl-C reaches the daemon only; the daemon relays a clean stop
            )
        return LocalJob(proc)

    def follow(self, run: Mapping[str, Any]) -> None:
        return None  # what an earlier daemon left running is ended at start (supervisor.recover)


def signal_group(pid: int, name: str) -> None:
    """Send a signal to a trainer's process group (it has its own session: data loader workers too).

    torchrun starts each worker in a session of its own, out of reach of the launcher's group: their groups are
    signalled too. SIGTERM goes to the workers only: each checkpoints and exits, and the launcher then exits by
    itself with their code (torchrun would pass a SIGTERM of its own on, then SIGKILL workers still saving after
    30 s)."""
    sig = signal.Signals[name]
    groups = _worker_groups(pid)
    if sig != signal.SIGTERM or not groups:
        groups.append(pid)
    for group in groups:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _worker_groups(pid: int) -> list[int]:
    """Process groups of `pid`'s descendants that lead a group other than `pid`'s (torchrun's workers)."""
    import psutil
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    groups = []
    for child in children:
        try:
            group = os.getpgid(child.pid)
        except OSError:
            continue
        if group != pid and group not in groups:
            groups.append(group)
    return groups
