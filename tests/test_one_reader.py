"""One owner per decision: overnight.toml's one reader per process (options.owner_toml) and the PROBLEM rule
(morning.problem) that `overnight status` and the dashboard share."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from unittest import mock

from daemon.core import morning, options
from daemon.core.home import Home
from daemon.core.options import OPTIONS, LiveSetting, OwnerToml, owner_options, owner_toml


def write(p: Path, text: str, mtime_ns: int | None = None) -> Path:
    p.write_text(text)
    if mtime_ns is not None:
        os.utime(p, ns=(mtime_ns, mtime_ns))
    return p


def test_the_reader_parses_again_only_when_the_file_changes(tmp_path):
    toml = write(tmp_path / "overnight.toml", "min_free_gb = 5\n", 10**18)
    reader = OwnerToml(toml)
    with mock.patch("daemon.core.options.load_home_toml", wraps=options.load_home_toml) as load:
        assert reader.read().values == {"min_free_gb": 5} and reader.read().problem is None
        assert load.call_count == 1
        write(toml, "min_free_gb = 7\n", 10**18)  # same size, same time, same inode: not seen
        assert reader.read().values == {"min_free_gb": 5} and load.call_count == 1
        reader.forget()  # the daemon's SIGHUP
        assert reader.read().values == {"min_free_gb": 7} and load.call_count == 2
        write(toml, "min_free_gb = 12\n")
        assert reader.read().values == {"min_free_gb": 12} and load.call_count == 3


def test_a_broken_file_keeps_the_last_good_values_and_says_why_per_version(tmp_path):
    toml = tmp_path / "overnight.toml"
    reader = OwnerToml(toml)
    assert reader.read().values == {} and reader.read().problem is None and reader.read().version is None
    write(toml, "[hooks]\non_fail = ['true']\n")
    good = reader.read()
    write(toml, "[hooks\non_fail = ['true']\n")  # an edit half done
    broken = reader.read()
    assert broken.values == good.values == {"hooks": {"on_fail": ["true"]}}
    assert broken.problem and str(toml) in broken.problem and "not valid TOML" in broken.problem
    assert broken.version != good.version and reader.read() is broken  # not parsed again while unchanged
    toml.unlink()
    assert reader.read().values == {} and reader.read().problem is None  # no file: the defaults


def test_one_reader_per_file_in_a_process(tmp_path):
    toml = write(tmp_path / "overnight.toml", "hook_timeout_s = 5\n")
    assert owner_toml(toml) is owner_toml(tmp_path / "." / "overnight.toml")
    assert owner_options(toml) == {"hook_timeout_s": 5}


def test_live_settings_share_the_reader_and_each_tells_a_broken_file_once(tmp_path):
    toml = write(tmp_path / "overnight.toml", "min_free_gb = 3\n")
    said: list[str] = []
    a, b = LiveSetting(toml, "min_free_gb", said.append), LiveSetting(toml, "hook_timeout_s", said.append)
    assert (a(), b()) == (3, OPTIONS["hook_timeout_s"].default)
    write(toml, "min_free_gb = 3\nbroken\n")
    assert (a(), a(), b(), b()) == (3, 3, OPTIONS["hook_timeout_s"].default, OPTIONS["hook_timeout_s"].default)
    assert len(said) == 2 and "keeps min_free_gb = 3" in said[0] and "keeps hook_timeout_s" in said[1]


# --- the PROBLEM line ---------------------------------------------------------------------------------------
ALIVE = {"pid": os.getpid(), "create_time": 0.0}


def test_the_running_daemons_problem_comes_first(tmp_path):
    h = Home(tmp_path)
    h.create()
    assert morning.problem(h, {"problem": "overnight.toml: broken"}, ALIVE) == "overnight.toml: broken"
    assert morning.problem(h, {"problem": "overnight.toml: broken"}, None) is None  # an old daemon's row: not now


def test_a_full_disk_is_seen_without_the_daemon(tmp_path):
    h = Home(tmp_path)
    h.create()
    with mock.patch("daemon.core.morning.disk_full_problem", return_value="disk full: 0 bytes free"):
        assert morning.problem(h, None, None) == "disk full: 0 bytes free"
        assert morning.problem(h, {"problem": "p"}, ALIVE) == "p"


def test_no_daemon_a_damaged_home_or_a_missing_db_with_runs(tmp_path):
    h = Home(tmp_path)
    h.create()
    assert morning.problem(h, None, None) is None
    shutil.rmtree(h.control)
    h.control.write_text("")
    assert "not a folder" in morning.problem(h, None, None)
    assert morning.problem(h, None, {"pid": os.getpid(), "create_time": 9e99}) is None  # a daemon says it itself


# --- leftovers: one helper for step-N, the state sets in render ---------------------------------------------
def test_step_of_reads_a_step_folder_or_its_name():
    from daemon.core.rundir import step_name, step_of
    assert step_of(step_name(12)) == 12 and step_of(Path("/h/runs/r/checkpoints") / step_name(7)) == 7
    assert step_of(None) == step_of("") == step_of("checkpoint-5") == step_of("damaged-step-5") == 0


def test_render_asks_the_state_sets():
    from daemon.core import render
    from daemon.core.states import ACTIVE, State
    run = {"id": "r1", "priority": 0, "step": 3, "total_steps": 10, "loss": None, "eval_loss": None, "eta_s": 60,
           "base_model": "/m/tiny", "gpu_set": [0], "reason": "out of memory"}
    for state in State:
        line = render.runs_table([{**run, "state": state.value}]).splitlines()[1]
        assert ("1m" in line) == (state == State.TRAINING), state  # a paused run's ETA would stand still
        assert line.split()[2] == ("0" if state in ACTIVE else "-"), state  # the GPU column
        # why it ended, or why it is not training yet (a pending Slurm job, machines still to join)
        assert ("out of memory" in line) == (state in (State.FAILED, State.STOPPED, State.SKIPPED, State.PRUNED,
                                                       State.PREPARING)), state
