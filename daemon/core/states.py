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
    PRUNED = "pruned"  # an ASHA sweep stopped it at a rung (daemon/core/asha.py): checkpoint kept, resumable

    def __str__(self) -> str:
        return self.value


# A trainer process exists (or is being started) for the run.
ACTIVE = (State.PREPARING, State.TRAINING, State.PAUSED)
# Not yet ended: waiting or active. Stop, skip and priority act on these.
LIVE = (State.QUEUED,) + ACTIVE
# The run will not train again unless the user resumes it.
ENDED = (State.COMPLETED, State.FAILED, State.STOPPED, State.SKIPPED, State.PRUNED)
# `overnight resume RUN` queues these again to continue from their last checkpoint.
RESUMABLE = (State.STOPPED, State.SKIPPED, State.FAILED, State.PRUNED)
ALL = LIVE + ENDED


def values(states: tuple[State, ...]) -> tuple[str, ...]:
    """Plain strings, for SQL `IN (...)` clauses."""
    return tuple(s.value for s in states)


class StopRequest(str, Enum):
    """Why the daemon asked a trainer to checkpoint and exit; the value is what the log and control_events say."""

    STOP = "stop"  # the user: ends stopped (resumable)
    SKIP = "skip"  # the user: ends skipped, the queue goes on
    PREEMPT = "preempt"  # a higher-priority run takes the slot: back to the queue
    SHUTDOWN = "shutdown"  # the daemon stops: back to the queue
    RESTART = "restart"  # a stall with stall_action = "restart": back to the queue

    def __str__(self) -> str:
        return self.value

    @property
    def outcome(self) -> State:
        """The state the run takes once its trainer exits having honoured this request."""
        return {StopRequest.STOP: State.STOPPED, StopRequest.SKIP: State.SKIPPED}.get(self, State.QUEUED)

    @property
    def by_user(self) -> bool:
        return self in (StopRequest.STOP, StopRequest.SKIP)

    @classmethod
    def named_in(cls, reason: str | None) -> StopRequest | None:
        """The request a trainer's stop reason names ("skip requested": commands.py writes it), else None."""
        return cls._value2member_map_.get((reason or "").removesuffix(" requested"))

    def then(self, new: str) -> StopRequest:
        """The request in force once `new` arrives while this one stands: the first stands, except that a user's
        stop or skip outranks the daemon's own (preempt, shutdown): the run then ends as the user asked."""
        new = StopRequest(new)
        return new if new.by_user and self in (StopRequest.PREEMPT, StopRequest.SHUTDOWN) else self


class Outcome(str, Enum):
    """How one trainer attempt ended, as its result.json says (the daemon turns it into the run's State)."""

    COMPLETED = "completed"
    STOPPED = "stopped"  # checkpointed and exited as asked (stop, skip, preempt, shutdown, restart)
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def ended_well(self) -> bool:
        """The trainer did what it was asked: exit code 0, and the other ranks of a torchrun group end too."""
        return self is not Outcome.FAILED


class Phase(str, Enum):
    """What a trainer is doing now: progress.json's "state" (and, once it ended, its outcome)."""

    PREPARING = "preparing"  # loading the model and the data
    TRAINING = "training"
    EVALUATING = "evaluating"
    SAVING = "saving"
    PAUSED = "paused"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value
