"""The daemon's main loop: intake, control, the running trainer, the queue, recovery and shutdown."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from daemon import __version__
from daemon.core import gpus, launch, rundir, sweep
from daemon.engine import hooks, notify, rebuild, registry
from daemon.core.completeness import SETTLE_S
from daemon.engine.controller import Controller
from daemon.engine.endstate import TrainerExit, end_state
from daemon.core.gpus import GpuChoiceError, Slot
from daemon.core.home import DaemonLock, Home
from daemon.engine.intake import Intake
from daemon.core.log import log, setup
from daemon.core.options import OPTIONS, owner_options, owner_toml
from daemon.core.rundir import RunFolder, step_of
from daemon.engine.runner import TrainerProcess, leftover_trainers, progress_mark, signal_group
from daemon.core.space import is_disk_full, shortage
from daemon.engine.stall import Escalation, StallWatch, stop_grace
from daemon.core.states import ACTIVE, ENDED, State
from daemon.engine.store import Store, busy_problem
from daemon.core.timefmt import iso

# A trainer killed from outside (OOM killer, kill -9) is resumed from its checkpoint this many times in a row
# without a new checkpoint in between (a crash loop); a run that checkpointed past where it started counts afresh.


def _setting(owner: dict[str, Any], name: str) -> Any:
    """An owner option from overnight.toml, or its default."""
    return owner.get(name, OPTIONS[name].default)


def _run_options(run: dict[str, Any]) -> dict[str, Any]:
    """A run's resolved options, from its config.json."""
    return RunFolder(run["run_dir"]).options()


def _stop_grace(a: TrainerProcess) -> float:
    """How long a trainer asked to stop may show no progress before it gets SIGTERM (daemon/engine/stall.py)."""
    if a.stall and a.stall.stalled:
        return 5.0  # known frozen: no need to wait long
    return stop_grace(a.stall.limit_s if a.stall else 60 * OPTIONS["stall_minutes"].default, a.step_s)


class Daemon:
    """One daemon per home; the only writer of overnight.db."""

    def __init__(self, home: Home, *, once: bool = False, settle: float = SETTLE_S, tick: float = 0.25,
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
        self.trainers: dict[str, TrainerProcess] = {}  # by run id: the runs training side by side, one per slot
        self.stopping = False
        self.controller = Controller(home, self.store, self._transition)
        self._observer = None
        # [hooks] run off the loop, each in its own process group, killed after hook_timeout_s (read at its start)
        self.hooks = hooks.Hooks(lambda: _setting(self._owner_options(), "hook_timeout_s"))
        self._hangups = 0  # SIGHUPs received and not yet answered by the loop
        self._ended_groups: set[str] = set()  # groups a run of which ended: select_groups looks at them
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
        self._watch()
        self.recover()
        last_beat = 0.0
        try:
            while not self.stopping:
                if self._hangups:
                    self._guard("hangup", self._hangup)
                self.step()
                if time.monotonic() - last_beat > 2:
                    self._guard("heartbeat", lambda: self.store.heartbeat(problem=self.problem))
                    last_beat = time.monotonic()
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
        stalled = [a.stall.message(a.run_id, a.proc.pid) for a in self.trainers.values() if a.stall and a.stall.stalled]
        return self.intake.problem or self.disk_problem or (" · ".join(stalled) if stalled else None)

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

    def _watch(self) -> None:
        """watchdog events only wake the loop early; the loop rescans the folders itself every tick."""
        from watchdog.events import EVENT_TYPE_CLOSED_NO_WRITE, EVENT_TYPE_OPENED, FileSystemEventHandler
        from watchdog.observers import Observer

        wake = self.wake
        # The loop itself opens and reads files in these folders (a held control/pause, a waiting sidecar):
        # waking on those reads would spin the loop at full CPU.
        reads = (EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE)

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type not in reads:
                    wake.set()

        self._observer = Observer()
        for folder in (self.home.inbox, self.home.control):
            self._observer.schedule(_Wake(), str(folder), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def _idle(self) -> bool:
        """--once is done: nothing running, nothing startable queued, no complete drop left in the inbox."""
        if self.trainers or self.intake.busy():
            return False
        if self.store.runs_in([State.QUEUED]) and not self.controller.queue_held():
            return False
        from daemon.engine.submission import role_of, stem_of
        stems = {stem_of(p) for p in self.intake.pending() if role_of(p) == "unsupported" or
                 (role_of(p) == "dataset" and not self.intake.problem)}  # drops wait while overnight.toml is broken
        return not stems and not any(p.is_symlink() for p in self.intake.pending())

    def shutdown(self) -> None:
        """Checkpoint the running jobs (they go back to the queue and resume at the next start), then exit."""
        for a in self.trainers.values():
            a.request_stop("shutdown")
            a.close_stdin()
        for a in list(self.trainers.values()):
            while a.wait(0.5) is None:
                for b in self.trainers.values():
                    self._guard("escalate", lambda: self._escalate(b))
                if a.escalation and a.escalation.sent == "SIGKILL" and a.wait(30) is None:
                    log.error(f"trainer of {a.run_id} (PID {a.proc.pid}) survived SIGKILL (stuck in the kernel?); "
                              f"leaving it: the next daemon ends it at start")
                    break
            # a DB that cannot be written now (disk full) still says "training": the next start requeues the run
            self._guard("finish", lambda: self._finish(a))
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
        for a in list(self.trainers.values()):
            self._guard(f"watch {a.run_id}", lambda: self._watch_trainer(a))

    def _watch_trainer(self, a: TrainerProcess) -> None:
        fields = a.ingest(self.store)
        self._escalate(a)
        progress = a.progress()
        state = progress.get("state") or ""
        # progress.json of an earlier attempt says nothing about this process until it writes its own
        own = progress.get("pid") == a.proc.pid
        self._watch_stall(a, state if own else "preparing", int(progress.get("step") or 0))
        run = self.store.get_run(a.run_id)
        if fields:
            self.store.update_run(a.run_id, **fields)
        if run and state in (State.TRAINING, State.PAUSED) and run["state"] != state and a.poll() is None:
            why = (progress.get("reason") or "paused at a step boundary") if state == State.PAUSED else None
            self._transition(a.run_id, state, why)
            rundir.append_console(a.run_dir, f"overnight: run is now {state}")
            if why and why.startswith("disk_low"):
                self._notify("disk_low", a.run_id, lambda: (f"overnight: {a.run_id} paused, disk low", why))
        if a.poll() is not None:
            self._finish(a)

    def _watch_stall(self, a: TrainerProcess, state: str, step: int) -> None:
        if a.stall is None or a.poll() is not None:
            return
        was_stalled = a.stall.stalled
        if not a.stall.observe(state, step, time.monotonic()):
            if was_stalled and not a.stall.stalled:
                log.info(f"{a.run_id}: training steps again (step {step})")
            return
        message = a.stall.message(a.run_id, a.proc.pid)
        log.warning(message)
        rundir.append_console(a.run_dir, f"overnight: {message}")
        self._notify("stalled", a.run_id, lambda: (f"overnight: {a.run_id} stalled", message))
        if a.stall.action == "restart":
            a.restart_frozen()
        # the DB last: reported once, the stall's action must not hang on a DB that cannot be written now
        self.store.control_event("stall", a.run_id, "daemon", "stalled", message)
        self.store.heartbeat(problem=self.problem)

    def _escalate(self, a: TrainerProcess) -> None:
        """A trainer asked to stop that shows no progress gets SIGTERM, then SIGKILL (daemon/engine/stall.py)."""
        if not a.requested or a.poll() is not None:
            return
        escalation = a.escalation or a.escalating(_stop_grace(a))
        sig = escalation.observe(a.progress_mark(), time.monotonic())
        if sig:
            waited = escalation.grace_s if sig == "SIGTERM" else escalation.kill_s
            msg = (f"{a.run_id}: the trainer (PID {a.proc.pid}) showed no progress for {waited:g} s after the "
                   f"{a.requested} request; sending {sig}")
            log.warning(msg)
            rundir.append_console(a.run_dir, f"overnight: {msg}")
            a.signal(sig)  # before the DB event: the escalation sends each signal once, whatever the DB does
            self.store.control_event(str(a.requested), a.run_id, "daemon", "escalated", msg)

    def start_next(self) -> None:
        """Queued runs take free slots (GPU sets, or CPU shares) in queue order: priority, then arrival."""
        if self.stopping or self.controller.queue_held():
            return
        queued = self.store.runs_in([State.QUEUED])
        if not queued:
            return
        owner = self._owner_options()
        try:
            slots = gpus.plan(owner, os.environ)
        except GpuChoiceError as e:
            if not self.trainers:  # a choice no run can train under: the next one fails with the fix
                self._fail_before_start(queued[0], str(e))
            return
        for run, slot in zip(queued, self._free(slots)):
            if not self._start(run, slot, owner):
                return

    def _free(self, slots: list[Slot]) -> list[Slot]:
        """The slots no running trainer holds (slots that share a GPU with a busy one are busy too)."""
        busy = [a.slot for a in self.trainers.values()]
        free = []
        for slot in slots:
            if slot.devices and any(set(slot.devices) & set(b.devices) for b in busy):
                continue
            if not slot.devices and slot in busy:
                busy.remove(slot)  # CPU shares are alike: each running CPU trainer holds one
                continue
            free.append(slot)
        return free

    def _free_slots(self) -> int:
        """How many more runs could start now (preemption asks only when none could)."""
        try:
            return len(self._free(gpus.plan(self._owner_options(), os.environ)))
        except GpuChoiceError:
            return 0

    def _start(self, run: dict[str, Any], slot: Slot, owner: dict[str, Any]) -> bool:
        """Start one queued run's trainer on `slot`; False when the disk is too full to start anything."""
        run_dir = Path(run["run_dir"])
        ckpt = RunFolder(run_dir).newest_checkpoint()
        self._disk_seen = shortage(run_dir, ckpt, float(_setting(owner, "min_free_gb")))
        if self._disk_seen:
            return False
        attempt = (run["attempts"] or 0) + 1
        self.store.set_gpu_set(run["id"], slot.nvml_indices())  # before the transition: metadata.json keeps it
        self._transition(run["id"], State.PREPARING, None, started=run["started"] or iso(), attempts=attempt,
                         resume_from=ckpt.name if ckpt else None)
        env = slot.env(os.environ)
        rundir.append_console(run_dir, f"overnight: starting trainer (attempt {attempt}"
                                       f"{', resuming from ' + ckpt.name if ckpt else ''}; {slot.label}; "
                                       f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r})")
        table = owner.get("torchrun")
        command = launch.trainer_command(run_dir, launch.nproc_for(len(slot.devices), table), table)
        a = TrainerProcess.start(run["id"], run_dir, env=env, command=command, slot=slot, stall=StallWatch(
            60 * float(_setting(owner, "stall_minutes")), str(_setting(owner, "stall_action"))))
        self.trainers[run["id"]] = a
        for kind in ("metrics", "evolution"):
            a.reset(kind, self.store)
        self.store.update_run(run["id"], pid=a.proc.pid)
        log.info(f"started {run['id']} on {slot.label} (PID {a.proc.pid}"
                 f"{', resume from ' + ckpt.name if ckpt else ''})")
        return True

    def _fail_before_start(self, run: dict[str, Any], reason: str) -> None:
        """A run that cannot start (its GPU does not exist here) fails with the reason; the queue goes on."""
        self._transition(run["id"], State.FAILED, reason, finished=iso())
        rundir.append_console(Path(run["run_dir"]), f"overnight: run failed before its trainer started: {reason}")
        log.error(f"{run['id']} failed: {reason}")
        failed = self.store.get_run(run["id"])  # told like any other failure: notification, then the on_fail hook
        self._notify("failed", run["id"], notify.failed_message, failed, reason, self.home.root)
        self.hooks.run_hooks("on_fail", self._owner_options().get("hooks") or {}, failed)

    def _owner_options(self) -> dict[str, Any]:
        """overnight.toml through the process's one reader (options.owner_toml): parsed again only when the file
        changed, the loop asks at every pass while runs wait for a slot. A broken file keeps the last good values
        in force (hooks, notifications, GPUs, stall rules); intake logs it, once per version, and shows it as the
        PROBLEM line."""
        return owner_options(self.home.toml)

    def _finish(self, a: TrainerProcess) -> None:
        """The trainer exited: decide the run's end state from its result and what the daemon asked."""
        rc = a.poll()
        fields = a.ingest(self.store)
        tries = self._attempts(a.run_id)
        result = a.folder.read_result()
        state, reason = end_state(TrainerExit(
            outcome=result.get("outcome"), request=a.requested, exit_code=rc,
            attempts=tries, disk_full=self._died_of_full_disk(a, result), crash=self._crash_reason(a, rc),
            reason=result.get("reason"), home=str(self.home.root)))
        fields.update(pid=None)
        if state == State.QUEUED:
            fields["attempts"] = tries
        if state in ENDED:
            fields["finished"] = iso()
        self._transition(a.run_id, state, reason, **fields)  # a failed DB write: tried again at the next pass
        run = self.store.get_run(a.run_id)
        if state == State.COMPLETED:  # registered before the trainer is let go: a failed write (disk full, DB busy)
            try:  # finishes again at the next pass (the transition and the registration are idempotent)
                waits = sweep.selects_best(_run_options(run), run)
                version = registry.register(self.store, run, activate=not waits)
            except Exception as e:
                if is_disk_full(e) or busy_problem(e, self.home.db):
                    raise
                waits, version = False, None  # a bug here must not hold the queue: said, and the night goes on
                log.exception(f"{a.run_id}: could not register its model version")
        self.trainers.pop(a.run_id, None)
        rundir.append_console(a.run_dir, f"overnight: trainer exited with code {rc}; run {state}"
                                         f"{' (' + reason + ')' if reason else ''}")
        log.info(f"{a.run_id} {state}{': ' + reason if reason else ''} (trainer exit code {rc})")
        if state == State.COMPLETED:
            if version is not None:
                log.info(f"registered model {run['name']} version {version}"
                         f"{' (not active yet: its group selects its best when its last run ends)' if waits else ''}")
            self._notify("completed", run["id"], notify.completed_message, run, version, result)
        elif state == State.FAILED:
            self._notify("failed", run["id"], notify.failed_message, run, reason, self.home.root)
        if state in (State.COMPLETED, State.FAILED):
            self.hooks.run_hooks("on_complete" if state == State.COMPLETED else "on_fail",
                                 self._owner_options().get("hooks") or {}, run)

    def select_groups(self) -> None:
        """Groups a run of which ended (trained out, failed, stopped or skipped, even before it started): when
        the last one has ended and the group says select = "best", activate its best version (after the pass
        that registered the last version)."""
        from daemon.core.evolution import analyze, load_records
        while self._ended_groups:
            group = self._ended_groups.pop()
            said = sweep.on_group_ended(self.store, group, _run_options,
                                        lambda r: analyze(load_records(RunFolder(r["run_dir"]).evolution)).learned)
            if said:
                log.info(said)

    def _on_reject(self, files: list[Path], message: str, error_file: Path) -> None:
        """A drop went to inbox/rejected/: the on_reject hook and the 'rejected' notification."""
        self.hooks.run_reject_hook(self._owner_options().get("hooks") or {}, files[0], message, error_file,
                                   self.home.root)
        self._notify("rejected", files[0].name, notify.rejected_message, files[0], message, error_file,
                     self.home.root)

    def _notify(self, event: str, subject: str, message: Any, *args: Any) -> None:
        """Queue a notification built by `message(*args)`; nothing here may stop the daemon or fail a run."""
        try:
            self.notifier.send(event, *message(*args), subject=subject)
        except Exception:  # noqa: BLE001
            log.exception(f"notify: could not prepare '{event}' for {subject}")

    def _attempts(self, run_id: str) -> int:
        """The run's attempts in a row that made no new checkpoint: 0 once it has a checkpoint newer than the one
        its last attempt resumed from (that attempt made progress, so whatever ended it was no crash loop)."""
        run = self.store.get_run(run_id)
        newest = RunFolder(run["run_dir"]).newest_checkpoint()
        progressed = newest is not None and step_of(newest.name) > step_of(run["resume_from"])
        return 0 if progressed else int(run["attempts"] or 0)

    def _died_of_full_disk(self, a: TrainerProcess, result: dict[str, Any]) -> bool:
        """Its last words say so, or (when the disk was too full even for those) the disk is short of space now."""
        if is_disk_full(result.get("reason") or "") or is_disk_full(rundir.read_tail(a.folder.console)):
            return True
        min_free = float(_setting(self._owner_options(), "min_free_gb"))
        return not result and shortage(a.run_dir, a.folder.newest_checkpoint(), min_free) is not None

    def _crash_reason(self, a: TrainerProcess, rc: int | None) -> str:
        if rc is not None and rc < 0:
            return f"trainer killed by signal {signal.Signals(-rc).name}"
        tail = [ln for ln in rundir.read_tail(a.folder.console).splitlines() if ln.strip()]
        return f"trainer exited with code {rc}: {tail[-1][:300] if tail else 'no output'}"

    def _transition(self, run_id: str, state: str, reason: str | None, **fields: Any) -> None:
        self.store.set_state(run_id, state, reason, **fields)
        run = self.store.get_run(run_id)
        rundir.write_metadata(Path(run["run_dir"]), run)
        if state in ENDED and run.get("group_id"):
            self._ended_groups.add(run["group_id"])

    def apply_control(self) -> None:
        self.controller.apply(list(self.trainers.values()), free_slots=self._free_slots)

    # --- recovery -------------------------------------------------------------------------------------
    def recover(self) -> None:
        """Runs the DB says were active when the last daemon died go back to the queue, to resume."""
        self._end_leftover_trainers()
        for run in self.store.runs_in(ACTIVE):
            run_dir = Path(run["run_dir"])
            ckpt = RunFolder(run_dir).newest_checkpoint()
            reason = f"interrupted (daemon restart); resumes from {ckpt.name if ckpt else 'the start'}"
            self._transition(run["id"], State.QUEUED, reason, pid=None, attempts=self._attempts(run["id"]))
            rundir.append_console(run_dir, f"overnight: {reason}")
            log.info(f"recovered {run['id']}: {reason}")

    def _end_leftover_trainers(self) -> None:
        """Never two trainers on one run folder: a trainer an earlier daemon left running is asked to checkpoint
        and exit (SIGTERM, and SIGCONT in case it was stopped), then ended if it shows no progress."""
        for proc, run_dir in leftover_trainers(self.home.runs):
            msg = (f"found the trainer of {run_dir.name} (PID {proc.pid}) left running by an earlier daemon: "
                   f"asking it to checkpoint and exit")
            log.warning(msg)
            rundir.append_console(run_dir, f"overnight: {msg}")
            escalation = Escalation(stop_grace(60 * OPTIONS["stall_minutes"].default, None), time.monotonic())
            for sig in ("SIGTERM", "SIGCONT"):
                signal_group(proc.pid, sig)
            try:
                while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    sig = escalation.observe(progress_mark(RunFolder(run_dir)), time.monotonic())
                    if sig:
                        log.warning(f"the leftover trainer of {run_dir.name} (PID {proc.pid}) shows no progress: "
                                    f"sending {sig}")
                        signal_group(proc.pid, sig)
                    time.sleep(0.5)
            except psutil.NoSuchProcess:
                pass
            log.info(f"the leftover trainer of {run_dir.name} has exited")
