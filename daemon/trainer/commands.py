"""The daemon → trainer command channel: stdin lines (or the run folder's command file), signals, and the
parent-death signal.

A reader thread turns command lines into flags the training callbacks poll at step boundaries:
`pause`, `resume`, `stop` (EOF on stdin counts as stop: the trainer never outlives its daemon).
SIGTERM/SIGINT also mean stop; PR_SET_PDEATHSIG delivers SIGTERM if the daemon dies without closing the pipe.
A trainer with no stdin from the daemon (a Slurm job: daemon/engine/executors/slurm.py) is started with
`OVERNIGHT_COMMAND_FILE` naming its run folder's commands.txt, every command of its job so far, one a line,
rewritten atomically by the daemon: the thread reads the lines it has not seen yet, every POLL_S. It acknowledges
them as it does stdin's (console.log, progress.json); the daemon going away does not stop it (Slurm ends the job).

Under torchrun only rank 0 reads stdin (every worker inherits the pipe); `Commands.sync` is where the ranks agree,
at each step boundary: a stop on any rank (SIGTERM reaches each) stops all, and rank 0's pause holds all.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, TextIO

PR_SET_PDEATHSIG = 1
COMMAND_FILE_ENV = "OVERNIGHT_COMMAND_FILE"
POLL_S = 0.5


class Decision(NamedTuple):
    """What every rank does at this step boundary."""

    stop: bool
    paused: bool


@dataclass
class Commands:
    """Flags set by the channel, read by the callbacks."""

    stop: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)
    stop_reason: str = ""

    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()
        self.paused.clear()  # a paused run that is told to stop must wake up to save and exit

    def sync(self) -> Decision:
        """The decision at a step boundary, the same on every rank (a collective call under torchrun: every rank
        calls it at the same points). One process: its own flags."""
        from daemon.trainer import ddp

        mine = (self.stop.is_set(), self.stop_reason, self.paused.is_set())
        if not ddp.distributed():
            return Decision(mine[0], mine[2] and not mine[0])
        views = ddp.gather(mine)
        stops = [(rank, reason) for rank, (stop, reason, _) in enumerate(views) if stop]
        if stops and not mine[0]:
            rank, reason = stops[0]
            self.request_stop(reason if rank == 0 else f"{reason} (rank {rank})")
        paused = bool(views[0][2]) and not stops
        return Decision(bool(stops), paused)


def _read_commands(stream: TextIO, commands: Commands, log: Callable[[str], None]) -> None:
    for raw in stream:
        _apply(raw, commands, log)
    commands.request_stop("stdin closed (the daemon went away)")


def _follow_file(path: Path, commands: Commands, log: Callable[[str], None]) -> None:
    """Apply each line the daemon adds to the command file (a shorter file is a new job's: read from its start)."""
    seen = 0
    while True:
        time.sleep(POLL_S)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue  # not written yet
        if len(lines) < seen:
            seen = 0
        for raw in lines[seen:]:
            _apply(raw, commands, log)
        seen = len(lines)


def _apply(raw: str, commands: Commands, log: Callable[[str], None]) -> None:
    line = raw.strip().lower()
    if not line:
        return
    if line == "pause":
        commands.paused.set()
        log("command received: pause (halting at the next step boundary)")
    elif line == "resume":
        commands.paused.clear()
        log("command received: resume")
    elif line in ("stop", "skip", "preempt"):
        log(f"command received: {line} (saving a checkpoint at the next step boundary)")
        commands.request_stop(f"{line} requested")
    else:
        log(f"command ignored: unknown command {line!r} (known: pause, resume, stop)")


def set_parent_death_signal() -> None:
    """Ask Linux to send us SIGTERM when the parent process dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass  # no libc.so.6 (e.g. musl): EOF on stdin still stops us


def start_channel(log: Callable[[str], None], *, read_stdin: bool = True) -> Commands:
    """Install signal handlers and the command reader (the command file when OVERNIGHT_COMMAND_FILE names one,
    else stdin); return the shared flags."""
    commands = Commands()

    def on_signal(signum: int, _frame: object) -> None:
        commands.request_stop(f"{signal.Signals(signum).name} received")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    set_parent_death_signal()
    from daemon.trainer import ddp

    if not ddp.is_main():
        return commands
    command_file = os.environ.get(COMMAND_FILE_ENV)
    if command_file:
        threading.Thread(target=_follow_file, args=(Path(command_file), commands, log),
                         name="commands", daemon=True).start()
    elif read_stdin:
        threading.Thread(target=_read_commands, args=(sys.stdin, commands, log), name="commands",
                         daemon=True).start()
    return commands
