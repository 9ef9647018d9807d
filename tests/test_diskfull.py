"""A full disk never takes the daemon down: training waits and goes on once space is freed. The home lives on a
small tmpfs (skipped where the test cannot mount one); the trainer, the DB and the logs all hit the full disk."""
from __future__ import annotations

import errno
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from daemon.core.space import is_disk_full
from daemon.engine.runner import trainer_processes
from tests.conftest import DaemonProcess, overnight, unavailable, wait_until
from tests.test_control_e2e import drop_all, progress_step, state, write_dataset


def test_full_disk_errors_are_recognised() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert is_disk_full("OSError: [Errno 28] No space left on device: 'checkpoints/step-5'")
    assert not is_disk_full(ValueError("No space left on device"))  # a bug that quotes the text is still a bug
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_disk_messages_show_sizes_precisely_enough_to_compare(tmp_path: Path) -> None:
    """Never "0.0 GB free … needs 0.0 GB": below a GB in MB, above with two decimals; the threshold as written."""
    from daemon.core.space import shortage, size_text

    assert [size_text(n) for n in (0, 512, 40_000, 3_200_000, 999_999_999, 10**9, 1_234_567_890)] == \
        ["0 bytes", "512 bytes", "40 kB", "3 MB", "1000 MB", "1.00 GB", "1.23 GB"]
    run = tmp_path / "runs" / "r-1"
    run.mkdir(parents=True)
    message = shortage(run, None, 10**6)
    assert message and " GB free on the disk of " in message and "needs 1000000.00 GB (min_free_gb = 1000000 in overnight.toml" in message
    assert "Fix: free space there, or lower min_free_gb" in message
    assert shortage(run, None, 0) is None


@pytest.fixture
def small_home(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True).returncode:
        unavailable("cannot mount a tmpfs here (needs root): the only real full-disk test")
    home = mnt / "home"
    for d in ("inbox", "control", "runs"):
        (home / d).mkdir(parents=True)
    yield home
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(path: Path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    for _ in range(64):  # the last bytes too, so no write of any size lands
        try:
            with open(path, "ab") as f:
                f.write(b"\0" * 4096)
        except OSError:
            break


@pytest.mark.e2e
def test_a_full_disk_pauses_the_night_and_freeing_space_resumes_it(small_home: Path, tiny_model: Path,
                                                                   tmp_path: Path) -> None:
    home = small_home
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmin_free_gb = 0.002\n')
    d = DaemonProcess(home)
    try:
        drop_all(write_dataset(home.parent, "full", 5000), home / "inbox")  # same file system: rename
        wait_until(lambda: progress_step(home, "full") >= 6, 120, what="training past a checkpoint")
        filler = home.parent / "filler"
        _fill(filler)
        wait_until(lambda: "disk full" in overnight("status", home=home).stdout, 30, what="PROBLEM line")
        # progress.json cannot be rewritten on a full disk, so the step it shows proves nothing: the trainer's own CPU
        # time does (a training tiny model keeps a core busy; a paused one sleeps between disk checks)
        wait_until(lambda: training_idle(home, 2.0), 90, what="training to halt on the full disk")
        for _ in range(3):  # several daemon passes on a full disk
            assert d.proc.poll() is None, "the daemon exited on a full disk"
            assert training_idle(home, 2.0), "training went on while the disk was full"
        before = progress_step(home, "full")
        filler.unlink()
        wait_until(lambda: progress_step(home, "full") > before + 10, 180, what="training again after space was freed")
        assert d.proc.poll() is None
        status = json.loads(overnight("status", "--json", home=home, check=True).stdout)
        assert not status["problem"]
        overnight("stop", "full", home=home, check=True)
        wait_until(lambda: state(home, "full") == "stopped", 120, what="stopped")
    except (AssertionError, OSError):
        _dump(home)  # the tmpfs goes with the test: say what the daemon and the trainer saw
        raise
    finally:
        d.stop()


def training_idle(home: Path, seconds: float) -> bool:
    """No trainer of the home used more than a tenth of a core over `seconds` (the same processes throughout)."""
    def cpu() -> dict[int, float]:
        used = {}
        for pid, (proc, _) in trainer_processes(home / "runs").items():
            try:
                used[pid] = sum(proc.cpu_times()[:2])
            except psutil.Error:
                pass
        return used

    before = cpu()
    time.sleep(seconds)
    after = cpu()
    return before.keys() == after.keys() and sum(after.values()) - sum(before.values()) < 0.1 * seconds


def _dump(home: Path) -> None:
    sizes = sorted((p.stat().st_size, str(p)) for p in home.parent.rglob("*") if p.is_file())
    print("--- the largest files on the small disk\n" + "\n".join(f"{n:>12,} {p}" for n, p in sizes[-15:]))
    print("--- overnight.log\n" + (home / "overnight.log").read_text(errors="replace")[-6000:])
    for console in (home / "runs").glob("*/console.log"):
        print(f"--- {console}\n" + console.read_text(errors="replace")[-6000:])
