"""Every control rule, against the Controller with a stub trainer and a real (temporary) state DB: fast.

The end-to-end tests (test_control_e2e.py) prove the same rules with the real daemon, trainer and model.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.core import control
from daemon.engine.controller import Controller
from daemon.core.home import Home
from daemon.engine.runner import stop_request
from daemon.engine.store import Store


@dataclass
class StubTrainer:
    """Records what the Controller asks of the running trainer; keeps requests by TrainerProcess's own rule."""

    run_id: str
    requested: str | None = None
    paused: bool = False
    calls: list[str] = field(default_factory=list)

    def request_stop(self, reason: str) -> str:
        self.calls.append(f"request_stop {reason}")
        self.requested = stop_request(self.requested, reason)
        return self.requested

    def set_paused(self, paused: bool) -> None:
        self.calls.append("pause" if paused else "resume")
        self.paused = paused


class Bench:
    """A home with runs in the DB, a Controller over it, and helpers to drop control files and make passes."""

    def __init__(self, root: Path) -> None:
        self.home = Home(root)
        self.home.create()
        self.store = Store(self.home.db)
        self.ctl = Controller(self.home, self.store, self._transition)
        self.trainers: list[StubTrainer] = []
        self.free = 0  # slots free for queued runs

    def _transition(self, run_id: str, state: str, reason: str | None, **fields: object) -> None:
        self.store.set_state(run_id, state, reason, **fields)

    def run(self, run_id: str, state: str = "queued", priority: int = 0) -> str:
        run_dir = self.home.runs / run_id
        run_dir.mkdir()
        self.store.insert_run({"id": run_id, "name": run_id.split("-")[0], "dataset": f"inbox/{run_id}.jsonl",
                               "state": state, "priority": priority, "seq": self.store.next_seq(),
                               "run_dir": str(run_dir)})
        return run_id

    def running(self, run_id: str, priority: int = 0) -> StubTrainer:
        self.run(run_id, "training", priority)
        self.trainers.append(StubTrainer(run_id))
        return self.trainers[-1]

    def drop(self, kind: str, content: str = "") -> Path:
        path = self.home.control / kind
        path.write_text(content)
        old = time.time() - 5  # written long ago: settled
        os.utime(path, (old, old))
        return path

    def step(self) -> list[dict]:
        """One pass; the events it recorded."""
        before = len(self.events())
        self.ctl.apply(self.trainers, lambda: self.free)
        return self.events()[before:]

    def events(self) -> list[dict]:
        return [dict(r) for r in self.store.db.query("SELECT * FROM control_events ORDER BY id")]

    def state(self, run_id: str) -> str:
        return self.store.get_run(run_id)["state"]

    def done(self) -> list[str]:
        return sorted(p.name.split("-", 2)[-1] for p in self.home.control_done.iterdir())

    def rejected(self) -> list[str]:
        return sorted(p.name for p in self.home.control_rejected.iterdir() if p.name.endswith(".error.txt"))


@pytest.fixture
def b(tmp_path: Path) -> Bench:
    bench = Bench(tmp_path / "home")
    yield bench
    bench.store.close()


def messages(events: list[dict]) -> list[str]:
    return [f"{e['status']}: {e['message']}" for e in events]


# --- pause --------------------------------------------------------------------------------------------------
def test_an_untargeted_pause_holds_while_the_file_exists(b: Bench) -> None:
    t = b.running("a-1")
    path = b.drop("pause")
    assert messages(b.step()) == ["applied: pause a-1: halting at the next step boundary (remove control/pause "
                                  "to resume)"]
    assert b.step() == [] and t.calls == ["pause"] and path.exists()  # held, acknowledged once
    path.unlink()
    assert messages(b.step()) == ["applied: resume a-1: control/pause removed"] and t.calls == ["pause", "resume"]


def test_a_targeted_pause_acts_on_its_run_only(b: Bench) -> None:
    t = b.running("a-1")
    b.run("b-1")
    b.drop("pause", "b-1")
    b.step()
    assert t.calls == [] and b.ctl.paused == {"b-1"}
    b.drop("pause", "a-1")
    b.step()
    assert t.calls == ["pause"]


def test_a_pause_with_nothing_running_is_acknowledged_once(b: Bench) -> None:
    b.drop("pause")
    assert "no job is running" in messages(b.step())[0]
    assert b.step() == []


def test_a_pause_naming_no_run_is_rejected(b: Bench) -> None:
    b.drop("pause", "nosuch-1")
    assert messages(b.step()) == ["rejected: control/pause: no run with id 'nosuch-1'. Fix: name a run that "
                                  "overnight runs lists (echo RUN_ID > control/pause), or none to act on the "
                                  "running job."]
    assert b.rejected() and not (b.home.control / "pause").exists()


def test_a_stopping_trainer_is_not_paused(b: Bench) -> None:
    t = b.running("a-1")
    t.requested = "stop"
    b.drop("pause")
    b.step()
    assert t.calls == []


# --- stop and skip ----------------------------------------------------------------------------------------
def test_an_untargeted_stop_stops_the_job_and_holds_the_queue(b: Bench) -> None:
    t = b.running("a-1")
    path = b.drop("stop")
    assert messages(b.step()) == ["applied: stop a-1: checkpointing at the next step, then stopped"]
    assert t.calls == ["request_stop stop"] and path.exists() and b.ctl.queue_held()
    b.trainers.clear()  # the trainer exited
    assert b.step() == []  # still held, not acknowledged again
    path.unlink()
    assert messages(b.step()) == ["applied: control/stop removed: the queue goes on"]
    assert not b.ctl.queue_held()


def test_an_untargeted_stop_with_nothing_running_holds_the_queue(b: Bench) -> None:
    b.drop("stop")
    assert "no new job starts" in messages(b.step())[0] and b.ctl.queue_held()


def test_a_targeted_stop_of_a_queued_run_ends_it_at_once(b: Bench) -> None:
    b.run("q-1")
    b.drop("stop", "q-1")
    assert messages(b.step()) == ["applied: stop q-1: stopped (it was queued)"]
    assert b.state("q-1") == "stopped" and b.done() == ["stop"] and not b.ctl.queue_held()
    run = b.store.get_run("q-1")
    assert run["reason"] == "stop requested before it started" and run["finished"]  # it has ended
    b.run("p-1")  # queued after a preemption: it trained, and goes on from its checkpoint if resumed
    b.store.update_run("p-1", started="2026-01-01T00:00:00", step=43)
    b.drop("skip", "p-1")
    b.step()
    assert b.store.get_run("p-1")["reason"] == "skip requested while queued at step 43 (resumable from its last " \
                                               "checkpoint)"


def test_skip_checkpoints_the_running_job_and_is_consumed(b: Bench) -> None:
    t = b.running("a-1")
    b.drop("skip")
    assert messages(b.step()) == ["applied: skip a-1: checkpointing at the next step, then skipped"]
    assert t.requested == "skip" and b.done() == ["skip"]


def test_stop_and_skip_at_once_say_which_one_ends_the_run(b: Bench) -> None:
    b.running("a-1")
    b.drop("skip", "a-1")
    b.drop("stop", "a-1")
    said = messages(b.step())
    assert said == ["applied: skip a-1: checkpointing at the next step, then skipped",
                    "applied: stop a-1: already stopping (skip requested); it ends skipped"]


def test_a_users_stop_outranks_a_preemption(b: Bench) -> None:
    t = b.running("a-1")
    t.requested = "preempt"
    b.drop("stop", "a-1")
    assert messages(b.step()) == ["applied: stop a-1: checkpointing at the next step, then stopped"]
    assert t.requested == "stop"


def test_stop_of_an_ended_run_is_rejected_with_why(b: Bench) -> None:
    b.run("c-1", "completed")
    b.drop("skip", "c-1")
    assert messages(b.step()) == ["rejected: control/skip: run c-1 is completed; skip applies to runs that are "
                                  "queued or preparing or training or paused. Fix: name such a run (see "
                                  "overnight runs)."]


def test_skip_with_nothing_running_and_no_target_is_rejected_with_the_fix(b: Bench) -> None:
    b.drop("skip")
    assert "Fix: name the run (echo RUN_ID > control/skip)" in messages(b.step())[0]
    control.send(b.home, "skip")
    assert "Fix: name the run (overnight skip RUN_ID)" in messages(b.step())[0]


# --- resume -------------------------------------------------------------------------------------------------
def test_resume_lifts_pause_and_stop_in_one_acknowledgement(b: Bench) -> None:
    b.drop("pause")
    b.drop("stop")
    b.step()
    b.drop("resume")
    said = messages(b.step())
    assert said == ["applied: resume: control/pause lifted; control/stop lifted: the queue goes on"]
    assert not b.ctl.queue_held() and b.done() == ["pause", "resume", "stop"]


def test_resume_of_a_stopped_run_queues_it_again(b: Bench) -> None:
    b.run("s-1", "stopped")
    b.store.update_run("s-1", attempts=2, reason="trainer killed by signal SIGKILL, 3 times in a row …")
    b.drop("resume", "s-1")
    assert messages(b.step()) == ["applied: resume s-1: queued again"] and b.state("s-1") == "queued"
    assert b.store.get_run("s-1")["attempts"] == 0  # the user's resume: the crash-loop count starts again


def test_a_resume_right_after_a_stop_queues_the_run_again_once_it_has_ended(b: Bench) -> None:
    """`overnight stop RUN` then at once `overnight resume RUN`: the trainer still checkpoints, so the resume waits
    for it (it lifted nothing and was lost, the run staying stopped)."""
    t = b.running("s-1")
    b.drop("stop", "s-1")
    b.step()
    b.drop("resume", "s-1")
    assert messages(b.step()) == ["applied: resume s-1: it is stopping (stop requested); it is queued again once it "
                                  "has checkpointed"]
    assert messages(b.step()) == [] and (b.home.control / "resume").exists()  # waits, said once
    b.trainers.remove(t)  # its trainer has exited: the run ended as asked
    b.store.set_state("s-1", "stopped", "stop requested")
    assert messages(b.step()) == ["applied: resume s-1: queued again"] and b.state("s-1") == "queued"
    assert not (b.home.control / "resume").exists()


def test_a_control_file_that_cannot_be_moved_away_holds_up_no_other_command(b: Bench,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad file the daemon cannot move to rejected/ (made immutable, its folder unwritable) stopped every command
    after it, unsaid: it is passed by and said as a problem until it is removed."""
    from daemon.core import control

    def cannot(home: Home, path: Path, message: str) -> Path:
        raise PermissionError(1, "Operation not permitted", str(path))
    monkeypatch.setattr(control, "reject", cannot)
    b.running("a-1")
    stuck = b.drop("priority", "nosuchrun 5")
    b.step()
    assert f"{stuck} cannot be moved to" in b.ctl.problem and "Fix: remove it by hand" in b.ctl.problem
    b.drop("pause")
    assert messages(b.step()) == ["applied: pause a-1: halting at the next step boundary (remove control/pause to "
                                  "resume)"]
    stuck.unlink()
    assert b.ctl.problem is None


def test_resume_of_a_run_paused_then_stopped_lifts_the_pause_and_queues_it_again(b: Bench) -> None:
    b.run("s-1", "stopped")
    control.hold_pause(b.home, {"s-1"})  # its pause outlived the stop
    r = control.send(b.home, "resume", "s-1")
    b.step()
    assert [e["message"] for e in r.answers(b.events())] == ["resume s-1: control/pause lifted; queued again"]
    assert b.state("s-1") == "queued" and not control.paused(b.home)


def test_resume_of_a_run_its_trainer_paused_for_disk_space_says_why(b: Bench) -> None:
    b.running("d-1")
    b.store.update_run("d-1", state="paused", reason="disk_low: only 3 GB free. Fix: free space")
    r = control.send(b.home, "resume", "d-1")
    b.step()
    assert [e["message"] for e in r.answers(b.events())] == [
        "resume d-1: control/pause does not hold it; nothing to lift; its trainer paused it: disk_low: only 3 GB "
        "free. Fix: free space"]


def test_resume_of_a_completed_run_is_rejected(b: Bench) -> None:
    b.run("c-1", "completed")
    b.drop("resume", "c-1")
    assert messages(b.step())[0].startswith("rejected: control/resume: run c-1 is completed")
    assert b.state("c-1") == "completed"


# --- priority and preemption ------------------------------------------------------------------------------
def test_priority_reorders_by_run_id_or_dataset_name(b: Bench) -> None:
    b.run("x-1")
    b.run("y-1")
    b.drop("priority", "x-1 5\ny 7\n")
    assert messages(b.step()) == ["applied: priority x-1: 0 -> 5", "applied: priority y-1: 0 -> 7"]
    assert [r["id"] for r in b.store.runs_in(["queued"])] == ["y-1", "x-1"]


def test_a_priority_file_with_one_unknown_name_changes_nothing(b: Bench) -> None:
    b.run("x-1")
    b.drop("priority", "x-1 5\nnosuch 3\n")
    assert "'nosuch' names no queued or running run" in messages(b.step())[0]
    assert b.store.get_run("x-1")["priority"] == 0


def test_a_priority_naming_a_drop_not_yet_taken_waits_for_its_run(b: Bench) -> None:
    """`echo "q2 10" > control/priority` written beside a drop the daemon has yet to take (it was down, or the drop
    settles): the file waits for q2's run instead of being rejected, then applies to it."""
    b.run("x-1")
    (b.home.inbox / "q2.jsonl").write_text('{"text": "hi"}\n')
    b.drop("priority", "x-1 5\nq2 10\n")
    assert b.step() == [] and (b.home.control / "priority").exists()
    (b.home.inbox / "q2.jsonl").unlink()  # taken: its run is queued
    b.run("q2-1")
    assert messages(b.step()) == ["applied: priority x-1: 0 -> 5", "applied: priority q2-1: 0 -> 10"]


def test_a_higher_priority_queued_run_preempts_the_running_one(b: Bench) -> None:
    t = b.running("a-1")
    b.run("hi-1", priority=3)
    assert "preempt a-1 (priority 0) for hi-1 (priority 3)" in messages(b.step())[0]
    assert t.requested == "preempt"
    assert b.step() == []  # asked once


def test_a_paused_queued_run_preempts_nothing(b: Bench) -> None:
    """control/pause names the higher queued run: the queue passes it by, so it must not take a slot either (it
    preempted the running run at every start, forever)."""
    t = b.running("a-1")
    b.run("hi-1", priority=3)
    control.hold_pause(b.home, {"hi-1"})
    assert not any("preempt" in m for m in messages(b.step()))
    assert t.requested is None


def test_an_out_of_range_priority_says_the_range(b: Bench) -> None:
    b.run("x-1")
    b.drop("priority", "x-1 99999999999999999999\n")
    assert "out of range. Fix: a priority between -1000000 and 1000000" in messages(b.step())[0]


# --- garbage --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, content, says", [
    ("stop", "a b c\n", "expected nothing (act on the running job) or one run id"),
    ("pause", "\xff\xfe", "not UTF-8 text"),
    ("reboot", "", "unknown control file"),
    ("x" * 250, "", "unknown control file"),
    ("activate", "mymodel 3\n", "no model mymodel version 3"),
])
def test_garbage_is_rejected_with_an_error_file_and_the_daemon_goes_on(b: Bench, name: str, content: str,
                                                                         says: str) -> None:
    path = b.home.control / name
    path.write_bytes(content.encode("latin-1"))
    old = time.time() - 5
    os.utime(path, (old, old))
    said = messages(b.step())
    assert len(said) == 1 and said[0].startswith("rejected:") and says in said[0]
    assert not path.exists() and len(b.rejected()) == 1


def test_a_file_still_being_written_waits_for_the_next_pass(b: Bench) -> None:
    b.run("q-1")
    (b.home.control / "stop").write_text("")  # `>` has created it; the run id is not written yet
    assert b.step() == [] and b.state("q-1") == "queued"


def test_the_client_ticket_matches_the_acknowledgement_by_command_id(b: Bench) -> None:
    b.run("q-1")
    b.store.control_event("stop", "old", "control/stop", "applied", "an older stop")
    ticket = control.send(b.home, "stop", "q-1")
    assert ticket.answers(b.events()) == []  # the older event does not answer it
    b.step()
    assert [e["message"] for e in ticket.wait(b.home, 1)] == ["stop q-1: stopped (it was queued)"]
    assert b.done() == [ticket.path.name]  # done/ keeps the command's id


def test_commands_of_one_kind_are_each_applied_and_answered_in_the_order_written(b: Bench) -> None:
    for i in range(5):
        b.run(f"q-{i}")
    tickets = [control.send(b.home, "priority", f"q-{i} {10 + i}") for i in range(5)]
    b.step()
    for i, ticket in enumerate(tickets):
        assert [e["message"] for e in ticket.answers(b.events())] == [f"priority q-{i}: 0 -> {10 + i}"]
    assert [r["id"] for r in b.store.runs_in(["queued"])] == ["q-4", "q-3", "q-2", "q-1", "q-0"]
    first = control.send(b.home, "priority", "q-0 1")
    control.send(b.home, "priority", "q-0 2")
    b.step()
    assert b.store.get_run("q-0")["priority"] == 2  # the later one wins: applied in order
    assert [e["message"] for e in first.answers(b.events())] == ["priority q-0: 10 -> 1"]


def test_a_rejected_command_is_answered_by_its_own_id(b: Bench) -> None:
    ok, bad = control.send(b.home, "activate", "m 1"), control.send(b.home, "delete", "m 1")
    b.step()
    assert ok.answers(b.events())[0]["status"] == bad.answers(b.events())[0]["status"] == "rejected"
    assert len(b.rejected()) == 2


def test_a_cli_pause_adds_its_run_to_control_pause_and_a_resume_takes_it_out(b: Bench) -> None:
    a, c = b.running("a-1"), b.running("c-1")
    b.run("q-1")
    pa, pq = control.send(b.home, "pause", "a-1"), control.send(b.home, "pause", "q-1")
    b.step()
    assert control.paused(b.home) == {"a-1", "q-1"} and a.paused and not c.paused
    assert [e["message"] for e in pa.answers(b.events())] == [
        "pause a-1: halting at the next step boundary (remove control/pause to resume)"]
    assert "q-1: queued; the queue passes it by" in pq.answers(b.events())[0]["message"]
    assert b.step() == []  # held, not answered again
    r = control.send(b.home, "resume", "a-1")
    b.step()
    assert [e["message"] for e in r.answers(b.events())] == ["resume a-1: control/pause no longer names it"]
    assert control.paused(b.home) == {"q-1"} and not a.paused
    control.send(b.home, "resume", "q-1")
    b.step()
    assert not (b.home.control / "pause").exists()


def test_a_cli_stop_naming_no_run_leaves_control_stop_holding_the_queue(b: Bench) -> None:
    t = b.running("a-1")
    s = control.send(b.home, "stop")
    b.step()
    assert [e["message"] for e in s.answers(b.events())] == ["stop a-1: checkpointing at the next step, then stopped"]
    assert t.requested == "stop" and b.ctl.queue_held() and (b.home.control / "stop").read_text() == ""
    again = control.send(b.home, "stop")
    b.trainers.clear()
    assert messages(b.step()) == ["applied: stop: control/stop is in place already; no new job starts until it "
                                  "is removed"]
    assert again.answers(b.events()) and not s.path.exists() and not again.path.exists()


def test_a_priority_that_preempts_answers_with_the_preemption_too(b: Bench) -> None:
    t = b.running("a-1")
    b.run("q-1")
    ticket = control.send(b.home, "priority", "q-1 5")
    b.step()
    assert [e["command"] for e in ticket.answers(b.events())] == ["priority", "preempt"]
    assert t.requested == "preempt"


# --- several runs side by side ------------------------------------------------------------------------------
def test_a_named_command_acts_on_its_run_only(b: Bench) -> None:
    a, c = b.running("a-1"), b.running("c-1")
    b.drop("skip", "c-1\n")
    b.drop("pause", "a-1\n")
    b.step()
    assert (a.requested, a.paused, c.requested, c.paused) == (None, True, "skip", False)


def test_an_untargeted_skip_with_several_runs_asks_which(b: Bench) -> None:
    a, c = b.running("a-1"), b.running("c-1")
    b.drop("skip")
    [event] = b.step()
    assert event["status"] == "rejected" and "2 runs are training (a-1, c-1)" in event["message"]
    assert "Fix: " in event["message"] and a.requested is c.requested is None


def test_an_untargeted_stop_or_pause_reaches_every_run(b: Bench) -> None:
    a, c = b.running("a-1"), b.running("c-1")
    b.drop("pause")
    b.step()
    assert a.paused and c.paused
    b.drop("stop")
    b.step()
    assert a.requested == c.requested == "stop" and b.ctl.queue_held()


def test_preemption_takes_the_lowest_priority_run_and_only_when_no_slot_is_free(b: Bench) -> None:
    low, mid = b.running("low-1", priority=1), b.running("mid-1", priority=5)
    b.run("hi-1", priority=3)
    b.free = 1
    assert b.step() == [] and low.requested is None  # a free slot: hi-1 just starts there
    b.free = 0
    assert "preempt low-1 (priority 1) for hi-1 (priority 3)" in messages(b.step())[0]
    assert (low.requested, mid.requested) == ("preempt", None)
    assert b.step() == []  # low-1's slot goes to hi-1: nothing more is preempted


def test_a_cli_pause_of_an_ended_run_is_rejected_and_holds_nothing(b: Bench) -> None:
    b.run("c-1", "completed")
    ticket = control.send(b.home, "pause", "c-1")
    b.step()
    [answer] = ticket.answers(b.events())
    assert answer["status"] == "rejected" and "run c-1 is completed; pause applies to runs that are" in answer["message"]
    assert not (b.home.control / "pause").exists()


def test_resuming_one_run_of_a_pause_of_every_run_keeps_the_others_paused(b: Bench) -> None:
    a, c = b.running("a-1"), b.running("c-1")
    b.drop("pause")
    b.step()
    ticket = control.send(b.home, "resume", "c-1")
    b.step()
    assert [e["message"] for e in ticket.answers(b.events())] == [
        "resume c-1: control/pause held every run; it now names the others (a-1)"]
    assert control.paused(b.home) == {"a-1"} and a.paused and not c.paused
    assert any(p.name.endswith("-pause") for p in b.home.control_done.iterdir())  # the file it replaced, kept


def test_an_editors_backup_in_control_is_passed_by(b: Bench) -> None:
    """`vim control/pause` leaves `pause~` (emacs `#pause#`) beside it: neither is a command, nor rejected noise."""
    b.drop("pause~", "")
    b.drop("#pause#", "")
    assert b.step() == [] and not b.rejected() and (b.home.control / "pause~").exists()
