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
# (what `echo … >> FILE` in a loop does). Prints when each write happened (monotonic seconds), one a line.
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
    print(time.monotonic(), flush=True)
    time.sleep(gap)
"""


def _writer(path: Path, lines: int, gap: float, hold: bool) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(lines), str(gap),
                             "hold" if hold else "reopen", LINE], stdout=subprocess.PIPE, text=True)


def _gaps(writer: subprocess.Popen) -> list[float]:
    """The writer's real pauses between writes: a loaded machine stretches them past what it was asked."""
    out, _ = writer.communicate(timeout=60)
    times = [float(t) for t in out.split()]
    return [round(b - a, 2) for a, b in zip(times, times[1:])]


@pytest.fixture
def model_home(home: Path, tiny_model: Path) -> Path:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmax_steps = 2\nprobe_count = 0\n')
    (home / "control" / "stop").write_text("")  # hold the queue: intake first
    return home


def test_slow_writers_straight_into_the_inbox_are_waited_for(model_home: Path, daemon_proc) -> None:
    home = model_home
    settle = 6.0
    daemon_proc("--settle", str(settle))  # the default
    # 2 s between appends: a third of the settle time, so that only a machine that froze the writer for 4 s
    # could make a pause outlast it (its real pauses are in the message). 7 s: longer than the settle time, but
    # the writer holds the file open; a loaded machine only lengthens that pause, which changes nothing.
    held = _writer(home / "inbox" / "held.jsonl", 3, 7, hold=True)
    appended = _writer(home / "inbox" / "appended.jsonl", 4, 2, hold=False)
    gaps = {"held": _gaps(held), "appended": _gaps(appended)}
    for name in ("held", "appended"):
        run = wait_until(lambda: run_of(home, name), 60, what=f"{name} accepted")
        assert run["records"] == (3 if name == "held" else 4), \
            f"{name} was taken before its writer finished (its pauses: {gaps[name]} s; settle {settle:g} s)"
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


def test_a_name_back_moments_after_it_was_taken_waits_longer(model_home: Path, daemon_proc) -> None:
    """`>>` with pauses longer than the settle time makes the file anew after each: the second part waits five
    settle times, so a writer still appending gets one run of its later records, not one run per record."""
    import time

    from tests.conftest import overnight
    home = model_home
    daemon_proc("--settle", "1")
    inbox = home / "inbox" / "grow.jsonl"
    inbox.write_text(LINE + "\n")
    wait_until(lambda: run_of(home, "grow"), 30, what="the first part taken")
    for _ in range(2):  # the writer goes on: 1.5 s between appends, past the settle time
        with open(inbox, "a") as f:
            f.write(LINE + "\n")
        time.sleep(1.5)

    def runs() -> list[dict]:
        return [r for r in json.loads(overnight("runs", "--json", home=home, check=True).stdout) if r["name"] == "grow"]
    wait_until(lambda: len(runs()) == 2, 60, what="the rest taken as one run")
    assert sorted(r["records"] for r in runs()) == [1, 2]
    assert "grow.jsonl is back" in (home / "overnight.log").read_text()
