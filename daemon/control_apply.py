"""Apply control commands to the daemon's runs, and acknowledge each in the log, console.log and the DB."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from daemon import control, rundir
from daemon.control import Command, ControlError
from daemon.log import log
from daemon.store import ACTIVE_STATES, END_STATES

if TYPE_CHECKING:
    from daemon.scheduler import Daemon


def apply_all(d: "Daemon") -> None:
    """Read every control file once; then keep pause/stop states in force and check for preemption."""
    for path in control.command_files(d.home):
        if not control.settled(path):
            continue  # `echo RUN > control/stop` creates the file empty, then writes: read it on the next pass
        try:
            cmd = control.parse(path)
        except FileNotFoundError:
            continue  # taken away by its writer mid-pass: nothing to reject
        except (ControlError, OSError) as e:
            _rejected(d, path.name, None, path, str(e))
            continue
        try:
            HANDLERS[cmd.kind](d, cmd)
        except ControlError as e:
            _rejected(d, cmd.kind, cmd.target, path, str(e))
    _hold_pause(d)
    _hold_stop(d)
    _preempt(d)


def _ack(d: "Daemon", cmd: str, target: str | None, source: str, message: str, run_id: str | None = None) -> None:
    d.store.control_event(cmd, target, source, "applied", message)
    log.info(f"control: {message}")
    if run_id:
        run = d.store.get_run(run_id)
        if run:
            rundir.append_console(Path(run["run_dir"]), f"control: {message}")


def _rejected(d: "Daemon", cmd: str, target: str | None, path: Path, message: str) -> None:
    dest = control.reject(d.home, path, message)
    d.store.control_event(cmd, target, f"control/{path.name}", "rejected", message)
    log.warning(f"control: rejected {path.name}: {message} (moved to {dest})")


def _run_for(d: "Daemon", cmd: Command, states: tuple[str, ...]) -> dict:
    """The run a command acts on: its named target, else the running job."""
    if cmd.target:
        run = d.store.get_run(cmd.target)
        if run is None:
            raise ControlError(f"{cmd.source}: no run with id {cmd.target!r} (see overnight runs).")
    elif d.active:
        run = d.store.get_run(d.active.run_id)
    else:
        raise ControlError(f"{cmd.source}: no job is running, and the file names no run. "
                           f"Fix: write the run id into the file (echo RUN_ID > {cmd.source}).")
    if run["state"] not in states:
        raise ControlError(f"{cmd.source}: run {run['id']} is {run['state']}; {cmd.kind} applies to runs that are "
                           f"{' or '.join(states)}.")
    return run


def _stop_like(d: "Daemon", cmd: Command, request: str, end_state: str) -> None:
    run = _run_for(d, cmd, ("queued",) + ACTIVE_STATES)
    if d.active and d.active.run_id == run["id"]:
        if not d.active.requested:
            d.active.requested = request
            d.active.send("resume")  # a paused trainer must wake up to checkpoint
            d.active.send("stop")
        msg = f"{request} {run['id']}: checkpointing at the next step, then {end_state}"
    else:
        d._transition(run["id"], end_state, f"{request} requested before it started")
        msg = f"{request} {run['id']}: {end_state} (it was queued)"
    _ack(d, request, cmd.target, cmd.source, msg, run["id"])
    if cmd.target or cmd.kind != "stop":
        control.consume(d.home, cmd.path)
    else:
        d._stop_file_seen = True


def _on_stop(d: "Daemon", cmd: Command) -> None:
    if not cmd.target and d._stop_file_seen:
        return  # an untargeted stop stays in place and holds the queue; acknowledged once
    if not cmd.target and not d.active:
        d._stop_file_seen = True
        _ack(d, "stop", None, cmd.source, "stop file present: no new job starts until control/stop is removed")
        return
    _stop_like(d, cmd, "stop", "stopped")


def _on_skip(d: "Daemon", cmd: Command) -> None:
    _stop_like(d, cmd, "skip", "skipped")


def _on_pause(d: "Daemon", cmd: Command) -> None:
    if cmd.target and d.store.get_run(cmd.target) is None:
        raise ControlError(f"{cmd.source}: no run with id {cmd.target!r} (see overnight runs).")


def _hold_pause(d: "Daemon") -> None:
    """control/pause holds while it exists (for its named run, or whatever runs)."""
    path = d.home.control / "pause"
    wanted: str | None = None
    if path.is_file() and not control.settled(path):
        return  # being written: the pause state stays as it is for one more pass
    if path.is_file():
        try:
            wanted = control.parse(path).target or "*"
        except (ControlError, OSError):
            wanted = None
    a = d.active
    if not a and wanted and wanted != d._pause_target:  # acknowledged once, so the CLI and dashboards hear back
        _ack(d, "pause", None if wanted == "*" else wanted, "control/pause",
             "pause: no job is running; the next one halts at its first step while control/pause exists")
    d._pause_target = wanted
    should_pause = bool(a and wanted and (wanted == "*" or wanted == a.run_id))
    if a and should_pause != a.paused and not a.requested:
        a.paused = should_pause
        a.send("pause" if should_pause else "resume")
        verb = "pause" if should_pause else "resume"
        msg = (f"pause {a.run_id}: halting at the next step boundary (remove control/pause to resume)"
               if should_pause else f"resume {a.run_id}: control/pause removed")
        _ack(d, verb, None if wanted in (None, "*") else wanted, "control/pause", msg, a.run_id)


def _hold_stop(d: "Daemon") -> None:
    if d._stop_file_seen and not d._stop_file():
        d._stop_file_seen = False
        _ack(d, "stop", None, "control/stop", "control/stop removed: the queue goes on")


def _on_resume(d: "Daemon", cmd: Command) -> None:
    """resume: with no run, lift a pause; with a stopped/skipped/failed run, queue it again to continue."""
    pause = d.home.control / "pause"
    if not cmd.target or (d.active and cmd.target == d.active.run_id):
        if pause.exists():
            control.consume(d.home, pause)
        _ack(d, "resume", cmd.target, cmd.source, "resume: control/pause lifted")
    else:
        run = _run_for(d, cmd, ("stopped", "skipped", "failed", "paused"))
        if run["state"] != "paused":
            d._transition(run["id"], "queued", "resumed by the user; continues from its last checkpoint",
                          finished=None)
            _ack(d, "resume", cmd.target, cmd.source, f"resume {run['id']}: queued again", run["id"])
    control.consume(d.home, cmd.path)


def _on_priority(d: "Daemon", cmd: Command) -> None:
    """Re-order the queue; all lines must name known runs, else nothing is applied."""
    changes: list[tuple[dict, int]] = []
    live = d.store.runs_in(("queued",) + ACTIVE_STATES)
    for ref, prio in cmd.priorities:
        match = [r for r in live if ref in (r["id"], r["name"], Path(r["dataset"] or "").stem)]
        if not match:
            raise ControlError(f"{cmd.source}: {ref!r} names no queued or running run (a run id, or a dataset "
                               f"name). Nothing was changed. See overnight runs.")
        changes += [(r, prio) for r in match]
    for r, prio in changes:
        d.store.update_run(r["id"], priority=prio)
        rundir.write_metadata(Path(r["run_dir"]), d.store.get_run(r["id"]))  # a rebuilt DB keeps the new order
        _ack(d, "priority", r["id"], cmd.source, f"priority {r['id']}: {r['priority']} -> {prio}", r["id"])
    control.consume(d.home, cmd.path)


def _preempt(d: "Daemon") -> None:
    """A queued run with a higher priority than the running one takes its place; the running one resumes later."""
    a = d.active
    if not a or a.requested:
        return
    queued = d.store.runs_in(["queued"])
    run = d.store.get_run(a.run_id)
    if queued and run and queued[0]["priority"] > run["priority"]:
        a.requested = "preempt"
        a.send("resume")
        a.send("stop")
        _ack(d, "preempt", a.run_id, "priority",
             f"preempt {a.run_id} (priority {run['priority']}) for {queued[0]['id']} (priority "
             f"{queued[0]['priority']}): checkpointing; it resumes afterwards", a.run_id)


def _on_model(d: "Daemon", cmd: Command) -> None:
    """activate / delete NAME VERSION: registry changes go through the daemon, the DB's only writer."""
    from daemon import registry
    name, version = cmd.model
    if not any(m["version"] == version for m in d.store.models(name)):
        raise ControlError(f"{cmd.source}: no model {name} version {version} (see overnight models).")
    if cmd.kind == "activate":
        d.store.activate_model(name, version)
        msg = f"activate {name} v{version}: now the active version (pinned)"
    else:
        try:
            dest = registry.delete(d.store, d.home, name, version)
        except KeyError as e:
            raise ControlError(f"{cmd.source}: {e.args[0]}") from None
        msg = f"delete {name} v{version}: adapter moved to {dest}"
    _ack(d, cmd.kind, f"{name} {version}", cmd.source, msg)
    control.consume(d.home, cmd.path)


HANDLERS = {"activate": _on_model, "delete": _on_model, "stop": _on_stop, "skip": _on_skip, "pause": _on_pause, "resume": _on_resume, "priority": _on_priority}
__all__ = ["apply_all", "END_STATES"]
