"""How a run ends when its trainer exits: one pure rule over what the trainer wrote (result.json), what the daemon
had asked of it, how it exited and how often it has failed in a row (tests/test_endstate.py is its table)."""
from __future__ import annotations

from dataclasses import dataclass

from daemon.core.asha import RUNG_STOP
from daemon.core.states import Outcome, State, StopRequest

# Attempts in a row without a new checkpoint before a crashing run is failed instead of resumed again.
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class TrainerExit:
    """What the daemon knows once a trainer has exited."""

    outcome: Outcome | None  # this attempt's result.json: completed | stopped | failed; None when it wrote none
    request: StopRequest | None  # what the daemon had asked of it
    exit_code: int | None  # negative: the signal that killed it
    attempts: int  # attempts in a row that made no new checkpoint
    disk_full: bool  # it died of a full disk (its last words, or the disk now)
    crash: str  # what killed it, in words: "trainer killed by signal SIGKILL", "trainer exited with code 1: …"
    reason: str | None = None  # result.json's reason
    home: str = ""  # the home, for the full-disk Fix
    withdrawn: bool = False  # its job was cancelled before it started, for `request`
    interrupted: str | None = None  # what ended it from outside the trainer, resumable (a Slurm job's scancel,
    # time limit, preemption, failed node: daemon/engine/executors/slurm.py), in words
    checkpointed: bool = True  # the run has a checkpoint to resume from (else it starts again from step 0)

    @property
    def resuming(self) -> str:
        return "resuming from its last checkpoint" if self.checkpointed else \
            "starting again from step 0 (no checkpoint yet)"


def end_state(e: TrainerExit) -> tuple[State, str | None]:
    """The run's next state and the reason shown beside it."""
    retry = e.attempts < MAX_ATTEMPTS
    attempt = f"(attempt {e.attempts + 1} of {MAX_ATTEMPTS} without a new checkpoint)"
    if e.outcome == Outcome.COMPLETED:  # this attempt's result (runner removes older ones): killed after it, still done
        return State.COMPLETED, None
    if e.request and e.exit_code == 0 and e.outcome == Outcome.STOPPED:
        return e.request.outcome, f"{e.request} requested"
    if e.request and e.withdrawn and not e.outcome:  # nothing trained: nothing to count against it
        return e.request.outcome, f"{e.request} requested while its job was pending: cancelled before it started"
    if not e.request and e.exit_code == 0 and e.outcome == Outcome.STOPPED and (e.reason or "").startswith(RUNG_STOP):
        return State.QUEUED, e.reason  # an ASHA trial checkpointed at its rung: held there (engine/pruning.py)
    if e.request and e.request.by_user:  # the user's request outlives a trainer that died honouring it
        return e.request.outcome, f"{e.request} requested; {e.crash} before it checkpointed (resumable from its last one)"
    if e.request == StopRequest.RESTART and retry:
        return State.QUEUED, f"restarted after a stall; {e.resuming} {attempt}"
    if e.request == StopRequest.SHUTDOWN:
        return State.QUEUED, "daemon stopped; resumes from its last checkpoint"
    if e.interrupted:  # the trainer checkpointed (or was killed): a new job resumes it
        if retry:
            return State.QUEUED, f"{e.interrupted}; resumes from its last checkpoint"
        return State.FAILED, f"{e.interrupted}, {MAX_ATTEMPTS} times in a row without a new checkpoint"
    if e.disk_full and retry:
        return State.QUEUED, (f"the disk filled up while it trained; it waits for free space, then resumes from its "
                              f"last complete checkpoint. Fix: free space on the disk of {e.home}")
    if e.exit_code is not None and e.exit_code < 0 and not e.outcome and retry:
        return State.QUEUED, f"{e.crash}; {e.resuming} {attempt}"
    if not e.outcome and ((e.exit_code or 0) < 0 or e.request == StopRequest.RESTART):  # the attempts are spent
        return State.FAILED, (f"{e.reason or e.crash}, {MAX_ATTEMPTS} times in a row without a new checkpoint. "
                              f"Fix: read the end of its console.log for the cause; overnight resume RUN tries again "
                              f"from its last checkpoint")
    return State.FAILED, e.reason or e.crash
