"""The daemon's main loop: intake, control, the running trainer, the queue, recovery and shutdown."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from daemon import __version__, hooks, registry, rundir, sweep
from daemon.atomic import read_json
from daemon.home import DaemonLock, Home
from daemon.intake import Intake
from daemon.log import log, setup
from daemon.options import OptionsError, load_home_toml
from daemon.runner import TrainerProcess
from daemon.store import ACTIVE_STATES, END_STATES, Store
from daemon.timefmt import iso

# What a run becomes when its trainer exits after the daemon asked it to stop for a reason.
REQUEST_OUTCOME = {"stop": "stopped", "skip": "skipped", "preempt": "queued", "shutdown": "queued"}
# A trainer killed from outside (OOM killer, kill -9) is resumed from its checkpoint this many times in all.
MAX_ATTEMPTS = 3


def _run_options(run: dict[str, Any]) -> dict[str, Any]:
    """A run's resolved options, from its config.json."""
    return (read_json(Path(run["run_dir"]) / "config.json", {}) or {}).get("options") or {}


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (only finished ones are named step-N)."""
    steps = [(int(p.name[5:]), p) for p in (run_dir / "checkpoints").glob("step-*") if p.name[5:].isdigit()]
    return max(steps)[1] if steps else None


class Daemon:
    """One daemon per home; the only writer of overnight.db."""

    def __init__(self, home: Home, *, once: bool = False, settle: float = 1.0, tick: float = 0.25,
                 echo: bool = True) -> None:
        self.home, self.once, self.tick = home, once, tick
        setup(home.log, echo=echo)
        self.lock = DaemonLock(home)
        self.lock.acquire()  # raises HomeLocked naming the holder
        self.store = Store(home.db)
        self.wake = threading.Event()
        self.intake = Intake(home, self.store, settle=settle, on_verdict=self.wake.set)
        self.active: TrainerProcess | None = None
        self.stopping = False
        self._stop_file_seen = False
        self._pause_target: str | None = None  # what control/pause named at the last pass ("*": any run)
        self._observer = None
        self._hook_threads: list[threading.Thread] = []

    # --- life cycle -----------------------------------------------------------------------------------
    def serve(self) -> int:
        """Run until SIGTERM/SIGINT (or, with --once, until the inbox and queue are done)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.store.daemon_started(os.getpid(), str(self.home.root), __version__)
        log.info(f"overnight {__version__} daemon started on {self.home.root} (PID {os.getpid()})")
        self._watch()
        self.recover()
        last_beat = 0.0
        try:
            while not self.stopping:
                self.step()
                if time.monotonic() - last_beat > 2:
                    self.store.heartbeat(problem=self.intake.problem)
                    last_beat = time.monotonic()
                if self.once and self._idle():
                    break
                self.wake.wait(self.tick)
                self.wake.clear()
        finally:
            self.shutdown()
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info(f"received {signal.Signals(signum).name}: checkpointing and exiting")
        self.stopping = True
        self.wake.set()

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
        if self.active or self.intake.busy():
            return False
        if self.store.runs_in(["queued"]) and not self._stop_file():
            return False
        from daemon.submission import role_of, stem_of
        stems = {stem_of(p) for p in self.intake.pending() if role_of(p) == "unsupported" or
                 (role_of(p) == "dataset" and not self.intake.problem)}  # drops wait while overnight.toml is broken
        return not stems and not any(p.is_symlink() for p in self.intake.pending())

    def shutdown(self) -> None:
        """Checkpoint the running job (it goes back to the queue and resumes at the next start), then exit."""
        if self.active:
            self.active.requested = self.active.requested or "shutdown"
            self.active.send("stop")
            self.active.close_stdin()
            if self.active.wait(300) is None:
                log.warning(f"trainer of {self.active.run_id} did not stop within 300 s; terminating it")
                self.active.proc.terminate()
                self.active.wait(30)
            self._finish(self.active)
        self.intake.close()
        if self._observer:
            self._observer.stop()
            self._observer.join(timeout=5)
        for t in self._hook_threads:
            t.join(timeout=60)
        self.store.heartbeat("stopped")
        log.info("daemon stopped")
        self.store.close()
        self.lock.release()

    # --- one pass of the loop -------------------------------------------------------------------------
    def step(self) -> None:
        """Intake, control, trainer bookkeeping, queue: each guarded so one failure never stops the daemon."""
        for part in (self.intake.scan, self.apply_control, self.watch_trainer, self.start_next):
            try:
                part()
            except Exception:  # keep serving; the traceback goes to overnight.log
                log.exception(f"internal error in {part.__name__}")

    def watch_trainer(self) -> None:
        a = self.active
        if a is None:
            return
        fields = a.ingest(self.store)
        state = (a.progress().get("state") or "")
        run = self.store.get_run(a.run_id)
        if fields:
            self.store.update_run(a.run_id, **fields)
        if run and state in ("training", "paused") and run["state"] != state and a.poll() is None:
            self._transition(a.run_id, state, "paused at a step boundary" if state == "paused" else None)
            rundir.append_console(a.run_dir, f"overnight: run is now {state}")
        if a.poll() is not None:
            self._finish(a)

    def start_next(self) -> None:
        if self.active or self.stopping or self._stop_file():
            return
        queued = self.store.runs_in(["queued"])
        if not queued:
            return
        run = queued[0]
        run_dir = Path(run["run_dir"])
        ckpt = newest_checkpoint(run_dir)
        self._transition(run["id"], "preparing", None, started=run["started"] or iso(),
                         attempts=(run["attempts"] or 0) + 1, resume_from=ckpt.name if ckpt else None)
        rundir.append_console(run_dir, f"overnight: starting trainer (attempt {(run['attempts'] or 0) + 1}"
                                       f"{', resuming from ' + ckpt.name if ckpt else ''})")
        self.active = TrainerProcess.start(run["id"], run_dir, env=self._gpu_env())
        for kind in ("metrics", "evolution"):
            self.active.reset(kind, self.store)
        self.store.update_run(run["id"], pid=self.active.proc.pid)
        log.info(f"started {run['id']} (PID {self.active.proc.pid}{', resume from ' + ckpt.name if ckpt else ''})")

    def _gpu_env(self) -> dict[str, str]:
        gpus = self._owner_options().get("gpus")
        if isinstance(gpus, int):
            gpus = list(range(gpus))  # a count: the first N GPUs
        if isinstance(gpus, list):
            return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}
        return {}

    def _owner_options(self) -> dict[str, Any]:
        try:
            return load_home_toml(self.home.toml)
        except OptionsError as e:
            log.error(str(e))
            return {}

    def _finish(self, a: TrainerProcess) -> None:
        """The trainer exited: decide the run's end state from its result and what the daemon asked."""
        rc = a.poll()
        fields = a.ingest(self.store)
        result = read_json(a.run_dir / "result.json", {}) or {}
        outcome = result.get("outcome")
        if outcome == "completed" and rc == 0:
            state, reason = "completed", None
        elif a.requested and rc == 0 and outcome == "stopped":
            state, reason = REQUEST_OUTCOME[a.requested], f"{a.requested} requested"
        elif a.requested == "shutdown":
            state, reason = "queued", "daemon stopped; resumes from its last checkpoint"
        elif rc is not None and rc < 0 and not outcome and self._attempts(a.run_id) < MAX_ATTEMPTS:
            state, reason = "queued", (f"{self._crash_reason(a, rc)}; resuming from its last checkpoint "
                                       f"(attempt {self._attempts(a.run_id) + 1} of {MAX_ATTEMPTS})")
        else:
            state, reason = "failed", result.get("reason") or self._crash_reason(a, rc)
        self.active = None
        fields.update(pid=None)
        if state in END_STATES:
            fields["finished"] = iso()
        self._transition(a.run_id, state, reason, **fields)
        rundir.append_console(a.run_dir, f"overnight: trainer exited with code {rc}; run {state}"
                                         f"{' (' + reason + ')' if reason else ''}")
        log.info(f"{a.run_id} {state}{': ' + reason if reason else ''} (trainer exit code {rc})")
        run = self.store.get_run(a.run_id)
        if state == "completed":
            waits = sweep.selects_best(_run_options(run), run)
            version = registry.register(self.store, run, activate=not waits)
            log.info(f"registered model {run['name']} version {version}"
                     f"{' (not active yet: its group selects its best when its last run ends)' if waits else ''}")
        if state in ("completed", "failed"):
            t = hooks.run_hooks("on_complete" if state == "completed" else "on_fail",
                                self._owner_options().get("hooks") or {}, run)
            if t:
                self._hook_threads.append(t)
        if state in END_STATES and run.get("group_id"):
            self._group_ended(run)

    def _group_ended(self, run: dict[str, Any]) -> None:
        """The last run of a group with select = "best" ended: activate the group's best version."""
        from daemon.evolution import analyze, load_records
        try:
            said = sweep.on_run_ended(self.store, run, _run_options,
                                      lambda r: analyze(load_records(Path(r["run_dir"]) / "evolution.jsonl")).learned)
        except Exception:  # noqa: BLE001 - a selection problem must not stop the daemon
            log.exception(f"could not select the best run of group {run['group_id']}")
            return
        if said:
            log.info(said)

    def _attempts(self, run_id: str) -> int:
        return int(self.store.get_run(run_id)["attempts"] or 0)

    def _crash_reason(self, a: TrainerProcess, rc: int | None) -> str:
        if rc is not None and rc < 0:
            return f"trainer killed by signal {signal.Signals(-rc).name}"
        tail = [ln for ln in rundir.read_tail(a.run_dir / "console.log").splitlines() if ln.strip()]
        return f"trainer exited with code {rc}: {tail[-1][:300] if tail else 'no output'}"

    def _transition(self, run_id: str, state: str, reason: str | None, **fields: Any) -> None:
        self.store.set_state(run_id, state, reason, **fields)
        run = self.store.get_run(run_id)
        rundir.write_metadata(Path(run["run_dir"]), run)

    # --- control --------------------------------------------------------------------------------------
    def _stop_file(self) -> bool:
        """An untargeted control/stop holds the queue while it exists."""
        p = self.home.control / "stop"
        try:
            return p.is_file() and not p.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return False

    def apply_control(self) -> None:
        from daemon.control_apply import apply_all
        apply_all(self)

    # --- recovery -------------------------------------------------------------------------------------
    def recover(self) -> None:
        """Runs the DB says were active when the last daemon died go back to the queue, to resume."""
        for run in self.store.runs_in(ACTIVE_STATES):
            run_dir = Path(run["run_dir"])
            self._wait_orphan(run)
            ckpt = newest_checkpoint(run_dir)
            reason = f"interrupted (daemon restart); resumes from {ckpt.name if ckpt else 'the start'}"
            self._transition(run["id"], "queued", reason, pid=None)
            rundir.append_console(run_dir, f"overnight: {reason}")
            log.info(f"recovered {run['id']}: {reason}")

    def _wait_orphan(self, run: dict[str, Any]) -> None:
        """A trainer whose daemon was killed checkpoints and exits on its own (EOF on stdin): wait for it."""
        pid = run.get("pid")
        if not pid:
            return
        try:
            proc = psutil.Process(pid)
            if "daemon.trainer" not in " ".join(proc.cmdline()):
                return
            log.info(f"waiting for the previous trainer of {run['id']} (PID {pid}) to checkpoint and exit")
            proc.wait(timeout=300)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        except psutil.TimeoutExpired:
            proc.kill()
