"""Process-level faults of a real daemon: a hangup (SIGHUP, its terminal closing) is logged and the daemon goes on; a
hook that never ends is killed after hook_timeout_s, its whole process group; a daemon stopped beside a hanging hook
exits (the hook's group killed) and the next one starts; a notification receiver that never answers delays none of
the others."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import psutil
import pytest

from daemon.engine import notify
from daemon.engine.hooks import group_alive
from tests.conftest import REPO, DaemonProcess, budget, drop, overnight, wait_until
from tests.test_notify import Webhook

# The real daemon, its shutdown grace for hooks, the SIGTERM -> SIGKILL grace and the notifier's close time lowered
# (10 s, 3 s and 10 s in a real daemon) so that a test that waits them out takes seconds.
LAUNCH = ("import sys; import daemon.engine.hooks as h, daemon.engine.notify as n; h.SHUTDOWN_GRACE_S = float(sys.argv[1]); "
          "h.KILL_GRACE_S = float(sys.argv[2]); n.CLOSE_TIMEOUT_S = float(sys.argv[3]); "
          "from daemon.client.cli import main; main(sys.argv[4:], prog_name='overnight')")

# A hook that ignores SIGTERM, as does the child it starts in its process group (SIG_IGN survives exec): only a
# SIGKILL to the whole group ends them. It writes "PID CHILD_PID" to hook.pids in its working folder.
STUBBORN = """
import os, signal, subprocess, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "100000"])
with open("hook.pids.tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.rename("hook.pids.tmp", "hook.pids")
time.sleep(100000)
"""

# The same in sh (it starts in milliseconds, well within a short hook_timeout_s on a loaded machine).
STUBBORN_SH = "trap '' TERM; sleep 100000 & echo \"$$ $!\" > hook.pids.tmp; mv hook.pids.tmp hook.pids; wait"


class Launched(DaemonProcess):
    """`overnight daemon --home H` started through LAUNCH; on a terminal of its own (a pty) when `tty` is given."""

    def __init__(self, home: Path, *, quiet: bool = True, grace: float = 1.0, kill_grace: float = 1.0,
                 close_s: float = 2.0, tty: int | None = None) -> None:
        self.home = home
        before = self._count("daemon started")
        cmd = [sys.executable, "-c", LAUNCH, str(grace), str(kill_grace), str(close_s), "daemon", "--home",
               str(home), "--settle", "0.3", *(["--quiet"] if quiet else [])]
        if tty is None:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        else:  # the pty is its controlling terminal: closing the other end hangs it up (SIGHUP, then EIO)
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=tty, stdout=tty, stderr=tty, start_new_session=True,
                                         preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        wait_until(lambda: self._count("daemon started") > before or self.proc.poll() is not None, budget(30),
                   what="daemon start")
        assert self.proc.poll() is None, (home / "overnight.log").read_text()

    def log(self) -> str:
        return (self.home / "overnight.log").read_text()


@pytest.fixture
def launched(home):
    procs: list[Launched] = []

    def start(**kw) -> Launched:
        d = Launched(home, **kw)
        procs.append(d)
        return d

    yield start
    for d in procs:
        if d.proc.poll() is None:
            d.stop(signal.SIGKILL)


def reject(tmp_path: Path, home: Path, name: str) -> None:
    """Drop a file the daemon rejects (line 2 is broken JSON): it runs on_reject and sends 'rejected'."""
    (tmp_path / name).write_bytes(b'{"text": "fine"}\n{"text": "oops"\n')
    drop(tmp_path / name, home / "inbox")


def hook_pids(home: Path) -> tuple[int, int]:
    pids = wait_until(lambda: (home / "hook.pids").exists() and (home / "hook.pids").read_text(), budget(30),
                      what="the hook started")
    leader, child = (int(p) for p in pids.split())
    return leader, child


# --- SIGHUP -----------------------------------------------------------------------------------------------------
def test_the_terminal_closing_hangs_the_daemon_up_and_it_goes_on(home, launched, tmp_path):
    master, slave = os.openpty()
    try:
        d = launched(quiet=False, tty=slave)
    finally:
        os.close(slave)
    seen = bytearray()
    stop = threading.Event()

    def drain() -> None:  # the terminal shows the log, as a terminal would
        while not stop.is_set():
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen.extend(os.read(master, 65536))
                except OSError:
                    return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    wait_until(lambda: b"daemon started" in seen, budget(10), what="the log echoed on the terminal")
    stop.set()
    reader.join(5)
    os.close(master)  # the terminal closes: the kernel sends SIGHUP, and every write to it fails from now on

    wait_until(lambda: "daemon: hangup (SIGHUP): going on; overnight.toml re-read" in d.log(), budget(15),
               what="the hangup logged")
    reject(tmp_path, home, "after-hangup.jsonl")  # logging goes on, to a terminal that is gone
    wait_until(lambda: (home / "inbox" / "rejected" / "after-hangup.error.txt").exists(), budget(30),
               what="a drop taken after the hangup")
    wait_until(lambda: "the terminal is gone" in d.log(), budget(10), what="the lost terminal said once")
    assert d.proc.poll() is None
    status = overnight("status", home=home)
    assert status.returncode == 0 and "daemon: running" in status.stdout, status.stdout

    d.proc.send_signal(signal.SIGHUP)  # kill -HUP: the same
    wait_until(lambda: d.log().count("hangup (SIGHUP)") == 2, budget(15), what="the second hangup logged")
    assert d.proc.poll() is None
    assert d.stop(timeout=budget(30)) == 0
    log = d.log()
    assert "daemon stopped" in log and "Traceback" not in log and log.count("the terminal is gone") == 1


def test_sighup_reads_overnight_toml_afresh(home, launched, tmp_path):
    """The daemon reads overnight.toml again when its size, time or inode changes; a SIGHUP makes it read it even
    when none did (here: hook_timeout_s edited in place, same size, its modification time put back)."""
    toml = home / "overnight.toml"
    toml.write_text('hook_timeout_s = 100\n[hooks]\non_reject = ["sleep", "3"]\n')
    d = launched()
    hooks_log = home / "hooks.log"

    def started(name: str) -> bool:
        return hooks_log.exists() and f"on_reject ({name})" in hooks_log.read_text()

    reject(tmp_path, home, "a.jsonl")
    wait_until(lambda: started("a.jsonl"), budget(30), what="the first hook")
    st = toml.stat()
    with open(toml, "r+b") as f:
        f.write(toml.read_bytes().replace(b"100", b"1.5"))
    os.utime(toml, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert toml.stat().st_size == st.st_size and toml.stat().st_mtime_ns == st.st_mtime_ns
    reject(tmp_path, home, "b.jsonl")
    wait_until(lambda: started("b.jsonl"), budget(30), what="the second hook")
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "daemon: hangup (SIGHUP): going on; overnight.toml re-read" in d.log(), budget(15),
               what="the hangup logged")
    reject(tmp_path, home, "c.jsonl")
    wait_until(lambda: "hook on_reject for c.jsonl killed after 1.5 s" in d.log(), budget(30),
               what="the third hook killed after the new hook_timeout_s")
    wait_until(lambda: "hook on_reject for b.jsonl finished: 0" in d.log(), budget(30),
               what="the second hook, started under the old file, not killed")
    assert "hook on_reject for a.jsonl finished: 0" in d.log()
    assert d.proc.poll() is None and d.stop(timeout=budget(30)) == 0


# --- hooks ------------------------------------------------------------------------------------------------------
def test_a_hook_that_never_ends_is_killed_after_hook_timeout_s(home, launched, tmp_path):
    (home / "overnight.toml").write_text(f'hook_timeout_s = 2\n[hooks]\non_reject = ["sh", "-c", {json.dumps(STUBBORN_SH)}]\n')
    d = launched(kill_grace=0.5)
    reject(tmp_path, home, "hangs.jsonl")
    leader, child = hook_pids(home)
    line = wait_until(lambda: [ln for ln in d.log().splitlines() if "hook on_reject for hangs.jsonl" in ln],
                      budget(30), what="the kill logged")[0]
    assert "killed after 2 s: it ran longer than hook_timeout_s = 2 s (overnight.toml)" in line, line
    assert "raise hook_timeout_s in overnight.toml" in line
    hooks_log = (home / "hooks.log").read_text()
    assert "on_reject (hangs.jsonl) killed after 2 s: it ran longer than hook_timeout_s = 2 s" in hooks_log
    wait_until(lambda: not group_alive(leader), budget(10), what="the hook's process group gone")
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert d.proc.poll() is None  # the daemon never waited for it
    assert d.stop(timeout=budget(30)) == 0


def test_a_daemon_stopped_beside_a_hanging_hook_and_a_silent_receiver_exits_and_the_next_one_works(
        home, launched, daemon_proc, tmp_path):
    """SIGTERM with a hook that ignores SIGTERM still running and a delivery to a receiver that never answers in
    flight: the daemon kills the hook's group after its grace, abandons the delivery, exits; a new daemon works."""
    silent, webhook = Silent(), Webhook(lifetime=120)
    try:
        (home / "stubborn.py").write_text(STUBBORN)
        (home / "overnight.toml").write_text(
            f'[hooks]\non_reject = ["{sys.executable}", "stubborn.py"]\n'
            f'[notify]\nurls = ["{silent.url}?rto=60", "{webhook.url}"]\n')
        d = launched(grace=1, kill_grace=0.5, close_s=1)
        reject(tmp_path, home, "first.jsonl")
        leader, child = hook_pids(home)
        assert os.getpgid(leader) == leader == os.getpgid(child)  # a process group of its own
        wait_until(lambda: webhook.about("first.jsonl"), budget(15), what="the working receiver told")
        wait_until(lambda: silent.accepted, budget(10), what="the silent receiver connected to")

        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(budget(30)) == 0
        assert time.monotonic() - t0 < budget(15)
        log = d.log()
        assert "daemon stopping: killing 1 hook still running after 1 s: on_reject for first.jsonl" in log, log
        assert "notify: messages still being delivered after 1 s were abandoned: 1 to json://127.0.0.1" in log
        assert log.rindex("daemon stopping: killing") < log.rindex("daemon stopped")
        assert not group_alive(leader)  # gone before the daemon exited
        assert "on_reject (first.jsonl) killed after" in (home / "hooks.log").read_text()

        (home / "overnight.toml").write_text('[hooks]\non_reject = ["sh", "-c", "echo $OVERNIGHT_FILE > next.txt"]\n')
        d2 = daemon_proc()  # the lock was released, and nothing of the first daemon is left
        reject(tmp_path, home, "second.jsonl")
        wait_until(lambda: (home / "next.txt").exists() and "second.jsonl" in (home / "next.txt").read_text(),
                   budget(30), what="the next daemon's hook")
        assert d2.stop(timeout=budget(30)) == 0
    finally:
        silent.close()
        webhook.stop()


def test_once_ending_by_itself_waits_for_its_hooks(home, tmp_path):
    """`overnight daemon --once` is not stopped by anyone: a hook still running when it is done gets its own
    hook_timeout_s, not the shutdown grace (lowered to 0.2 s here)."""
    (home / "overnight.toml").write_text('hook_timeout_s = 60\n[hooks]\n'
                                         'on_reject = ["sh", "-c", "sleep 1.5; echo done > once.txt"]\n')
    reject(tmp_path, home, "once.jsonl")
    res = subprocess.run([sys.executable, "-c", LAUNCH, "0.2", "0.2", "2", "daemon", "--home", str(home), "--once",
                          "--settle", "0.2", "--quiet"], cwd=REPO, capture_output=True, text=True,
                         timeout=budget(120))
    assert res.returncode == 0, res.stdout + res.stderr
    assert (home / "once.txt").read_text() == "done\n"
    log = (home / "overnight.log").read_text()
    assert "waiting for 1 running hook to end (each at most its hook_timeout_s): on_reject for once.jsonl" in log
    assert "hook on_reject for once.jsonl finished: 0" in log and "killing" not in log


# --- notifications ----------------------------------------------------------------------------------------------
class Silent:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"json://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.accepted:
            c.close()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def said():
    handler = Lines()
    logger = logging.getLogger("overnight")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_a_receiver_that_never_answers_delays_no_other(said, monkeypatch):
    import apprise  # noqa: F401 - imported before the clock starts (a second or more on a loaded machine)

    monkeypatch.setattr(notify, "DELIVERY_TIMEOUT_S", 3)
    silent, webhook = Silent(), Webhook(lifetime=60)
    try:
        n = notify.Notifier(lambda: {"urls": [f"{silent.url}?rto=60", webhook.url]})
        for i in range(3):
            assert n.send("failed", f"run r{i} failed", "body", subject=f"r{i}")
        wait_until(lambda: len(webhook.posts) == 3, budget(10), what="every message to the working receiver")
        # not behind the silent receiver: one at a time, its second message would wait for the first's timeout
        assert not any("gave up" in ln for ln in said), said
        assert [p["title"] for p in webhook.posts] == [f"run r{i} failed" for i in range(3)]  # in order
        # the receiver holds the third message a moment before the sender has logged it
        wait_until(lambda: sum(ln.startswith("notify: sent") for ln in said) == 3, budget(10), what="sent lines")
        assert [ln for ln in said if ln.startswith("notify: sent")] == [
            f"notify: sent 'failed' for r{i} to {webhook.url}" for i in range(3)]
        # a delivery to the silent receiver is given up after DELIVERY_TIMEOUT_S, and its next message goes on
        wait_until(lambda: any("no answer after 3 s; gave up" in ln for ln in said), budget(15),
                   what="the first delivery to the silent receiver given up")
        assert any(ln.startswith("notify: could not deliver 'failed' for r0 to json://127.0.0.1:") and
                   "no answer after 3 s" in ln for ln in said), said
        wait_until(lambda: len(silent.accepted) >= 2, budget(10), what="the next delivery to the silent receiver")
        t0 = time.monotonic()
        n.close(timeout=1)  # bounded, whatever the silent receiver does
        assert time.monotonic() - t0 < budget(3)
        assert any("were abandoned: " in ln and silent.url.rstrip("/") in ln for ln in said), said
    finally:
        silent.close()
        webhook.stop()


def test_an_end_hook_runs_in_the_home_when_the_run_folder_is_gone_and_a_failed_one_is_a_warning(tmp_path):
    """A run that failed because its folder was removed still tells the user (the hook's mail must go); a hook
    that cannot start or exits non-zero is a WARNING in overnight.log, not "finished"."""
    from daemon.engine.hooks import Hooks

    home = tmp_path / "home"
    (home / "runs").mkdir(parents=True)
    hooks = Hooks()
    run = {"id": "gone-1", "run_dir": str(home / "runs" / "gone-1"), "state": "failed", "name": "gone"}
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("overnight")  # the daemon's logger (it may not propagate: caplog would miss it)
    logger.addHandler(handler)
    try:
        hook = hooks.run_hooks("on_fail", {"on_fail": ["sh", "-c", "echo FAIL $OVERNIGHT_RUN_ID > told.txt"]}, run)
        hook.thread.join(30)
        missing = hooks.run_hooks("on_fail", {"on_fail": [str(tmp_path / "no-such-program")]}, run)
        missing.thread.join(30)
    finally:
        logger.removeHandler(handler)
    assert (home / "told.txt").read_text() == "FAIL gone-1\n" and (home / "hooks.log").exists()
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("its run folder" in w and "is gone; the hook runs in the home" in w for w in warnings), warnings
    assert any(w.startswith("hook on_fail for gone-1 failed: error: [Errno 2]") for w in warnings), warnings
