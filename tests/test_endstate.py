"""The end-state rule as a table: what the trainer wrote × what the daemon asked × how it exited × attempts."""
from __future__ import annotations

import pytest

from daemon.engine.endstate import MAX_ATTEMPTS, TrainerExit, end_state
from daemon.core.states import Outcome, State, StopRequest

KILLED = "trainer killed by signal SIGKILL"
EXITED = "trainer exited with code 1: Traceback"


def exit_(outcome=None, request=None, code=0, attempts=0, disk_full=False, crash=EXITED, reason=None, withdrawn=False):
    return TrainerExit(Outcome(outcome) if outcome else None, StopRequest(request) if request else None, code, attempts, disk_full, crash, reason,
                       home="/h", withdrawn=withdrawn)


@pytest.mark.parametrize("e, state, says", [
    # trained out: completed, whatever came after (a replica dying at exit, a kill after the result)
    (exit_("completed"), State.COMPLETED, None),
    (exit_("completed", code=-9, request="stop"), State.COMPLETED, None),
    # asked and honoured
    (exit_("stopped", "stop"), State.STOPPED, "stop requested"),
    (exit_("stopped", "skip"), State.SKIPPED, "skip requested"),
    (exit_("stopped", "preempt"), State.QUEUED, "preempt requested"),
    (exit_("stopped", "shutdown"), State.QUEUED, "shutdown requested"),
    (exit_("stopped", "restart"), State.QUEUED, "restart requested"),
    # the user's request outlives a trainer that died honouring it
    (exit_(None, "stop", code=-9, crash=KILLED), State.STOPPED, f"stop requested; {KILLED} before it checkpointed"),
    (exit_(None, "skip", code=1), State.SKIPPED, f"skip requested; {EXITED} before it checkpointed"),
    # a Slurm job cancelled while pending, for the request: nothing trained, no attempt counted against it
    (exit_(None, "stop", code=-15, withdrawn=True), State.STOPPED, "stop requested while its job was pending"),
    (exit_(None, "preempt", code=-15, attempts=MAX_ATTEMPTS, withdrawn=True), State.QUEUED,
     "preempt requested while its job was pending: cancelled before it started"),
    # the daemon's own requests
    (exit_(None, "restart", code=-9, crash=KILLED), State.QUEUED, "restarted after a stall"),
    (exit_(None, "restart", code=-9, attempts=MAX_ATTEMPTS, crash=KILLED), State.FAILED, KILLED),
    (exit_(None, "shutdown", code=-15), State.QUEUED, "daemon stopped"),
    (exit_(None, "shutdown", code=-15, attempts=MAX_ATTEMPTS), State.QUEUED, "daemon stopped"),
    # a full disk waits for space, a bounded number of times
    (exit_("failed", code=1, disk_full=True), State.QUEUED, "the disk filled up while it trained"),
    (exit_("failed", code=1, disk_full=True, attempts=MAX_ATTEMPTS, reason="No space left on device"),
     State.FAILED, "No space left on device"),
    # killed by a signal with no result: resumed, a bounded number of times
    (exit_(None, code=-9, crash=KILLED), State.QUEUED, f"{KILLED}; resuming from its last checkpoint (attempt 1 of"),
    (exit_(None, code=-9, attempts=MAX_ATTEMPTS - 1, crash=KILLED), State.QUEUED, f"attempt {MAX_ATTEMPTS} of"),
    (exit_(None, code=-9, attempts=MAX_ATTEMPTS, crash=KILLED), State.FAILED,
     f"{KILLED}, {MAX_ATTEMPTS} times in a row without a new checkpoint. Fix: read the end of its console.log"),
    # a failure the trainer reported, or an exit code without a result: failed with why
    (exit_("failed", code=1, reason="loss became nan at step 7"), State.FAILED, "loss became nan at step 7"),
    (exit_(None, code=1), State.FAILED, EXITED),
    (exit_("failed", code=-9, reason="out of memory at every rung"), State.FAILED, "out of memory at every rung"),
])
def test_end_state(e: TrainerExit, state: State, says: str | None) -> None:
    got, reason = end_state(e)
    assert got == state
    assert (reason is None) if says is None else says in reason, reason


@pytest.mark.parametrize("first, then, stands", [
    ("stop", "skip", "stop"), ("skip", "stop", "skip"), ("preempt", "stop", "stop"), ("shutdown", "skip", "skip"),
    ("preempt", "shutdown", "preempt"), ("stop", "preempt", "stop"), ("restart", "stop", "restart"),
])
def test_which_stop_request_stands(first: str, then: str, stands: str) -> None:
    assert StopRequest(first).then(then) == stands
