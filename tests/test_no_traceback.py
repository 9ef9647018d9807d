"""Process-level faults of the home answered in one line with the fix, never a traceback (issue 20, item 6/7):
a folder of the home replaced by a file, folders removed under a running daemon, a nested overnight.toml or sidecar,
a deleted overnight.db, `service install` for a home that does not exist."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import drop, overnight, wait_until

NESTED = "a = " + "[" * 5000 + "]" * 5000 + "\n"


def _status(home: Path) -> dict:
    return json.loads(overnight("status", "--json", home=home, check=True).stdout)


def _log(home: Path) -> str:
    return (home / "overnight.log").read_text()


@pytest.mark.parametrize("command", [["pause"], ["resume"], ["add", "FILE"]])
def test_a_file_where_a_home_folder_belongs_is_one_line_with_the_fix(tmp_path: Path, command: list[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "inbox").write_text("not a folder")
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello"}\n')
    res = overnight(*[str(data) if c == "FILE" else c for c in command], home=home)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    [line] = res.stderr.strip().splitlines()
    assert f"{home / 'inbox'} is a file, not a folder" in line and f"Fix: move it aside (mv {home / 'inbox'}" in line
    assert (home / "inbox").read_text() == "not a folder"  # nothing touched
    status = overnight("status", home=home)  # no daemon to say it: status does
    assert status.returncode == 0 and f"PROBLEM: {home / 'inbox'} is a file, not a folder" in status.stdout


def test_status_says_a_missing_db_is_rebuilt_by_the_daemon_at_its_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for rid in ("a-20260101-000000", "b-20260101-000000"):
        (home / "runs" / rid).mkdir(parents=True)
        (home / "runs" / rid / "metadata.json").write_text(json.dumps({"id": rid, "state": "completed"}))
    res = overnight("status", home=home, check=True)
    problem = next(line for line in res.stdout.splitlines() if line.startswith("PROBLEM: "))
    assert f"{home / 'overnight.db'} is missing" in problem and "holds 2 run folders" in problem
    assert f"Fix: start the daemon (overnight daemon --home {home}): it rebuilds the DB" in problem
    assert "runs: none" in res.stdout
    assert _status(home)["problem"] == problem.removeprefix("PROBLEM: ")
    for command in ("runs", "models"):  # not "no runs yet": the runs are there, their index is not
        said = overnight(command, home=home, check=True).stdout
        assert f"{home / 'overnight.db'} is missing" in said and "yet" not in said, said
    shutil.rmtree(home / "runs")
    (home / "runs").mkdir()
    assert _status(home)["problem"] is None  # an empty home has nothing to rebuild


def test_the_daemon_recreates_removed_home_folders_and_reports_a_file_in_their_place(home: Path, daemon_proc) -> None:
    d = daemon_proc()
    for name in ("control", "runs", "inbox"):  # rm -rf, at once (rmtree races the daemon recreating a subfolder)
        os.rename(home / name, home.parent / f"removed-{name}")
    wait_until(lambda: all((home / n).is_dir() for n in ("control/done", "runs", "inbox/rejected")), 10,
               what="the folders recreated")
    wait_until(lambda: "missing (removed while the daemon ran?): recreated" in _log(home), 10, what="the log line")
    assert overnight("pause", home=home).returncode == 0  # commands work again at once
    log = _log(home)
    assert "internal error" not in log and "Traceback" not in log, log
    _replace_with_a_file(home / "control", home.parent)
    fix = f"{home / 'control'} is a file, not a folder"
    wait_until(lambda: fix in (_status(home)["problem"] or ""), 10, what="the PROBLEM line")
    (home / "control").unlink()
    wait_until(lambda: (home / "control" / "done").is_dir() and not _status(home)["problem"], 10, what="recovery")
    assert d.proc.poll() is None
    log = _log(home)
    assert "internal error" not in log and "Traceback" not in log, log
    assert log.count(fix) == 1, log  # said once, not at every pass


def _replace_with_a_file(folder: Path, scratch: Path) -> None:
    """Put a file where `folder` is, under a daemon that recreates the folder as soon as it is gone."""
    blocker = scratch / "blocker"
    blocker.write_text("in the way")
    for n in range(100):
        if folder.is_dir():
            os.rename(folder, scratch / f"aside-{n}")
        try:
            os.rename(blocker, folder)
            return
        except OSError:
            continue
    raise AssertionError(f"could not put a file at {folder}")


def test_a_nested_overnight_toml_is_one_problem_line_logged_once_per_version(home: Path, daemon_proc) -> None:
    d = daemon_proc()
    toml = home / "overnight.toml"
    toml.write_text(NESTED)
    where = f"{toml}: line 1: values nested more than"
    wait_until(lambda: where in (_status(home)["problem"] or ""), 10, what="the PROBLEM line")
    time.sleep(1.5)  # several passes of the loop
    toml.write_text("x = 1\n" + NESTED)  # another version of the file: said again, at its line
    wait_until(lambda: f"{toml}: line 2: values nested" in (_status(home)["problem"] or ""), 10, what="version 2")
    time.sleep(1.5)
    toml.write_text("")
    wait_until(lambda: not _status(home)["problem"], 10, what="the problem cleared")
    assert d.proc.poll() is None
    log = _log(home)
    assert "internal error" not in log and "Traceback" not in log and "RecursionError" not in log, log
    assert log.count(where) == 1 and log.count(f"{toml}: line 2: values nested") == 1, log


@pytest.mark.e2e
def test_a_nested_sidecar_is_rejected_naming_the_sidecar_not_the_dataset(home: Path, daemon_proc, tiny_model: Path,
                                                                         tmp_path: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (tmp_path / "deep.toml").write_text("lora_r = 8\n" + NESTED)
    (tmp_path / "deep.jsonl").write_text('{"text": "hello"}\n{"text": "world"}\n')
    res = overnight("check", str(tmp_path / "deep.jsonl"), str(tmp_path / "deep.toml"), home=home)
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr, res.stderr
    assert f"{tmp_path / 'deep.toml'}: line 2: values nested more than" in res.stdout and "Fix:" in res.stdout
    d = daemon_proc()
    drop(tmp_path / "deep.toml", home / "inbox")
    drop(tmp_path / "deep.jsonl", home / "inbox")
    error = home / "inbox" / "rejected" / "deep.error.txt"
    wait_until(error.exists, 30, what="the drop rejected")
    text = error.read_text()
    assert "deep.toml: line 2: values nested more than" in text and "Fix:" in text, text
    assert "likely a bug" not in text and "RecursionError" not in text, text
    assert d.proc.poll() is None
