"""The daemon's main loop: intake, control, the trainers (through the Supervisor, daemon/engine/supervisor.py),
group selection, signals and shutdown."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.core import control, rundir, search, sweep
from daemon.core.completeness import SETTLE_S
from daemon.core.home import DaemonLock, Home
from daemon.core.log import log, setup
from daemon.core.options import owner_options, owner_toml
from daemon.core.rundir import RunFolder
from daemon.core.space import is_disk_full
from daemon.core.states import ENDED, State
from daemon.engine import hooks, notify, pruning, rebuild
from daemon.engine.controller import Controller
from daemon.engine.intake import Intake
from daemon.engine.store import Store, busy_problem
from daemon.engine.supervisor import Supervisor, run_options, setting, tell


TICK_S = 0.25  # the loop's pass, when nothing wakes it sooner


class Daemon:
    """One daemon per home; the only writer of overnight.db."""

    def __init__(self, home: Home, *, once: bool = False, settle: float = SETTLE_S, tick: float = TICK_S,
                 echo: bool = True) -> None:
        self.home, self.once, self.tick = home, once, tick
        setup(home.log, echo=echo)
        self.lock = DaemonLock(home)
        self.lock.acquire()  # raises HomeLocked naming the holder
        rebuild.prepare_for_daemon(home)  # the DB is an index of runs/: lost or damaged, it is rebuilt
        self.store = Store(home.db)
        self.wake = threading.Event()
        # Notifications ([notify] in overnight.toml) go out from their own thread. Other parts of the daemon tell
        # the owner about trouble with self.notifier.send("stalled" | "disk_low", title, body, subject=RUN).
        self.notifier = notify.Notifier(lambda: self._owner_options().get("notify"))
        self.intake = Intake(home, self.store, settle=settle, on_verdict=self.wake.set, on_reject=self._on_reject)
        self.stopping = False
        self.restart = False  # overnight.db removed under it: serve() ends, and the CLI starts the daemon again
        self.controller = Controller(home, self.store, self._transition)
        self._observer: Any = None  # the watchdog observer, once serving
        # [hooks] run off the loop, each in its own process group, killed after hook_timeout_s (read at its start)
        self.hooks = hooks.Hooks(lambda: setting(self._owner_options(), "hook_timeout_s"))
        # the trainers, from start to end; it reaches the daemon only through what is handed in here
        self.supervisor = Supervisor(home, self.store, self._transition, options=self._owner_options,
                                     guard=self._guard, notifier=self.notifier, hooks=self.hooks,
                                     beat=lambda: self.store.heartbeat(problem=self.problem), disk=self._see_disk)
        self._hangups = 0  # SIGHUPs received and not yet answered by the loop
        self._ended_groups: set[str] = set()  # groups a run of which ended: select_groups looks at them
        # groups a run of which changed state, and those a restart left with trials held at a rung: ASHA looks at them
        self._changed_groups: set[str] = pruning.groups_waiting(self.store)
        self.disk_problem: str | None = None  # a full disk (DB writes fail, or a run waits for space)
        self._disk_seen: str | None = None  # what this pass found about the disk
        self._faults: dict[str, float] = {}  # an internal error's text -> when it was last logged

    # --- life cycle -----------------------------------------------------------------------------------
    def serve(self) -> int:
        """Run until SIGTERM/SIGINT (or, with --once, until the inbox and queue are done); SIGHUP (the terminal
        closed, or `kill -HUP`) is logged and the daemon goes on, overnight.toml read afresh."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        if not self.store.wait_writable(lambda: self.stopping, log.warning):  # another process holds overnight.db
            self.shutdown()  # SIGTERM while waiting for it
            return 0
        self.store.daemon_started(os.getpid(), str(self.home.root), __version__)
        log.info(f"overnight {__version__} daemon started on {self.home.root} (PID {os.getpid()})")
        self._observer = _wake_on_changes((self.home.inbox, self.home.control), self.wake)
        for old in self.store.follow_home(self.home.root):
            log.warning(f"this home was moved or copied from {old}: its runs and adapters are read and trained "
                        f"here, at {self.home.root}, from now on")
        self.supervisor.recover()
        last_beat = 0.0
        try:
            while not self.stopping:
                if self._hangups:
                    self._guard("hangup", self._hangup)
                self.step()
                if time.monotonic() - last_beat > 2:
                    self._guard("heartbeat", lambda: self.store.heartbeat(problem=self.problem))
                    self._guard("lock", self.lock.keep)  # overnight.lock removed by hand: written again
                    last_beat = time.monotonic()
                    if self.store.gone():
                        log.error(f"{self.home.db} was removed or replaced while the daemon ran: it restarts, to "
                                  f"rebuild it from runs/ (the training runs resume from their last checkpoints)")
                        self.restart = True
                        break
                if self.once and self._idle():
                    break
                self.wake.wait(self.tick)
                self.wake.clear()
        finally:
            self.shutdown()
        return 0

    @property
    def problem(self) -> str | None:
        """What keeps the daemon from doing its work (status PROBLEM line, dashboard banner)."""
        stalled = self.supervisor.stalled()
        return (self.intake.problem or self.disk_problem or (" · ".join(stalled) if stalled else None)
                or self.controller.problem)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info(f"received {signal.Signals(signum).name}: checkpointing and exiting")
        self.stopping = True
        self.wake.set()

    def _on_hangup(self, _signum: int, _frame: Any) -> None:
        """SIGHUP: answered by the loop (a signal handler must not log: it may interrupt a log write)."""
        self._hangups += 1
        self.wake.set()

    def _hangup(self) -> None:
        """A daemon outlives its terminal: say so, and read overnight.toml afresh (the loop also re-reads it
        whenever the file changes)."""
        self._hangups = 0
        log.info("daemon: hangup (SIGHUP): going on; overnight.toml re-read (SIGTERM or Ctrl-C stops the daemon)")
        owner_toml(self.home.toml).forget()
        self._owner_options()

    def _idle(self) -> bool:
        """--once is done: nothing running, nothing startable queued, no complete drop left in the inbox."""
        if self.supervisor.trainers or self.intake.busy():
            return False
        paused = control.paused(self.home)  # a queued run the queue passes by for it waits for a resume, not --once
        waiting = [r for r in self.store.runs_in([State.QUEUED])
                   if not control.passed_by(r["state"], r["id"], r["started"], paused)]
        if waiting and not self.controller.queue_held():
            return False
        from daemon.engine.submission import role_of, stem_of
        stems = {stem_of(p) for p in self.intake.pending() if role_of(p) == "unsupported" or
                 (role_of(p) == "dataset" and not self.intake.problem)}  # drops wait while overnight.toml is broken
        return not stems and not any(p.is_symlink() for p in self.intake.pending())

    def shutdown(self) -> None:
        """Checkpoint the running jobs (they go back to the queue and resume at the next start), then exit."""
        self.supervisor.stop_all()
        self._guard("select_groups", self.select_groups)  # a group whose last run ended just now
        self.intake.close()
        if self._observer:
            self._observer.stop()
            self._observer.join(timeout=5)
        # hooks still running get a grace period, then their process groups are killed; --once ending by itself
        # waits for them (each ends by its hook_timeout_s at the latest) unless a signal asks it to stop
        self.hooks.close(patient=lambda: self.once and not self.stopping)
        self.notifier.close()  # bounded: a receiver that never answers is abandoned
        self._guard("heartbeat", lambda: self.store.heartbeat("stopped"))
        log.info("daemon stopped")
        self.store.close()
        self.lock.release()

    # --- one pass of the loop -------------------------------------------------------------------------
    def step(self) -> None:
        """Intake, control, trainer bookkeeping, queue: each guarded so one failure never stops the daemon."""
        self._disk_seen = None
        for part in (self.intake.scan, self.apply_control, self.watch_trainers, self.select_groups, self.start_next):
            if part == self.apply_control and self.intake.home_problem:
                continue  # a file where control/ (or another folder) belongs: the PROBLEM line says so, once
            self._guard(part.__name__, part)
        if self._disk_seen != self.disk_problem:
            if self._disk_seen:
                log.error(self._disk_seen)
                if self._disk_seen.startswith("disk low") and not (self.disk_problem or "").startswith("disk low"):
                    self._tell_disk_low(self._disk_seen)  # the queue waits for space: the owner may be asleep
            else:
                log.info(f"no longer {self.disk_problem.split(':')[0]}: going on")  # disk full, state DB busy…
            self.disk_problem = self._disk_seen

    def _guard(self, name: str, fn: Any) -> None:
        """Run one part of the daemon's work; a fault is reported (once a minute at most), never fatal."""
        try:
            fn()
        except Exception as e:  # keep serving; the traceback goes to overnight.log
            busy = busy_problem(e, self.home.db)  # another process holds overnight.db: a fault it outlives too
            if busy or is_disk_full(e):
                self._disk_seen = busy or (f"disk full: {e} (in {name}). Fix: free space on the disk of "
                                           f"{self.home.root}; overnight goes on by itself")
                return
            key = f"{name}: {e!r}"
            if time.monotonic() - self._faults.get(key, -1e9) >= 60:
                self._faults[key] = time.monotonic()
                log.exception(f"internal error in {name}")

    def watch_trainers(self) -> None:
        self.supervisor.watch()

    def start_next(self) -> None:
        """Queued runs take free slots, unless the daemon is stopping, the owner holds the queue (control/) or
        overnight.toml (or its base model) is broken: status says the queue is held by it."""
        if not (self.stopping or self.controller.queue_held() or self.intake.problem):
            self.supervisor.start_next()

    def _tell_disk_low(self, problem: str) -> None:
        from daemon.engine.notify import title
        try:
            self.notifier.send("disk_low", title("queue waits, disk low"), problem, subject="queue")
        except Exception:  # noqa: BLE001 - telling never stops the daemon
            log.exception("notify: could not prepare 'disk_low'")

    def _see_disk(self, shortage: str | None) -> None:
        """What the supervisor found about free space when it last tried to start a trainer (None: enough)."""
        self._disk_seen = shortage

    def _owner_options(self) -> dict[str, Any]:
        """overnight.toml through the process's one reader (options.owner_toml): parsed again only when the file
        changed, the loop asks at every pass while runs wait for a slot. A broken file keeps the last good values
        in force (hooks, notifications, GPUs, stall rules); intake logs it, once per version, and shows it as the
        PROBLEM line."""
        return owner_options(self.home.toml)

    def select_groups(self) -> None:
        """Groups a run of which ended (trained out, failed, stopped or skipped, even before it started): when
        the last one has ended and the group says select = "best", activate its best version (after the pass
        that registered the last version)."""
        from daemon.core.evolution import analyze, kept_step, load_records
        while self._changed_groups:  # ASHA first: a trial it prunes may be a group's last to end
            group = self._changed_groups.pop()
            for line in pruning.review(self.store, group, run_options, self._transition) + self._tell_study(group):
                log.info(line)
        while self._ended_groups:
            group = self._ended_groups.pop()
            said = sweep.on_group_ended(self.store, group, run_options,
                                        lambda r: analyze(load_records(RunFolder(r["run_dir"]).evolution),
                                                          until=kept_step(r["run_dir"])).learned)
            if said:
                log.info(said)

    def _tell_study(self, group: str) -> list[str]:
        """A search group (daemon/engine/search.py): its study learns what its ended trials scored."""
        members = self.store.runs_in_group(group)
        options = run_options(members[0]) if members else {}
        if not search.searching(options):
            return []
        from daemon.engine.search import review
        return review(self.home.root, self.store, group, options)

    def _on_reject(self, files: list[Path], message: str, error_file: Path) -> None:
        """A drop went to inbox/rejected/: the on_reject hook and the 'rejected' notification."""
        self.hooks.run_reject_hook(self._owner_options().get("hooks") or {}, files[0], message, error_file,
                                   self.home.root)
        tell(self.notifier, "rejected", files[0].name, notify.rejected_message, files[0], message, error_file,
             self.home.root)

    def _transition(self, run_id: str, state: str, reason: str | None, **fields: Any) -> None:
        self.store.set_state(run_id, state, reason, **fields)
        run = self.store.get_run(run_id)
        if Path(run["run_dir"]).is_dir():  # a folder removed by hand is never made again just to hold this
            try:
                rundir.write_metadata(Path(run["run_dir"]), run)
            except PermissionError as e:  # a run folder made read-only: the DB holds the state; said, not retried
                log.warning(f"{run_id}: its metadata.json could not be written ({e.strerror}); the DB has its state "
                            f"({state}). Fix: make {run['run_dir']} writable again (a DB rebuild reads that file)")
        if run.get("group_id"):
            self._changed_groups.add(run["group_id"])
            if state in ENDED:
                self._ended_groups.add(run["group_id"])

    def apply_control(self) -> None:
        self.controller.apply(list(self.supervisor.trainers.values()), free_slots=self.supervisor.free_slots)


def _wake_on_changes(folders: tuple[Path, ...], wake: threading.Event) -> Any:
    """watchdog events only wake the loop early; the loop rescans the folders itself every tick."""
    from watchdog.events import EVENT_TYPE_CLOSED_NO_WRITE, EVENT_TYPE_OPENED, FileSystemEventHandler
    from watchdog.observers import Observer

    # The loop itself opens and reads files in these folders (a held control/pause, a waiting sidecar):
    # waking on those reads would spin the loop at full CPU.
    reads = (EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE)

    class _Wake(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            if event.event_type not in reads:
                wake.set()

    observer = Observer()
    for folder in folders:
        if folder.is_dir():  # one removed as the daemon starts: the loop's own rescan finds it recreated
            observer.schedule(_Wake(), str(folder), recursive=False)
    observer.daemon = True
    try:
        observer.start()
    except OSError as e:  # removed between the look and the watch: no early wakes, never a daemon that dies of it
        log.warning(f"watching {', '.join(map(str, folders))} for changes failed ({e.strerror or e}): the daemon "
                    f"rescans them every pass instead")
        return None
    return observer
