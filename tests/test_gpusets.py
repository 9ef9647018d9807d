"""Runs on GPU sets (SPEC §12): the runs.gpu_set column, metadata.json and a rebuilt DB keep it, the CLI shows it."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from daemon.core import rundir
from daemon.core.home import Home
from daemon.core.gpuset import format_gpu_set, parse_gpu_set
from daemon.core.queries import Reader
from daemon.engine.rebuild import rebuild
from daemon.core.render import fmt_gpu_set, fmt_priority
from daemon.engine.store import MIGRATIONS, SCHEMA_VERSION, Store, sqlite_utils
from tests.conftest import overnight


def _run(store: Store, home: Home, rid: str, state: str, priority: int = 0, **fields: object) -> None:
    d = home.run_dir(rid)
    d.mkdir(parents=True, exist_ok=True)
    store.insert_run({"id": rid, "name": rid.split("-")[0], "state": state, "seq": store.next_seq(),
                      "priority": priority, "run_dir": str(d), **fields})
    rundir.write_metadata(d, store.get_run(rid))


def test_gpu_set_text_and_lists() -> None:
    assert format_gpu_set([1, 0]) == "0,1" and format_gpu_set(None) == format_gpu_set([]) == ""
    assert parse_gpu_set("0,1") == [0, 1] and parse_gpu_set("") == parse_gpu_set(None) == [] == parse_gpu_set("x,1")
    assert parse_gpu_set([3, 2]) == [2, 3]
    assert [fmt_gpu_set(s) for s in ([], [0], [0, 1], [0, 1, 2, 3], [0, 2, 5])] == ["CPU", "0", "0,1", "0-3", "0,2,5"]
    assert [fmt_priority(p) for p in (0, -1000, 1000, -9999, 99999, -250000)] == ["0", "-1000", "1000", "-9999",
                                                                                   "99999", "-250k"]


def test_a_version_3_db_gets_the_column_and_old_rows_read_as_cpu(tmp_path: Path) -> None:
    path = tmp_path / "overnight.db"
    db = sqlite_utils.Database(sqlite3.connect(path))
    db["meta"].create({"key": str, "value": str}, pk="key")
    for m in MIGRATIONS[:3]:
        m(db)
    db["meta"].upsert({"key": "schema_version", "value": "3"}, pk="key")
    db["runs"].insert({"id": "old-1", "name": "old", "state": "completed", "seq": 1})
    db.conn.commit()
    db.conn.close()
    store = Store(path)
    version = store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION and store.get_run("old-1")["gpu_set"] is None  # migrated to the newest
    assert Reader(path).run("old-1")["gpu_set"] == []
    store.control_event("stop", "old-1", "control/stop.X", "applied", "stop old-1", command_id="X")  # schema 5
    assert [e["command_id"] for e in Reader(path).control_events_of("X")] == ["X"]
    store.close()


def test_set_gpu_set_reaches_the_db_metadata_a_rebuild_and_the_cli(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home")
    store = Store(home.db)
    _run(store, home, "a-1", "training", priority=5)
    _run(store, home, "b-1", "training", priority=-1000)
    _run(store, home, "c-1", "preparing")
    _run(store, home, "d-1", "queued")
    store.set_gpu_set("a-1", [0])
    store.set_gpu_set("b-1", [2, 1])
    store.set_gpu_set("c-1", None)  # the CPU
    assert [store.get_run(r)["gpu_set"] for r in ("a-1", "b-1", "c-1", "d-1")] == ["0", "1,2", "", None]
    for r in ("a-1", "b-1", "c-1", "d-1"):  # the daemon's transition writes metadata.json from the row
        rundir.write_metadata(home.run_dir(r), store.get_run(r))
    meta = {r: rundir.RunFolder(home.run_dir(r)).read_metadata()["gpu_set"] for r in ("a-1", "b-1", "c-1", "d-1")}
    assert meta == {"a-1": [0], "b-1": [1, 2], "c-1": [], "d-1": None}
    store.set_state("b-1", "completed", "done")  # a state change writes metadata.json whole: the set stays
    rundir.write_metadata(home.run_dir("b-1"), store.get_run("b-1"))
    assert rundir.RunFolder(home.run_dir("b-1")).read_metadata()["gpu_set"] == [1, 2]
    store.close()

    status = json.loads(overnight("status", "--json", home=home.root, check=True).stdout)
    assert {r["id"]: r["gpu_set"] for r in status["runs"]} == {"a-1": [0], "c-1": [], "d-1": []}
    text = overnight("status", home=home.root, check=True).stdout.splitlines()
    head = next(i for i, line in enumerate(text) if line.startswith("RUN"))
    rows = {line.split()[0]: line.split()[1:4] for line in text[head + 1:head + 4]}  # the table's three rows
    assert rows == {"a-1": ["training", "0", "5"], "c-1": ["preparing", "CPU", "0"], "d-1": ["queued", "-", "0"]}
    assert json.loads(overnight("runs", "--json", home=home.root, check=True).stdout)[-1]["gpu_set"] == [1, 2]

    for p in home.root.glob("overnight.db*"):
        p.unlink()
    rebuild(home)
    store = Store(home.db)
    assert {r: store.get_run(r)["gpu_set"] for r in ("a-1", "b-1", "c-1", "d-1")} == \
        {"a-1": "0", "b-1": "1,2", "c-1": "", "d-1": None}
    store.close()
