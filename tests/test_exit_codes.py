"""Exit codes a script can trust (SPEC 13): 0 done, 1 refused or invalid, 2 usage. A command the daemon rejects,
one the CLI can already tell is invalid, and a run reference that names several runs all exit 1."""
from __future__ import annotations

import json
from pathlib import Path

from daemon.engine.store import Store
from tests.conftest import budget, overnight


def _run(home: Path, rid: str, name: str, state: str = "completed", model: bool = False) -> None:
    """A run row as the daemon leaves it, with its folder and console.log; `model`: registered as NAME's next
    version, with an adapter, as if it had trained."""
    d = home / "runs" / rid
    (d / "adapter").mkdir(parents=True)
    (d / "console.log").write_text(f"log of {rid}\n")
    store = Store(home / "overnight.db")
    try:
        store.insert_run({"id": rid, "name": name, "dataset": f"{name}.jsonl", "state": state, "priority": 0,
                          "seq": store.next_seq(), "run_dir": str(d), "base_model": "tiny"})
        if model:
            (d / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny"}))
            (d / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
            store.add_model({"name": name, "run_id": rid, "base_model": "tiny", "metrics": {},
                             "adapter_path": str(d / "adapter")})
    finally:
        store.close()


def _written(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "control").iterdir() if p.is_file())


# --- refused by the CLI, with or without a daemon ---------------------------------------------------------------
def test_activate_or_delete_of_a_version_that_does_not_exist_exits_1_and_writes_nothing(home: Path) -> None:
    _run(home, "support-20260101-000000", "support", model=True)
    for command in ("activate", "delete"):
        res = overnight(command, "support", "7", home=home)
        assert res.returncode == 1, (command, res.stdout, res.stderr)
        assert "no model support version 7 (support has v1)" in res.stderr and "overnight models" in res.stderr
        res = overnight(command, "nosuch", "1", home=home)
        assert res.returncode == 1 and "no model nosuch version 1 (no model has that name)" in res.stderr
    # without a daemon nothing would tell the user until it starts: a refused command is never left behind
    assert _written(home) == []


def test_usage_errors_exit_2(home: Path) -> None:
    res = overnight("activate", "support", "latest", home=home)
    assert res.returncode == 2 and "VERSION" in res.stderr, res.stderr
    assert overnight("logs", home=home).returncode == 2
    res = overnight("priority", "support", "2000000", home=home)  # the range a control/priority line has too
    assert res.returncode == 2 and "-1000000<=x<=1000000" in res.stderr and _written(home) == [], res.stderr


def test_a_negative_priority_is_a_value_not_an_option(home: Path) -> None:
    _run(home, "support-20260101-000000", "support", state="queued")
    res = overnight("priority", "support", "-3", "--wait", "0", home=home)
    assert res.returncode == 0, res.stderr
    [written] = _written(home)
    assert (home / "control" / written).read_text().strip() == "support-20260101-000000 -3"


# --- run references: an exact id, else exactly one run ----------------------------------------------------------
def test_logs_with_a_prefix_of_several_runs_is_refused_listing_them(home: Path) -> None:
    _run(home, "support-20260101-000000", "support")
    _run(home, "support-20260102-000000", "support", state="failed")
    _run(home, "supper-20260103-000000", "supper")
    for ref in ("support", "sup", "support-202601"):
        res = overnight("logs", ref, home=home)
        assert res.returncode == 1 and res.stdout == "", (ref, res.stdout, res.stderr)
        assert f"{ref!r} matches" in res.stderr and "name one by its id" in res.stderr
        assert "support-20260102-000000 (failed)" in res.stderr and "support-20260101-000000 (completed)" in res.stderr
    assert "supper-20260103-000000" in overnight("logs", "sup", home=home).stderr
    # one match, by prefix or by its whole id, is that run
    assert overnight("logs", "suppe", home=home, check=True).stdout == "log of supper-20260103-000000\n"
    assert overnight("logs", "support-20260102", home=home, check=True).stdout == "log of support-20260102-000000\n"


def test_an_exact_id_wins_over_the_runs_it_is_a_prefix_of(home: Path) -> None:
    _run(home, "chat-20260101-000000", "chat")
    _run(home, "chat-20260101-000000-2", "chat")  # two drops of chat in the same second
    res = overnight("logs", "chat-20260101-000000", home=home, check=True)
    assert res.stdout == "log of chat-20260101-000000\n"


def test_a_runs_exact_name_wins_over_the_ids_it_is_a_prefix_of(home: Path) -> None:
    _run(home, "big-20260101-000000", "big")
    _run(home, "big2-20260102-000000", "big2")
    assert overnight("logs", "big", home=home, check=True).stdout == "log of big-20260101-000000\n"


def test_priority_of_a_sweep_sets_every_queued_run_of_it(home: Path) -> None:
    """A sweep's group id, or the name its queued runs share, re-orders all of them (as the dashboard's +/- and a
    control/priority line naming it do); a name still waiting in the inbox is kept for its run."""
    from tests.test_active_version import _apply_control
    store = Store(home / "overnight.db")
    try:
        for i in (1, 2):
            rid = f"sw-lr{i}-20260101-000000"
            (home / "runs" / rid).mkdir(parents=True)
            store.insert_run({"id": rid, "name": "sw", "dataset": "sw.jsonl", "state": "queued", "priority": 0,
                              "seq": store.next_seq(), "run_dir": str(home / "runs" / rid), "base_model": "tiny",
                              "group_id": "sw-20260101-000000"})
    finally:
        store.close()

    def priorities() -> list[int]:
        return [r["priority"] for r in json.loads(overnight("runs", "--json", home=home, check=True).stdout)]

    for ref, value in (("sw-20260101-000000", 5), ("sw", -2)):
        overnight("priority", ref, str(value), "--wait", "0", home=home, check=True)
        _apply_control(home)
        assert priorities() == [value, value], ref
    (home / "inbox" / "later.jsonl").write_text('{"text": "x"}\n')
    overnight("priority", "later", "9", "--wait", "0", home=home, check=True)
    assert [p.read_text() for p in (home / "control").glob("priority.*")] == ["later 9\n"]


def test_a_steering_command_with_an_ambiguous_run_writes_nothing(home: Path) -> None:
    _run(home, "a-20260101-000000", "a", state="queued")
    _run(home, "a-20260102-000000", "a", state="queued")
    res = overnight("priority", "a", "5", home=home)
    assert res.returncode == 1 and "matches 2 runs" in res.stderr, res.stderr
    assert _written(home) == []


def test_a_command_the_runs_state_refuses_is_refused_without_a_daemon_too(home: Path) -> None:
    """No daemon: a resume of a completed run, or a skip of a stopped one, would be written only to be rejected at
    the daemon's next start (exit 0 now, nothing applied): refused at once instead."""
    _run(home, "done-20260101-000000", "done")
    _run(home, "held-20260101-000000", "held", state="stopped")
    res = overnight("resume", "done", home=home)
    assert res.returncode == 1 and "is completed: it has nothing left to train" in res.stderr, res.stderr
    assert 'init_adapter = "done"' in res.stderr
    for kind in ("skip", "stop", "pause"):
        res = overnight(kind, "held", home=home)
        assert res.returncode == 1 and f"is stopped; {kind} applies to runs that are queued or" in res.stderr
    assert _written(home) == []
    assert overnight("resume", "held", "--wait", "0", home=home).returncode == 0  # a stopped run is resumed
    assert _written(home) != []


# --- rejected by the daemon ---------------------------------------------------------------------------------------
def test_what_the_daemon_rejects_exits_1_and_what_it_applies_exits_0(home: Path, daemon_proc) -> None:
    _run(home, "support-20260101-000000", "support", model=True)
    _run(home, "support-20260102-000000", "support", model=True)
    daemon_proc()
    wait = str(budget(60))
    # nothing is training: the daemon cannot tell which run to skip (as with several running)
    res = overnight("skip", "--wait", wait, home=home)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "rejected: control/skip." in res.stdout and "no job is running" in res.stdout
    assert "Fix: name the run (overnight skip RUN_ID)" in res.stdout
    res = overnight("activate", "support", "1", "--wait", wait, home=home)
    assert res.returncode == 0 and "applied: activate support v1" in res.stdout, (res.stdout, res.stderr)


def test_a_home_that_is_not_there_is_refused_not_shown_empty(tmp_path: Path) -> None:
    """A mistyped --home: every command but the daemon and the demo says so (exit 1) and creates nothing."""
    typo = tmp_path / "nope"
    (tmp_path / "x.jsonl").write_text('{"text": "a"}\n')
    for args in (["status"], ["runs", "--json"], ["models"], ["pause"], ["add", str(tmp_path / "x.jsonl")]):
        res = overnight(*args, home=typo)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert f"{typo}: no such folder, so no overnight home there. Fix: check --home" in res.stderr, res.stderr
    assert not typo.exists()


def test_a_refused_command_leaves_a_folder_that_is_no_home_as_it_was(tmp_path: Path) -> None:
    """A command refused before anything is written (no such run, no such model version) does not make a home of
    the folder it ran in; one that is written does (its file waits in control/ for a daemon)."""
    folder = tmp_path / "project"
    folder.mkdir()
    for args in (["delete", "support", "3"], ["activate", "support", "1"], ["pause", "support"],
                 ["stop", "support"], ["priority", "support", "5"], ["resume", "support"]):
        res = overnight(*args, home=folder)
        assert res.returncode == 1 and "Error: no " in res.stderr, (args, res.stderr)
        assert list(folder.iterdir()) == [], args
    for command in ("pause", "stop", "skip", "resume"):  # "$RUN" with RUN unset: not every run
        res = overnight(command, "", home=folder)
        assert res.returncode == 2 and "RUN is empty" in res.stderr, (command, res.stderr)
    assert list(folder.iterdir()) == []
    overnight("pause", "--wait", "0", home=folder, check=True)
    assert [p.name.split(".")[0] for p in (folder / "control").iterdir() if p.is_file()] == ["pause"]


def test_check_of_a_file_that_is_not_there_says_the_fix(tmp_path: Path) -> None:
    res = overnight("check", str(tmp_path / "missing.jsonl"))
    assert res.returncode == 1 and "missing.jsonl: no such file. Fix: check the path" in res.stdout, res.stdout


def test_status_without_a_daemon_says_a_training_run_resumes_when_it_starts(home: Path) -> None:
    """The row is what the daemon last recorded: no ETA counting down, and what happens next."""
    _run(home, "alp-20260101-000000", "alp", state="training")
    for command in ("status", "runs"):
        out = overnight(command, home=home, check=True).stdout
        assert "alp-20260101-000000 was training when the daemon went away: it resumes from its last checkpoint " \
               "when the daemon starts" in out, out
