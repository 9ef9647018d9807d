"""A run's states and the sets every module asks about (SPEC: the run state machine)."""
from __future__ import annotations

from enum import Enum


class State(str, Enum):
    """A run's state; the value is what the DB, metadata.json and the CLI show."""

    QUEUED = "queued"
    PREPARING = "preparing"
    TRAINING = "training"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


# A trainer process exists (or is being started) for the run.
ACTIVE = (State.PREPARING, State.TRAINING, State.PAUSED)
# Not yet ended: waiting or active. Stop, skip and priority act on these.
LIVE = (State.QUEUED,) + ACTIVE
# The run will not train again unless the user resumes it.
ENDED = (State.COMPLETED, State.FAILED, State.STOPPED, State.SKIPPED)
# `overnight resume RUN` queues these again to continue from their last checkpoint.
RESUMABLE = (State.STOPPED, State.SKIPPED, State.FAILED)
ALL = LIVE + ENDED


def values(states: tuple[State, ...]) -> tuple[str, ...]:
    """Plain strings, for SQL `IN (...)` clauses."""
    return tuple(s.value for s in states)
