"""A frozen trainer: no optimizer step for `stall_minutes` while it says it is training.

Only time spent training counts (stepping, saving a checkpoint, evaluating: each phase gets its own window);
loading the model and a pause do not. The
daemon reports a stall once (overnight.log, control_events, the status PROBLEM line and dashboard banner, the
`stalled` notification) and, with `stall_action = "restart"`, kills the trainer so the run resumes from its last
complete checkpoint (within the usual bounded retries).
"""
from __future__ import annotations

from dataclasses import dataclass

COUNTED = ("training", "saving", "evaluating")  # progress.json states in which a step must come


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
        return (f"{run_id} stalled: no training step for {minutes:g} minute{'s' if minutes != 1 else ''} (stuck at "
                f"step {self.step}); the trainer (PID {pid}) may be frozen or deadlocked. Fix: look at its console "
                f"log (overnight logs {run_id}); `overnight stop {run_id}` ends it, or set stall_action = \"restart\" "
                f"in overnight.toml to restart stalled runs from their last checkpoint")
