"""The run folder's readers (daemon/core/rundir.py): growing files read incrementally, the newest complete checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from daemon.core.rundir import (JsonlTail, JsonlUpdate, LogTail, LogUpdate, RunFolder, newest_complete, read_jsonl,
                           step_name)


def _line(**record: object) -> str:
    return json.dumps(record) + "\n"


def test_jsonl_tail_returns_complete_records_and_waits_for_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = JsonlTail(path)
    assert tail.poll().records == [] and not tail.poll().reset  # not written yet
    path.write_text(_line(step=1) + "not json\n" + '{"step": 2, "lo')
    first = tail.poll()
    assert first.records == [{"step": 1}] and not first.reset  # the malformed line is skipped, the torn one waits
    with open(path, "a") as f:
        f.write('ss": 0.5}\n')
    assert tail.poll().records == [{"step": 2, "loss": 0.5}]
    assert tail.poll().records == []
    with open(path, "ab") as f:
        f.write(b'{"step": 3, "text": "\xc3"}\n' + _line(step=4).encode())  # bytes cut mid-character
    assert tail.poll().records == [{"step": 4}]


def test_jsonl_tail_reports_a_reset_when_the_file_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(_line(step=s) for s in range(1, 6)))
    tail = JsonlTail(path)
    assert len(tail.poll().records) == 5
    with open(path, "r+") as f:  # truncated in place (same inode), as a resume that drops later steps might
        f.truncate(0)
        f.write(_line(step=1))
    again = tail.poll()
    assert again.reset and again.records == [{"step": 1}]


def test_jsonl_tail_reports_a_reset_when_the_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "evolution.jsonl"
    path.write_text(_line(step=1))
    tail = JsonlTail(path)
    assert tail.poll().records == [{"step": 1}]
    new = tmp_path / "new.jsonl"
    new.write_text(_line(step=1) + _line(step=2))  # longer than what was read: only the inode tells
    os.replace(new, path)
    replaced = tail.poll()
    assert replaced.reset and replaced.records == [{"step": 1}, {"step": 2}]
    tail.restart()  # the caller forgot what it had: no reset to report
    assert tail.poll() == JsonlUpdate([{"step": 1}, {"step": 2}], reset=False)


def test_read_jsonl_leaves_out_an_unfinished_line(tmp_path: Path) -> None:
    path = tmp_path / "evolution.jsonl"
    assert read_jsonl(path) == []
    path.write_text(_line(step=0, probe=1) + '{"step": 1')
    assert read_jsonl(path) == [{"step": 0, "probe": 1}]


def test_log_tail_starts_again_from_the_end_after_truncation(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    tail = LogTail(path, keep=2)
    assert tail.poll() == LogUpdate((), reset=True)  # not written yet: an empty view
    path.write_text("a\nb\nc\n")
    assert tail.poll().lines == ("a", "b", "c")  # appeared after the first poll: everything is new
    with open(path, "a") as f:
        f.write("d\ne")
    update = tail.poll()
    assert update.lines == ("d",) and not update.reset
    path.write_text("x\ny\nz\n")  # rewritten shorter
    again = tail.poll()
    assert again.reset and again.lines == ("y", "z")
    assert tail.poll() is None


def test_log_tail_keep_none_shows_the_whole_file_and_big_jumps_skip_ahead(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    whole = LogTail(path, keep=None).poll()
    assert whole.reset and len(whole.lines) == 100
    tail = LogTail(path, keep=3, max_jump=50)
    assert tail.poll().lines == ("line 97", "line 98", "line 99")
    with open(path, "a") as f:
        f.write("".join(f"more {i}\n" for i in range(20)))
    jumped = tail.poll()
    assert jumped.reset and jumped.lines == ("more 17", "more 18", "more 19")


def test_newest_complete_checkpoint_ignores_incomplete_and_damaged_folders(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    for step in (2, 4, 6):
        folder.checkpoint(step).mkdir(parents=True)
    for step in (2, 4):
        (folder.checkpoint(step) / "trainer_state.json").write_text("{}")
    (folder.checkpoints / "checkpoint-8").mkdir()  # still being written by the Trainer
    (folder.checkpoints / "damaged-step-10").mkdir()  # moved aside after failing to load
    (folder.checkpoints / "damaged-step-10" / "trainer_state.json").write_text("{}")
    assert folder.newest_checkpoint() == folder.checkpoints / step_name(4)  # step-6 has no trainer state
    assert newest_complete(tmp_path / "nowhere") is None


def test_the_scheduler_and_the_trainer_agree_on_the_checkpoint_to_resume(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.checkpoint(3).mkdir(parents=True)
    (folder.checkpoint(3) / "trainer_state.json").write_text("{}")
    folder.checkpoint(5).mkdir()
    assert newest_complete(folder.checkpoints) == folder.newest_checkpoint() == folder.checkpoint(3)


def test_readers_of_json_files_never_raise(tmp_path: Path) -> None:
    folder = RunFolder(str(tmp_path))
    assert folder.read_progress() == {} and folder.options() == {}
    folder.progress.write_text('{"state": "tra')  # cut short by a full disk
    folder.result.write_text("[1, 2]")
    folder.config.write_text(json.dumps({"options": {"seed": 3}}))
    assert folder.read_progress() == {} and folder.read_result() == {} and folder.options() == {"seed": 3}


def test_the_module_does_not_import_torch() -> None:
    code = "import sys, daemon.core.rundir, tui.homedata; sys.exit('torch' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
