"""Start, command, and reap a trainer (through its executor's `Job`); mirror its run-folder files into the DB.

The trainer writes only its run folder; the daemon reads it here. The files are the truth: the DB rows for
metrics and evolution are a mirror that can always be rebuilt from them. Where the trainer runs (a subprocess
here, a Slurm job) is the executor's business (daemon/engine/executors/).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.core.launch import is_trainer_cmdline, trainer_command
from daemon.core.rundir import JsonlTail, RunFolder
from daemon.core.gpus import Slot
from daemon.engine.executors import Executor, Job
from daemon.engine.executors.local import LocalExecutor, signal_group

__all__ = ["TrainerProcess", "leftover_trainers", "progress_mark", "signal_group", "stop_request", "trainer_processes"]
from daemon.engine.stall import Escalation, StallWatch
from daemon.core.states import Phase, StopRequest
from daemon.engine.store import Store


def stop_request(current: str | None, reason: str) -> StopRequest:
    """The stop request in force once `reason` arrives while `current` stands (None: no request yet).

    The rule itself is `StopRequest.then`'s (its one owner); this only starts from no request, for TrainerProcess
    and the tests' stand-ins."""
    return StopRequest(current).then(reason) if current else StopRequest(reason)


@dataclass
class TrainerProcess:
    """One running trainer and the daemon's view of its files."""

    run_id: str
    run_dir: Path
    job: Job  # the executor's handle: a local subprocess, a Slurm job
    requested: StopRequest | None = None  # what the daemon asked of it
    paused: bool = False
    folder: RunFolder = field(init=False)
    tails: dict[str, JsonlTail] = field(init=False)  # by DB table: metrics, evolution
    rate: tuple[float, int] | None = None  # (monotonic time, step) when steps started moving, for the ETA
    settling: bool = False  # the first step since training (re)started is not yet over
    saw_disk_full: bool = False  # the daemon's writes for it found the disk full while it ran
    started: float = field(default_factory=time.monotonic)
    step_s: float | None = None  # seconds per step, measured since training (re)started
    escalation: Escalation | None = None  # set once a stop was requested: the trainer must show life until it exits
    slot: Slot = field(default_factory=Slot)  # the GPU set (or CPU share) it trains on
    stall: StallWatch | None = None  # its stall detector (set by the scheduler)
    # records read from the files but not yet in the DB (a write failed: disk full, DB busy), by table; and the
    # tables whose rows of this run go first (a new attempt, or a rewritten file), in the same transaction
    pending: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"metrics": [], "evolution": []})
    forget: set[str] = field(default_factory=set)

    @classmethod
    def start(cls, run_id: str, run_dir: Path, env: dict[str, str] | None = None,
              command: list[str] | None = None, slot: Slot | None = None,
              stall: StallWatch | None = None, executor: Executor | None = None) -> "TrainerProcess":
        """Launch the trainer through `executor` (default: a local subprocess, stdin its command pipe, console.log
        its stdout+stderr).

        `command`: `daemon.core.launch.trainer_command(...)` (default: one process). Under torchrun, rank 0 reads the
        commands (every worker inherits the pipe) and all ranks' output goes to console.log (only rank 0 prints).

        An earlier attempt's result.json goes first: the daemon judges this attempt by the result.json it finds
        when it ends, and a trainer killed before it writes one (kill -9) must not be taken for one that ended
        as the earlier attempt did (a "stopped" of an earlier attempt made a killed trainer look like a failure)."""
        RunFolder(run_dir).result.unlink(missing_ok=True)
        job = (executor or LocalExecutor()).submit(run_id, Path(run_dir), command or trainer_command(run_dir),
                                                   env or {})
        return cls(run_id, run_dir, job, slot=slot or Slot(), stall=stall)

    def __post_init__(self) -> None:
        self.folder = RunFolder(self.run_dir)
        self.tails = {"metrics": JsonlTail(self.folder.metrics), "evolution": JsonlTail(self.folder.evolution)}

    @property
    def pid(self) -> int | None:
        return self.job.pid

    @property
    def proc(self) -> Any:
        """A local trainer's Popen (tests drive it directly)."""
        return getattr(self.job, "proc", None)

    def send(self, command: str) -> bool:
        """Send one command to the trainer; False when it is already gone."""
        return self.job.command(command)

    def request_stop(self, reason: str) -> str:
        """Ask the trainer to checkpoint and exit; returns the request in force (`stop_request`'s rule).

        The trainer is told why (stop, skip, preempt, shutdown), so its console footer says how the run ends; a
        stop wakes a paused trainer by itself (it must step to checkpoint)."""
        first = self.requested is None
        self.requested = stop_request(self.requested, reason)
        if first:
            self.send(str(self.requested))
            self.job.withdraw_if_pending()  # a job not started yet ends now, not when the cluster starts it
        return self.requested

    def set_paused(self, paused: bool) -> None:
        """Halt at (or go on from) the next step boundary."""
        self.paused = paused
        self.send("pause" if paused else "resume")

    def kill(self) -> None:
        """End the trainer now (SIGKILL its process group; scancel): the last resort for a frozen trainer."""
        self.job.cancel()

    def restart_frozen(self) -> None:
        """A stall with stall_action = "restart": a frozen process reads no command and may ignore SIGTERM
        (SIGSTOP), so SIGKILL, and the run goes back to the queue (end_state's rule for a restart)."""
        self.requested = StopRequest.RESTART
        self.kill()

    def escalating(self, grace_s: float) -> Escalation:
        """The escalation of a stop request it has not honoured yet (started once, at the first call)."""
        if self.escalation is None:
            self.escalation = Escalation(grace_s, time.monotonic())
        return self.escalation

    def signal(self, name: str) -> None:
        self.job.signal(name)

    def progress_mark(self) -> tuple[int, object]:
        return progress_mark(self.folder)

    def poll(self) -> int | None:
        return self.job.poll()

    def progress(self) -> dict[str, Any]:
        return self.folder.read_progress()

    def ingest(self, store: Store) -> dict[str, Any]:
        """Copy new metrics/evolution records into the DB; return the run fields to update.

        Records read from the files stay pending until their DB write succeeds: a full disk or a DB another process
        holds locked delays the mirror, never loses a record (the failed write raises; the next pass tries again)."""
        fields: dict[str, Any] = {"pid": self.job.pid}  # also when the write of it at the start failed
        metrics = self._store_new("metrics", store)
        if metrics:
            train = [m for m in metrics if m.get("loss") is not None]
            evals = [m for m in metrics if m.get("eval_loss") is not None]
            if train:
                fields.update(loss=train[-1]["loss"], tokens_per_s=train[-1].get("tokens_per_s"))
            if evals:
                fields["eval_loss"] = evals[-1]["eval_loss"]
        if self.job.poll() is not None:  # the trainer has exited: its result.json has the last word
            fields.update(ended_fields(self.folder.read_result()))
        self._store_new("evolution", store)
        prog = self.progress()
        if prog.get("step") is not None:
            # progress.json is written twice a second at most: the step of the loss just taken may be newer
            logged = max((int(m["step"]) for m in metrics if m.get("step") is not None), default=0)
            step, total = max(int(prog["step"]), logged), prog.get("max_steps")
            fields.update(step=step, epoch=prog.get("epoch"))
            if total:  # a restarted trainer knows its total only once training starts: the known one stands till then
                fields["max_steps"] = total
            eta = self._eta(step, total, prog.get("state") == Phase.TRAINING)
            if eta is not None or prog.get("state") == Phase.PAUSED:
                fields["eta_s"] = eta  # paused: none, rather than the last one frozen
        return fields

    def _eta(self, step: int, total: int | None, training: bool) -> float | None:
        """Seconds left at the pace measured since training (re)started; loading, pauses and saves don't count."""
        now = time.monotonic()
        if not training:
            self.rate = None  # the pace is measured afresh when steps move again
            return None
        if self.rate is None or step < self.rate[1]:
            self.rate, self.settling = (now, step), True
            return None
        if self.settling and step > self.rate[1]:
            # the first step carries one-off costs (the step-0 probe snapshot, warm-up): the pace starts after it
            self.rate, self.settling = (now, step), False
            return None
        if not total or step == self.rate[1]:
            return None
        per_step = self.step_s = (now - self.rate[0]) / (step - self.rate[1])
        return round(per_step * max(0, total - step), 1)

    def _store_new(self, kind: str, store: Store) -> list[dict[str, Any]]:
        """Read the file's new records and write every pending one to the DB; return those written."""
        update = self.tails[kind].poll()
        if update.reset:  # the trainer rewrote the file after a resume or a retry: mirror it again
            self._restart(kind)
        self.pending[kind].extend(update.records)
        records, forget = self.pending[kind], kind in self.forget
        if not records and not forget:
            return []
        add = store.add_metrics if kind == "metrics" else store.add_evolution
        add(self.run_id, records, forget=forget)
        self.pending[kind], self.forget = [], self.forget - {kind}
        return records

    def _restart(self, kind: str) -> None:
        self.pending[kind] = []
        self.forget.add(kind)

    def reset(self, kind: str, store: Store) -> None:
        """Forget the DB mirror of one file so it is ingested again from the start (at the next ingest, in one
        transaction with the first records: a write that fails here cannot leave the rows of an earlier attempt)."""
        self.tails[kind].restart()
        self._restart(kind)

    def wait(self, timeout: float) -> int | None:
        return self.job.wait(timeout)

    def release(self) -> None:
        """The daemon is going away (`Job.release`)."""
        self.job.release()

    close_stdin = release  # a local trainer: EOF on its stdin


def ended_fields(result: dict[str, Any]) -> dict[str, Any]:
    """The run row's numbers as the trainer's result.json has them once it has exited (none it lacks).

    While a run trains, its row follows metrics.jsonl: the latest eval loss and the tokens/s of the latest logging
    interval. At its end they must describe what the run kept: after early stopping the trainer reloads the best
    checkpoint, so its eval loss is that checkpoint's, not the last eval's (compare, metadata.json, a sweep's
    select = "best" and the search's study rank by this row); and the run's speed is its average (tokens trained
    over training seconds), not its last interval's. `loss` keeps its meaning, the last training loss logged
    (result.json's final_loss)."""
    fields: dict[str, Any] = {}
    for field_name, key in (("loss", "final_loss"), ("eval_loss", "eval_loss")):
        if _finite(result.get(key)):  # a NaN loss (a failed run) stays what metrics.jsonl said: none
            fields[field_name] = result[key]
    tokens, seconds = result.get("tokens_seen"), result.get("train_seconds")
    if _finite(tokens) and _finite(seconds) and tokens > 0 and seconds > 0:
        fields["tokens_per_s"] = round(tokens / seconds, 1)
    return fields


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def progress_mark(folder: RunFolder) -> tuple[int, object]:
    """What changes while a trainer lives: progress.json's write time and step."""
    try:
        mtime = folder.progress.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return mtime, folder.read_progress().get("step")


def trainer_processes(runs_root: Path) -> dict[int, tuple[Any, Path]]:
    """Every live trainer process on a run folder under `runs_root`, by PID: (psutil.Process, run folder), found by
    command line (a single trainer, a torchrun launcher and each of its workers; zombies left out)."""
    import psutil
    root = runs_root.resolve()
    found: dict[int, tuple[Any, Path]] = {}
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info.get("cmdline") or []
        if (is_trainer_cmdline(cmd) and proc.info.get("status") != psutil.STATUS_ZOMBIE
                and Path(cmd[-1]).resolve().parent == root):
            found[proc.pid] = (proc, Path(cmd[-1]))
    return found


def leftover_trainers(runs_root: Path) -> list[tuple[Any, Path]]:
    """Trainer processes running on a run folder of this home (psutil.Process, run folder), found by command line:
    what an earlier daemon that was killed, or that gave up on a frozen trainer, left behind.

    One entry per run folder: a torchrun launcher's command line ends like its workers' (`-m daemon.trainer
    RUN_DIR`), and the one reported is the outermost (the launcher; `signal_group` reaches its workers)."""
    found = trainer_processes(runs_root)
    outermost: dict[Path, tuple[Any, Path]] = {}
    for pid, (proc, run_dir) in found.items():
        if _has_trainer_ancestor(proc, run_dir, found):
            continue
        outermost.setdefault(run_dir.resolve(), (proc, run_dir))
    return list(outermost.values())


def _has_trainer_ancestor(proc: Any, run_dir: Path, found: dict[int, tuple[Any, Path]]) -> bool:
    import psutil
    try:
        parents = proc.parents()
    except psutil.Error:
        return False
    return any(p.pid in found and found[p.pid][1].resolve() == run_dir.resolve() for p in parents)
