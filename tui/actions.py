"""What the dashboard's keys do to a run or a model version: the control file to write, exactly as the CLI writes
it (no Textual here).

The dashboard never talks to the daemon or the trainer: it writes a command file into `control/` through
`daemon.core.control.send` (what `overnight pause|resume|stop|skip|priority|activate|delete` do) and matches the daemon's
acknowledgement in the DB's control_events by the ticket's event id, as the CLI does.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from daemon.core import control
from daemon.core.home import Home
from daemon.core.states import LIVE, RESUMABLE, State
from tui.homedata import ControlAck, HomeSnapshot, ModelRow, RunRow


class NotApplicable(ValueError):
    """The key does nothing for this run; the message says why (shown as a warning toast)."""


@dataclass(frozen=True)
class Request:
    """One control file to write: its kind and content, how to describe it, and a question if destructive."""

    kind: str
    content: str
    describe: str
    confirm: str | None = None


def _require(run: RunRow | None, states: tuple[State, ...], verb: str) -> RunRow:
    if run is None:
        raise NotApplicable(f"no run selected: nothing to {verb}")
    if run.state not in states:
        raise NotApplicable(f"{run.id} is {run.state}: {verb} applies to runs that are "
                            f"{', '.join(s.value for s in states)}")
    return run


def pause_or_resume(snap: HomeSnapshot, run: RunRow | None, pending: Sequence[Request] = ()) -> Request:
    """`p`: pause a queued or running job; resume it if it is paused (or a pause for it is in force, or was asked
    and not answered yet: `pending`, so p p before the daemon answers is a pause and a resume, not two pauses).
    On a queued run while an untargeted control/stop holds the queue: lift the hold, as `overnight resume` does."""
    run = _require(run, LIVE, "pause or resume")
    if snap.stop_held and run.state == State.QUEUED:
        return lift_hold(snap, pending)
    asked = next((r.kind for r in reversed(pending) if r.kind in ("pause", "resume") and r.content == run.id), None)
    paused = run.state == State.PAUSED or "*" in snap.paused or run.id in snap.paused
    if asked == "pause" or (asked is None and paused):
        return Request("resume", run.id, f"resume {run.id}")  # takes it out of control/pause
    return Request("pause", run.id, f"pause {run.id}")


def lift_hold(snap: HomeSnapshot, pending: Sequence[Request] = ()) -> Request:
    """An empty control/resume, what `overnight resume` writes: the daemon lifts control/stop (and control/pause)."""
    if any(r.kind == "resume" and not r.content for r in pending):
        raise NotApplicable("resume of the queue written already: waiting for the daemon to lift control/stop")
    also = " and control/pause" if snap.paused else ""
    return Request("resume", "", f"resume the queue (lifts control/stop{also}, as overnight resume does)")


def stop(run: RunRow | None) -> Request:
    """`s`: checkpoint and end the run as stopped (resumable later)."""
    run = _require(run, LIVE, "stop")
    return Request("stop", run.id, f"stop {run.id}",
                   confirm=f"Stop {run.id}?\nIt checkpoints and ends as stopped; `r` (or overnight resume "
                           f"{run.id}) continues it later.")


def skip(run: RunRow | None) -> Request:
    """`k`: checkpoint, end the run as skipped, and let the queue go on."""
    run = _require(run, LIVE, "skip")
    return Request("skip", run.id, f"skip {run.id}",
                   confirm=f"Skip {run.id}?\nIt checkpoints, ends as skipped, and the next queued run starts.")


def priority(run: RunRow | None, delta: int, asked: dict[str, int] | None = None) -> Request:
    """`+`/`-`: raise or lower the run's priority by one (higher runs first; may preempt the running job), from the
    value last `asked` for it when the daemon has not answered yet (+ + + is three steps)."""
    run = _require(run, LIVE, "change the priority of")
    now = (asked or {}).get(run.id, run.priority)
    value = now + delta
    return Request("priority", f"{run.id} {value}", f"priority {run.id} {now} -> {value}")


def group_priority(group_id: str, runs: tuple[RunRow, ...], delta: int, asked: dict[str, int] | None = None
                   ) -> Request:
    """`+`/`-` on a folded group (a sweep): every run of it still queued or running moves together, one above the
    highest of them (or one below the lowest), so that the whole sweep goes before (or after) the rest."""
    live = [r for r in runs if r.state in LIVE]
    if not live:
        raise NotApplicable(f"{group_id}: no run of it is queued or running: nothing to change the priority of")
    value = (max if delta > 0 else min)((asked or {}).get(r.id, r.priority) for r in live) + delta
    return Request("priority", "".join(f"{r.id} {value}\n" for r in live),
                   f"priority of {group_id}'s {len(live)} live run{'s' if len(live) > 1 else ''} -> {value}")


def requeue(run: RunRow | None) -> Request:
    """`r`: queue a stopped, skipped or failed run again; it continues from its last checkpoint."""
    run = _require(run, RESUMABLE, "queue again")
    return Request("resume", run.id, f"resume {run.id} (queue it again)")


def _version(model: ModelRow | None, verb: str) -> ModelRow:
    if model is None:
        raise NotApplicable(f"no model version selected: open Models (5) and pick one to {verb}")
    if model.deleted:
        raise NotApplicable(f"{model.name} v{model.version} is in the trash: nothing to {verb}")
    return model


def activate(model: ModelRow | None) -> Request:
    """`a` on Models: make the version the active one of its name (`overnight activate NAME VERSION`): a roll
    back, or forward again; it is pinned, so newer versions no longer take over."""
    model = _version(model, "activate")
    if model.active:
        raise NotApplicable(f"{model.name} v{model.version} is already the active version")
    label = f"{model.name} v{model.version}"
    return Request("activate", f"{model.name} {model.version}", f"activate {label}",
                   confirm=f"Activate {label}?\nIt becomes the active {model.name} and stays so when newer "
                           f"versions arrive (activate another to change that).")


def delete(model: ModelRow | None) -> Request:
    """`d` on Models: move the version's adapter into trash/ (`overnight delete NAME VERSION`; nothing is erased)."""
    model = _version(model, "delete")
    label = f"{model.name} v{model.version}"
    return Request("delete", f"{model.name} {model.version}", f"delete {label}",
                   confirm=f"Delete {label}?\nIts adapter moves to trash/ (nothing is erased)."
                           + (f"\nIt is the active version: {model.name} then has none until you activate "
                              f"another." if model.active else ""))


def send(home: Home, request: Request) -> control.Ticket:
    """Write the request's control file (atomically, as the CLI does); the ticket waits for its answer."""
    return control.send(home, request.kind, request.content)


@dataclass
class Pending:
    """A request written, waiting for the daemon's acknowledgement."""

    request: Request
    ticket: control.Ticket
    warned: bool = False


class AckTracker:
    """Matches the daemon's control_events to the requests this dashboard wrote (by event id)."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self.pending: list[Pending] = []

    def add(self, request: Request, ticket: control.Ticket) -> None:
        """Start waiting for `request`'s acknowledgement."""
        self.pending.append(Pending(request, ticket))

    @property
    def requests(self) -> list[Request]:
        """The requests written and not answered yet, oldest first."""
        return [p.request for p in self.pending]

    def asked_priorities(self) -> dict[str, int]:
        """The priority each run was last asked for by a request not answered yet."""
        asked: dict[str, int] = {}
        for p in self.pending:
            if p.request.kind == "priority":
                for line in p.request.content.splitlines():
                    run, _, value = line.rpartition(" ")
                    asked[run] = int(value)
        return asked

    def answers(self, snap: HomeSnapshot) -> tuple[list[ControlAck], list[Request]]:
        """(events acknowledging pending requests, requests past the timeout without one — reported once)."""
        acks: list[ControlAck] = []
        late: list[Request] = []
        still: list[Pending] = []
        for p in self.pending:
            found = p.ticket.answers(snap.events)
            if found:
                acks += [e for e in found if e not in acks]
                continue
            if not p.warned and time.monotonic() - p.ticket.written > self.timeout_s:
                p.warned = True
                late.append(p.request)
            still.append(p)
        self.pending = still
        return acks, late
