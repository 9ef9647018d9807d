from __future__ import annotations

import multiprocessing
import sqlite3

from daemon.core.home import DaemonLock, Home, HomeLocked, daemon_alive
from daemon.core.queries import Reader
from daemon.engine.store import SCHEMA_VERSION, Store


def _run(store: Store, rid: str, prio: int = 0, state: str = "queued") -> None:
    store.insert_run({"id": rid, "name": rid, "state": state, "priority": prio, "seq": store.next_seq()})


def test_schema_is_versioned_and_wal(tmp_path):
    s = Store(tmp_path / "o.db")
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    _run(s, "a", prio=3)
    s.add_model({"name": "m", "run_id": "a", "base_model": "/b"})
    s.close()
    again = Store(tmp_path / "o.db")  # reopening migrates nothing and keeps data
    assert again.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert [(r["id"], r["priority"]) for r in again.runs_in(["queued"])] == [("a", 3)]
    assert [(m["name"], m["version"], m["active"]) for m in again.models()] == [("m", 1, 1)]
    again.close()


def test_queue_order_priority_then_arrival(tmp_path):
    s = Store(tmp_path / "o.db")
    for rid, prio in (("a", 0), ("b", 5), ("c", 0), ("d", 5)):
        _run(s, rid, prio)
    assert [r["id"] for r in s.runs_in(["queued"])] == ["b", "d", "a", "c"]
    assert [r["id"] for r in Reader(tmp_path / "o.db").runs()] == ["b", "d", "a", "c"]


def test_transitions_recorded(tmp_path):
    s = Store(tmp_path / "o.db")
    _run(s, "a")
    s.set_state("a", "preparing")
    s.set_state("a", "failed", "boom")
    r = Reader(tmp_path / "o.db")
    assert [(t["from_state"], t["to_state"]) for t in r.transitions("a")] == [
        (None, "queued"), ("queued", "preparing"), ("preparing", "failed")]
    assert r.run("a")["reason"] == "boom"


def test_reader_is_read_only_and_sees_writes_during_a_write_transaction(tmp_path):
    s = Store(tmp_path / "o.db")
    _run(s, "a")
    r = Reader(tmp_path / "o.db")
    s.db.conn.execute("BEGIN IMMEDIATE")
    s.db.conn.execute("UPDATE runs SET priority = 9 WHERE id = 'a'")
    assert r.run("a")["priority"] == 0  # WAL: the reader is not blocked, it sees the last commit
    s.db.conn.execute("COMMIT")
    assert r.run("a")["priority"] == 9
    try:
        r.conn.execute("DELETE FROM runs")
        raise AssertionError("reader could write")
    except sqlite3.OperationalError as e:
        assert "readonly" in str(e)


def test_reader_on_missing_db_is_empty(tmp_path):
    assert Reader(tmp_path / "nope.db").runs() == []


def test_model_versions_newest_active_unless_pinned(tmp_path):
    s = Store(tmp_path / "o.db")
    row = {"name": "m", "run_id": "r", "base_model": "/b"}
    assert [s.add_model(row) for _ in range(2)] == [1, 2]
    assert [m["active"] for m in s.models("m")] == [0, 1]
    s.activate_model("m", 1)
    assert s.add_model(row) == 3
    assert [m["active"] for m in s.models("m")] == [1, 0, 0]


def _try_lock(root: str, q) -> None:
    try:
        DaemonLock(Home.resolve(root)).acquire()
        q.put("acquired")
    except HomeLocked as e:
        q.put(str(e))


def test_second_lock_names_the_holder(tmp_path):
    h = Home.resolve(tmp_path)
    lock = DaemonLock(h)
    lock.acquire()
    q = multiprocessing.get_context("spawn").Queue()
    p = multiprocessing.get_context("spawn").Process(target=_try_lock, args=(str(tmp_path), q))
    p.start()
    p.join(30)
    msg = q.get(timeout=5)
    import os
    assert f"PID {os.getpid()}" in msg and "already serves" in msg
    assert daemon_alive(h)["pid"] == os.getpid()
    # overnight.lock removed by hand: the holder is still named, from the kernel's locks (not "kill -TERM PID")
    (tmp_path / "overnight.lock").unlink()
    p = multiprocessing.get_context("spawn").Process(target=_try_lock, args=(str(tmp_path), q))
    p.start()
    p.join(30)
    msg = q.get(timeout=5)
    assert f"PID {os.getpid()}" in msg and f"kill -TERM {os.getpid()}" in msg, msg
    lock.release()
    assert daemon_alive(h) is None
