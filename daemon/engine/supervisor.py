"""The trainer supervisor: the daemon's running trainers, one per slot, from their start to their end.

Split like pueue's process handler: `start_next`/`spawn` put queued runs on free slots, `watch` follows each
trainer every pass (its files into the DB, its phase, a stall, a stop it does not honour), `finish` turns an exit
into the run's end state (daemon/engine/endstate.py), `stop_all` checkpoints every trainer at shutdown and `recover`
requeues what a dead daemon left active. The Daemon (scheduler.py) owns the loop and hands in what the supervisor
must not reach back for: the state transition, the fault guard, notifications, hooks and the disk report.
Where a trainer runs is its executor's (daemon/engine/executors/: a local subprocess, or a Slurm job that outlives
the daemon and that the next daemon follows by its job id).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from daemon.core import asha, control, rundir, sweep
from daemon.core.errors import ExecutorError, ExecutorUnreachable
from daemon.core.gpus import GpuChoiceError, Slot
from daemon.core.home import Home
from daemon.core.launch import multi_node
from daemon.core.log import log
from daemon.core.options import OPTIONS
from daemon.core.render import EXECUTOR_SILENT
from daemon.core.rundir import RunFolder, step_of
from daemon.core.space import DISK_LOW, is_disk_full, shortage
from daemon.core.states import ACTIVE, ENDED, Outcome, Phase, State, StopRequest
from daemon.core.timefmt import iso
from daemon.engine import hooks, notify, pruning, registry, search
from daemon.engine.endstate import TrainerExit, end_state
from daemon.engine.rebuild import INTERRUPTED
from daemon.engine.executors import Executor, for_config
from daemon.engine.executors.local import signal_group
from daemon.engine.executors.slurm import SlurmExecutor
from daemon.engine.runner import TrainerProcess, leftover_trainers, progress_mark
from daemon.engine.stall import Escalation, StallWatch, grace_of
from daemon.engine.store import Store, busy_problem

UNREACHABLE_RETRY_S = 60  # after an executor that did not answer a start, the next start waits this long
Transition = Callable[..., None]  # (run_id, state, reason, **fields): the Daemon's, which also writes metadata.json
Guard = Callable[[str, Callable[[], None]], None]  # the Daemon's: a fault is logged, never fatal


def setting(owner: dict[str, Any], name: str) -> Any:
    """An owner option from overnight.toml, or its default."""
    return owner.get(name, OPTIONS[name].default)


def run_options(run: dict[str, Any]) -> dict[str, Any]:
    """A run's resolved options, from its config.json."""
    return RunFolder(run["run_dir"]).options()


def tell(notifier: notify.Notifier, event: str, subject: str, message: Any, *args: Any) -> None:
    """Queue a notification built by `message(*args)`; nothing here may stop the daemon or fail a run."""
    try:
        notifier.send(event, *message(*args), subject=subject)
    except Exception:  # noqa: BLE001
        log.exception(f"notify: could not prepare '{event}' for {subject}")


def _honoured(result: dict[str, Any]) -> StopRequest | None:
    """The user's stop or skip the trainer's last attempt ended on (result.json: "stop requested"), else None. The
    request itself lived in the daemon that asked; the trainer's own record of it outlives that daemon."""
    if _outcome(result.get("outcome")) != Outcome.STOPPED:
        return None
    request = StopRequest.named_in(result.get("reason"))
    return request if request is not None and request.by_user else None


def _outcome(value: Any) -> Outcome | None:
    """result.json's outcome; one the trainer never writes reads as failed (end_state then fails the run with the
    file's reason, as it did for any outcome it did not know), so a damaged file cannot stall the finish."""
    if not value:
        return None
    known = isinstance(value, str) and value in Outcome._value2member_map_
    return Outcome(value) if known else Outcome.FAILED


class Supervisor:
    """The running trainers by run id, and every rule of their life cycle."""

    def __init__(self, home: Home, store: Store, transition: Transition, *, options: Callable[[], dict[str, Any]],
                 guard: Guard, notifier: notify.Notifier, hooks: hooks.Hooks, beat: Callable[[], None],
                 disk: Callable[[str | None], None]) -> None:
        self.home, self.store, self.transition, self.options, self.guard = home, store, transition, options, guard
        self.notifier, self.hooks = notifier, hooks
        self.beat = beat  # a heartbeat now: a stall shows on the PROBLEM line without waiting for the loop's
        self.disk = disk  # what a start found about free space (None: enough), for the daemon's disk problem
        self.trainers: dict[str, TrainerProcess] = {}  # the runs training side by side, one per slot
        self.retry_at = 0.0  # no start before this (monotonic): the executor did not answer the last one

    def stalled(self) -> list[str]:
        """What each stalled trainer's PROBLEM line says."""
        return [a.stall.message(a.run_id, a.job.pid) for a in self.trainers.values() if a.stall and a.stall.stalled]

    def executor(self, owner: dict[str, Any] | None = None) -> Executor:
        """The owner's executor now ([executor] in overnight.toml); a running trainer keeps the one it started on."""
        return for_config(self.options() if owner is None else owner)

    # --- starting -------------------------------------------------------------------------------------
    def start_next(self) -> None:
        """Queued runs take free slots (GPU sets, or CPU shares) in queue order: priority, then arrival."""
        queued = self.store.startable(control.paused(self.home))
        if not queued or time.monotonic() < self.retry_at:
            return
        owner = self.options()
        try:
            slots = self.executor(owner).slots(owner)
        except GpuChoiceError as e:
            if not self.trainers:  # a choice no run can train under: the next one fails with the fix
                self.fail_before_start(queued[0], str(e))
            return
        for run, slot in zip(queued, self._free(slots)):
            if not self.spawn(run, slot, owner):
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

    def free_slots(self) -> int:
        """How many more runs could start now (preemption asks only when none could)."""
        try:
            return len(self._free(self.executor().slots(self.options())))
        except GpuChoiceError:
            return 0

    def spawn(self, run: dict[str, Any], slot: Slot, owner: dict[str, Any]) -> bool:
        """Start one queued run's trainer on `slot`; False when the disk is too full to start anything."""
        run_dir = Path(run["run_dir"])
        if not RunFolder(run_dir).config.is_file():  # removed by hand: nothing to train, and the queue goes on
            self.fail_before_start(run, f"its run folder {run_dir} is gone (or holds no config.json), so there is "
                                        f"nothing to train. Fix: drop the dataset again to train it anew")
            return True
        ckpt = RunFolder(run_dir).newest_checkpoint()
        short = shortage(run_dir, ckpt, float(setting(owner, "min_free_gb")))
        self.disk(short)
        if short:
            return False
        drew = search.draw(self.home.root, run)  # a search's trial: its values, drawn as it first starts
        if drew:
            rundir.append_console(run_dir, f"overnight: {drew}")
            log.info(drew)
        attempt = (run["attempts"] or 0) + 1
        # an earlier attempt's result.json goes before the run reads as active: a daemon killed in between must not
        # take its "stop requested" for this attempt's (recover)
        RunFolder(run_dir).result.unlink(missing_ok=True)
        self.store.set_gpu_set(run["id"], slot.nvml_indices())  # before the transition: metadata.json keeps it
        self.transition(run["id"], State.PREPARING, None, started=run["started"] or iso(), attempts=attempt,
                        resume_from=ckpt.name if ckpt else None)
        env = slot.env(os.environ)
        rung = pruning.target_rung(self.store, run, run_options(run))
        if rung is not None:  # an ASHA trial: the trainer stops at this rung's step (daemon/core/asha.py)
            env[asha.RUNG_ENV] = str(rung)
        executor = self.executor(owner)
        resuming = f", resuming from {ckpt.name}" if ckpt else ""
        rundir.append_console(run_dir, f"overnight: starting trainer (attempt {attempt}{resuming}; "
                                       f"{executor.where(slot, env)})")
        command = executor.command(run_dir, slot, owner.get("torchrun"))
        try:
            a = TrainerProcess.start(run["id"], run_dir, env=env, command=command, slot=slot, executor=executor,
                                     stall=self._stall_watch(owner))
        except ExecutorUnreachable as e:  # slurmctld did not answer: the run waits for it, nothing more starts
            self._unreachable(run, str(e))
            return False
        except ExecutorError as e:  # Slurm refused the job: said once, with the fix; the queue goes on
            self.fail_before_start(run, str(e))
            return True
        self._follow(a)
        self.store.update_run(run["id"], pid=a.job.pid, job_id=a.job.job_id, node=None)
        if multi_node(owner.get("torchrun")) and not a.job.job_id:  # nothing trains until every machine is there
            self._say_waiting_for_nodes(run, owner["torchrun"])
        log.info(f"started {run['id']} on {slot.label} ({a.job.label}{', resume from ' + ckpt.name if ckpt else ''})")
        return True

    def _say_waiting_for_nodes(self, run: dict[str, Any], torchrun: dict[str, Any]) -> None:
        where = torchrun.get("rdzv_endpoint") or torchrun.get("master_addr") or "its rendezvous"
        note = (f"waits for the other machines of [torchrun] (nnodes = {torchrun.get('nnodes')}) to join at {where}: "
                f"start the launcher on each with its --node-rank and runs/{run['id']}")
        self.store.update_run(run["id"], reason=note)
        rundir.append_console(Path(run["run_dir"]), f"overnight: {note}")

    @staticmethod
    def _stall_watch(owner: dict[str, Any]) -> StallWatch:
        return StallWatch(60 * float(setting(owner, "stall_minutes")), str(setting(owner, "stall_action")))

    def _follow(self, a: TrainerProcess) -> None:
        """Watch `a` from now on; its metrics and evolution files are mirrored into the DB afresh."""
        self.trainers[a.run_id] = a
        for kind in ("metrics", "evolution"):
            a.reset(kind, self.store)

    def _unreachable(self, run: dict[str, Any], said: str) -> None:
        """The run back in the queue as it was, and no start tried for UNREACHABLE_RETRY_S (each try can take a
        while: the daemon must go on taking drops and commands meanwhile)."""
        self.retry_at = time.monotonic() + UNREACHABLE_RETRY_S
        reason = (f"{EXECUTOR_SILENT} ({said}); queued again, submitted when it does (tried every "
                  f"{UNREACHABLE_RETRY_S} s)")
        self.transition(run["id"], State.QUEUED, reason, attempts=run["attempts"] or 0)
        rundir.append_console(Path(run["run_dir"]), f"overnight: {reason}")
        log.warning(f"{run['id']}: {reason}")

    def fail_before_start(self, run: dict[str, Any], reason: str) -> None:
        """A run that cannot start (its GPU does not exist here) fails with the reason; the queue goes on."""
        self.transition(run["id"], State.FAILED, reason, finished=iso())
        if Path(run["run_dir"]).is_dir():
            rundir.append_console(Path(run["run_dir"]), f"overnight: run failed before its trainer started: {reason}")
        log.error(f"{run['id']} failed: {reason}")
        failed = self.store.get_run(run["id"])  # told like any other failure: notification, then the on_fail hook
        tell(self.notifier, "failed", run["id"], notify.failed_message, failed, reason, self.home.root)
        self.hooks.run_hooks("on_fail", self.options().get("hooks") or {}, failed)

    # --- watching -------------------------------------------------------------------------------------
    def watch(self) -> None:
        """One pass over every trainer, each guarded: one trainer's fault must not blind the daemon to the others."""
        for a in list(self.trainers.values()):
            self.guard(f"watch {a.run_id}", lambda: self._watched(a))

    def _watched(self, a: TrainerProcess) -> None:
        try:
            self._watch_trainer(a)
        except Exception as e:
            if is_disk_full(e):  # the trainer's own last words may not fit on the disk: its end is judged by this
                a.saw_disk_full = True
            raise

    def _watch_trainer(self, a: TrainerProcess) -> None:
        fields = a.ingest(self.store)
        self._escalate(a)
        progress = a.progress()
        phase = progress.get("state") or ""
        # progress.json of an earlier attempt says nothing about this process until it writes its own
        own = a.job.owns(progress)
        suspended = a.job.suspended()  # held still by Slurm: no step is due, no stall
        self._watch_stall(a, Phase.PAUSED if suspended else phase if own else Phase.PREPARING,
                          int(progress.get("step") or 0))
        run = self.store.get_run(a.run_id)
        node = a.job.node()
        if run and node and node != run.get("node"):
            fields["node"] = node
        if fields:
            self.store.update_run(a.run_id, **fields)
        waiting = a.job.waiting()
        if run and a.poll() is None and self._wait_changed(run, waiting, a.job.label):
            self.transition(a.run_id, State.PREPARING, waiting)  # a Slurm job in the queue (again, after a requeue)
        elif run and suspended:
            if (run["state"], run["reason"]) != (State.PAUSED, suspended):
                self.transition(a.run_id, State.PAUSED, suspended)
                rundir.append_console(a.run_dir, f"overnight: {suspended}")
        elif run and own and phase in (Phase.TRAINING, Phase.PAUSED) and run["state"] != phase and a.poll() is None:
            self._follow_phase(a, State(phase), progress)
        if a.poll() is not None:
            self.finish(a)

    @staticmethod
    def _wait_changed(run: dict[str, Any], waiting: str | None, label: str) -> bool:
        """The job went into the scheduler's queue (or out of it): the run shows it while preparing."""
        if waiting:
            return (run["state"], run["reason"]) != (State.PREPARING, waiting)
        return run["state"] == State.PREPARING and (run["reason"] or "").startswith(f"{label} pending")

    def _follow_phase(self, a: TrainerProcess, state: State, progress: dict[str, Any]) -> None:
        """The run's state follows the trainer into training and into a pause (a disk-low pause is told)."""
        why = (progress.get("reason") or "paused at a step boundary") if state == State.PAUSED else None
        self.transition(a.run_id, state, why)
        rundir.append_console(a.run_dir, f"overnight: run is now {state}")
        if why and why.startswith(DISK_LOW):
            tell(self.notifier, "disk_low", a.run_id, lambda: (notify.title(f"{a.run_id} paused, disk low"), why))

    def _watch_stall(self, a: TrainerProcess, phase: str, step: int) -> None:
        if a.stall is None or a.poll() is not None:
            return
        was_stalled = a.stall.stalled
        if not a.stall.observe(phase, step, time.monotonic()):
            if was_stalled and not a.stall.stalled:
                log.info(f"{a.run_id}: training steps again (step {step})")
            return
        message = a.stall.message(a.run_id, a.job.pid)
        log.warning(message)
        rundir.append_console(a.run_dir, f"overnight: {message}")
        tell(self.notifier, "stalled", a.run_id, lambda: (notify.title(f"{a.run_id} stalled"), message))
        if a.stall.action == "restart":
            a.restart_frozen()
        # the DB last: reported once, the stall's action must not hang on a DB that cannot be written now
        self.store.control_event("stall", a.run_id, "daemon", "stalled", message)
        self.beat()

    def _escalate(self, a: TrainerProcess) -> None:
        """A trainer asked to stop that shows no progress gets SIGTERM, then SIGKILL (daemon/engine/stall.py)."""
        if not a.requested or a.poll() is not None:
            return
        escalation = a.escalation or a.escalating(grace_of(a.stall, a.step_s))
        sig = escalation.observe(a.progress_mark(), time.monotonic())
        if sig:
            waited = escalation.grace_s if sig == "SIGTERM" else escalation.kill_s
            msg = (f"{a.run_id}: the trainer ({a.job.label}) showed no progress for {waited:g} s after the "
                   f"{a.requested} request; sending {sig}")
            log.warning(msg)
            rundir.append_console(a.run_dir, f"overnight: {msg}")
            a.signal(sig)  # before the DB event: the escalation sends each signal once, whatever the DB does
            self.store.control_event(str(a.requested), a.run_id, "daemon", "escalated", msg)

    # --- ending ---------------------------------------------------------------------------------------
    def finish(self, a: TrainerProcess) -> None:
        """The trainer exited: decide the run's end state from its result and what the daemon asked."""
        rc = a.poll()
        fields = a.ingest(self.store)
        tries = self._attempts(a.run_id)
        result = a.folder.read_result()
        state, reason = end_state(TrainerExit(
            outcome=_outcome(result.get("outcome")), request=a.requested, exit_code=rc,
            attempts=tries, disk_full=self._died_of_full_disk(a, result), crash=self._crash_reason(a, rc),
            reason=result.get("reason"), home=str(self.home.root), interrupted=a.job.interrupted(),
            withdrawn=a.job.withdrawn(), checkpointed=a.folder.newest_checkpoint() is not None))
        fields.update(pid=None)
        if state == State.QUEUED and (result.get("reason") or "").startswith(asha.RUNG_STOP):
            run = self.store.get_run(a.run_id)
            reason = pruning.hold(self.store, run, run_options(run), result.get("step"))
        if state == State.QUEUED:
            fields["attempts"] = tries
        if state in ENDED:
            fields["finished"] = iso()
        self.transition(a.run_id, state, reason, **fields)  # a failed DB write: tried again at the next pass
        run = self.store.get_run(a.run_id)
        # registered before the trainer is let go: a failed write (disk full, DB busy) finishes again at the next
        # pass (the transition and the registration are idempotent)
        version, waits = self._register(run) if state == State.COMPLETED else (None, False)
        self.trainers.pop(a.run_id, None)
        ended = "trainer" if a.job.pid else a.job.label
        # a job ended from outside (a failed node, a time limit) has no exit code of the trainer's to tell
        how = "ended" if not a.job.pid and a.job.interrupted() else f"exited with code {rc}"
        rundir.append_console(a.run_dir, f"overnight: {ended} {how}; run {state}"
                                         f"{' (' + reason + ')' if reason else ''}")
        log.info(f"{a.run_id} {state}{': ' + reason if reason else ''} ({ended} exit code {rc})")
        self._tell_end(run, state, reason, version, waits, result)

    def _register(self, run: dict[str, Any]) -> tuple[int | None, bool]:
        """Register a completed run's model version (active at once unless its group selects its best later)."""
        try:
            waits = sweep.selects_best(run_options(run), run)
            return registry.register(self.store, run, activate=not waits), waits
        except Exception as e:
            if is_disk_full(e) or busy_problem(e, self.home.db):
                raise
            log.exception(f"{run['id']}: could not register its model version")
            return None, False  # a bug here must not hold the queue: said, and the night goes on

    def _tell_end(self, run: dict[str, Any], state: State, reason: str | None, version: int | None, waits: bool,
                  result: dict[str, Any]) -> None:
        """The log line of a new version, the notification and the on_complete / on_fail hook."""
        if state == State.COMPLETED:
            if version is not None:
                log.info(f"registered model {run['name']} version {version}"
                         f"{' (not active yet: its group selects its best when its last run ends)' if waits else ''}")
            tell(self.notifier, "completed", run["id"], notify.completed_message, run, version, result)
            lost = registry.regressed(self.store, run["name"], version) if version is not None else None
            if lost is not None:  # the forgetting alarm (daemon/core/evalreport.py): told once, as the run ends
                log.warning(f"{run['name']} v{version} is regressed: {'; '.join(lost['why'])}")
                tell(self.notifier, "regressed", run["id"], notify.regressed_message, run, version, lost,
                     self.home.root)
        elif state == State.FAILED:
            tell(self.notifier, "failed", run["id"], notify.failed_message, run, reason, self.home.root)
        if state in (State.COMPLETED, State.FAILED):
            self.hooks.run_hooks("on_complete" if state == State.COMPLETED else "on_fail",
                                 self.options().get("hooks") or {}, run)

    def _attempts(self, run_id: str) -> int:
        """The run's attempts in a row that made no new checkpoint: 0 once it has a checkpoint newer than the one
        its last attempt resumed from (that attempt made progress, so whatever ended it was no crash loop)."""
        run = self.store.get_run(run_id)
        newest = RunFolder(run["run_dir"]).newest_checkpoint()
        progressed = newest is not None and step_of(newest.name) > step_of(run["resume_from"])
        return 0 if progressed else int(run["attempts"] or 0)

    def _died_of_full_disk(self, a: TrainerProcess, result: dict[str, Any]) -> bool:
        """Its last words say so, or (when the disk was too full even for those) the daemon found the disk full
        while it ran, or the disk is short of space now."""
        if is_disk_full(result.get("reason") or "") or is_disk_full(rundir.read_tail(a.folder.console)):
            return True
        if not result and a.saw_disk_full:
            return True
        min_free = float(setting(self.options(), "min_free_gb"))
        return not result and shortage(a.run_dir, a.folder.newest_checkpoint(), min_free) is not None

    @staticmethod
    def _crash_reason(a: TrainerProcess, rc: int | None) -> str:
        if a.job.refused():
            return str(a.job.refused())
        if rc is not None and rc < 0:
            return f"trainer killed by signal {signal.Signals(-rc).name}"
        tail = [ln for ln in rundir.read_tail(a.folder.console).splitlines() if ln.strip()]
        if any("RendezvousTimeoutError" in ln for ln in tail):
            return ("the other machines of [torchrun] never joined its rendezvous (torchrun's RendezvousTimeoutError). "
                    "Fix: start the launcher on each other machine with its --node-rank (README: Several GPUs: "
                    "torchrun) within rdzv_conf's join_timeout, then overnight resume RUN")
        return f"trainer exited with code {rc}: {tail[-1][:300] if tail else 'no output'}"

    def stop_all(self) -> None:
        """Shutdown: every local trainer checkpoints and exits (its run goes back to the queue, to resume at the next
        start); one that shows no progress is escalated to SIGTERM, then SIGKILL. A Slurm job runs on: the next
        daemon follows it by its job id."""
        for a in [a for a in self.trainers.values() if a.job.outlives_daemon]:
            self.trainers.pop(a.run_id)
            rundir.append_console(a.run_dir, f"overnight: the daemon stops; {a.job.label} runs on (the next daemon "
                                             f"follows it)")
            log.info(f"{a.run_id}: {a.job.label} runs on; the next daemon follows it")
        for a in self.trainers.values():
            a.request_stop("shutdown")
            a.release()
        for a in list(self.trainers.values()):
            while a.wait(0.5) is None:
                for b in self.trainers.values():
                    self.guard("escalate", lambda: self._escalate(b))
                if a.escalation and a.escalation.sent == "SIGKILL" and a.wait(30) is None:
                    log.error(f"trainer of {a.run_id} ({a.job.label}) survived SIGKILL (stuck in the kernel?); "
                              f"leaving it: the next daemon ends it at start")
                    break
            # a DB that cannot be written now (disk full) still says "training": the next start requeues the run
            self.guard("finish", lambda: self.finish(a))

    # --- recovery -------------------------------------------------------------------------------------
    def recover(self) -> None:
        """Runs the DB says were active when the last daemon died go back to the queue, to resume; a run whose
        Slurm job is still known to Slurm is followed again instead (never a second job for one run)."""
        followed = self._follow_jobs()
        self._end_leftover_trainers(followed)
        for run in self.store.runs_in(ACTIVE):
            if run["id"] in followed:
                continue
            run_dir = Path(run["run_dir"])
            result = RunFolder(run_dir).read_result()
            asked = _honoured(result)
            if asked is not None:  # the user's stop or skip, carried out before the daemon died: it stands
                reason = f"{asked} requested (carried out before the daemon restarted)"
                where = {k: result[r] for k, r in (("step", "step"), ("loss", "final_loss"), ("eval_loss", "eval_loss"))
                         if result.get(r) is not None}  # where the trainer ended, past what the dead daemon saw
                self.transition(run["id"], asked.outcome, reason, pid=None, finished=iso(), **where)
                rundir.append_console(run_dir, f"overnight: run {asked.outcome} ({reason})")
                log.info(f"recovered {run['id']}: {asked.outcome} ({reason})")
                continue
            ckpt = RunFolder(run_dir).newest_checkpoint()
            reason = f"interrupted (daemon restart); resumes from {ckpt.name if ckpt else 'the start'}"
            self.transition(run["id"], State.QUEUED, reason, pid=None, attempts=self._attempts(run["id"]))
            rundir.append_console(run_dir, f"overnight: {reason}")
            log.info(f"recovered {run['id']}: {reason}")

    def _follow_jobs(self) -> set[str]:
        """Active runs with a job id: the jobs Slurm still knows are followed again; their run ids. A run the DB's
        rebuild queued (it was active when the DB was lost) is followed too while its job has not ended."""
        owner = self.options()
        rebuilt = [{**r, "job_id": None} for r in self.store.runs_in((State.QUEUED,))  # an ended job: not followed
                   if str(r.get("reason") or "").startswith(INTERRUPTED)]
        for run in [*self.store.runs_in(ACTIVE), *rebuilt]:
            if not (run.get("job_id") or RunFolder(run["run_dir"]).job.exists()):
                continue
            job = SlurmExecutor(owner.get("executor") or {}).follow(run)
            if job is None:
                continue
            if run["state"] == State.QUEUED:
                self.transition(run["id"], State.PREPARING, None, job_id=job.job_id)
            a = TrainerProcess(run["id"], Path(run["run_dir"]), job, stall=self._stall_watch(owner))
            self._follow(a)
            rundir.append_console(a.run_dir, f"overnight: the daemon restarted; following {job.label} again")
            log.info(f"following {run['id']}'s {job.label} again (started by an earlier daemon)")
        return set(self.trainers)

    def _end_leftover_trainers(self, followed: set[str]) -> None:
        """Never two trainers on one run folder: a trainer an earlier daemon left running is asked to checkpoint
        and exit (SIGTERM, and SIGCONT in case it was stopped), then ended if it shows no progress. A followed
        Slurm job's trainer (on this machine when the cluster is this machine) is left to it."""
        for proc, run_dir in leftover_trainers(self.home.runs):
            if run_dir.name in followed:
                continue
            msg = (f"found the trainer of {run_dir.name} (PID {proc.pid}) left running by an earlier daemon: "
                   f"asking it to checkpoint and exit")
            log.warning(msg)
            rundir.append_console(run_dir, f"overnight: {msg}")
            for sig in ("SIGTERM", "SIGCONT"):
                signal_group(proc.pid, sig)
            _wait_out(proc, run_dir, Escalation(grace_of(None, None), time.monotonic()))
            log.info(f"the leftover trainer of {run_dir.name} has exited")


def _wait_out(proc: psutil.Process, run_dir: Path, escalation: Escalation) -> None:
    """Wait for a leftover trainer to exit, escalating while it shows no progress."""
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
