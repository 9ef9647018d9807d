"""The daemon → trainer command channel: stdin lines (or the run folder's command file), signals, and the
parent-death signal.

A reader thread turns command lines into flags the training callbacks poll at step boundaries:
`pause`, `resume`, `stop` (EOF on stdin counts as stop: the trainer never outlives its daemon).
SIGTERM/SIGINT also mean stop; PR_SET_PDEATHSIG delivers SIGTERM if the daemon dies without closing the pipe.
A process the trainer forks (a DataLoader worker) leaves the trainer's process group, so that only the trainer
receives the group's signals (`_own_process_group`).
A trainer with no stdin from the daemon (a Slurm job: daemon/engine/executors/slurm.py) is started with
`OVERNIGHT_COMMAND_FILE` naming its run folder's commands.txt, every command of its job so far, one a line,
rewritten atomically by the daemon: the thread reads the lines it has not seen yet, every POLL_S. It acknowledges
them as it does stdin's (console.log, progress.json); the daemon going away does not stop it (Slurm ends the job).

Under torchrun only rank 0 reads stdin (every worker inherits the pipe); the ranks agree on their flags, so a stop
on any rank (SIGTERM reaches each) stops all at the same step, and rank 0's pause holds all:
- at each optimizer step's end (`Commands.at_step_end`) without a wait: every rank starts a non-blocking sum of its
  flags (stop; paused, rank 0's only) over the gloo group and reads it at the next step's end, long arrived by
  then. Every rank decides on the same sums at the same step, so they stay in lock-step, and a step with nothing
  pending costs one tiny all_reduce in flight, no pickling and no wait. The price: a command is obeyed one
  optimizer step later than on one process (stop and pause act at the end of the step after the one it arrived
  in). Only when a stop is seen do the ranks exchange their reasons (`all_gather_object`, once);
- elsewhere (`Commands.sync`: before training starts, each poll of a pause, a full disk's wait) blocking.
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
from typing import Any, Callable, NamedTuple, TextIO

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
    _in_flight: Any = field(default=None, repr=False)  # under torchrun: the flags' sum started at the last step
    _together: bool = field(default=False, repr=False)  # a stop every rank asked for at the same step

    def request_stop(self, reason: str, *, every_rank: bool = False) -> None:
        """`every_rank`: every rank asks at the same step (an ASHA rung's step), so the stop is obeyed at this
        step's end, not one step later."""
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()
        self._together = self._together or every_rank
        self.paused.clear()  # a paused run that is told to stop must wake up to save and exit

    def sync(self) -> Decision:
        """The decision now, the same on every rank (under torchrun a blocking collective: every rank calls it at
        the same points). One process: its own flags."""
        from daemon.trainer import ddp

        if not ddp.distributed():
            return self._own()
        self.settle()
        return self._agree(ddp.summed(self._flags()))

    def at_step_end(self) -> Decision:
        """The decision at an optimizer step's end, the same on every rank: on the flags every rank sent at the
        previous step's end (the module's docstring). One process: its own flags, now."""
        from daemon.trainer import ddp

        if not ddp.distributed():
            return self._own()
        if self._together:
            return self.sync()
        # the first step (or the first after a blocking sync): nothing in flight, so agree now, once
        sums = self._in_flight.result() if self._in_flight is not None else ddp.summed(self._flags())
        self._in_flight = None
        decision = self._agree(sums)
        if not (decision.stop or decision.paused):  # stopping or holding: the next exchanges are blocking ones
            self._in_flight = ddp.summed_later(self._flags())
        return decision

    def settle(self) -> None:
        """Wait for the sum in flight (every rank calls this at the same point: the end of training)."""
        if self._in_flight is not None:
            self._in_flight.result()
            self._in_flight = None

    def _own(self) -> Decision:
        stop = self.stop.is_set()
        return Decision(stop, self.paused.is_set() and not stop)

    def _flags(self) -> list[int]:
        from daemon.trainer import ddp

        return [int(self.stop.is_set()), int(self.paused.is_set() and ddp.is_main())]  # rank 0's pause holds all

    def _agree(self, sums: list[int]) -> Decision:
        """The decision from the summed flags; a stop: every rank learns whose and why (rare: pickles once)."""
        from daemon.trainer import ddp

        if not sums[0]:
            return Decision(False, bool(sums[1]))
        views = ddp.gather((self.stop.is_set(), self.stop_reason))  # a stop is never withdrawn: its rank is there
        stops = [(rank, reason) for rank, (stop, reason) in enumerate(views) if stop]
        if stops and not self.stop.is_set():
            rank, reason = stops[0]
            self.request_stop(reason if rank == 0 else f"{reason} (rank {rank})")
        return Decision(True, False)


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
    elif line in ("stop", "skip", "preempt", "shutdown"):  # the daemon's StopRequest: why it asks
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


def _own_process_group() -> None:
    """In a process the trainer forks (the DataLoader's worker on a GPU): a process group of its own.

    The SIGTERM the daemon sends to the trainer's group (and a terminal's Ctrl-C) is the trainer's to obey at a
    step boundary; torch's worker dies of a SIGTERM that is not its parent's, and the trainer then fails at its next
    batch ("DataLoader worker exited unexpectedly") instead of saving and stopping. The worker still ends with the
    trainer: torch stops it when the trainer exits, and it watches its parent."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass  # already a group leader, or not allowed: it stays in the trainer's group


def forks_leave_the_group() -> None:
    """Put every process this one forks in a process group of its own (`_own_process_group`). Called once by the
    trainer process's entry point, not by `start_channel`: a process that calls the trainer in-process (a test)
    may fork children that start sessions of their own, which a group leader cannot (setsid: EPERM)."""
    os.register_at_fork(after_in_child=_own_process_group)


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
