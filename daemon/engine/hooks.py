"""Owner hooks ([hooks] in overnight.toml): argument lists run without a shell, each watched by its own thread.

`on_complete` / `on_fail` run when a run ends, in the run folder, output in the run's `hooks.log`.
`on_reject` runs when a drop is rejected, in the home, output in the home's `hooks.log` (a rejected file has no
run folder).

Each hook runs in a process group (a session) of its own, so that everything it starts can be ended together: one
that runs longer than `hook_timeout_s` (overnight.toml, read when the hook starts) is killed, its whole group
(SIGTERM, then SIGKILL after KILL_GRACE_S), and so are the hooks still running when the daemon stops, after
SHUTDOWN_GRACE_S: the daemon's process never outlives its "daemon stopped" line because of a hook.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from daemon.core.log import log
from daemon.core.rundir import RunFolder
from daemon.core.timefmt import log_line

DEFAULT_TIMEOUT_S = 600.0  # hook_timeout_s's default (daemon/core/options.py), used when overnight.toml cannot be read
SHUTDOWN_GRACE_S = 10.0  # a hook still running when the daemon stops gets this long to end, then it is killed
KILL_GRACE_S = 3.0  # between the SIGTERM to a hook's process group and the SIGKILL


def _seconds(s: float) -> str:
    return f"{round(s, 1):g}" if s < 100 else f"{s:.0f}"


class Hook:
    """One running hook: its process (the leader of its own process group) and why it was killed, if it was."""

    def __init__(self, event: str, subject: str, argv: list[str], log_path: Path, timeout_s: float) -> None:
        self.event, self.subject, self.argv, self.log_path, self.timeout_s = event, subject, argv, log_path, timeout_s
        self.proc: subprocess.Popen | None = None
        self.started = time.monotonic()
        self.killed: str | None = None  # why it was killed (its timeout, or the daemon stopping)
        self.thread: threading.Thread | None = None
        self._kill_lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self.event} for {self.subject}"

    def describe(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"{self.name}{f' (PID {pid}, its process group)' if pid else ''}"

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def kill(self, why: str, grace_s: float | None = None) -> None:
        """End the hook's whole process group: SIGTERM, then SIGKILL to what is left after `grace_s`."""
        with self._kill_lock:
            if self.killed is None:
                self.killed = why
        proc = self.proc
        if proc is None:
            return
        grace = KILL_GRACE_S if grace_s is None else grace_s
        _signal_group(proc.pid, signal.SIGTERM)
        _signal_group(proc.pid, signal.SIGCONT)  # a stopped (SIGSTOP) process gets its SIGTERM too
        end = time.monotonic() + grace
        while time.monotonic() < end:
            proc.poll()  # reaps the leader: a zombie would keep the group "alive"
            if not group_alive(proc.pid):
                return
            time.sleep(0.1)
        _signal_group(proc.pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while time.monotonic() < end and (proc.poll() is None or group_alive(proc.pid)):
            time.sleep(0.1)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still lives (zombies, which wait only for their parent to reap them, do
    not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (psutil.Error, OSError):
            continue
    return False


class Hooks:
    """The daemon's running hooks: started off the main loop, each on a daemon thread watching its process;
    `close()` at shutdown waits a grace period for them, then kills their process groups.

    `timeout_s` is called when a hook starts and returns `hook_timeout_s` (overnight.toml, read live)."""

    def __init__(self, timeout_s: Callable[[], Any] | None = None) -> None:
        self._timeout_s = timeout_s or (lambda: DEFAULT_TIMEOUT_S)
        self._running: list[Hook] = []
        self._lock = threading.Lock()
        self._closed = False

    def run_hooks(self, event: str, hooks: dict[str, list[str]], run: dict[str, Any]) -> Hook | None:
        """Start the hook for a run's end (`on_complete` / `on_fail`); output to the run's hooks.log."""
        argv = hooks.get(event)
        if not argv:
            return None
        folder = RunFolder(run["run_dir"])
        env = {"OVERNIGHT_RUN_ID": run["id"], "OVERNIGHT_RUN_DIR": str(folder.root),
               "OVERNIGHT_ADAPTER": str(folder.adapter), "OVERNIGHT_STATE": run["state"],
               "OVERNIGHT_MODEL_NAME": run["name"]}
        if not folder.root.is_dir():  # the run failed because its folder is gone: the hook still tells the user
            home = folder.root.parent.parent
            log.warning(f"hook {event} for {run['id']}: its run folder {folder.root} is gone; the hook runs in the "
                        f"home, its output in {home / 'hooks.log'}")
            return self._start(event, argv, env, cwd=home, log_path=home / "hooks.log", subject=run["id"])
        return self._start(event, argv, env, cwd=folder.root, log_path=folder.hooks_log, subject=run["id"])

    def run_reject_hook(self, hooks: dict[str, list[str]], file: Path, error: str, error_file: Path,
                        home: Path) -> Hook | None:
        """Start `on_reject` for a rejected drop: OVERNIGHT_FILE (its path now, in inbox/rejected/), OVERNIGHT_ERROR
        (the error text), OVERNIGHT_ERROR_FILE (NAME.error.txt); runs in the home, output to the home's hooks.log."""
        argv = hooks.get("on_reject")
        if not argv:
            return None
        env = {"OVERNIGHT_FILE": str(file), "OVERNIGHT_ERROR": error, "OVERNIGHT_ERROR_FILE": str(error_file),
               "OVERNIGHT_HOME": str(home)}
        return self._start("on_reject", argv, env, cwd=home, log_path=home / "hooks.log", subject=file.name)

    def running(self) -> list[Hook]:
        with self._lock:
            self._running = [h for h in self._running if h.alive()]
            return list(self._running)

    def _timeout(self) -> float:
        try:
            value = float(self._timeout_s())
        except Exception:  # noqa: BLE001 - a hook's timeout must never stop the daemon
            return DEFAULT_TIMEOUT_S
        return value if value > 0 else DEFAULT_TIMEOUT_S

    def _start(self, event: str, argv: list[str], extra_env: dict[str, str], cwd: Path, log_path: Path,
               subject: str) -> Hook | None:
        """Run `argv` watched by a thread (an rsync must not stall the daemon), appending its output to `log_path`."""
        hook = Hook(event, subject, argv, log_path, self._timeout())
        with self._lock:
            if self._closed:
                log.warning(f"hook {hook.name} not started: the daemon is stopping")
                return None
            self._running = [h for h in self._running if h.alive()] + [hook]
            hook.thread = threading.Thread(target=self._watch, args=(hook, {**os.environ, **extra_env}, cwd),
                                           name=f"hook-{event}-{subject}", daemon=True)
            hook.thread.start()
        return hook

    def _watch(self, hook: Hook, env: dict[str, str], cwd: Path) -> None:
        rc: int | str
        timed_out = False
        try:
            with open(hook.log_path, "a", encoding="utf-8") as out:
                out.write(log_line(f"{hook.event} ({hook.subject}): {hook.argv}"))
                out.flush()
                try:
                    hook.proc = subprocess.Popen(hook.argv, stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
                except (OSError, ValueError, subprocess.SubprocessError) as e:  # ValueError: a NUL in an argument
                    rc = f"error: {e}"
                else:
                    if hook.killed:  # the daemon began to stop while it started
                        hook.kill(hook.killed)
                    try:
                        rc = hook.proc.wait(timeout=hook.timeout_s)
                    except subprocess.TimeoutExpired:
                        timed_out = True
                        hook.kill(f"it ran longer than hook_timeout_s = {_seconds(hook.timeout_s)} s "
                                  f"(overnight.toml)")
                        rc = hook.proc.poll()
                        if rc is None:
                            rc = "still running after SIGKILL"
                if hook.killed:
                    took = hook.timeout_s if timed_out else time.monotonic() - hook.started
                    rc = f"killed after {_seconds(took)} s: {hook.killed}; exit: {rc}"
                    out.write(log_line(f"{hook.event} ({hook.subject}) {rc}; its whole process group was ended"))
                else:
                    out.write(log_line(f"{hook.event} exit: {rc}"))
        except OSError as e:  # the log itself cannot be written (disk full?): say so in overnight.log
            rc = f"error: {e}"
            if hook.proc is not None and hook.proc.poll() is None:
                hook.kill(f"its log {hook.log_path} could not be written")
        if hook.killed:
            hint = "; raise hook_timeout_s in overnight.toml if it needs longer" if timed_out else ""
            log.warning(f"hook {hook.name} {rc}{hint} (see {hook.log_path})")
        elif rc == 0:
            log.info(f"hook {hook.name} finished: {rc} (see {hook.log_path})")
        else:  # it failed, or never started (a wrong program path): the user's mail or backup did not happen
            log.warning(f"hook {hook.name} failed: {rc} (see {hook.log_path})")

    def close(self, grace_s: float | None = None, patient: Callable[[], bool] | None = None) -> None:
        """At shutdown: no new hook starts; running ones get `grace_s` (SHUTDOWN_GRACE_S) to end, then their process
        groups are killed (SIGTERM, then SIGKILL), so the daemon's process exits when it says it stopped.

        While `patient()` is true (`--once` ending by itself, not by a signal), running hooks are waited for until
        they end or their own hook_timeout_s kills them; the grace period starts when it turns false."""
        grace = SHUTDOWN_GRACE_S if grace_s is None else grace_s
        with self._lock:
            self._closed = True
        running = self.running()
        if running and patient is not None and patient():
            log.info(f"waiting for {len(running)} running hook{'s' if len(running) > 1 else ''} to end (each at "
                     f"most its hook_timeout_s): {', '.join(h.name for h in running)}")
            while patient() and any(h.alive() for h in running):
                time.sleep(0.1)
            running = self.running()
        if not running:
            return
        log.info(f"daemon stopping: waiting up to {_seconds(grace)} s for {len(running)} running "
                 f"hook{'s' if len(running) > 1 else ''}: {', '.join(h.name for h in running)}")
        end = time.monotonic() + grace
        for h in running:
            if h.thread is not None:
                h.thread.join(max(0.0, end - time.monotonic()))
        left = [h for h in running if h.alive()]
        if not left:
            return
        log.warning(f"daemon stopping: killing {len(left)} hook{'s' if len(left) > 1 else ''} still running after "
                    f"{_seconds(grace)} s: {', '.join(h.describe() for h in left)}")
        why = f"the daemon stopped and it was still running {_seconds(grace)} s later"
        killers = [threading.Thread(target=h.kill, args=(why,), daemon=True) for h in left]
        for k in killers:
            k.start()
        for k in killers:
            k.join(KILL_GRACE_S + 6)
        for h in left:
            if h.thread is not None:
                h.thread.join(2)
        survivors = [h.describe() for h in left if h.proc is not None and group_alive(h.proc.pid)]
        if survivors:
            log.error(f"daemon stopping: hook processes survived SIGKILL (stuck in the kernel?): "
                      f"{', '.join(survivors)}")
