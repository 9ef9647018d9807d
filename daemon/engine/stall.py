"""A frozen trainer: no optimizer step for `stall_minutes` while it says it is training.

Only time spent training counts (stepping, saving a checkpoint, evaluating: each phase gets its own window);
loading the model and a pause do not. The
daemon reports a stall once (overnight.log, control_events, the status PROBLEM line and dashboard banner, the
`stalled` notification) and, with `stall_action = "restart"`, kills the trainer so the run resumes from its last
complete checkpoint (within the usual bounded retries).

A trainer asked to stop (stop, skip, preemption, shutdown, or an orphan found at start) that shows no progress
escalates from the command to SIGTERM to SIGKILL (Escalation).
"""
from __future__ import annotations

from dataclasses import dataclass

from daemon.core.options import OPTIONS
from daemon.core.states import Phase

COUNTED = (Phase.TRAINING, Phase.SAVING, Phase.EVALUATING)  # progress.json states in which a step must come


@dataclass
class StallWatch:
    """Watches one trainer's progress.json readings."""

    limit_s: float
    action: str = "report"  # or "restart"
    step: int | None = None
    state: str = ""
    since: float = 0.0  # monotonic time the step or the phase last changed
    stalled: bool = False

    def observe(self, state: str, step: int, now: float) -> bool:
        """Feed one reading; True exactly once, when the trainer becomes stalled."""
        if state not in COUNTED or (state, step) != (self.state, self.step):
            self.state, self.step, self.since, self.stalled = state, step, now, False
            return False
        if not self.stalled and now - self.since >= self.limit_s:
            self.stalled = True
            return True
        return False

    def message(self, run_id: str, pid: int | None) -> str:
        minutes = self.limit_s / 60
        said = (f"{run_id} stalled: no training step for {minutes:g} minute{'s' if minutes != 1 else ''} (stuck at "
                f"step {self.step}); the trainer (PID {pid}) may be frozen or deadlocked")
        if self.action == "restart":
            return f"{said}; restarting it from its last checkpoint (stall_action = \"restart\")"
        return (f"{said}. Fix: look at its console log (overnight logs {run_id}); `overnight stop {run_id}` ends it, "
                f"or set stall_action = \"restart\" in overnight.toml to restart stalled runs from their last "
                f"checkpoint")


@dataclass
class Escalation:
    """A trainer asked to stop must show signs of life (progress.json changing) until it exits.

    None for `grace_s` → SIGTERM (the trainer's handler checkpoints); still none for `kill_s` more → SIGKILL,
    which even a stopped (SIGSTOP) or deadlocked process cannot ignore. The run then resumes from its last
    complete checkpoint, so nothing but the steps since is lost.
    """

    grace_s: float
    since: float  # monotonic time of the last sign of life (at first: the request)
    mark: object = None
    sent: str | None = None

    @property
    def kill_s(self) -> float:
        return min(30.0, self.grace_s)

    def observe(self, mark: object, now: float) -> str | None:
        """Feed the trainer's progress mark; the signal to send now, if any."""
        if mark != self.mark:
            self.mark, self.since = mark, now
            return None
        if self.sent is None and now - self.since >= self.grace_s:
            self.sent, self.since = "SIGTERM", now
            return self.sent
        if self.sent == "SIGTERM" and now - self.since >= self.kill_s:
            self.sent = "SIGKILL"
            return self.sent
        return None


def stop_grace(stall_limit_s: float, step_s: float | None) -> float:
    """How long a trainer asked to stop may show no progress: two minutes (less when the owner's stall window
    is shorter), but never less than three of its own steps (a big model's step may take minutes)."""
    return max(min(stall_limit_s, 120.0), 3 * (step_s or 0.0))


def grace_of(watch: StallWatch | None, step_s: float | None) -> float:
    """`stop_grace` for one trainer: its own stall window (the default one for a trainer the daemon did not start,
    an earlier daemon's leftover), and only a few seconds for one already known frozen (no point waiting long)."""
    if watch and watch.stalled:
        return 5.0
    return stop_grace(watch.limit_s if watch else 60 * OPTIONS["stall_minutes"].default, step_s)
