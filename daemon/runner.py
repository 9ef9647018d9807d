"""Start, command, and reap the trainer subprocess; mirror its run-folder files into the DB.

The trainer writes only its run folder; the daemon reads it here. The files are the truth: the DB rows for
metrics and evolution are a mirror that can always be rebuilt from them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.rundir import JsonlTail, RunFolder
from daemon.stall import Escalation
from daemon.store import Store


def trainer_command(run_dir: Path) -> list[str]:
    """The trainer's command line (a module of this package, run by the same interpreter)."""
    return [sys.executable, "-m", "daemon.trainer", str(run_dir)]


@dataclass
class TrainerProcess:
    """One running trainer and the daemon's view of its files."""

    run_id: str
    run_dir: Path
    proc: subprocess.Popen
    requested: str | None = None  # what the daemon asked for: stop | skip | preempt | shutdown
    paused: bool = False
    folder: RunFolder = field(init=False)
    tails: dict[str, JsonlTail] = field(init=False)  # by DB table: metrics, evolution
    rate: tuple[float, int] | None = None  # (monotonic time, step) when steps started moving, for the ETA
    started: float = field(default_factory=time.monotonic)
    step_s: float | None = None  # seconds per step, measured since training (re)started
    escalation: Escalation | None = None  # set once a stop was requested: the trainer must show life until it exits

    @classmethod
    def start(cls, run_id: str, run_dir: Path, env: dict[str, str] | None = None) -> "TrainerProcess":
        """Launch the trainer with stdin as its command pipe and console.log as stdout+stderr.

        An earlier attempt's result.json goes first: the daemon judges this attempt by the result.json it finds
        when it ends, and a trainer killed before it writes one (kill -9) must not be taken for one that ended
        as the earlier attempt did (a "stopped" of an earlier attempt made a killed trainer look like a failure)."""
        RunFolder(run_dir).result.unlink(missing_ok=True)
        with open(RunFolder(run_dir).console, "ab") as console:
            proc = subprocess.Popen(
                trainer_command(run_dir), stdin=subprocess.PIPE, stdout=console, stderr=subprocess.STDOUT,
                cwd=run_dir, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,  # Ctrl-C reaches the daemon only; the daemon relays a clean stop
            )
        return cls(run_id, run_dir, proc)

    def __post_init__(self) -> None:
        self.folder = RunFolder(self.run_dir)
        self.tails = {"metrics": JsonlTail(self.folder.metrics), "evolution": JsonlTail(self.folder.evolution)}

    def send(self, command: str) -> bool:
        """Write one command line to the trainer; False when it is already gone."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"{command}\n".encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def request_stop(self, reason: str) -> str:
        """Ask the trainer to checkpoint and exit; returns the request in force.

        The first request stands, except that a user's stop or skip outranks a preemption or a shutdown (the
        run then ends as the user asked). A paused trainer is woken first: it must step to checkpoint."""
        if self.requested is None or (self.requested in ("preempt", "shutdown") and reason in ("stop", "skip")):
            first = self.requested is None
            self.requested = reason
            if first:
                self.send("resume")
                self.send("stop")
        return self.requested

    def set_paused(self, paused: bool) -> None:
        """Halt at (or go on from) the next step boundary."""
        self.paused = paused
        self.send("pause" if paused else "resume")

    def kill(self) -> None:
        """SIGKILL the trainer's process group (it has its own session): the last resort for a frozen trainer."""
        self.signal("SIGKILL")

    def signal(self, name: str) -> None:
        signal_group(self.proc.pid, name)

    def progress_mark(self) -> tuple[int, object]:
        return progress_mark(self.folder)

    def poll(self) -> int | None:
        return self.proc.poll()

    def progress(self) -> dict[str, Any]:
        return self.folder.read_progress()

    def ingest(self, store: Store) -> dict[str, Any]:
        """Copy new metrics/evolution records into the DB; return the run fields to update."""
        fields: dict[str, Any] = {}
        metrics = self._read_new("metrics", store)
        if metrics:
            store.add_metrics(self.run_id, metrics)
            train = [m for m in metrics if m.get("loss") is not None]
            evals = [m for m in metrics if m.get("eval_loss") is not None]
            if train:
                fields.update(loss=train[-1]["loss"], tokens_per_s=train[-1].get("tokens_per_s"))
            if evals:
                fields["eval_loss"] = evals[-1]["eval_loss"]
        evolution = self._read_new("evolution", store)
        if evolution:
            store.add_evolution(self.run_id, evolution)
        prog = self.progress()
        if prog.get("step") is not None:
            step, total = int(prog["step"]), prog.get("max_steps")
            fields.update(step=step, max_steps=total, epoch=prog.get("epoch"))
            eta = self._eta(step, total, prog.get("state") == "training")
            if eta is not None:
                fields["eta_s"] = eta
        return fields

    def _eta(self, step: int, total: int | None, training: bool) -> float | None:
        """Seconds left at the pace measured since training (re)started; loading, pauses and saves don't count."""
        now = time.monotonic()
        if not training:
            self.rate = None  # the pace is measured afresh when steps move again
            return None
        if self.rate is None or step < self.rate[1]:
            self.rate = (now, step)
            return None
        if not total or step == self.rate[1]:
            return None
        per_step = self.step_s = (now - self.rate[0]) / (step - self.rate[1])
        return round(per_step * max(0, total - step), 1)

    def _read_new(self, kind: str, store: Store) -> list[dict[str, Any]]:
        update = self.tails[kind].poll()
        if update.reset:
            self._forget(kind, store)  # the trainer rewrote the file after a resume or a retry: mirror it again
        return update.records

    def reset(self, kind: str, store: Store) -> None:
        """Forget the DB mirror of one file so it is ingested again from the start."""
        self.tails[kind].restart()
        self._forget(kind, store)

    def _forget(self, kind: str, store: Store) -> None:
        table = "metrics" if kind == "metrics" else "evolution"
        with store.db.conn:
            store.db.execute(f"DELETE FROM {table} WHERE run_id = ?", [self.run_id])

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close_stdin(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass


def signal_group(pid: int, name: str) -> None:
    """Send a signal to a trainer's process group (it has its own session: data loader workers too)."""
    try:
        os.killpg(pid, signal.Signals[name])
    except (ProcessLookupError, PermissionError):
        pass


def progress_mark(folder: RunFolder) -> tuple[int, object]:
    """What changes while a trainer lives: progress.json's write time and step."""
    try:
        mtime = folder.progress.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return mtime, folder.read_progress().get("step")


def leftover_trainers(runs_root: Path) -> list[tuple[Any, Path]]:
    """Trainer processes running on a run folder of this home (psutil.Process, run folder), found by command line:
    what an earlier daemon that was killed, or that gave up on a frozen trainer, left behind."""
    import psutil
    root = runs_root.resolve()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if len(cmd) >= 2 and cmd[-2] == "daemon.trainer" and Path(cmd[-1]).resolve().parent == root:
            found.append((proc, Path(cmd[-1])))
    return found
