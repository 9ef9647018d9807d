"""Shared test helpers: temp homes, the real daemon as a subprocess, the embedded tiny model."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

# Two test workers each starting 2-thread OpenMP trainers on a 2-core machine thrash (measured 3.5x slower):
# one thread per trainer. Inherited by every daemon and trainer the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The suite trains on the CPU on every machine, chosen explicitly (the trainer honours an empty CUDA_VISIBLE_DEVICES
# as "the CPU on purpose"): on a GPU box the exact-resume tests would otherwise run bf16 attention backward on CUDA,
# which is not bit-deterministic. Set before torch is imported here, and inherited by every daemon and trainer.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

REPO = Path(__file__).resolve().parents[1]
# One factor for every time or CPU budget a test keeps (a shared, loaded CI machine: OVERNIGHT_TEST_SLACK=3). Speed
# targets are benchmarks (bench/), not tests: a budget here only catches what is wrong by an order of magnitude.
SLACK = float(os.environ.get("OVERNIGHT_TEST_SLACK", "1"))
REALDATA = Path(os.environ.get("OVERNIGHT_REALDATA", REPO.parent / "shared" / "realdata"))


def unavailable(reason: str) -> None:
    """What a test cannot run without: skipped on a developer's machine, a failure in CI (`CI` set), where a skip
    would hide that the real thing was never tested."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run this test)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def realdata() -> Path:
    """The real datasets users drop (../shared/realdata, or OVERNIGHT_REALDATA)."""
    if not REALDATA.is_dir():
        unavailable(f"real datasets not found at {REALDATA} (OVERNIGHT_REALDATA names another place)")
    return REALDATA


def budget(seconds: float) -> float:
    """A test's time or CPU budget, scaled by OVERNIGHT_TEST_SLACK."""
    return seconds * SLACK


def overnight(*args: str, home: Path | None = None, check: bool = False, timeout: float = 120,
              input: str | None = None) -> subprocess.CompletedProcess:
    """Run the `overnight` CLI exactly as a user would (python -m daemon == the console script)."""
    cmd = [sys.executable, "-m", "daemon", *args]
    if home is not None:
        cmd += ["--home", str(home)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, input=input,
                          cwd=REPO)


def wait_until(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.1, what: str = "") -> object:
    """Poll until `predicate()` is truthy; fail the test with `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


class DaemonProcess:
    """`overnight daemon --home H` running in the background for a test."""

    def __init__(self, home: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        before = self._count("daemon started")
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon", "daemon", "--home", str(home), "--settle",
                                      "0.3", "--quiet", *extra], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        wait_until(lambda: self._count("daemon started") > before or self.proc.poll() is not None, 30,
                   what="daemon start")

    def _count(self, text: str) -> int:
        log = self.home / "overnight.log"
        return log.read_text().count(text) if log.exists() else 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    for d in ("inbox", "control", "runs"):
        (h / d).mkdir(parents=True)
    return h


@pytest.fixture
def daemon_proc(home: Path):
    procs: list[DaemonProcess] = []

    def start(*extra: str) -> DaemonProcess:
        d = DaemonProcess(home, *extra)
        procs.append(d)
        return d

    yield start
    for d in procs:
        if d.proc.poll() is None:
            d.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded tiny Qwen2 model, built once per test session (offline, about a second)."""
    from daemon.client.tinymodel import ensure_tiny_model
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


# The length of the one uninterrupted reference run every exact-resume test compares with: long enough that a
# command sent at step 6-12 always lands before the run ends on a loaded 2-core CI box (the tiny model takes about
# 0.1 s a step), and that the kill loop's four kills, each within 2 checkpoints of the last, land before it ends.
REFERENCE_STEPS = 60


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):
    """bench/kill_loop.py's drop of REFERENCE_STEPS steps (the reverse-three-words task, seed 7, a checkpoint every
    5 steps; tests/test_control_e2e.py's write_dataset writes the same files) trained uninterrupted by the real
    daemon: a `kill_loop.Reference` (per-step losses, wall time, run folder, which no test may change).

    The per-step losses on the CPU depend only on the drop, its options and the model, so the run is trained once
    per test session: xdist's workers share it through a lock file in the session's temporary folder, and the
    first worker that needs it trains it while the others wait for it."""
    import fcntl
    import hashlib
    import json

    from bench import kill_loop

    def digest(model: Path) -> str:
        return hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in sorted(model.iterdir())
                                       if f.is_file())).hexdigest()

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's folder lies in the session's, which they all see
    saved = root / "reference.json"
    with open(root / "reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if not saved.exists():
            home = kill_loop.Home(Path(tempfile.mkdtemp(prefix="reference-", dir=root)) / "home", tiny_model)
            try:
                home.start_daemon()
                ref = kill_loop.reference(home, REFERENCE_STEPS, timeout=budget(300))
            except SystemExit as e:  # the bench's way of saying the reference run failed
                raise AssertionError(str(e)) from None
            finally:
                home.stop_daemon()
                for pid in home.trainers():
                    os.kill(pid, signal.SIGKILL)
            assert sorted(ref.losses) == list(range(1, REFERENCE_STEPS + 1)), ref.losses
            tmp = saved.with_suffix(".tmp")
            tmp.write_text(json.dumps({"losses": list(ref.losses.items()), "wall_s": ref.wall_s,
                                       "run_dir": str(ref.run_dir), "model": digest(tiny_model)}))
            os.replace(tmp, saved)
    data = json.loads(saved.read_text())
    # the worker that trained it built its own tiny model: the same seed must have built the same bytes here
    assert data["model"] == digest(tiny_model), "the tiny model differs between test workers"
    return kill_loop.Reference({int(s): loss for s, loss in data["losses"]}, data["wall_s"], Path(data["run_dir"]))


def drop(src: Path, inbox: Path, name: str | None = None) -> Path:
    """Drop a file the recommended way: write it elsewhere on the same filesystem, then mv (rename) it in."""
    staging = inbox.parent / ".staging"
    staging.mkdir(exist_ok=True)
    tmp = staging / (name or src.name)
    tmp.write_bytes(src.read_bytes())
    dest = inbox / (name or src.name)
    os.rename(tmp, dest)
    return dest
