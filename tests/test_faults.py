"""A full disk at each write point in turn, and a DB held busy by another process: the daemon stays up, says what is
wrong, loses nothing, and goes on by itself once the fault goes away.

The disk faults are injected deterministically by tests/faults/sitecustomize.py (prepended to the PYTHONPATH of
the daemon, and so of the trainers it starts): a fault is on while its marker file exists. The busy DB is real: a
second process holds BEGIN EXCLUSIVE on overnight.db.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from daemon.core.queries import STALE_S, Reader, stale_problem
from daemon.core.timefmt import iso
from tests.conftest import REFERENCE_STEPS, REPO, DaemonProcess, budget, overnight, wait_until
from tests.test_control_e2e import drop_all, losses, progress_step, run_of, state, write_dataset

pytestmark = pytest.mark.e2e

STEPS = REFERENCE_STEPS  # checkpoints at 5, 10, 15, ...: compared with the session's reference_run


def test_a_daemon_that_cannot_write_its_db_is_told_by_its_stale_heartbeat(tmp_path: Path) -> None:
    db = tmp_path / "overnight.db"
    wal = tmp_path / "overnight.db-wal"
    db.write_bytes(b"")
    wal.write_bytes(b"")
    now = time.time()
    old = now - STALE_S - 5
    os.utime(wal, (old, old))
    alive = {"pid": 4242, "create_time": now - 3600}
    row = {"pid": 4242, "heartbeat": iso(old)}
    assert "has not written overnight.db for 20 s" in stale_problem(db, row, alive, now)
    assert stale_problem(db, {**row, "heartbeat": iso(now - 3)}, alive, now) is None
    assert stale_problem(db, row, None, now) is None  # no daemon: nothing is late
    os.utime(wal, (now - 1, now - 1))  # written a second ago: a heartbeat in another time zone is not "late"
    assert stale_problem(db, row, alive, now) is None
    earlier = {"pid": 17, "heartbeat": iso(now - 1), "state": "stopped"}  # the row of the daemon before it
    assert "for 3600 s" in stale_problem(db, earlier, alive, now)  # this one has written nothing since it started
    assert stale_problem(db, earlier, {"pid": 4242, "create_time": now - 2}, now) is None  # (just started)


def test_a_drop_left_in_a_half_made_run_folder_goes_back_to_the_inbox(home: Path) -> None:
    from daemon.core.home import Home
    from daemon.engine.intake import Intake
    from daemon.engine.store import Store
    staging = home / "runs" / ".talk-20260101-000000.partial"
    (staging / "dataset").mkdir(parents=True)
    (staging / "dataset" / "talk.jsonl").write_text('{"text": "hi"}\n')
    (staging / "config.json").write_text("{}")
    done = home / "runs" / "talk-20260101-000000" / "dataset"  # a group's first run holds the drop…
    done.mkdir(parents=True)
    (done / "group.jsonl").write_text('{"text": "hi"}\n')
    linked = home / "runs" / ".talk-2.partial" / "dataset"  # …and the second one's folder only a hard link of it
    linked.mkdir(parents=True)
    os.link(done / "group.jsonl", linked / "group.jsonl")
    h = Home.resolve(home)
    store = Store(h.db)
    try:
        Intake(h, store).close()
    finally:
        store.close()
    assert (home / "inbox" / "talk.jsonl").read_text() == '{"text": "hi"}\n'
    assert not staging.exists()
    assert not (home / "inbox" / "group.jsonl").exists() and (done / "group.jsonl").exists()


def test_a_group_is_taken_whole_or_not_at_all_when_the_daemon_dies_making_it(home: Path) -> None:
    """A daemon killed while it made a sweep's run folders: before the group's commit the drop goes back to the inbox
    (taken again, whole); after it, each recorded run's folder takes its place (a sweep of 100 kept 26 runs)."""
    from daemon.core.home import Home
    from daemon.core.states import State
    from daemon.engine.intake import Intake
    from daemon.engine.store import Store

    def staged(rid: str, link_to: Path | None = None) -> Path:
        dataset = home / "runs" / f".{rid}.partial" / "dataset"
        dataset.mkdir(parents=True)
        (dataset.parent / "config.json").write_text("{}")
        if link_to is None:
            (dataset / "sweep.jsonl").write_text('{"text": "hi"}\n')
        else:
            os.link(link_to, dataset / "sweep.jsonl")
        return dataset / "sweep.jsonl"

    first = staged("sweep-lr1-20260101-000000")  # not committed: three stagings, no DB row
    for rid in ("sweep-lr2-20260101-000000", "sweep-lr3-20260101-000000"):
        staged(rid, first)
    done = staged("later-lr1-20260101-000000")  # committed: the DB holds both runs, one folder was renamed already
    staged("later-lr2-20260101-000000", done)
    h = Home.resolve(home)
    store = Store(h.db)
    try:
        store.insert_runs([{"id": rid, "name": "later", "state": State.QUEUED, "priority": 0, "seq": i,
                            "run_dir": str(h.run_dir(rid))} for i, rid in enumerate(("later-lr1-20260101-000000",
                                                                                    "later-lr2-20260101-000000"))])
        Intake(h, store).close()
    finally:
        store.close()
    assert (home / "inbox" / "sweep.jsonl").read_text() == '{"text": "hi"}\n'
    assert sorted(p.name for p in (home / "runs").iterdir()) == ["later-lr1-20260101-000000",
                                                                 "later-lr2-20260101-000000"]
    assert (home / "runs" / "later-lr2-20260101-000000" / "dataset" / "sweep.jsonl").exists()


class _FrozenTrainer:
    """What the daemon sees of a trainer that shows no life (SIGSTOP) and was asked to stop."""

    def __init__(self, run_dir: Path) -> None:
        from types import SimpleNamespace

        from daemon.engine.executors.local import LocalJob
        from daemon.engine.stall import Escalation
        self.run_id, self.run_dir, self.requested = "frozen-1", run_dir, "stop"
        self.proc = SimpleNamespace(pid=4242)
        self.job = LocalJob(self.proc)  # the local executor's handle
        self.escalation = Escalation(0.0, since=0.0, mark="no progress")
        self.stall = None
        self.signals: list[str] = []

    def poll(self) -> None:
        return None

    def progress_mark(self) -> str:
        return "no progress"

    def escalating(self, grace_s: float):
        return self.escalation

    def signal(self, name: str) -> None:
        self.signals.append(name)

    def kill(self) -> None:
        self.signal("SIGKILL")

    def restart_frozen(self) -> None:
        self.requested = "restart"
        self.kill()


def test_a_frozen_trainer_is_ended_even_while_the_db_cannot_be_written(home: Path, monkeypatch) -> None:
    from daemon.core.home import Home
    from daemon.engine.scheduler import Daemon
    from daemon.engine.stall import StallWatch
    from daemon.engine.store import Store
    d = Daemon(Home.resolve(home), echo=False)
    try:
        def locked(*args, **kwargs):
            raise sqlite3.OperationalError("database is locked")
        monkeypatch.setattr(Store, "control_event", locked)
        monkeypatch.setattr(Store, "heartbeat", locked)
        a = _FrozenTrainer(home / "runs")
        with pytest.raises(sqlite3.OperationalError):  # the event is the daemon's fault to report (its guard)…
            d.supervisor._escalate(a)
        assert a.signals == ["SIGTERM"], "…after the signal, which the escalation sends only once"
        a.stall = StallWatch(0.001, "restart")
        d.supervisor._watch_stall(a, "training", 3)
        time.sleep(0.01)
        with pytest.raises(sqlite3.OperationalError):
            d.supervisor._watch_stall(a, "training", 3)
        assert a.signals == ["SIGTERM", "SIGKILL"] and a.requested == "restart", "a stall reported once restarts"
    finally:
        d.intake.close()
        d.store.close()
        d.lock.release()


@pytest.fixture
def faults(tmp_path: Path) -> Path:
    d = tmp_path / "faults"
    d.mkdir()
    return d


def start_daemon(home: Path, faults: Path) -> DaemonProcess:
    env = {**os.environ, "OVERNIGHT_TEST_FAULTS": str(faults),
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "faults"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    return DaemonProcess(home, env=env)


def status(home: Path) -> dict:
    out = overnight("status", "--json", home=home)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return json.loads(out.stdout)


def db_metrics(home: Path, run_id: str) -> list[tuple[int, float]]:
    r = Reader(home / "overnight.db")
    try:
        return [(m["step"], m["loss"]) for m in r.metrics(run_id)]
    finally:
        r.close()


def file_metrics(home: Path, name: str) -> list[tuple[int, float]]:
    return sorted(losses(home, name).items())


def result(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return {}


def console(home: Path, name: str) -> str:
    return (Path(run_of(home, name)["run_dir"]) / "console.log").read_text()


def heartbeat(home: Path) -> str | None:
    r = Reader(home / "overnight.db")
    try:
        return (r.daemon() or {}).get("heartbeat")
    finally:
        r.close()


def a_whole_pass(home: Path) -> None:
    """Until the daemon has run at least one whole pass of its loop after this call. It writes its heartbeat after
    a pass once more than 2 s went by since the last one (to the second): a whole pass lies between the next two.
    What a test asserts did not happen would have happened in any pass, however slow a loaded machine makes it."""
    beats = [heartbeat(home)]

    def two_more() -> bool:
        if (b := heartbeat(home)) != beats[-1]:
            beats.append(b)
        return len(beats) == 3
    wait_until(two_more, budget(30), interval=0.2, what="two heartbeats of the daemon")


def starts(home: Path, name: str) -> int:
    return [t["to_state"] for t in transitions(home, name)].count("preparing")


def dump(home: Path) -> None:
    print("--- overnight.log\n" + (home / "overnight.log").read_text(errors="replace")[-8000:])
    for c in (home / "runs").glob("*/console.log"):
        print(f"--- {c}\n" + c.read_text(errors="replace")[-4000:])


def waits_for_space(home: Path, d: DaemonProcess, name: str) -> None:
    """The trainer died of the full disk: the run waits, queued, the daemon says why and how to fix it."""
    wait_until(lambda: state(home, name) == "queued" and "disk" in (run_of(home, name)["reason"] or ""), 120,
               what=f"{name} waiting for space")
    wait_until(lambda: "disk" in (status(home)["problem"] or ""), 30, what="the PROBLEM line")
    problem = status(home)["problem"]
    assert "Fix: free space" in problem, problem
    started = starts(home, name)
    a_whole_pass(home)  # on a full disk
    assert d.proc.poll() is None, "the daemon exited on a full disk"
    assert state(home, name) == "queued" and starts(home, name) == started, \
        "the run must wait, not start and fail again"
    assert "Fix: free space" in overnight("status", home=home, check=True).stdout


def test_a_full_disk_at_the_checkpoint_then_at_the_adapter_write(home: Path, tiny_model: Path, faults: Path,
                                                                tmp_path: Path, reference_run) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmin_free_gb = 0\n')
    reference = sorted(reference_run.losses.items())
    d = start_daemon(home, faults)
    try:
        # (a) the disk fills while checkpoint-10 is written (the trainer's own free-space check found room)
        (faults / "checkpoint").write_text("10")
        (faults / "disk").touch()
        files = write_dataset(tmp_path, "full", STEPS)
        dataset_bytes = files[1].read_bytes()
        drop_all(files, home / "inbox")
        waits_for_space(home, d, "full")
        run_dir = Path(run_of(home, "full")["run_dir"])
        assert (run_dir / "checkpoints" / "step-5" / "trainer_state.json").exists(), "the complete one is kept"
        assert (run_dir / "dataset" / "full.jsonl").read_bytes() == dataset_bytes

        # (b) space freed: it resumes by itself, and the disk fills again while the final adapter is written
        (faults / "adapter").touch()
        (faults / "checkpoint").unlink()
        (faults / "disk").unlink()
        wait_until(lambda: "resuming from checkpoints/step-5" in console(home, "full"), 60,
                   what="resumed from the last complete checkpoint, not the half-written checkpoint-10")
        (faults / "disk").touch()  # the daemon sees the disk full too (the trainer found room before its write)
        waits_for_space(home, d, "full")
        assert ".adapter.tmp" in result(run_dir).get("reason", "")
        assert not (run_dir / "adapter").exists()
        assert (run_dir / "checkpoints" / f"step-{STEPS}" / "trainer_state.json").exists()
        (faults / "adapter").unlink()
        (faults / "disk").unlink()
        wait_until(lambda: state(home, "full") == "completed", 120, what="resumed and completed")
        assert f"resuming from checkpoints/step-{STEPS}" in console(home, "full")
        assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
        assert file_metrics(home, "full") == reference, "the same per-step losses as the uninterrupted run"
        assert db_metrics(home, run_of(home, "full")["id"]) == reference
        assert (run_dir / "dataset" / "full.jsonl").read_bytes() == dataset_bytes
        models = json.loads(overnight("models", "--json", home=home, check=True).stdout)
        assert [m["name"] for m in models] == ["full"]
        assert d.proc.poll() is None
    except AssertionError:
        dump(home)
        raise
    finally:
        d.stop()


def events(home: Path) -> list[dict]:
    r = Reader(home / "overnight.db")
    try:
        return r.control_events(50)
    finally:
        r.close()


def transitions(home: Path, name: str) -> list[dict]:
    r = Reader(home / "overnight.db")
    try:
        return r.transitions(run_of(home, name)["id"])
    finally:
        r.close()


def consumed(home: Path, kind: str) -> bool:
    return not (home / "control" / kind).exists() and any(p.name.endswith(kind) for p in
                                                           (home / "control" / "done").glob("*"))


def test_a_full_disk_at_the_daemons_db_and_log_writes(home: Path, tiny_model: Path, faults: Path,
                                                      tmp_path: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmin_free_gb = 0\n')
    d = start_daemon(home, faults)
    try:
        drop_all(write_dataset(tmp_path, "long", 5000), home / "inbox")
        wait_until(lambda: progress_step(home, "long") >= 3, 120, what="training")
        rid = run_of(home, "long")["id"]
        run_dir = Path(run_of(home, "long")["run_dir"])

        # (c) every DB write fails ("database or disk is full"): a drop, a stop and the metrics meanwhile
        (faults / "db").touch()
        drop_all(write_dataset(tmp_path, "later", 10), home / "inbox")
        (home / "control" / "stop").write_text(rid + "\n")
        wait_until(lambda: result(run_dir).get("outcome") == "stopped", 60, what="the stop reaches the trainer")
        # (the PROBLEM line of a daemon whose DB writes fail is test_a_db_held_busy_by_another_process's)
        assert status(home) and overnight("runs", home=home).returncode == 0
        assert d.proc.poll() is None, "the daemon exited on a DB it cannot write"
        wait_until(lambda: "later.jsonl waits in the inbox" in (home / "overnight.log").read_text(), 30,
                   what="the drop tried")
        wait_until(lambda: (home / "inbox" / "later.jsonl").exists(), 6, what="the drop waiting in the inbox")
        assert not list(home.glob("inbox/rejected/later*")), "a drop whose run cannot be recorded is not rejected"
        # applied is applied: consumed (right after its acknowledgement failed), acknowledged once it can be
        wait_until(lambda: consumed(home, "stop"), budget(30), what="the stop consumed")
        assert not any(e["command"] == "stop" for e in events(home))
        wait_until(lambda: "checkpointing" in console(home, "long"), budget(30),
                   what="the acknowledgement in the run's console")
        # (d) from now on the log writes fail (overnight.log, console.log), and the DB only refuses to register a
        # model version: the waiting drop is taken, trains, completes and is registered once that works again
        (faults / "log").touch()
        (faults / "db.add_model").touch()
        (faults / "db").unlink()
        wait_until(lambda: state(home, "long") == "stopped", 60, what="the stop recorded once the DB works")
        wait_until(lambda: [e for e in events(home) if e["command"] == "stop"], 10, what="the stop acknowledged")
        stops = [(e["status"], e["target"]) for e in events(home) if e["command"] == "stop"]
        assert stops == [("applied", rid)], f"acknowledged once, as applied: {stops}"
        assert db_metrics(home, rid) == file_metrics(home, "long"), "no metric lost while the DB was full"
        wait_until(lambda: state(home, "later") == "completed", 120, what="later completes")
        wait_until(lambda: "disk full" in (status(home)["problem"] or ""), 15, what="the PROBLEM line")
        assert "Fix: free space" in status(home)["problem"]
        assert d.proc.poll() is None, "the daemon exited on a log it cannot write"
        (faults / "log").unlink()
        (faults / "db.add_model").unlink()
        wait_until(lambda: [m["version"] for m in json.loads(overnight("models", "--json", home=home).stdout)
                            if m["name"] == "later"], 15, what="its model version registered once the DB works")
        a_whole_pass(home)  # a second registration would be tried in it
        models = json.loads(overnight("models", "--json", home=home, check=True).stdout)
        assert [m["version"] for m in models if m["name"] == "later"] == [1], "registered once"
        assert [t["to_state"] for t in transitions(home, "later")].count("completed") == 1
        wait_until(lambda: not status(home)["problem"], 15, what="the PROBLEM line gone")
        assert db_metrics(home, run_of(home, "later")["id"]) == file_metrics(home, "later")
    except AssertionError:
        dump(home)
        raise
    finally:
        d.stop()


HOLDER = """
import os, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
while os.path.exists(sys.argv[2]):
    time.sleep(0.1)
conn.execute("COMMIT")
"""


def hold(db: Path, flag: Path) -> subprocess.Popen:
    """Another process takes overnight.db's write lock and keeps it while `flag` exists."""
    flag.touch()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(flag)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_db_held_busy_by_another_process(home: Path, tiny_model: Path, faults: Path, tmp_path: Path) -> None:
    from daemon.engine.store import Store
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    Store(home / "overnight.db").close()  # a home used before
    held = tmp_path / "held"
    holder = hold(home / "overnight.db", held)
    log = home / "overnight.log"

    def release() -> None:  # once the daemon says it waits (after 5 s, and a loaded machine's slow start)
        try:
            wait_until(lambda: log.exists() and "The daemon starts once it is released" in log.read_text(), 25)
        finally:
            held.unlink()
    threading.Thread(target=release, daemon=True).start()
    d = start_daemon(home, faults)
    try:
        assert holder.wait(budget(10)) == 0
        assert "The daemon starts once it is released" in log.read_text()
        drop_all(write_dataset(tmp_path, "busy", 5000), home / "inbox")
        wait_until(lambda: progress_step(home, "busy") >= 3, 120, what="training")
        rid = run_of(home, "busy")["id"]
        run_dir = Path(run_of(home, "busy")["run_dir"])
        holder = hold(home / "overnight.db", held)
        (home / "control" / "skip").write_text(rid + "\n")
        wait_until(lambda: result(run_dir).get("outcome") == "stopped", 60, what="the skip reaches the trainer")
        wait_until(lambda: "state DB busy" in (status(home)["problem"] or ""), 40, what="the PROBLEM line")
        problem = status(home)["problem"]
        assert f"PID {holder.pid}" in problem and "Fix:" in problem, problem
        for cmd in (("status",), ("runs",), ("logs", rid)):  # readers read while another process holds the lock
            out = overnight(*cmd, home=home)
            assert out.returncode == 0 and "Traceback" not in out.stderr + out.stdout, out.stderr
        assert d.proc.poll() is None
        # consumed once its acknowledgement gave up on the lock (5 s), which stays unwritten while it is held
        wait_until(lambda: consumed(home, "skip"), budget(30), what="the skip consumed")
        assert not [e for e in events(home) if e["command"] == "skip"]
        held.unlink()
        assert holder.wait(budget(10)) == 0
        wait_until(lambda: state(home, "busy") == "skipped", 60, what="the skip recorded once the lock is released")
        assert consumed(home, "skip")
        wait_until(lambda: [e for e in events(home) if e["command"] == "skip"], 10, what="the skip acknowledged")
        a_whole_pass(home)  # a second acknowledgement would be written in it
        skips = [e["status"] for e in events(home) if e["command"] == "skip"]
        assert skips == ["applied"], f"acknowledged once, as applied: {skips}"
        assert db_metrics(home, rid) == file_metrics(home, "busy")
        wait_until(lambda: not status(home)["problem"], 15, what="the PROBLEM line gone")
        assert "state DB busy" in (home / "overnight.log").read_text()
    except AssertionError:
        dump(home)
        raise
    finally:
        if holder and holder.poll() is None:
            holder.kill()
        d.stop()


def test_overnight_log_on_a_full_disk_is_said_once_and_its_lines_still_reach_the_terminal(tmp_path, capsys):
    """A full disk turned every log line into a "--- Logging error ---" stack on the daemon's terminal (journald)."""
    import errno

    from daemon.core import log as logs

    logger = logs.setup(tmp_path / "overnight.log", echo=True, name="overnight-full-disk-test")
    file = logger.handlers[0]
    write = file.stream.write

    def full(_text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")
    file.stream.write = full
    logger.info("first")
    logger.info("second")
    file.stream.write = write  # space again: written, and a new failure is said again
    logger.info("third")
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err, err
    assert err.count("cannot write") == 1 and "(No space left on device)" in err
    assert "] first" in err and "] second" in err and "] third" in err  # every line on the terminal
    file.flush()
    assert "] third" in (tmp_path / "overnight.log").read_text()
