"""`--wait SECONDS` on the commands that write a control file: how long the CLI waits for the daemon's answer.

In-process (click's runner) with a daemon that is "alive" by patch and answers through the real DB: fast."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon.client import cli
from daemon.core import control
from daemon.client.cli import main
from daemon.engine.store import Store
from tests.conftest import budget

WRITERS = ["pause", "resume", "stop", "skip", "priority", "activate", "delete"]


@pytest.fixture
def live_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    Store(home / "overnight.db").close()
    monkeypatch.setattr(cli, "daemon_alive", lambda h: {"pid": 1})
    return home


def _answer_when_written(home: Path, kind: str, message: str) -> threading.Thread:
    """The daemon's part: once control/KIND.ID appears, record the answer the CLI waits for (with that ID)."""
    def answer() -> None:
        end = time.monotonic() + 60
        while not _written(home, kind) and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(0.3)  # the CLI is polling by now
        store = Store(home / "overnight.db")
        store.control_event(kind, "some other", "daemon", "applied", "another command's answer", command_id="x")
        store.control_event(kind, None, "daemon", "applied", message, command_id=_written(home, kind)[0].name[6:])
        store.close()

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    return t


def _written(home: Path, kind: str) -> list[Path]:
    return list((home / "control").glob(f"{kind}.*"))


@pytest.mark.parametrize("command", WRITERS)
def test_every_command_that_writes_a_control_file_takes_wait(command: str) -> None:
    res = CliRunner().invoke(main, [command, "--help"])
    assert res.exit_code == 0 and "--wait SECONDS" in res.output and "default: 3" in res.output, res.output


def test_wait_returns_as_soon_as_the_daemon_answers(live_home: Path) -> None:
    answering = _answer_when_written(live_home, "pause", "pause: no job is running; held")
    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["pause", "--home", str(live_home), "--wait", "120"])
    took = time.monotonic() - t0
    answering.join(5)
    assert res.exit_code == 0, res.output
    assert "applied: pause: no job is running; held" in res.output and "another command" not in res.output
    # waiting out the whole 120 s instead of ending on the answer is what this catches
    assert took < budget(30), f"the CLI took {took:.1f}s to print an answer written after 0.3s"


def test_no_answer_within_wait_says_so_after_waiting_that_long(live_home: Path) -> None:
    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["pause", "--home", str(live_home), "--wait", "0.6"])
    took = time.monotonic() - t0
    assert res.exit_code == 0, res.output
    assert "not acknowledged yet (waited 0.6 s); see overnight status" in res.output
    assert took >= 0.6  # a lower bound: a loaded machine only makes it longer
    assert _written(live_home, "pause")  # written all the same: the daemon applies it later


def test_wait_0_does_not_wait(live_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("--wait 0 must not wait for an answer")

    monkeypatch.setattr(control.Ticket, "wait", never)
    res = CliRunner().invoke(main, ["pause", "--home", str(live_home), "--wait", "0"])
    assert res.exit_code == 0, res.output
    assert "not waiting for the daemon's answer" in res.output and _written(live_home, "pause")


def test_a_negative_wait_is_refused(live_home: Path) -> None:
    res = CliRunner().invoke(main, ["pause", "--home", str(live_home), "--wait", "-1"])
    assert res.exit_code == 2 and "--wait" in res.output
    assert not _written(live_home, "pause")
