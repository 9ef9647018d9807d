"""One run, one type (daemon/core/runrecord.py): a runs row and metadata.json read back into a `Run` and written
again give what the code wrote, on records the Store and the run folder produce themselves."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings, strategies as st

from daemon.core import rundir
from daemon.core.atomic import write_json
from daemon.core.home import Home
from daemon.core.queries import Reader
from daemon.core.runrecord import COLUMNS, Run
from daemon.core.states import State
from daemon.engine import rebuild
from daemon.engine.store import RUN_COLUMNS, Store


def _store_with_runs(tmp_path: Path) -> tuple[Home, Store]:
    """A home whose runs went through the Store's own writes: queued, trained on GPUs, completed, failed."""
    home = Home.resolve(tmp_path / "home", create=True)
    store = Store(home.db)
    for rid, prio in (("a-1", 0), ("b-1", 5), ("c-1", 0)):
        folder = home.run_dir(rid)
        (folder / "dataset").mkdir(parents=True)
        write_json(folder / "config.json", {"options": {"priority": prio},
                                            "dataset": {"file": f"{rid}.jsonl", "format": "jsonl",
                                                        "schema": "text", "records": 7}})
        store.insert_run({"id": rid, "name": rid[0], "group_id": "g" if rid != "c-1" else None,
                          "dataset": f"{rid}.jsonl", "format": "jsonl", "schema": "text", "records": 7,
                          "base_model": "/models/tiny", "state": "queued", "priority": prio,
                          "seq": store.next_seq(), "run_dir": str(folder), "attempts": 0})
        rundir.write_metadata(folder, store.get_run(rid))
    store.set_gpu_set("a-1", [1, 0])
    store.set_state("a-1", "training", started="2026-11-28T10:00:00", pid=4242, attempts=1)
    store.update_run("a-1", step=10, max_steps=20, loss=1.5, epoch=0.5, tokens_per_s=900.0, eta_s=12.0)
    store.set_gpu_set("b-1", [])
    store.set_state("b-1", "completed", "done", finished="2026-11-28T11:00:00", step=20, loss=2, eval_loss=1.25)
    store.set_state("c-1", "failed", "CUDA out of memory\nat step 3")
    write_json(home.run_dir("b-1") / "result.json", {"train_seconds": 61.5, "device_name": "H100",
                                                     "versions": {"torch": "2.5"}})
    for rid in ("a-1", "b-1", "c-1"):
        rundir.write_metadata(home.run_dir(rid), store.get_run(rid))
    store.add_model({"name": "b", "run_id": "b-1", "base_model": "/models/tiny", "metrics": {"final_loss": 2}})
    return home, store


def _raw_rows(db: Path) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY seq")]
    finally:
        conn.close()


def test_the_fields_are_the_runs_columns_in_order() -> None:
    assert COLUMNS == tuple(RUN_COLUMNS)


def test_row_to_run_to_row_is_the_row(tmp_path: Path) -> None:
    home, store = _store_with_runs(tmp_path)
    rows = _raw_rows(home.db)
    assert len(rows) == 3
    for row in rows:
        run = Run.from_row(row)
        assert run.to_row() == row
        assert list(run.to_row()) == list(row)  # the table's column order
        assert isinstance(run.state, State)
    a, b, c = (Run.from_row(r) for r in rows)
    assert (a.state, a.gpu_set, a.pid, a.fraction, a.active) == (State.TRAINING, (0, 1), 4242, 0.5, True)
    assert (b.gpu_set, b.loss, b.fraction, b.finished_state) == ((), 2, 1.0, True)  # the CPU; an int loss stays one
    assert c.gpu_set is None and c.reason == "CUDA out of memory\nat step 3"  # no trainer started
    # the Store's own dicts and the Reader's decoded rows (gpu_set a list) give the same Run
    assert Run.from_row(store.get_run("a-1")) == a
    decoded = {r["id"]: Run.from_row(r) for r in Reader(home.db).runs()}
    assert decoded == {"a-1": a, "b-1": b, "c-1": replace(c, gpu_set=())}  # decoded: NULL reads as []
    assert {r.id: r for r in Reader(home.db).run_records()} == {"a-1": a, "b-1": b, "c-1": c}


def test_reader_records_keep_its_order(tmp_path: Path) -> None:
    home, _ = _store_with_runs(tmp_path)
    reader = Reader(home.db)
    assert [r.id for r in reader.run_records()] == [r["id"] for r in reader.runs()]
    assert [r.id for r in reader.run_records(("failed",))] == ["c-1"]


def test_metadata_to_run_to_metadata_is_the_file(tmp_path: Path) -> None:
    home, _ = _store_with_runs(tmp_path)
    for rid in ("a-1", "b-1", "c-1"):
        meta = rundir.RunFolder(home.run_dir(rid)).read_metadata()
        assert meta["run_id"] == rid
        again = Run.from_metadata(meta).to_metadata()
        assert again == meta
        assert json.dumps(again, indent=2) == json.dumps(meta, indent=2)  # the file's key order too
    b = rundir.RunFolder(home.run_dir("b-1")).read_metadata()
    assert b["model"]["version"] == 1 and b["timings"]["train_seconds"] == 61.5 and b["device"] == "H100"


def test_metadata_and_row_describe_the_same_run(tmp_path: Path) -> None:
    """What metadata.json records of a run is what its row says (the rest of the row: run_dir, pid, eta…)."""
    home, store = _store_with_runs(tmp_path)
    for rid in ("a-1", "b-1", "c-1"):
        from_row = Run.from_row(store.get_run(rid))
        from_meta = Run.from_metadata(rundir.RunFolder(home.run_dir(rid)).read_metadata())
        kept = {"run_dir": from_row.run_dir, "pid": from_row.pid, "eta_s": from_row.eta_s,
                "resume_from": from_row.resume_from, "updated": from_row.updated}
        assert replace(from_meta, **kept) == from_row


def test_unknown_metadata_keys_are_kept_by_the_run_and_dropped_by_a_state_change(tmp_path: Path) -> None:
    home, store = _store_with_runs(tmp_path)
    folder = home.run_dir("c-1")
    rundir.update_metadata(folder, note="from a newer overnight", metrics_extra=[1, 2])
    meta = rundir.RunFolder(folder).read_metadata()
    run = Run.from_metadata(meta)
    assert run.extra["note"] == "from a newer overnight"
    assert run.to_metadata() == meta  # kept when written back whole
    assert run == replace(run, extra={})  # not part of the run itself
    rundir.write_metadata(folder, store.get_run("c-1"))  # a state change writes the file from the row, as before
    assert "note" not in rundir.RunFolder(folder).read_metadata()


def test_missing_metadata_keys_default() -> None:
    run = Run.from_metadata({"run_id": "x-1"})
    assert (run.id, run.name, run.state, run.priority, run.gpu_set, run.step, run.dataset) == \
        ("x-1", "", State.QUEUED, 0, None, None, None)
    assert Run.from_metadata({"run_id": "x-1", "status": "from-the-future"}).state == State.QUEUED
    assert Run.from_metadata({"run_id": "x-1", "metrics": "junk", "timings": None}).loss is None


def test_the_rebuild_reads_the_rows_the_store_wrote(tmp_path: Path) -> None:
    """metadata → Run → row: a rebuilt DB holds the rows the daemon had (an active run comes back queued)."""
    home, store = _store_with_runs(tmp_path)
    before = {r["id"]: r for r in _raw_rows(home.db)}
    store.close()
    rebuild.move_aside(home)
    rebuild.rebuild(home)
    after = {r["id"]: r for r in _raw_rows(home.db)}
    same = [c for c in COLUMNS if c not in ("updated", "pid", "eta_s", "resume_from", "state", "reason")]
    for rid in before:
        assert {c: after[rid][c] for c in same} == {c: before[rid][c] for c in same}, rid
    assert (after["b-1"]["state"], after["c-1"]["state"], after["a-1"]["state"]) == ("completed", "failed", "queued")
    assert after["c-1"]["reason"] == before["c-1"]["reason"]


_text = st.one_of(st.none(), st.text(max_size=12))
_num = st.one_of(st.none(), st.integers(-10, 10**6), st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=200, deadline=None)
@given(run_id=st.text(min_size=1, max_size=12), name=st.text(min_size=1, max_size=12), group=_text,
       state=st.sampled_from(list(State)), reason=_text, priority=st.integers(-100, 100),
       seq=st.one_of(st.none(), st.integers(0, 10**6)), numbers=st.fixed_dictionaries(
           {"step": _num, "max_steps": _num, "loss": _num, "eval_loss": _num, "tokens_per_s": _num, "epoch": _num}),
       gpus=st.one_of(st.none(), st.lists(st.integers(0, 15), unique=True).map(sorted).map(tuple)),
       created=_text, extra=st.dictionaries(st.sampled_from(["model", "note", "dataset", "device", "versions"]),
                                            st.one_of(st.none(), st.integers(), st.text(max_size=5))))
def test_any_run_round_trips_through_its_row_and_its_metadata(run_id, name, group, state, reason, priority, seq,
                                                             numbers, gpus, created, extra) -> None:
    run = Run(id=run_id, name=name, group_id=group, state=state, reason=reason, priority=priority, seq=seq,
              gpu_set=gpus, created=created, extra=extra, **numbers)
    assert Run.from_row(run.to_row()) == run
    meta = run.to_metadata()
    back = Run.from_metadata(json.loads(json.dumps(meta)))
    assert back == run and back.to_metadata() == meta
