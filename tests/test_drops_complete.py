"""A drop is taken only once complete, and the bytes trained are the bytes validated. Real daemon, real writers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.test_control_e2e import run_of, state

pytestmark = pytest.mark.e2e

LINE = json.dumps({"prompt": "2+2=", "completion": "4"})
# Writes `lines` records into PATH with a pause between them: holding the file open, or reopening it each time
# (what `echo … >> FILE` in a loop does).
WRITER = """
import sys, time
path, lines, gap, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "hold"
f = open(path, "a") if hold else None
for i in range(lines):
    if hold:
        f.write(sys.argv[5] + "\\n"); f.flush()
    else:
        with open(path, "a") as g:
            g.write(sys.argv[5] + "\\n")
    time.sleep(gap)
"""


def _writer(path: Path, lines: int, gap: float, hold: bool) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(lines), str(gap),
                             "hold" if hold else "reopen", LINE])


@pytest.fixture
def model_home(home: Path, tiny_model: Path) -> Path:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmax_steps = 2\nprobe_count = 0\n')
    (home / "control" / "stop").write_text("")  # hold the queue: intake first
    return home


def test_slow_writers_straight_into_the_inbox_are_waited_for(model_home: Path, daemon_proc) -> None:
    home = model_home
    daemon_proc("--settle", "6")  # the default
    # 4.5 s between appends: within the settle time. 7 s: longer, but the writer holds the file open.
    writers = [_writer(home / "inbox" / "held.jsonl", 3, 7, hold=True),
               _writer(home / "inbox" / "appended.jsonl", 4, 4.5, hold=False)]
    for w in writers:
        w.wait(60)
    for name in ("held", "appended"):
        run = wait_until(lambda: run_of(home, name), 60, what=f"{name} accepted")
        assert run["records"] == (3 if name == "held" else 4), f"{name} was taken before its writer finished"
    assert "still has it open for writing" in (home / "overnight.log").read_text()


def test_a_dataset_changed_after_validation_is_not_trained(model_home: Path, daemon_proc, tmp_path: Path) -> None:
    home = model_home
    daemon_proc()
    src = tmp_path / "late.jsonl"
    src.write_text((LINE + "\n") * 10)
    src.rename(home / "inbox" / "late.jsonl")
    run = wait_until(lambda: run_of(home, "late"), 30, what="accepted")
    data = Path(run["run_dir"]) / "dataset" / "late.jsonl"
    with open(data, "a") as f:  # a writer that kept the inode after the move
        f.write('{"never": "validated"}\n')
    (home / "control" / "stop").unlink()
    wait_until(lambda: state(home, "late") == "failed", 120, what="failed")
    assert "changed since it was validated" in run_of(home, "late")["reason"]
