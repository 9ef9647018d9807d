"""The DB is an index of runs/: a damaged or lost overnight.db is rebuilt from the run folders (overnight doctor,
the daemon at start), and no reader prints a traceback over it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from unittest.mock import ANY

import pytest

from daemon.engine import registry
from daemon.core import rundir
from daemon.core.home import Home
from daemon.core.queries import Reader
from daemon.engine.rebuild import rebuild, rebuild_locked
from daemon.engine.store import Store
from tests.conftest import overnight

FAST = "max_steps = 3\nbatch_size = 2\nmax_length = 48\nlog_every = 1\nsave_every = 2\nprobe_count = 2\n" \
       "probe_max_new_tokens = 4\neval_fraction = 0.1\n"
PROMPTS = "\n".join(json.dumps({"prompt": f"add {i} 1:", "completion": str(i + 1)}) for i in range(20)) + "\n"


def _drop(home: Path, stem: str) -> None:
    (home / "inbox" / f"{stem}.toml").write_text(FAST)
    (home / "inbox" / f"{stem}.jsonl").write_text(PROMPTS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A home with one completed run (a registered model) and one queued run. Tests change copies of it."""
    home = tmp_path_factory.mktemp("doctor") / "home"
    for d in ("inbox", "control", "runs"):
        (home / d).mkdir(parents=True)
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    _drop(home, "done")
    res = overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (home / "control" / "stop").write_text("")  # holds the queue: the next drop stays queued
    _drop(home, "later")
    res = overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (home / "control" / "stop").unlink()
    assert sorted(r["state"] for r in _runs(home)) == ["completed", "queued"]
    return home


def _copy(trained: Path, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(trained, home)
    return home


def _runs(home: Path) -> list[dict]:
    return json.loads(overnight("runs", "--json", home=home, check=True).stdout)


def _models(home: Path) -> list[dict]:
    return json.loads(overnight("models", "--json", home=home, check=True).stdout)


def _digest(runs: list[dict]) -> dict[str, tuple]:
    return {r["id"]: (r["state"], r["name"], r["loss"], r["eval_loss"], r["step"], r["priority"]) for r in runs}


def test_a_garbage_db_is_one_line_for_readers_and_doctor_rebuilds_it(trained: Path, tmp_path: Path) -> None:
    home = _copy(trained, tmp_path)
    runs, models = _runs(home), _models(home)
    garbage = b"this is not an sqlite file\n" * 300
    (home / "overnight.db").write_bytes(garbage)

    for command in ("status", "runs"):
        res = overnight(command, home=home)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip().count("\n") == 0, res.stderr
        assert "overnight.db" in res.stderr and "Fix: overnight doctor --rebuild" in res.stderr

    res = overnight("doctor", home=home)
    assert res.returncode == 1, res.stdout
    assert "PROBLEM" in res.stdout and "Fix: overnight doctor --rebuild" in res.stdout

    res = overnight("doctor", "--rebuild", home=home)
    assert res.returncode == 0, res.stderr
    assert "2 runs" in res.stdout, res.stdout
    aside = [p for p in home.glob("overnight.db.broken-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and aside[0].read_bytes() == garbage  # kept, with its -wal and -shm if any

    assert _digest(_runs(home)) == _digest(runs)
    rebuilt_models = _models(home)
    assert [(m["name"], m["version"], m["active"], m["run_id"], m["metrics"]) for m in rebuilt_models] == \
        [(m["name"], m["version"], m["active"], m["run_id"], m["metrics"]) for m in models]
    assert Path(rebuilt_models[0]["adapter_path"]).is_relative_to(home)
    done = next(r for r in runs if r["state"] == "completed")
    reader = Reader(home / "overnight.db")
    files = (home / "runs" / done["id"] / "metrics.jsonl").read_text().splitlines()
    assert len(reader.metrics(done["id"])) == len(files) > 0
    assert reader.evolution(done["id"]) and len(reader.transitions(done["id"])) >= 1
    assert overnight("doctor", home=home).returncode == 0


def test_b_a_deleted_db_is_rebuilt_by_the_daemon_which_trains_the_queued_run(trained: Path, tmp_path: Path) -> None:
    home = _copy(trained, tmp_path)
    before = {r["id"]: r for r in _runs(home)}
    for p in home.glob("overnight.db*"):
        p.unlink()
    res = overnight("doctor", home=home)
    assert res.returncode == 1 and "missing" in res.stdout, res.stdout
    res = overnight("doctor", "--json", home=home)
    report = json.loads(res.stdout)
    assert res.returncode == 1 and not report["ok"] and "missing" in report["problems"][0]["problem"], res.stdout
    assert report["problems"][0]["fix"]

    res = overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "rebuilt it from" in (home / "overnight.log").read_text()
    after = {r["id"]: r for r in _runs(home)}
    assert set(after) == set(before)
    assert {r["state"] for r in after.values()} == {"completed"}
    done = next(rid for rid, r in before.items() if r["state"] == "completed")
    assert after[done]["loss"] == before[done]["loss"]
    assert sorted((m["name"], m["version"], m["active"]) for m in _models(home)) == [("done", 1, 1), ("later", 1, 1)]


def test_b2_a_copied_home_trains_and_reads_its_own_runs_not_the_originals(trained: Path, tmp_path: Path) -> None:
    """A home copied (or moved) elsewhere: its daemon trains the queued run in the copy and its models point into
    the copy; the DB's paths named the original, where the run trained (and a moved home's queue stalled). Before
    any daemon starts there, the CLI already reads the copy's own files."""
    home = _copy(trained, tmp_path)
    queued = next(r["id"] for r in _runs(trained) if r["state"] == "queued")
    done = next(r["id"] for r in _runs(trained) if r["state"] == "completed")
    (home / "runs" / done / "console.log").write_text("the copy's log\n")
    assert overnight("logs", done, home=home, check=True).stdout == "the copy's log\n"
    assert all(r["run_dir"].startswith(str(home)) for r in _runs(home))
    assert all(m["adapter_path"].startswith(str(home)) for m in _models(home))
    res = overnight("export", "done", str(tmp_path / "out"), home=home, check=True)
    assert f"written to {tmp_path / 'out'}" in res.stdout
    res = overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"this home was moved or copied from {trained}" in (home / "overnight.log").read_text()
    runs = {r["id"]: r for r in _runs(home)}
    assert runs[queued]["state"] == "completed" and all(r["run_dir"].startswith(str(home)) for r in runs.values())
    assert all(m["adapter_path"].startswith(str(home)) for m in _models(home))
    original = json.loads((trained / "runs" / queued / "metadata.json").read_text())
    assert original["status"] == "queued" and not (trained / "runs" / queued / "adapter").exists()


def test_a_copy_whose_run_folder_was_renamed_never_reads_or_moves_the_originals_adapter(trained: Path,
                                                                                         tmp_path: Path) -> None:
    """In a copy, a run folder renamed: the copy's commands read the renamed folder (after the daemon's rebuild)
    or say the adapter is missing (before it), and `delete` trashes the copy's adapter; the original home's
    adapter was read, and moved into the copy's trash."""
    home = _copy(trained, tmp_path)
    done = next(r["id"] for r in _runs(trained) if r["state"] == "completed")
    os.rename(home / "runs" / done, home / "runs" / "done-keep")
    assert all(m["adapter_path"].startswith(str(home)) for m in _models(home))
    res = overnight("export", "done", str(tmp_path / "out"), home=home)
    assert res.returncode != 0 and not (tmp_path / "out").exists(), res.stdout
    res = overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    models = _models(home)
    assert [(m["name"], m["version"], m["run_id"]) for m in models] == [("done", 1, "done-keep"), ("later", 1, ANY)]
    assert models[0]["adapter_path"] == str(home / "runs" / "done-keep" / "adapter")
    overnight("delete", "done", "1", "--wait", "0", home=home, check=True)
    assert overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600).returncode == 0
    assert (trained / "runs" / done / "adapter" / "adapter_config.json").is_file()
    assert not (home / "runs" / "done-keep" / "adapter").exists()


def test_a_version_whose_adapter_is_gone_is_found_by_doctor_refused_and_deleted_truthfully(trained: Path,
                                                                                             tmp_path: Path) -> None:
    home = _copy(trained, tmp_path)
    adapter = home / "runs" / next(r["id"] for r in _runs(home) if r["state"] == "completed") / "adapter"
    os.rename(adapter / "adapter_model.safetensors", tmp_path / "weights")
    res = overnight("export", "done", str(tmp_path / "out"), home=home)
    assert res.returncode == 1 and "no weights" in res.stderr and "Fix:" in res.stderr, res.stderr
    res = overnight("ask", "done", "hi", home=home)
    assert res.returncode == 1 and "has no weights file" in res.stderr and "Traceback" not in res.stderr, res.stderr
    os.rename(adapter, tmp_path / "adapter")
    res = overnight("doctor", home=home)
    assert res.returncode == 1 and "1 model version without an adapter: done v1" in res.stdout, res.stdout
    res = overnight("activate", "done", "1", home=home)
    assert res.returncode == 1 and "adapter is missing from" in res.stderr and "Fix: put its run folder back" in \
        res.stderr, res.stderr
    (home / "control" / "stop").write_text("")  # hold the queued run: this daemon only deletes
    overnight("delete", "done", "1", "--wait", "0", home=home, check=True)
    assert overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600).returncode == 0
    log = (home / "overnight.log").read_text()
    assert "delete done v1: its adapter was missing already" in log and "adapter moved to" not in log, log[-2000:]
    assert not (home / "trash").exists() or not list((home / "trash").iterdir())


def test_a_db_of_a_newer_overnight_is_one_line_and_doctor_rebuilds_it(trained: Path, tmp_path: Path) -> None:
    home = _copy(trained, tmp_path)
    import sqlite3
    with sqlite3.connect(home / "overnight.db") as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    res = overnight("daemon", "--once", home=home)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "written by a newer overnight (schema 99 > " in res.stderr and "Fix: upgrade overnight" in res.stderr
    assert overnight("doctor", "--rebuild", home=home).returncode == 0
    assert sorted(r["state"] for r in _runs(home)) == ["completed", "queued"]


def test_a_damaged_metadata_json_is_said_and_the_rebuild_keeps_its_run_completed(trained: Path,
                                                                                  tmp_path: Path) -> None:
    home = _copy(trained, tmp_path)
    done = next(r for r in _runs(home) if r["state"] == "completed")
    (Path(done["run_dir"]) / "metadata.json").write_text('{"id": "do')
    res = overnight("doctor", home=home)
    assert res.returncode == 1 and f"whose metadata.json cannot be read: {done['id']}" in res.stdout, res.stdout
    assert overnight("doctor", "--rebuild", home=home).returncode == 0
    after = {r["id"]: r for r in _runs(home)}
    assert after[done["id"]]["state"] == "completed" and "state from result.json" in after[done["id"]]["reason"]
    assert [(m["name"], m["version"]) for m in _models(home)] == [("done", 1)]


def test_c_a_healthy_home_passes_doctor(trained: Path) -> None:
    res = overnight("doctor", home=trained)
    assert res.returncode == 0, res.stdout
    assert "PROBLEM" not in res.stdout and "integrity_check: ok" in res.stdout
    report = json.loads(overnight("doctor", "--json", home=trained, check=True).stdout)
    assert report["ok"] and report["problems"] == [] and "integrity_check: ok" in report["fine"]


def test_rebuild_is_refused_while_a_daemon_runs(home: Path, daemon_proc) -> None:
    d = daemon_proc()
    res = overnight("doctor", "--rebuild", home=home)
    assert res.returncode == 1 and f"PID {d.proc.pid}" in res.stderr, res.stderr
    assert (home / "overnight.db").exists() and not list(home.glob("overnight.db.broken-*"))


def test_the_dashboard_reader_reports_a_garbage_db_without_raising(tmp_path: Path) -> None:
    from tui.homedata import HomeWatcher
    home = Home.resolve(tmp_path / "home")
    home.db.write_bytes(b"\x00garbage" * 500)
    snap = HomeWatcher(home).snapshot()
    assert snap.error and "overnight doctor --rebuild" in snap.error


# --------------------------------------------------------------------------------------------- the registry

def _fake_run(home: Home, store: Store, rid: str, name: str, state: str, loss: float | None = None) -> dict:
    """A run folder and its row as intake and the scheduler leave them (no training: the files are the point)."""
    folder = home.run_dir(rid)
    (folder / "dataset").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run_id": rid, "name": name, "options": {"base_model": "/m"},
                                                    "dataset": {"file": "d.jsonl", "format": "jsonl"}}))
    row = {"id": rid, "name": name, "dataset": "d.jsonl", "base_model": "/m", "state": "queued", "priority": 0,
           "seq": store.next_seq(), "run_dir": str(folder)}
    store.insert_run(row)
    if state != "queued":
        store.set_state(rid, state, None, loss=loss, step=3)
    rundir.write_metadata(folder, store.get_run(rid))
    return store.get_run(rid)


def test_asha_rungs_come_back_from_the_run_folders(tmp_path: Path) -> None:
    """A rebuilt DB keeps where each ASHA trial stood: a trial waiting at its rung still waits (it was sent back to
    its first rung), a pruned one is still pruned there (compare lost its RUNGS column)."""
    home = Home.resolve(tmp_path / "home")
    store = Store(home.db)
    _fake_run(home, store, "a-t1", "a", "queued")
    _fake_run(home, store, "a-t2", "a", "pruned")
    store.record_rung("a-t1", 0, 2, 5.4, "promoted")
    store.record_rung("a-t1", 1, 6, 5.1, "waiting")
    store.record_rung("a-t2", 0, 2, 6.2, "pruned")
    store.set_state("a-t1", "queued", "waits at ASHA rung 2")  # a state change keeps them in metadata.json
    rundir.write_metadata(home.run_dir("a-t1"), store.get_run("a-t1"))
    before = [{k: r[k] for k in ("run_id", "rung", "step", "metric", "decision")} for r in store.rungs(["a-t1", "a-t2"])]
    store.close()
    for p in home.root.glob("overnight.db*"):
        p.unlink()
    rebuild(home)
    store = Store(home.db)
    try:
        assert [{k: r[k] for k in ("run_id", "rung", "step", "metric", "decision")}
                for r in store.rungs(["a-t1", "a-t2"])] == before
        assert store.held_run_ids() == {"a-t1"}
    finally:
        store.close()


def test_versions_pins_and_trash_come_back_from_the_run_folders(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home")
    store = Store(home.db)
    runs = [_fake_run(home, store, f"m-{i}", "m", "completed", 1.0 / (i + 1)) for i in range(3)]
    for r in runs:
        (Path(r["run_dir"]) / "adapter").mkdir()
        registry.register(store, r)
    store.activate_model("m", 1)  # pinned: v3 arrived later but v1 stays active
    registry.delete(store, home, "m", 2)
    _fake_run(home, store, "t-1", "t", "training")
    _fake_run(home, store, "q-1", "q", "queued")
    store.set_state("q-1", "queued", priority=5)
    rundir.write_metadata(home.run_dir("q-1"), store.get_run("q-1"))
    bare = home.run_dir("new-1")
    shutil.copytree(home.run_dir("q-1"), bare)
    (bare / "metadata.json").unlink()  # accepted, then the DB was lost before it indexed the run
    models = [{k: m[k] for k in ("name", "version", "run_id", "active", "deleted", "adapter_path")}
              for m in store.models()]
    store.close()
    for p in home.root.glob("overnight.db*"):
        p.unlink()

    recovered = rebuild(home)
    store = Store(home.db)
    assert [{k: m[k] for k in ("name", "version", "run_id", "active", "deleted", "adapter_path")}
            for m in store.models()] == models
    assert store.models()[1]["deleted"] and "trash" in store.models()[1]["adapter_path"]
    assert store.add_model({"name": "m", "run_id": "m-0", "base_model": "/m", "metrics": {}, "adapter_path": "/a"}) \
        == 4 and store.models()[0]["active"] == 1  # the pin survived the rebuild
    states = {r["id"]: (r["state"], r["priority"]) for r in recovered.runs}
    assert states == {"m-0": ("completed", 0), "m-1": ("completed", 0), "m-2": ("completed", 0),
                      "t-1": ("queued", 0), "q-1": ("queued", 5), "new-1": ("queued", 0)}
    assert [r["id"] for r in store.runs_in(["queued"])] == ["q-1", "t-1", "new-1"]
    assert "interrupted" in store.get_run("t-1")["reason"]
    store.close()


def _versions(store: Store) -> list[tuple[str, int, str, int]]:
    return [(m["name"], m["version"], m["run_id"], m["active"]) for m in store.models()]


def test_a_rebuild_keeps_each_version_with_its_own_run_whatever_the_folders_order(tmp_path: Path) -> None:
    """zeta trained before alpha: the queue order is not the folders' (alphabetical) order, and each version, its
    adapter and its rungs stay with the run that made them (the rebuild paired rows and metadata by position)."""
    home = Home.resolve(tmp_path / "home")
    store = Store(home.db)
    for rid, name in (("zeta-1", "zeta"), ("alpha-1", "alpha"), ("mid-1", "mid")):
        run = _fake_run(home, store, rid, name, "completed", 1.0)
        (Path(run["run_dir"]) / "adapter").mkdir()
        registry.register(store, run)
    before = _versions(store)
    store.close()
    rebuild_locked(home)
    store = Store(home.db)
    try:
        assert _versions(store) == before == [("alpha", 1, "alpha-1", 1), ("mid", 1, "mid-1", 1),
                                              ("zeta", 1, "zeta-1", 1)]
        assert [r["id"] for r in store.runs_in(["completed"])] == ["zeta-1", "alpha-1", "mid-1"]  # queue order kept
        for m in store.models():
            assert m["adapter_path"] == str(home.run_dir(m["run_id"]) / "adapter")
    finally:
        store.close()
    assert json.loads((home.run_dir("zeta-1") / "metadata.json").read_text())["model"]["name"] == "zeta"


def test_a_folder_put_back_after_the_registry_went_on_takes_a_new_number_and_the_active_version_stays(
        tmp_path: Path) -> None:
    """v2 (active) moved away, the DB rebuilt without it, the next run registered as v2 and active; v2's folder put
    back: the version the owner has used since keeps v2 and stays active, the one put back is v3, and every run
    folder records that (the next rebuild agrees). A renamed folder is its version's run."""
    home = Home.resolve(tmp_path / "home")
    store = Store(home.db)
    for i in range(2):
        run = _fake_run(home, store, f"c-{i}", "c", "completed", 1.0)
        (Path(run["run_dir"]) / "adapter").mkdir()
        registry.register(store, run)
    store.close()
    os.rename(home.run_dir("c-1"), tmp_path / "away")
    rebuild_locked(home)
    store = Store(home.db)
    run = _fake_run(home, store, "c-2", "c", "completed", 1.0)
    (Path(run["run_dir"]) / "adapter").mkdir()
    assert registry.register(store, run) == 2
    store.close()
    os.rename(tmp_path / "away", home.run_dir("c-1"))
    os.rename(home.run_dir("c-2"), home.run_dir("c-best"))
    rebuild_locked(home)
    store = Store(home.db)
    try:
        assert _versions(store) == [("c", 1, "c-0", 0), ("c", 2, "c-best", 1), ("c", 3, "c-1", 0)]
        assert store.models()[1]["adapter_path"] == str(home.run_dir("c-best") / "adapter")
    finally:
        store.close()
    rebuild_locked(home)
    store = Store(home.db)
    try:
        assert _versions(store) == [("c", 1, "c-0", 0), ("c", 2, "c-best", 1), ("c", 3, "c-1", 0)]
    finally:
        store.close()


def test_deleting_the_pinned_version_lifts_its_pin(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home")
    store = Store(home.db)
    runs = [_fake_run(home, store, f"m-{i}", "m", "completed", 1.0) for i in range(3)]
    for r in runs[:2]:
        (Path(r["run_dir"]) / "adapter").mkdir()
        registry.register(store, r)
    store.activate_model("m", 2)
    assert store.pinned_version("m") == 2
    registry.delete(store, home, "m", 2)
    assert store.pinned_version("m") is None
    (Path(runs[2]["run_dir"]) / "adapter").mkdir()
    registry.register(store, runs[2])
    assert _versions(store)[-1] == ("m", 3, "m-2", 1)  # it took over, as it would have without the pin
    store.close()


def test_a_db_behind_the_run_folders_is_rebuilt_at_daemon_start(tmp_path: Path) -> None:
    from daemon.engine.rebuild import prepare_for_daemon
    home = Home.resolve(tmp_path / "home")
    store = Store(home.db)
    _fake_run(home, store, "a-1", "a", "queued")
    store.close()
    old = home.db.read_bytes()  # as the file is when a kill -9 takes the -wal holding what came next with it
    store = Store(home.db)
    store.set_state("a-1", "failed", "boom")
    rundir.write_metadata(home.run_dir("a-1"), store.get_run("a-1"))
    _fake_run(home, store, "b-1", "b", "queued")
    store.close()
    home.db.write_bytes(old)

    prepare_for_daemon(home)
    store = Store(home.db)
    assert {r["id"]: r["state"] for r in store.runs_in(["queued", "failed"])} == {"a-1": "failed", "b-1": "queued"}
    store.close()
    assert len(list(home.root.glob("overnight.db.broken-*[0-9]"))) == 1
    prepare_for_daemon(home)  # an index that matches runs/ is left alone
    assert len(list(home.root.glob("overnight.db.broken-*[0-9]"))) == 1


def test_a_delete_cut_short_after_the_move_is_finished_by_the_next_delete(tmp_path: Path) -> None:
    """A crash between the move into trash/ and the DB's mark: deleting again marks the version deleted where its
    adapter went, with no second, empty trash folder; a crash before the move leaves the version whole."""
    home = Home.resolve(tmp_path / "home")
    store = Store(home.db)
    run = _fake_run(home, store, "m-0", "m", "completed", 1.0)
    adapter = Path(run["run_dir"]) / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    registry.register(store, run)
    row = store.models("m")[0]
    cut = home.trash / "m-v1-20260101-000000"  # what the first delete did before the crash
    cut.mkdir(parents=True)
    (cut / "model.json").write_text(json.dumps(row, default=str))
    os.rename(adapter, cut / "adapter")

    assert registry.delete(store, home, "m", 1) == cut
    assert [p.name for p in home.trash.iterdir()] == [cut.name]
    [m] = store.models("m")
    assert m["deleted"] and m["adapter_path"] == str(cut / "adapter") and not m["active"]
    store.close()


def test_doctor_names_a_write_lock_another_process_holds(tmp_path: Path) -> None:
    """A sqlite3 shell left inside BEGIN: status says the DB is busy, and so does doctor (monitoring scripts read
    its --json), then all is well once it is released."""
    import sqlite3
    home = Home(tmp_path / "home")
    home.create()
    Store(home.db).close()
    holder = sqlite3.connect(home.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        res = overnight("doctor", "--json", home=home.root)
        report = json.loads(res.stdout)
        assert res.returncode == 1 and "holds a write lock" in report["problems"][0]["problem"], report
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert overnight("doctor", home=home.root).returncode == 0
