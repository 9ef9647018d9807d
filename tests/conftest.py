"""Shared test helpers: temp homes, the real daemon as a subprocess, the embedded tiny model."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
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
    from daemon.tinymodel import ensure_tiny_model
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


def drop(src: Path, inbox: Path, name: str | None = None) -> Path:
    """Drop a file the recommended way: write it elsewhere on the same filesystem, then mv (rename) it in."""
    staging = inbox.parent / ".staging"
    staging.mkdir(exist_ok=True)
    tmp = staging / (name or src.name)
    tmp.write_bytes(src.read_bytes())
    dest = inbox / (name or src.name)
    os.rename(tmp, dest)
    return dest
