"""`overnight stop` when no run exists at all: what the user is told, what it leaves in control/, what the daemon
answers, and that it really holds the queue until `overnight resume`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import budget, drop, overnight, wait_until
from tests.test_control_e2e import _events, state

HELD = "stop file present: no new job starts until control/stop is removed"  # the daemon's acknowledgement
HINT = "no new job starts until: overnight resume"


def test_stop_with_no_run_and_no_daemon_is_held_for_the_next_daemon(home, daemon_proc):
    stop = home / "control" / "stop"
    res = overnight("stop", home=home)
    assert res.returncode == 0, res.stderr
    wrote, *said = res.stdout.splitlines()
    assert wrote.startswith(f"wrote {stop}.") and said == [
        f"no daemon is running: it applies this when it starts (overnight daemon --home {home})", HINT]
    assert Path(wrote.split()[-1]).read_text() == ""  # names no run: it holds the whole queue

    again = overnight("stop", home=home)  # a command of its own: applied after the first, never lost
    assert again.returncode == 0 and again.stdout.splitlines()[1:] == said

    daemon_proc()
    wait_until(lambda: f"control: {HELD}" in (home / "overnight.log").read_text(), budget(15),
               what="the daemon acknowledges the stop it found")
    wait_until(lambda: len(_events(home)) == 2, budget(15), what="both stops answered")
    assert [(e["command"], e["status"], e["message"]) for e in _events(home)] == [  # newest first
        ("stop", "applied", "stop: control/stop is in place already; no new job starts until it is removed"),
        ("stop", "applied", HELD)]
    assert stop.read_text() == "" and not list((home / "control").glob("stop.*"))
    status = overnight("status", home=home)
    assert status.returncode == 0 and f"applied: {HELD}" in status.stdout
    assert stop.exists()

    res = overnight("resume", home=home, timeout=budget(60))
    assert res.returncode == 0 and "applied: resume: control/stop lifted: the queue goes on" in res.stdout
    assert not stop.exists() and list((home / "control" / "done").glob("*-stop"))


@pytest.mark.e2e
def test_stop_with_no_run_and_a_daemon_holds_the_queue_until_resume(home, tiny_model, daemon_proc, tmp_path):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    daemon_proc()
    stop = home / "control" / "stop"
    res = overnight("stop", "--wait", str(budget(30)), home=home, timeout=budget(60))
    assert res.returncode == 0, res.stderr
    wrote, *said = res.stdout.splitlines()
    assert wrote.startswith(f"wrote {stop}.") and said == [f"applied: {HELD}", HINT]
    assert stop.exists()  # held, not consumed (the daemon leaves control/stop in place for the CLI's stop.ID)

    # The daemon answers a held stop once: a second stop must not sit out --wait for an answer that never comes.
    t0 = time.monotonic()
    again = overnight("stop", "--wait", "30", home=home)
    assert again.returncode == 0 and again.stdout.splitlines() == [f"already stopped: {stop} is in place", HINT]
    assert time.monotonic() - t0 < budget(15)
    assert len([e for e in _events(home) if e["command"] == "stop"]) == 1

    rows = [json.dumps({"prompt": f"say {w}\n", "completion": w}) for w in ("one", "two", "three", "four") * 4]
    (tmp_path / "held.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "held.toml").write_text("max_steps = 1\nbatch_size = 2\nmax_length = 64\nprobe_count = 0\n"
                                        "eval_fraction = 0.0\n")
    drop(tmp_path / "held.toml", home / "inbox")
    drop(tmp_path / "held.jsonl", home / "inbox")
    wait_until(lambda: state(home, "held") == "queued", budget(30), what="the drop is queued")
    time.sleep(3)  # several daemon passes: a queue that is not held starts the run within one
    assert state(home, "held") == "queued"

    res = overnight("resume", "--wait", str(budget(30)), home=home, timeout=budget(60))
    assert "applied: resume: control/stop lifted: the queue goes on" in res.stdout
    wait_until(lambda: state(home, "held") == "completed", budget(120), interval=0.5, what="the run trains")
