"""A frozen trainer is noticed: no training step for stall_minutes → reported (status, control_events, log), and
with stall_action = "restart" killed and resumed from its last checkpoint. Real daemon, real trainer, SIGSTOP."""
from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

import psutil

from daemon.engine.stall import Escalation, StallWatch, grace_of, stop_grace
from tests.conftest import DaemonProcess, overnight, wait_until
from tests.test_control_e2e import drop_all, progress_step, run_of, state, write_dataset


def test_only_time_spent_training_counts() -> None:
    w = StallWatch(10)
    assert not w.observe("preparing", 0, 0)  # loading the model never counts
    assert not w.observe("training", 3, 100)
    assert not w.observe("training", 3, 109)
    assert w.observe("training", 3, 110)  # reported once…
    assert not w.observe("training", 3, 500)  # …not again
    assert not w.observe("paused", 3, 600) and not w.stalled  # a pause resets the clock
    assert not w.observe("training", 3, 601) and not w.observe("training", 3, 610)
    assert not w.observe("training", 4, 612) and not w.stalled  # a step: the clock restarts
    assert not w.observe("saving", 4, 613) and not w.observe("saving", 4, 622)  # a save gets its own window
    assert w.observe("saving", 4, 623)  # …and a save that hangs is a stall too
    assert "stalled: no training step for 0.166667 minutes (stuck at step 4)" in StallWatch(10, step=4).message("r", 1)


def test_a_stop_request_escalates_on_a_trainer_that_shows_no_progress() -> None:
    e = Escalation(10, since=0)
    assert e.observe((1, 3), 0) is None and e.observe((1, 3), 9) is None
    assert e.observe((2, 4), 9.5) is None  # progress.json changed: the clock restarts
    assert e.observe((2, 4), 19.5) == "SIGTERM"
    assert e.observe((2, 4), 25) is None
    assert e.observe((2, 4), 29.5) == "SIGKILL"
    assert e.observe((2, 4), 100) is None  # sent once
    assert stop_grace(1800, None) == 120 and stop_grace(3, 0.1) == 3 and stop_grace(1800, 90) == 270


def test_a_trainer_gets_the_grace_of_its_own_stall_window() -> None:
    assert grace_of(StallWatch(3), 0.1) == 3 and grace_of(StallWatch(1800), 90) == 270
    assert grace_of(None, None) == 120  # an earlier daemon's leftover: the default window (30 minutes), capped
    frozen = StallWatch(1800)
    frozen.observe("training", 3, 0)
    assert frozen.observe("training", 3, 1800) and grace_of(frozen, 90) == 5  # known frozen: no long wait


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.e2e
def test_a_frozen_trainer_is_ended_by_stop_and_by_the_next_daemon(home: Path, tiny_model: Path, tmp_path: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nstall_minutes = 0.05\n')  # 3 s
    d = DaemonProcess(home)
    frozen = []
    try:
        drop_all(write_dataset(tmp_path, "ice", 5000), home / "inbox")
        wait_until(lambda: progress_step(home, "ice") >= 3, 120, what="training")
        frozen.append(run_of(home, "ice")["pid"])
        os.kill(frozen[-1], signal.SIGSTOP)
        overnight("stop", "ice", home=home, check=True)  # the command cannot reach it: SIGTERM, then SIGKILL
        wait_until(lambda: state(home, "ice") == "stopped", 90, what="a frozen trainer stopped")
        assert run_of(home, "ice")["reason"].startswith("stop requested; trainer killed by signal SIGKILL")
        assert "sending SIGKILL" in (Path(run_of(home, "ice")["run_dir"]) / "console.log").read_text()
        assert _gone(frozen[-1])

        drop_all(write_dataset(tmp_path, "left", 5000), home / "inbox")
        wait_until(lambda: progress_step(home, "left") >= 6, 120, what="training past a checkpoint")
        frozen.append(run_of(home, "left")["pid"])
        os.kill(frozen[-1], signal.SIGSTOP)
        d.stop(signal.SIGKILL)  # the daemon dies; its stopped trainer stays behind
        d = DaemonProcess(home)
        wait_until(lambda: state(home, "left") == "training" and run_of(home, "left")["pid"] != frozen[-1], 120,
                   what="the run resumed by a new trainer")
        assert _gone(frozen[-1])  # the leftover checkpointed and exited before the new one started
        assert "left running by an earlier daemon" in (home / "overnight.log").read_text()
        overnight("stop", "left", home=home, check=True)
        wait_until(lambda: state(home, "left") == "stopped", 90, what="stopped")
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        d.stop()


def _status(home: Path) -> dict:
    return json.loads(overnight("status", "--json", home=home, check=True).stdout)


@pytest.mark.e2e
def test_a_frozen_trainer_is_reported_then_restarted(home: Path, tiny_model: Path, daemon_proc, tmp_path: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nstall_minutes = 0.05\n')  # 3 s
    daemon_proc()
    drop_all(write_dataset(tmp_path, "frozen", 5000), home / "inbox")
    wait_until(lambda: progress_step(home, "frozen") >= 3, 120, what="training")
    pid = run_of(home, "frozen")["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "stalled" in (_status(home).get("problem") or ""), 60, what="stall reported")
        status = _status(home)
        assert "frozen" in status["problem"] and "Fix:" in status["problem"]
        assert any(e["status"] == "stalled" for e in status["control_events"])
        assert "stalled: no training step" in (home / "overnight.log").read_text()
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: not _status(home).get("problem"), 60, what="the stall clears once steps move again")
    overnight("stop", "frozen", home=home, check=True)
    wait_until(lambda: state(home, "frozen") == "stopped", 120, what="stopped")

    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nstall_minutes = 0.05\n'
                                         f'stall_action = "restart"\n')
    drop_all(write_dataset(tmp_path, "restart", 40), home / "inbox")
    wait_until(lambda: progress_step(home, "restart") >= 6, 120, what="training past a checkpoint")
    first = run_of(home, "restart")["pid"]
    # A trainer keeps the stall window it started with. The one started next gets the default 30 minutes: on a
    # loaded machine its start or a slow step could outlast 3 s and be restarted again and again (a crash loop
    # that fails the run); only the freeze below must count as a stall.
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nstall_action = "restart"\n')
    os.kill(first, signal.SIGSTOP)
    try:
        wait_until(lambda: state(home, "restart") == "completed", 240, what="restarted and completed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(first, signal.SIGKILL)  # never leave a stopped trainer behind if the daemon did not
    assert f"the trainer (PID {first}) may be frozen" in (home / "overnight.log").read_text()  # the one we froze
    log = (Path(run_of(home, "restart")["run_dir"]) / "console.log").read_text()
    assert "restarted after a stall; resuming from its last checkpoint" in log and "resuming from checkpoints/step-" in log
