"""The daemon's side of control: one Controller owns the control state and applies every command file.

After pueue: the message type (daemon/control.py's Command) is shared with the CLI and the dashboard; here is one
handler per message. The Controller reaches the running trainer only through the `Trainer` protocol
(`request_stop`, `set_paused`), and the DB through the Store and the daemon's `transition`, so every rule can be
tested with a stub trainer (tests/test_controller.py).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable, Protocol

from daemon import control, registry, rundir
from daemon.control import Command, ControlError
from daemon.home import Home
from daemon.log import log
from daemon.states import LIVE, RESUMABLE, State
from daemon.store import Store
from daemon.timefmt import iso

def _no_run(cmd: Command) -> str:
    return (f"{cmd.source}: no run with id {cmd.target!r}. Fix: write an id that overnight runs lists "
            f"(echo RUN_ID > {cmd.source}), or nothing to act on the running job.")


# What a run becomes when its trainer exits after the daemon asked it to stop for a reason.
REQUEST_OUTCOME = {"stop": State.STOPPED, "skip": State.SKIPPED, "preempt": State.QUEUED,
                   "shutdown": State.QUEUED, "restart": State.QUEUED}


class Trainer(Protocol):
    """What the Controller may do to the running trainer (daemon/runner.py TrainerProcess)."""

    run_id: str
    requested: str | None
    paused: bool

    def request_stop(self, reason: str) -> str:
        """Ask it to checkpoint and exit for `reason`; returns the request in force."""

    def set_paused(self, paused: bool) -> None:
        """Halt at (or go on from) the next step boundary."""


Transition = Callable[..., None]  # (run_id, state, reason, **fields): the daemon's DB + metadata.json update


class Controller:
    """Reads control/ once a pass: events are consumed, `pause` and an untargeted `stop` hold while they exist."""

    def __init__(self, home: Home, store: Store, transition: Transition) -> None:
        self.home, self.store, self.transition = home, store, transition
        self.stop_held = False  # an untargeted control/stop was acknowledged and holds the queue
        self.pause_target: str | None = None  # what control/pause named at the last pass ("*": any run)
        self.trainers: list[Trainer] = []  # the running trainers, one per slot
        self.free_slots: Callable[[], int] = lambda: 0
        # acknowledgements of commands already applied that the DB refused (full, or locked by another process):
        # written first at the next pass, in order. The command is consumed all the same: applied is applied, and
        # read again once its run has moved on it would be refused ("run X is skipped").
        self._unwritten: list[tuple[str, str | None, str, str, str, str]] = []
        self._handlers: dict[str, Callable[[Command], None]] = {
            "stop": self._on_stop, "skip": self._on_skip, "pause": self._on_pause, "resume": self._on_resume,
            "priority": self._on_priority, "activate": self._on_model, "delete": self._on_model}

    # --- one pass ---------------------------------------------------------------------------------------
    def apply(self, trainers: list[Trainer], free_slots: Callable[[], int] = lambda: 0) -> None:
        """Read every control file once; then keep pause/stop states in force and check for preemption.

        `free_slots`: how many more runs could start now (asked only when a queued run might preempt)."""
        self.trainers, self.free_slots = trainers, free_slots
        self._write_events()
        for path in control.command_files(self.home):
            if not control.settled(path):
                continue  # `echo RUN > control/stop` creates the file empty, then writes: read it next pass
            try:
                cmd = control.parse(path)
                self._handlers[cmd.kind](cmd)
            except FileNotFoundError:
                continue  # taken away mid-pass (by its writer, or by a resume that lifted it): nothing to reject
            except (ControlError, OSError) as e:
                self._rejected(path, str(e))
        self._hold_pause()
        self._hold_stop()
        self._preempt()

    def queue_held(self) -> bool:
        """An untargeted control/stop holds the queue while it exists."""
        return control.held(self.home, "stop") == "*"

    # --- acknowledgements ---------------------------------------------------------------------------------
    def _ack(self, cmd: str, target: str | None, source: str, message: str, run_id: str | None = None) -> None:
        log.info(f"control: {message}")
        run = self.store.get_run(run_id) if run_id else None
        if run:
            rundir.append_console(Path(run["run_dir"]), f"control: {message}")
        self._event(cmd, target, source, "applied", message)

    def _rejected(self, path: Path, message: str) -> None:
        dest = control.reject(self.home, path, message)
        log.warning(f"control: rejected {control.shown(path.name)}: {message} (moved to {dest})")
        self._event(path.name, None, f"control/{path.name}", "rejected", message)

    def _event(self, command: str, target: str | None, source: str, status: str, message: str) -> None:
        self._unwritten.append((command, target, source, status, message, iso()))
        if not self._write_events():
            log.warning(f"control: the acknowledgement of {command} waits to be written to the DB (it cannot be "
                        f"written now); the command itself is done")

    def _write_events(self) -> bool:
        """Write the acknowledgements not yet in the DB; a refused write keeps them for the next pass (the
        daemon's other writes report the fault: status PROBLEM line, overnight.log). True when none is left."""
        try:
            while self._unwritten:
                self.store.control_event(*self._unwritten[0])
                self._unwritten.pop(0)
        except sqlite3.OperationalError:
            return False
        return True

    def _trainer(self, run_id: str) -> Trainer | None:
        return next((a for a in self.trainers if a.run_id == run_id), None)

    def _runs_for(self, cmd: Command, states: tuple[State, ...], every: bool = False) -> list[dict[str, Any]]:
        """The runs a command acts on: its named target, else the running job (`every`: all running jobs)."""
        if cmd.target:
            run = self.store.get_run(cmd.target)
            if run is None:
                raise ControlError(_no_run(cmd))
            runs = [run]
        elif not self.trainers:
            raise ControlError(f"{cmd.source}: no job is running, and the file names no run. "
                               f"Fix: write the run id into the file (echo RUN_ID > {cmd.source}).")
        elif len(self.trainers) > 1 and not every:
            raise ControlError(f"{cmd.source}: {len(self.trainers)} runs are training "
                               f"({', '.join(a.run_id for a in self.trainers)}) and the file names none. "
                               f"Fix: write the run id into the file (echo RUN_ID > {cmd.source}).")
        else:
            runs = [self.store.get_run(a.run_id) for a in self.trainers]
        for run in runs:
            if run["state"] not in states:
                raise ControlError(f"{cmd.source}: run {run['id']} is {run['state']}; {cmd.kind} applies to runs "
                                   f"that are {' or '.join(states)}. Fix: name such a run (see overnight runs).")
        return runs

    # --- stop and skip ------------------------------------------------------------------------------------
    def _on_stop(self, cmd: Command) -> None:
        if not cmd.target and self.stop_held:
            return  # an untargeted stop stays in place and holds the queue; acknowledged once
        if not cmd.target and not self.trainers:
            self.stop_held = True
            self._ack("stop", None, cmd.source, "stop file present: no new job starts until control/stop is removed")
            return
        self._stop_like(cmd, "stop")

    def _on_skip(self, cmd: Command) -> None:
        self._stop_like(cmd, "skip")

    def _stop_like(self, cmd: Command, request: str) -> None:
        """stop or skip the named run; an untargeted stop stops every running job, skip needs the one."""
        for run in self._runs_for(cmd, LIVE, every=request == "stop"):
            self._stop_run(cmd, request, run)
        if cmd.target or cmd.kind != "stop":
            control.consume(self.home, cmd.path)
        else:
            self.stop_held = True  # the untargeted stop file stays: it holds the queue after this run

    def _stop_run(self, cmd: Command, request: str, run: dict[str, Any]) -> None:
        end_state = REQUEST_OUTCOME[request]
        a = self._trainer(run["id"])
        if a:
            in_force = a.request_stop(request)
            msg = (f"{request} {run['id']}: checkpointing at the next step, then {end_state}" if in_force == request
                   else f"{request} {run['id']}: already stopping ({in_force} requested); it ends "
                        f"{REQUEST_OUTCOME[in_force]}")
        else:
            self.transition(run["id"], end_state, f"{request} requested before it started")
            msg = f"{request} {run['id']}: {end_state} (it was queued)"
        self._ack(request, cmd.target, cmd.source, msg, run["id"])

    def _hold_stop(self) -> None:
        if self.stop_held and not self.queue_held():
            self.stop_held = False
            self._ack("stop", None, "control/stop", "control/stop removed: the queue goes on")

    # --- pause and resume ---------------------------------------------------------------------------------
    def _on_pause(self, cmd: Command) -> None:
        if cmd.target and self.store.get_run(cmd.target) is None:
            raise ControlError(_no_run(cmd))

    def _hold_pause(self) -> None:
        """control/pause holds while it exists (for its named run, or whatever runs)."""
        path = self.home.control / "pause"
        if path.is_file() and not control.settled(path):
            return  # being written: the pause state stays as it is for one more pass
        wanted = control.held(self.home, "pause")
        if not self.trainers and wanted and wanted != self.pause_target:  # acknowledged once, so clients hear back
            self._ack("pause", None if wanted == "*" else wanted, "control/pause",
                      "pause: no job is running; the next one halts at its first step while control/pause exists")
        self.pause_target = wanted
        for a in self.trainers:
            should_pause = wanted in ("*", a.run_id)
            if should_pause != a.paused and not a.requested:
                a.set_paused(should_pause)
                msg = (f"pause {a.run_id}: halting at the next step boundary (remove control/pause to resume)"
                       if should_pause else f"resume {a.run_id}: control/pause removed")
                self._ack("pause" if should_pause else "resume", None if wanted in (None, "*") else wanted,
                          "control/pause", msg, a.run_id)

    def _on_resume(self, cmd: Command) -> None:
        """resume: with no run, lift a pause and an untargeted stop; with an ended run, queue it again."""
        if not cmd.target or self._trainer(cmd.target):
            self._ack("resume", cmd.target, cmd.source, self._lift_holds())
        else:
            [run] = self._runs_for(cmd, RESUMABLE + (State.PAUSED,))
            if run["state"] != State.PAUSED:
                self.transition(run["id"], State.QUEUED, "resumed by the user; continues from its last checkpoint",
                                finished=None)
                self._ack("resume", cmd.target, cmd.source, f"resume {run['id']}: queued again", run["id"])
        control.consume(self.home, cmd.path)

    def _lift_holds(self) -> str:
        """A resume naming no run lifts control/pause (whatever it names) and an untargeted control/stop."""
        lifted = []
        pause = self.home.control / "pause"
        if pause.exists():
            control.consume(self.home, pause)
            lifted.append("control/pause lifted")
        if self.queue_held():
            control.consume(self.home, self.home.control / "stop")
            self.stop_held = False  # said here: no second "control/stop removed" acknowledgement
            lifted.append("control/stop lifted: the queue goes on")
        return "resume: " + ("; ".join(lifted) if lifted else "nothing was paused or stopped")

    # --- priority -----------------------------------------------------------------------------------------
    def _on_priority(self, cmd: Command) -> None:
        """Re-order the queue; all lines must name known runs, else nothing is applied."""
        changes: list[tuple[dict[str, Any], int]] = []
        live = self.store.runs_in(LIVE)
        for ref, prio in cmd.priorities:
            match = [r for r in live if ref in (r["id"], r["name"], Path(r["dataset"] or "").stem)]
            if not match:
                raise ControlError(f"{cmd.source}: {ref!r} names no queued or running run (a run id, or a "
                                   f"dataset name). Nothing was changed. Fix: use the run ids or names that overnight runs "
                                   f"lists as queued or running.")
            changes += [(r, prio) for r in match]
        for r, prio in changes:
            self.store.update_run(r["id"], priority=prio)
            rundir.write_metadata(Path(r["run_dir"]), self.store.get_run(r["id"]))  # a rebuilt DB keeps the order
            self._ack("priority", r["id"], cmd.source, f"priority {r['id']}: {r['priority']} -> {prio}", r["id"])
        control.consume(self.home, cmd.path)

    def _preempt(self) -> None:
        """A queued run with a higher priority than a running one takes the slot of the lowest-priority running
        run when no slot is free; that one resumes later."""
        running = [(self.store.get_run(a.run_id), a) for a in self.trainers if not a.requested]
        queued = self.store.runs_in([State.QUEUED]) if running else []
        if not queued:
            return
        freeing = sum(1 for a in self.trainers if a.requested) + self.free_slots()  # slots the queue gets anyway
        running.sort(key=lambda ra: (ra[0]["priority"], -(ra[0]["seq"] or 0)))  # the lowest, latest first
        for q, (run, a) in zip(queued[freeing:], running):
            if q["priority"] <= run["priority"]:
                return
            a.request_stop("preempt")
            self._ack("preempt", a.run_id, "priority",
                      f"preempt {a.run_id} (priority {run['priority']}) for {q['id']} (priority "
                      f"{q['priority']}): checkpointing; it resumes afterwards", a.run_id)

    # --- the registry -------------------------------------------------------------------------------------
    def _on_model(self, cmd: Command) -> None:
        """activate / delete NAME VERSION: registry changes go through the daemon, the DB's only writer."""
        name, version = cmd.model
        if not any(m["version"] == version for m in self.store.models(name)):
            raise ControlError(f"{cmd.source}: no model {name} version {version}. Fix: use a NAME and "
                               f"VERSION that overnight models lists.")
        if cmd.kind == "activate":
            self.store.activate_model(name, version)
            msg = f"activate {name} v{version}: now the active version (pinned)"
        else:
            try:
                dest = registry.delete(self.store, self.home, name, version)
            except KeyError as e:
                raise ControlError(f"{cmd.source}: {e.args[0]}") from None
            msg = f"delete {name} v{version}: adapter moved to {dest}"
        self._ack(cmd.kind, f"{name} {version}", cmd.source, msg)
        control.consume(self.home, cmd.path)
