"""The morning view: what failed overnight, which drops were rejected, and what holds the queue — in `overnight
status` (text and --json), `overnight runs` (REASON) and the dashboard's "needs you" strip."""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.core.home import Home
from daemon.engine.store import Store
from tests.conftest import overnight
from tests.test_tui import drive, until
from tests.tui_fixtures import FixedTelemetry, NO_GPU
from tui.app import OvernightApp

FAILED = "support-20260514-010000"
OLD_FAILED = "notes-20260510-010000"
QUEUED = "poems-20260514-020000"
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds")


def _insert(store: Store, home: Home, run_id: str, seq: int, state: str, **fields: object) -> None:
    name = run_id.rsplit("-", 2)[0]
    store.insert_run({"id": run_id, "name": name, "group_id": run_id, "dataset": f"dataset/{name}.jsonl",
                      "format": "jsonl", "schema": "prompt_completion", "records": 8, "base_model": "/models/tiny",
                      "state": state, "priority": 0, "seq": seq, "run_dir": str(home.runs / run_id), **fields})


def _reject(home: Home, name: str, error: str, age_s: float) -> Path:
    """A drop as the intake leaves a rejected one: the file moved to inbox/rejected/ beside NAME.error.txt."""
    (home.rejected / name).write_text("{}\n")
    err = home.rejected / f"{name.rsplit('.', 1)[0]}.error.txt"
    err.write_text(f"{error}\n\nRejected files (moved to {home.rejected}): {name}\n"
                   f"After fixing, drop the file into {home.inbox} again (mv, or overnight add FILE).\n")
    stamp = time.time() - age_s
    os.utime(err, (stamp, stamp))
    return err


@pytest.fixture
def morning_home(tmp_path: Path) -> Home:
    """A home after a bad night: a run failed two hours ago (another five days ago), two drops were rejected (and
    one long ago), and an untargeted control/stop holds a queued run."""
    home = Home.resolve(tmp_path / "home", create=True)
    now = dt.datetime.now()
    store = Store(home.db)
    try:
        _insert(store, home, OLD_FAILED, 1, "failed", reason="loss became nan at step 3",
                finished=_iso(now - dt.timedelta(days=5)))
        _insert(store, home, FAILED, 2, "failed", reason=f"{OOM}\nTraceback (most recent call last): …",
                finished=_iso(now - dt.timedelta(hours=2)))
        _insert(store, home, QUEUED, 3, "queued")
    finally:
        store.close()
    _reject(home, "old.jsonl", "old.jsonl: line 1: not JSON", age_s=3 * 86400)
    _reject(home, "chat.jsonl", "chat.jsonl: line 3: missing field 'completion'", age_s=3 * 3600)
    _reject(home, "data.jsonl", "data.jsonl: line 12: not JSON (Expecting value)", age_s=600)
    (home.control / "stop").write_text("")
    return home


def test_status_lists_failed_runs_rejected_drops_and_the_stop(morning_home: Home) -> None:
    out = overnight("status", home=morning_home.root, check=True).stdout
    assert f"  {FAILED}: {OOM}\n" in out
    assert "Traceback" not in out  # the first line only
    assert OLD_FAILED not in out  # five days ago: outside the 24 h window
    rejected = morning_home.rejected
    lines = out.splitlines()
    new = lines.index(f"  data.jsonl: line 12: not JSON (Expecting value) (see {rejected / 'data.error.txt'})")
    older = lines.index(f"  chat.jsonl: line 3: missing field 'completion' (see {rejected / 'chat.error.txt'})")
    assert new < older  # newest first
    assert "old.jsonl" not in out
    # the queued run does not read as merely waiting its turn
    row = next(line for line in lines if line.startswith(QUEUED))
    assert row.split()[1] == "held"
    assert lines[lines.index(row) + 1] == "queue held by control/stop (overnight resume lifts it): 1 queued run waits"
    assert out.count("queue held by") == 1


def test_a_stop_with_nothing_queued_still_says_it_holds_the_queue(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home", create=True)
    (home.control / "stop").write_text("")
    out = overnight("status", home=home.root, check=True).stdout
    assert "queue held by control/stop (overnight resume lifts it)" in out.splitlines()


def test_since_widens_the_window(morning_home: Home) -> None:
    out = overnight("status", "--since", "200", home=morning_home.root, check=True).stdout
    assert f"{OLD_FAILED}: loss became nan at step 3" in out
    assert "old.jsonl: line 1: not JSON" in out
    assert "in the last 200 h" in out
    narrow = overnight("status", "--since", "1", home=morning_home.root, check=True).stdout
    assert FAILED + ":" not in narrow and "chat.jsonl" not in narrow and "data.jsonl" in narrow


def test_status_json_carries_the_same(morning_home: Home) -> None:
    data = json.loads(overnight("status", "--json", home=morning_home.root, check=True).stdout)
    assert [(f["id"], f["reason"]) for f in data["failed"]] == [(FAILED, OOM)]
    assert data["failed"][0]["ended"]
    assert [(d["file"], d["error"]) for d in data["rejected"]] == [
        ("data.jsonl", "data.jsonl: line 12: not JSON (Expecting value)"),
        ("chat.jsonl", "chat.jsonl: line 3: missing field 'completion'")]
    assert data["rejected"][0]["error_file"] == str(morning_home.rejected / "data.error.txt")
    assert data["rejected"][0]["time"] > data["rejected"][1]["time"]
    assert data["held"] == "control/stop (overnight resume lifts it)"


def test_nothing_needs_you_on_a_quiet_home(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home", create=True)
    out = overnight("status", home=home.root, check=True).stdout
    assert "failed in the last" not in out and "rejected drops" not in out and "held" not in out
    data = json.loads(overnight("status", "--json", home=home.root, check=True).stdout)
    assert (data["failed"], data["rejected"], data["held"]) == ([], [], None)


def test_runs_has_a_reason_column(morning_home: Home) -> None:
    out = overnight("runs", home=morning_home.root, check=True).stdout
    lines = out.splitlines()
    assert lines[0].split()[-1] == "REASON"
    failed = next(line for line in lines if line.startswith(FAILED))
    assert failed.endswith("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "loss became nan at step 3" in next(line for line in lines if line.startswith(OLD_FAILED))
    rows = json.loads(overnight("runs", "--json", home=morning_home.root, check=True).stdout)
    assert next(r for r in rows if r["id"] == FAILED)["reason"].startswith(OOM + "\n")


def test_a_long_reason_is_cut_to_fit(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home", create=True)
    store = Store(home.db)
    try:
        _insert(store, home, FAILED, 1, "failed", reason="x" * 300, finished=_iso(dt.datetime.now()))
    finally:
        store.close()
    row = next(line for line in overnight("runs", home=home.root, check=True).stdout.splitlines()
               if line.startswith(FAILED))
    assert row.endswith("x…") and len(row) < 200


def test_a_pending_slurm_job_and_a_silent_controller_say_why_their_runs_wait(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home", create=True)
    store = Store(home.db)
    try:
        _insert(store, home, FAILED, 1, "preparing", job_id="12", reason="Slurm job 12 pending (Resources)")
        _insert(store, home, OLD_FAILED, 2, "queued", job_id="9", reason="the executor did not answer (sbatch: error: Unable "
                                                             "to contact slurm controller); queued again")
    finally:
        store.close()
    lines = overnight("runs", home=home.root, check=True).stdout.splitlines()
    assert next(line for line in lines if line.startswith(FAILED)).endswith("Slurm job 12 pending (Resources)")
    assert next(line for line in lines if line.startswith(OLD_FAILED)).split()[3] == "-"  # its old job is over
    assert "the executor did not answer (sbatch: error" in next(line for line in lines if line.startswith(OLD_FAILED))


def test_an_asha_trial_waiting_at_its_rung_says_so_beside_it(tmp_path: Path) -> None:
    """A queued trial held at its rung reads as what it is, not as a run merely waiting its turn."""
    home = Home.resolve(tmp_path / "home", create=True)
    store = Store(home.db)
    try:
        _insert(store, home, FAILED, 1, "queued", reason="waits at ASHA rung 1 (step 7, eval loss 5.4100) for the "
                                                         "group's other trials")
    finally:
        store.close()
    row = next(line for line in overnight("runs", home=home.root, check=True).stdout.splitlines()
               if line.startswith(FAILED))
    assert row.split()[1] == "queued" and row.endswith("waits at ASHA rung 1 (step 7, eval loss 5.4100) for the "
                                                        "gro…"), row


def test_a_real_rejection_is_listed(home: Path) -> None:
    """A drop the daemon itself rejects (a sidecar naming a base model that does not exist)."""
    (home / "inbox" / "tiny.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (home / "inbox" / "tiny.toml").write_text('base_model = "/nonexistent/model"\n')
    overnight("daemon", "--once", "--settle", "0.2", home=home, check=True, timeout=120)
    data = json.loads(overnight("status", "--json", home=home, check=True).stdout)
    assert [d["file"] for d in data["rejected"]] == ["tiny.jsonl"]
    error_file = Path(data["rejected"][0]["error_file"])
    assert error_file.parent == home / "inbox" / "rejected"
    assert data["rejected"][0]["error"] == error_file.read_text().splitlines()[0]
    assert "/nonexistent/model" in data["rejected"][0]["error"]


def test_the_dashboard_shows_what_needs_you(morning_home: Home) -> None:
    app = OvernightApp(morning_home.root, telemetry=FixedTelemetry(NO_GPU))

    async def body(pilot: Any) -> None:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        await pilot.pause(0.1)
        assert app.needs.display
        text = str(app.needs.render())
        assert text.startswith(" needs you: 1 failed (support-20260514-010000: CUDA out of memory")
        assert "2 rejected drops (data.jsonl: line 12: not JSON (Expecting value))" in text
        assert text.rstrip().endswith("queue held by control/stop (overnight resume lifts it)")
    drive(app, body, size=(220, 24))


def test_the_strip_is_cut_to_an_80_column_terminal(morning_home: Home) -> None:
    app = OvernightApp(morning_home.root, telemetry=FixedTelemetry(NO_GPU))

    async def body(pilot: Any) -> None:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        await pilot.pause(0.1)
        text = str(app.needs.render())
        # the newest items give way, every count and the hold stay in view
        assert text.rstrip() == " needs you: 1 failed (support-2…), 2 rejected drops, queue held by control/stop"
    drive(app, body, size=(80, 24))


def test_no_strip_when_nothing_needs_you(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home", create=True)
    app = OvernightApp(home.root, telemetry=FixedTelemetry(NO_GPU))

    async def body(pilot: Any) -> None:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        assert not app.needs.display
    drive(app, body)


def test_a_file_rejected_twice_shows_its_newest_error(tmp_path: Path) -> None:
    """A user fixes a file, drops it again and it is refused for another reason: status shows both drops, the
    newest error first, not the old error as if it were current."""
    home = tmp_path / "home"
    src = tmp_path / "data.jsonl"
    for text in ('{"prompt": "a"}\n', "junk{\n"):
        for earlier in Home.resolve(home).rejected.glob("*.error.txt"):  # a minute ago, not in the same second
            os.utime(earlier, (time.time() - 60, time.time() - 60))
        src.write_text(text)
        overnight("add", str(src), home=home, check=True)
        overnight("daemon", "--once", "--settle", "0.1", home=home, timeout=120, check=True)
    data = json.loads(overnight("status", "--json", home=home, check=True).stdout)
    errors = [d["error"] for d in data["rejected"]]
    assert len(errors) == 2 and "malformed JSON" in errors[0] and "completion" in errors[1], errors
    assert sorted(p.name for p in Home.resolve(home).rejected.iterdir()) == [
        "data.1.error.txt", "data.1.jsonl", "data.error.txt", "data.jsonl"]


def test_a_broken_overnight_toml_is_said_with_no_daemon_running(tmp_path: Path) -> None:
    """Drops wait while overnight.toml is broken: status says so before any daemon has run, with the command that
    starts one for this very home."""
    home = Home.resolve(tmp_path / "home", create=True)
    home.toml.write_text("base_model = \n")
    out = overnight("status", home=home.root, check=True).stdout
    assert f"PROBLEM: {home.toml}: not valid TOML" in out and "Fix:" in out, out
    assert f"start it with: overnight daemon --home {home.root}" in out
    assert "queue held by the PROBLEM above" in out.splitlines() and out.count("not valid TOML") == 1, out
    assert json.loads(overnight("status", "--json", home=home.root, check=True).stdout)["held"].startswith(str(home.toml))


def test_a_run_its_trainer_paused_for_disk_space_says_why_in_status_and_to_resume(tmp_path: Path) -> None:
    """min_free_gb pauses a run before a checkpoint it has no room for: status and runs say why (not just
    "paused"), and a resume, which cannot lift it, answers with that reason and its fix."""
    from tests.test_active_version import _apply_control
    home = Home.resolve(tmp_path / "home", create=True)
    why = ("disk_low: only 1.20 GB free on the disk of /h/runs/x, and a checkpoint needs 5.00 GB (min_free_gb = 5 in "
           "overnight.toml, or twice the last checkpoint). Fix: free space there, or lower min_free_gb; the run goes "
           "on by itself")
    store = Store(home.db)
    try:
        _insert(store, home, QUEUED, 1, "paused", reason=why)
    finally:
        store.close()
    for command in ("status", "runs"):
        out = overnight(command, home=home.root, check=True).stdout
        assert f"{QUEUED} paused by its trainer: {why}" in out.splitlines(), out
    overnight("resume", QUEUED, "--wait", "0", home=home.root, check=True)
    _apply_control(home.root)
    events = json.loads(overnight("status", "--json", home=home.root, check=True).stdout)["control_events"]
    assert any("nothing to lift; its trainer paused it: disk_low: only 1.20 GB" in e["message"] for e in events), events
    # a user's pause is no trainer's: nothing said beyond "paused"
    store = Store(home.db)
    try:
        store.update_run(QUEUED, reason="paused at a step boundary")
    finally:
        store.close()
    assert "paused by its trainer" not in overnight("status", home=home.root, check=True).stdout


def test_a_sidecar_alone_in_the_inbox_is_said_with_the_name_it_needs(tmp_path: Path) -> None:
    """xx.jsonl.toml goes with a dataset xx.jsonl.jsonl, so beside xx.jsonl it would wait forever: check notes the
    name it needs, and status lists it once it has waited a minute (a drop still arriving is not listed)."""
    home = Home.resolve(tmp_path / "home", create=True)
    stray, fresh = home.inbox / "xx.jsonl.toml", home.inbox / "later.probes.jsonl"
    stray.write_text("max_steps = 2\n")
    fresh.write_text('{"prompt": "a", "reference": "b"}\n')
    out = overnight("check", str(stray), home=home.root, check=True).stdout
    assert "note: xx.jsonl.toml goes with a dataset named xx.jsonl.jsonl" in out and "name it xx.toml" in out, out
    old = time.time() - 120
    os.utime(stray, (old, old))
    out = overnight("status", home=home.root, check=True).stdout
    assert "waiting in the inbox without their dataset:" in out and "for xx.jsonl, name it xx.toml" in out, out
    assert "later" not in out
    os.utime(fresh, (old, old))
    waiting = json.loads(overnight("status", "--json", home=home.root, check=True).stdout)["waiting"]
    assert len(waiting) == 2 and waiting[0].startswith("later.probes.jsonl waits for a dataset named later"), waiting
    app = OvernightApp(home.root, telemetry=FixedTelemetry(NO_GPU))

    async def body(pilot: Any) -> None:  # the dashboard's strip says them too
        await until(pilot, lambda: app.loads >= 1, what="first load")
        await pilot.pause(0.1)
        assert str(app.needs.render()).strip().startswith("needs you: 2 files without their dataset (later.probes.jsonl "
                                                          "waits for a dataset named later"), app.needs.render()
    drive(app, body, size=(120, 24))


def test_a_pause_of_every_run_is_said_with_how_to_lift_it(tmp_path: Path) -> None:
    """`overnight pause` alone holds every run, the next ones too: status says so even with nothing running."""
    home = Home.resolve(tmp_path / "home", create=True)
    (home.control / "pause").write_text("")
    out = overnight("status", home=home.root, check=True).stdout
    assert "every run paused by control/pause (overnight resume lifts it)" in out.splitlines(), out
    app = OvernightApp(home.root, telemetry=FixedTelemetry(NO_GPU))

    async def body(pilot: Any) -> None:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        await pilot.pause(0.1)
        assert str(app.needs.render()).strip() == ("needs you: every run paused by control/pause (overnight resume "
                                                   "lifts it)")
    drive(app, body, size=(120, 24))
    (home.control / "pause").write_text(QUEUED + "\n")
    assert "every run paused" not in overnight("status", home=home.root, check=True).stdout


def test_the_strip_counts_the_queued_runs_control_pause_holds(tmp_path: Path) -> None:
    """A queued run that control/pause names is passed by until resumed: the dashboard says so, as status does."""
    home = Home.resolve(tmp_path / "home", create=True)
    store = Store(home.db)
    try:
        _insert(store, home, QUEUED, 1, "queued")
    finally:
        store.close()
    (home.control / "pause").write_text(QUEUED + "\n")
    app = OvernightApp(home.root, telemetry=FixedTelemetry(NO_GPU))

    async def body(pilot: Any) -> None:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        await pilot.pause(0.1)
        assert str(app.needs.render()).strip() == (f"needs you: 1 held by control/pause (overnight resume {QUEUED} "
                                                   f"lets it start)")
    drive(app, body, size=(120, 24))


def test_a_reason_naming_a_path_shows_its_file_and_the_cause(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home", create=True)
    path = home.runs / FAILED / "dataset" / "rev.jsonl"
    store = Store(home.db)
    try:
        _insert(store, home, FAILED, 1, "failed", finished=_iso(dt.datetime.now()),
                reason=f"{path}: changed since it was validated (its sha256 differs from config.json's)")
    finally:
        store.close()
    row = next(line for line in overnight("runs", home=home.root, check=True).stdout.splitlines()
               if line.startswith(FAILED))
    assert "rev.jsonl: changed since it was validated" in row and str(home.runs) not in row, row
    rows = json.loads(overnight("runs", "--json", home=home.root, check=True).stdout)
    assert rows[0]["reason"].startswith(str(path))  # the whole of it in --json


def test_a_rejected_file_and_its_error_keep_one_number(tmp_path: Path) -> None:
    """data.tsv, then data.jsonl, then data.tsv again: each file sits beside the error that is its own."""
    home = tmp_path / "home"
    for name, text in (("data.tsv", "a\tb\n"), ("data.jsonl", '{"foo": 1}\n'), ("data.tsv", "c\td\n")):
        (Home.resolve(home, create=True).inbox / name).write_text(text)
        overnight("daemon", "--once", "--settle", "0.1", home=home, timeout=120, check=True)
    rejected = Home.resolve(home).rejected
    assert sorted(p.name for p in rejected.iterdir()) == [
        "data.1.error.txt", "data.1.jsonl", "data.2.error.txt", "data.2.tsv", "data.error.txt", "data.tsv"]
    assert "data.jsonl" in (rejected / "data.1.error.txt").read_text()
    assert "data.tsv" in (rejected / "data.2.error.txt").read_text()


def test_a_rejected_drop_taken_once_fixed_no_longer_needs_the_user(tmp_path: Path, tiny_model: Path) -> None:
    home = Home.resolve(tmp_path / "home", create=True)
    (home.root / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home.control / "stop").write_text("")  # accepted and queued, not trained
    for text in ("junk{\n", '{"prompt": "a", "completion": "b"}\n' * 20):
        (home.inbox / "data.jsonl").write_text(text)
        overnight("daemon", "--once", "--settle", "0.1", home=home.root, timeout=120, check=True)
        if text.startswith("junk"):
            assert [d["file"] for d in json.loads(overnight("status", "--json", home=home.root).stdout)["rejected"]]
    status = json.loads(overnight("status", "--json", home=home.root, check=True).stdout)
    assert status["rejected"] == [] and [r["name"] for r in status["runs"]] == ["data"], status
    assert (home.rejected / "data.error.txt").exists()  # kept: nothing is deleted
