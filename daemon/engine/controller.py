"""The daemon's side of control: one Controller owns the control state and applies every command file.

After pueue: the message type (daemon/core/control.py's Command) is shared with the CLI and the dashboard; here is one
handler per message. The Controller reaches the running trainer only through the `Trainer` protocol
(`request_stop`, `set_paused`), and the DB through the Store and the daemon's `transition`, so every rule can be
tested with a stub trainer (tests/test_controller.py).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable, Protocol

from daemon.core import control, rundir
from daemon.engine import pruning, registry
from daemon.core.control import Command, ControlError
from daemon.core.space import waits_for_space
from daemon.core.dropfiles import dataset_waiting
from daemon.core.home import Home
from daemon.core.log import log
from daemon.core.states import LIVE, RESUMABLE, State, StopRequest
from daemon.engine.store import Store
from daemon.core.versionpick import deleted_version, missing_adapter
from daemon.core.timefmt import iso

def _named(runs: frozenset[str]) -> str | None:
    """An event's target for what control/pause holds: None for every run."""
    return None if not runs or "*" in runs else ",".join(sorted(runs))


def _paused_idle(runs: frozenset[str]) -> str:
    """What a pause says when it holds no trainer."""
    if "*" in runs:
        return ("pause: no job is running; queued runs wait while control/pause exists (overnight resume lets "
                "them start)")
    return (f"pause {', '.join(sorted(runs))}: not running; the queue passes each by while control/pause names it "
            f"(overnight resume RUN lets it start)")


class Deferred(Exception):
    """A command naming a drop not yet taken: left in control/ for the next pass."""


def _no_run(cmd: Command, target: str | None = None) -> str:
    return (f"{cmd.source}: no run with id {target or cmd.target!r}. Fix: name a run that overnight runs lists "
            f"({_naming(cmd)}), or none to act on the running job.")


def _naming(cmd: Command) -> str:
    """How to give `cmd` a run id: with the CLI when it came from there, else in the file."""
    return f"overnight {cmd.kind} RUN_ID" if cmd.id else f"echo RUN_ID > control/{cmd.kind}"


class Trainer(Protocol):
    """What the Controller may do to the running trainer (daemon/engine/runner.py TrainerProcess)."""

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
        self.paused: frozenset[str] = frozenset()  # what control/pause held at the last pass ("*": any run)
        self.complete = control.Completeness()
        self.trainers: list[Trainer] = []  # the running trainers, one per slot
        self.free_slots: Callable[[], int] = lambda: 0
        # acknowledgements not yet in the DB: those of the command being applied (written together once it is
        # done), and those the DB refused (full, or locked by another process), written first at the next pass,
        # in order. The command is consumed all the same: applied is applied, and read again once its run has
        # moved on it would be refused ("run X is skipped").
        self._unwritten: list[dict[str, Any]] = []
        self._waiting_said: set[Path] = set()  # resumes left in control/ until their run has ended, said once
        self.stuck: dict[Path, str] = {}  # control files that could not be moved to rejected/: why
        self._said_waiting = 0  # acknowledgements waiting for the DB, as last said
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
            if path in self.stuck or not self.complete(path):
                continue  # `echo RUN > control/stop` creates the file empty, then writes: read it once complete
            try:
                cmd = control.parse(path)
                self._handlers[cmd.kind](cmd)
            except (FileNotFoundError, Deferred):
                continue  # taken away mid-pass (by its writer, or by a resume that lifted it): nothing to reject;
                # or naming a drop the inbox has yet to take: read again at the next pass
            except (ControlError, OSError) as e:
                self._reject_or_hold(path, str(e))
            self._flush()
        self._hold_pause()
        self._hold_stop()
        self._preempt()
        self._flush()

    def queue_held(self) -> bool:
        """An untargeted control/stop holds the queue while it exists."""
        return control.held(self.home, "stop") == "*"

    # --- acknowledgements ---------------------------------------------------------------------------------
    def _ack(self, cmd: str, target: str | None, source: str, message: str, run_id: str | None = None,
             command_id: str | None = None) -> None:
        said = f"control: {message}" + (f" [{command_id}]" if command_id else "")
        log.info(said)
        run = self.store.get_run(run_id) if run_id else None
        if run:
            rundir.append_console(Path(run["run_dir"]), said)
        self._event(cmd, target, source, "applied", message, command_id)

    def _answer(self, cmd: Command, message: str, run_id: str | None = None, target: str | None = None) -> None:
        """Acknowledge `cmd` (its id goes with the answer, for the client waiting on it)."""
        self._ack(cmd.kind, target or cmd.target, cmd.source, message, run_id, cmd.id)

    def _reject_or_hold(self, path: Path, message: str) -> None:
        """Reject the file; one that cannot be moved (its folder or the file made unwritable) is passed by from now
        on, said in status, instead of stopping every command after it."""
        try:
            self._rejected(path, message)
        except OSError as e:
            self.stuck[path] = (f"{path} cannot be moved to {self.home.control_rejected} ({type(e).__name__}: "
                                f"{e.strerror or e}); the daemon passes it by. Fix: remove it by hand (it said: "
                                f"{message.splitlines()[0][:200]})")
            log.error(self.stuck[path])

    @property
    def problem(self) -> str | None:
        """Control files that cannot be moved away (status PROBLEM line), while they are there."""
        for path in [p for p in self.stuck if not (p.exists() or p.is_symlink())]:
            del self.stuck[path]
        return " · ".join(self.stuck.values()) or None

    def _rejected(self, path: Path, message: str) -> None:
        kind, command_id = control.split_name(path.name)
        dest = control.reject(self.home, path, message)
        log.warning(f"control: rejected {control.shown(path.name)}: {message} (moved to {dest})")
        self._event(kind if kind in control.COMMANDS else path.name, None, f"control/{path.name}", "rejected",
                    message, command_id)

    def _event(self, command: str, target: str | None, source: str, status: str, message: str,
               command_id: str | None = None) -> None:
        self._unwritten.append({"command": command, "target": target, "source": source, "status": status,
                                "message": message, "time": iso(), "command_id": command_id})

    def _flush(self) -> None:
        waiting = 0 if self._write_events() else len(self._unwritten)
        if waiting and waiting != self._said_waiting:  # said when it changes, not at every pass of a full disk
            log.warning(f"control: {waiting} acknowledgement(s) wait to be written to the DB (it cannot be written "
                        f"now); the commands themselves are done")
        self._said_waiting = waiting

    def _write_events(self) -> bool:
        """Write the acknowledgements not yet in the DB, in one transaction; a refused write keeps them for the
        next pass (the daemon's other writes report the fault: status PROBLEM line, overnight.log). True when
        none is left."""
        if not self._unwritten:
            return True
        try:
            self.store.control_events(self._unwritten)
        except sqlite3.OperationalError:
            return False
        self._unwritten = []
        return True

    def _drop_waiting(self, name: str) -> bool:
        """Whether a dataset named `name` waits in the inbox (being written, settling or checked)."""
        return dataset_waiting(self.home.inbox, name)

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
            raise ControlError(f"{cmd.source}: no job is running, and the command names no run. "
                               f"Fix: name the run ({_naming(cmd)}).")
        elif len(self.trainers) > 1 and not every:
            raise ControlError(f"{cmd.source}: {len(self.trainers)} runs are training "
                               f"({', '.join(a.run_id for a in self.trainers)}) and the command names none. "
                               f"Fix: name one ({_naming(cmd)}).")
        else:
            runs = [self.store.get_run(a.run_id) for a in self.trainers]
        for run in runs:
            if run["state"] not in states:
                raise ControlError(f"{cmd.source}: run {run['id']} is {run['state']}; {cmd.kind} applies to runs "
                                   f"that are {' or '.join(states)}. Fix: name such a run (see overnight runs).")
        return runs

    # --- stop and skip ------------------------------------------------------------------------------------
    def _on_stop(self, cmd: Command) -> None:
        """A stop naming a run stops it; one naming none stops every running job and holds the queue while
        control/stop exists (a `stop.ID` from the CLI leaves that file in place)."""
        if cmd.target:
            return self._stop_like(cmd, "stop")
        if cmd.held and self.stop_held:
            return  # the untargeted stop stays in place and holds the queue; acknowledged once
        if not cmd.held and self.queue_held():
            self._answer(cmd, "stop: control/stop is in place already; no new job starts until it is removed")
            control.consume(self.home, cmd.path)
            return
        runs = self._runs_for(cmd, LIVE, every=True) if self.trainers else []
        if not cmd.held:
            self.complete.written(control.hold_stop(self.home))
        self.stop_held = True
        for run in runs:
            self._stop_run(cmd, "stop", run)
        if not runs:
            self._answer(cmd, "stop file present: no new job starts until control/stop is removed")
        if not cmd.held:
            control.consume(self.home, cmd.path)

    def _on_skip(self, cmd: Command) -> None:
        self._stop_like(cmd, "skip")

    def _stop_like(self, cmd: Command, request: str) -> None:
        """stop or skip the named run (skip: or the one running job); the file is consumed."""
        for run in self._runs_for(cmd, LIVE):
            self._stop_run(cmd, request, run)
        control.consume(self.home, cmd.path)

    def _stop_run(self, cmd: Command, request: str, run: dict[str, Any]) -> None:
        end_state = StopRequest(request).outcome
        a = self._trainer(run["id"])
        if a:
            in_force = a.request_stop(request)
            msg = (f"{request} {run['id']}: checkpointing at the next step, then {end_state}" if in_force == request
                   else f"{request} {run['id']}: already stopping ({in_force} requested); it ends "
                        f"{StopRequest(in_force).outcome}")
        else:  # queued: never started, or waiting to go on from a checkpoint (a preemption, a restart)
            when = (f"while queued at step {run['step'] or 0} (resumable from its last checkpoint)" if run["started"]
                    else "before it started")
            self.transition(run["id"], end_state, f"{request} requested {when}", finished=iso())
            msg = f"{request} {run['id']}: {end_state} (it was queued)"
        self._answer(cmd, msg, run["id"])

    def _hold_stop(self) -> None:
        if self.stop_held and not self.queue_held():
            self.stop_held = False
            self._ack("stop", None, "control/stop", "control/stop removed: the queue goes on")

    # --- pause and resume ---------------------------------------------------------------------------------
    def _on_pause(self, cmd: Command) -> None:
        """control/pause is held (applied by _hold_pause); a `pause.ID` adds its runs (none: every run) to it."""
        for target in cmd.targets:
            run = self.store.get_run(target)
            if run is None:
                raise ControlError(_no_run(cmd, target))
            if not cmd.held and run["state"] not in LIVE:  # a held file may outlive its runs; a new pause may not
                raise ControlError(f"{cmd.source}: run {target} is {run['state']}; pause applies to runs that are "
                                   f"{' or '.join(LIVE)}. Fix: name such a run (see overnight runs).")
        if cmd.held:
            return
        held = control.paused(self.home)
        wanted = held if "*" in held else (held | set(cmd.targets) if cmd.targets else {"*"})
        if wanted != held or not (self.home.control / "pause").exists():
            self._rewrite_pause(wanted)
        control.consume(self.home, cmd.path)
        self._hold_pause(cmd)

    def _hold_pause(self, cmd: Command | None = None) -> None:
        """control/pause holds while it exists (for the runs it names, or whatever runs); `cmd`: the `pause.ID`
        that has just changed it, answered at least once."""
        path = self.home.control / "pause"
        if cmd is None and path.is_file() and not self.complete(path):
            return  # being written: the pause state stays as it is for one more pass
        wanted = control.paused(self.home)
        changed = wanted != self.paused
        self.paused = wanted
        if not self.trainers and wanted and changed and not cmd:  # acknowledged once, so clients hear back
            self._ack("pause", _named(wanted), "control/pause", _paused_idle(wanted))
        answered = False
        for a in self.trainers:
            should_pause = "*" in wanted or a.run_id in wanted
            if should_pause != a.paused and not a.requested:
                a.set_paused(should_pause)
                msg = (f"pause {a.run_id}: halting at the next step boundary (remove control/pause to resume)"
                       if should_pause else f"resume {a.run_id}: control/pause removed")
                self._ack("pause" if should_pause else "resume", _named(wanted), cmd.source if cmd else "control/pause",
                          msg, a.run_id, cmd.id if cmd else None)
                answered = True
        if cmd and not answered:
            if cmd.target and not self._trainer(cmd.target):
                what = (f"pause {cmd.target}: queued; the queue passes it by while control/pause names it "
                        f"(overnight resume {cmd.target} lets it start)")
            elif changed and not self.trainers:
                what = _paused_idle(wanted)
            else:
                what = f"pause {cmd.target or 'every run'}: already paused"
            self._answer(cmd, what, cmd.target)

    def _on_resume(self, cmd: Command) -> None:
        """resume: with no run, lift a pause and an untargeted stop; with a paused run, lift its pause; with an
        ended run, queue it again."""
        held = control.paused(self.home)
        stopping = self._trainer(cmd.target) if cmd.target else None
        if stopping and stopping.requested and stopping.requested.by_user and not self._unpausing(cmd.target, held):
            self._wait_for_end(cmd, stopping)  # stop then resume at once: queued again once it has ended
        if not cmd.target:
            self._answer(cmd, self._lift_holds())
        elif self._trainer(cmd.target) or cmd.target in held or ("*" in held and self.store.get_run(cmd.target)):
            said, run = self._unpause(cmd.target, held), self.store.get_run(cmd.target)
            if run and run["state"] in RESUMABLE and not self._trainer(cmd.target):
                said += "; " + self._queue_again(run).partition(": ")[2]  # paused, then stopped: back in the queue
            elif run and waits_for_space(run):
                said += f"; its trainer paused it: {run['reason']}"
            self._answer(cmd, said, cmd.target)
        else:
            [run] = self._runs_for(cmd, RESUMABLE + (State.PAUSED,))
            if run["state"] == State.PAUSED:
                why = f"; its trainer paused it: {run['reason']}" if waits_for_space(run) else ""
                self._answer(cmd, f"resume {run['id']}: control/pause does not hold it; nothing to lift{why}",
                             run["id"])
            else:
                self._answer(cmd, self._queue_again(run), run["id"])
        control.consume(self.home, cmd.path)

    @staticmethod
    def _unpausing(run_id: str, held: frozenset[str]) -> bool:
        return run_id in held or "*" in held

    def _wait_for_end(self, cmd: Command, a: Trainer) -> None:
        """A resume of a run whose trainer is still checkpointing for the user's stop or skip stays in control/ until
        the run has ended, then queues it again (it would lift nothing now and be lost); said once."""
        if cmd.path not in self._waiting_said:
            self._waiting_said.add(cmd.path)
            self._ack("resume", cmd.target, cmd.source, f"resume {cmd.target}: it is stopping ({a.requested} "
                      f"requested); it is queued again once it has checkpointed", cmd.target, cmd.id)
        raise Deferred(cmd.target)

    def _queue_again(self, run: dict[str, Any]) -> str:
        """An ended run back in the queue, continuing from its last checkpoint."""
        if run["state"] == State.PRUNED:
            pruning.resumed(self.store, run["id"])  # trains to the end, past the rung it was pruned at
        self.transition(run["id"], State.QUEUED, "resumed by the user; continues from its last checkpoint",
                        finished=None, attempts=0)  # the user's decision: the crash-loop count starts again
        return f"resume {run['id']}: queued again"

    def _unpause(self, run_id: str, held: frozenset[str]) -> str:
        """Take `run_id` out of control/pause; a pause of every run then names every other live run."""
        path = self.home.control / "pause"
        others = {r["id"] for r in self.store.runs_in(LIVE)} - {run_id} if "*" in held else held - {run_id}
        if run_id not in held and "*" not in held:
            return f"resume {run_id}: control/pause does not hold it; nothing to lift"
        if not others:
            control.consume(self.home, path)
            return f"resume {run_id}: control/pause lifted"
        self._rewrite_pause(others)
        return (f"resume {run_id}: control/pause held every run; it now names the others ({', '.join(sorted(others))})"
                if "*" in held else f"resume {run_id}: control/pause no longer names it")

    def _rewrite_pause(self, runs: frozenset[str] | set[str]) -> None:
        """control/pause now holds `runs`; the file it replaces is kept in done/ (it may be the user's own)."""
        path = self.home.control / "pause"
        if path.exists():
            control.keep(self.home, path)
        self.complete.written(control.hold_pause(self.home, runs))

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
            if not match and self._drop_waiting(ref):
                raise Deferred(ref)  # written while the daemon was down, or before the drop was taken: applied after
            if not match:
                raise ControlError(f"{cmd.source}: {ref!r} names no queued or running run (a run id, or a "
                                   f"dataset name). Nothing was changed. Fix: use the run ids or names that overnight runs "
                                   f"lists as queued or running.")
            changes += [(r, prio) for r in match]
        for r, prio in changes:
            self.store.update_run(r["id"], priority=prio)
            rundir.write_metadata(Path(r["run_dir"]), self.store.get_run(r["id"]))  # a rebuilt DB keeps the order
            self._answer(cmd, f"priority {r['id']}: {r['priority']} -> {prio}", r["id"], target=r["id"])
        control.consume(self.home, cmd.path)
        self._preempt(cmd)

    def _preempt(self, cause: Command | None = None) -> None:
        """A queued run with a higher priority than a running one takes the slot of the lowest-priority running
        run when no slot is free; that one resumes later."""
        paused = control.paused(self.home)
        if "*" in paused:
            return  # every run is paused: a run would take the slot only to halt
        running = [(self.store.get_run(a.run_id), a) for a in self.trainers if not a.requested]
        queued = self.store.startable(paused) if running else []
        if not queued:
            return
        freeing = sum(1 for a in self.trainers if a.requested) + self.free_slots()  # slots the queue gets anyway
        running.sort(key=lambda ra: (ra[0]["priority"], -(ra[0]["seq"] or 0)))  # the lowest, latest first
        for q, (run, a) in zip(queued[freeing:], running):
            if q["priority"] <= run["priority"]:
                return
            a.request_stop("preempt")
            self._ack("preempt", a.run_id, cause.source if cause else "priority",
                      f"preempt {a.run_id} (priority {run['priority']}) for {q['id']} (priority "
                      f"{q['priority']}): checkpointing; it resumes afterwards", a.run_id, cause.id if cause else None)

    # --- the registry -------------------------------------------------------------------------------------
    def _on_model(self, cmd: Command) -> None:
        """activate / delete NAME VERSION: registry changes go through the daemon, the DB's only writer."""
        name, version = cmd.model
        row = next((m for m in self.store.models(name) if m["version"] == version), None)
        if row is None:
            raise ControlError(f"{cmd.source}: no model {name} version {version}. Fix: use a NAME and "
                               f"VERSION that overnight models lists.")
        if cmd.kind == "activate" and row["deleted"]:
            raise ControlError(f"{cmd.source}: {deleted_version(name, row)}")
        if cmd.kind == "activate" and missing_adapter(row):
            raise ControlError(f"{cmd.source}: {missing_adapter(row)}")
        if cmd.kind == "activate":
            self.store.activate_model(name, version)
            msg = f"activate {name} v{version}: now the active version (pinned)"
        else:
            try:
                dest = registry.delete(self.store, self.home, name, version)
            except KeyError as e:
                raise ControlError(f"{cmd.source}: {e.args[0]}") from None
            msg = f"delete {name} v{version}: " + (f"adapter moved to {dest}" if dest else
                                                    f"its adapter was missing already ({row['adapter_path']}): "
                                                    f"marked deleted")
        self._answer(cmd, msg, target=f"{name} {version}")
        control.consume(self.home, cmd.path)
