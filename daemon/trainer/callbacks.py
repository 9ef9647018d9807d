"""TrainerCallbacks that turn the Trainer's events into the run folder's files and obey the daemon's commands.

- `ReportCallback`: metrics.jsonl records, one console line per logged step, progress.json (≤ 2/s + state changes);
- `CommandCallback`: pause/stop at optimizer-step boundaries, non-finite loss → stop without saving;
- `CheckpointCallback`: `checkpoint-N` → `step-N` once written, then retention.
Callbacks only change `control` (the transformers idiom); the training loop stays the Trainer's own.
Under torchrun every rank runs these callbacks; rank 0 alone writes files and console lines, and every decision
that changes `control` is taken collectively (daemon/trainer/ddp.py), so all ranks step, save and stop together.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from daemon.core.rundir import step_name
from daemon.core.states import Phase
from daemon.trainer import checkpoints as ckpt
from daemon.trainer import ddp, gpustats
from daemon.trainer.board import Board
from daemon.trainer.commands import Commands

PROGRESS_INTERVAL_S = 0.5
# what a preference run logs beside the loss (TRL's names), kept in metrics.jsonl
PREFERENCE_METRICS = ("rewards/", "logps/", "kl")
EVAL_PREFERENCE_METRICS = tuple(f"eval_{m}" for m in PREFERENCE_METRICS)


def _iso_ms(t: float | None = None) -> str:
    return _dt.datetime.fromtimestamp(time.time() if t is None else t).isoformat(timespec="milliseconds")


def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _replace_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomic (temp file + rename) but not fsynced: progress.json is rewritten twice a second and only ever
    describes the present, so it need not survive a power cut, and an fsync would stall the training loop."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj), encoding="utf-8")
    os.replace(tmp, path)


def _slurm_job() -> dict[str, Any]:
    """Under Slurm: the job, which run of it (requeues), and the node, so the daemon knows whose progress it reads
    and where the run trains (daemon/engine/executors/slurm.py)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    return {"job_id": job, "restarts": int(os.environ.get("SLURM_RESTART_COUNT") or 0), "node": socket.gethostname()}


@dataclass
class Progress:
    """progress.json, written atomically: at most every PROGRESS_INTERVAL_S, and at once on a state change.

    `pid` is the process the daemon started: this trainer, or torchrun's launcher (rank 0's parent) under torchrun;
    `trainer_pid` is the process writing the file. Only rank 0 writes it."""

    path: Path
    device: str
    device_name: str
    state: str = Phase.PREPARING
    step: int = 0
    max_steps: int | None = None
    epoch: float = 0.0
    reason: str | None = None  # why the run is paused when the trainer paused it itself (e.g. disk_low: …)
    _last_write: float = 0.0

    def update(self, state: str | None = None, step: int | None = None, max_steps: int | None = None,
               epoch: float | None = None, reason: str | None = None) -> None:
        changed = (state is not None and state != self.state) or reason != self.reason
        self.state, self.reason = state or self.state, reason
        self.step = self.step if step is None else step
        self.max_steps = self.max_steps if max_steps is None else max_steps
        self.epoch = self.epoch if epoch is None else epoch
        now = time.monotonic()
        if (changed or now - self._last_write >= PROGRESS_INTERVAL_S) and ddp.is_main():
            self._last_write = now
            _replace_json(self.path, {"state": self.state, "step": self.step, "max_steps": self.max_steps,
                                   "epoch": round(self.epoch, 4), "pid": ddp.launcher_pid(),
                                   "trainer_pid": os.getpid(), "device": self.device,
                                   "device_name": self.device_name, "reason": self.reason, "updated": _iso_ms(),
                                   **_slurm_job(), **({"gpus": gpustats.sample()} if self.device == "cuda" else {})})


@dataclass
class RunStatus:
    """What the callbacks learn during training and run.py needs afterwards."""

    last_loss: float | None = None
    last_eval_loss: float | None = None
    nonfinite_step: int | None = None
    paused_seconds: float = 0.0
    best_step: int | None = None


class ReportCallback(TrainerCallback):
    """metrics.jsonl + console progress lines + progress.json (+ the same numbers in TensorBoard's event files).

    One metrics record per logged step (SPEC): a step's record waits until the next step begins, a save, the end of
    training or the step's evaluation, whose eval_loss it then carries. A save writes it first, so the records up to
    a complete checkpoint are always on disk (a resume truncates the file after that checkpoint's step)."""

    def __init__(self, metrics_path: Path, progress: Progress, status: RunStatus,
                 log: Callable[[str], None], board: Board | None = None,
                 tokens: Callable[[], int] = lambda: 0) -> None:
        # `tokens()`: real tokens fed to the model so far by every process (a collective under torchrun, asked on
        # every rank at the same log steps)
        self.tokens = tokens
        self.metrics_path = metrics_path
        self.board = board
        self.progress = progress
        self.status = status
        self.log = log
        self._t0 = 0.0
        self._step_began = 0.0
        self._compute_s = 0.0  # time inside optimizer steps since the last record (no eval, saves, snapshots)
        self._tokens_last = 0
        self._start_step = 0
        self._pending: dict[str, Any] | None = None  # this step's training record, not yet written

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.board is not None:
            self.board.open(state.global_step)
        self._t0 = time.perf_counter()
        self._tokens_last = self.tokens()
        self._start_step = state.global_step
        for record in reversed(state.log_history):  # a resume: the last losses before the checkpoint stand until
            if self.status.last_loss is None and "loss" in record:  # new ones are logged (none, when it was
                self.status.last_loss = float(record["loss"])  # the final checkpoint)
            if self.status.last_eval_loss is None and "eval_loss" in record:
                self.status.last_eval_loss = float(record["eval_loss"])
        self.progress.update(Phase.TRAINING, state.global_step, state.max_steps, state.epoch or 0.0)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._write_pending()
        self._step_began = time.perf_counter()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._write_pending()  # before CheckpointCallback makes the checkpoint complete

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._write_pending()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # first in the callback list: a pause or a snapshot that follows is not counted as step time
        self._compute_s += time.perf_counter() - self._step_began
        if control.should_evaluate:
            self.progress.update(Phase.EVALUATING, state.global_step, epoch=state.epoch)
        elif control.should_save:
            self.progress.update(Phase.SAVING, state.global_step, epoch=state.epoch)
        else:
            self.progress.update(Phase.TRAINING, state.global_step, epoch=state.epoch)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress.update(Phase.TRAINING)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        logs = logs or {}  # the Trainer logs the same (all-reduced) numbers on every rank: rank 0 writes them
        tokens = self.tokens() if "loss" in logs else 0  # every rank: the count is summed over them
        if not ddp.is_main():
            if "loss" in logs:
                self.status.last_loss = float(logs["loss"])
            return
        if "loss" in logs:
            self._write_pending()
            self._pending = self._train_record(state, logs, tokens)
        if "eval_loss" in logs:
            self.status.last_eval_loss = float(logs["eval_loss"])
            evaluated = {"eval_loss": _num(logs["eval_loss"]),
                         **{k: _num(v) for k, v in logs.items() if k.startswith(EVAL_PREFERENCE_METRICS)}}
            if self._pending is not None and self._pending["step"] == state.global_step:
                self._pending.update(evaluated)  # the step's one record carries its evaluation
            else:  # evaluated at a step that logged no training loss
                self._append({"step": state.global_step, **evaluated, "epoch": round(state.epoch or 0.0, 4),
                              "time": _iso_ms()})
            self._write_pending()
            self.log(f"eval @ step {state.global_step}: eval_loss {logs['eval_loss']:.4f}")

    def _train_record(self, state: Any, logs: dict[str, float], tokens: int) -> dict[str, Any]:
        now = time.perf_counter()
        tokens_per_s = (tokens - self._tokens_last) / max(self._compute_s, 1e-9)
        self._tokens_last, self._compute_s = tokens, 0.0
        loss = float(logs["loss"])
        self.status.last_loss = loss
        record = {"step": state.global_step, "loss": _num(loss), "lr": _num(logs.get("learning_rate")),
                  "grad_norm": _num(logs.get("grad_norm")), "tokens_per_s": round(tokens_per_s, 1),
                  "epoch": round(state.epoch or 0.0, 4), "time": _iso_ms(),
                  # a preference run's rewards (TRL's names: rewards/chosen, /rejected, /margins, /accuracies…)
                  **{k: _num(v) for k, v in logs.items() if k.startswith(PREFERENCE_METRICS)}}
        done = state.global_step - self._start_step
        active = now - self._t0 - self.status.paused_seconds
        eta = active / done * (state.max_steps - state.global_step) if done > 0 else 0.0
        margin = record.get("rewards/margins")
        accuracy = record.get("rewards/accuracies")
        rewards = ("" if margin is None else f"margin {margin:.3g}  "
                   + ("" if accuracy is None else f"accuracy {accuracy:.2f}  "))
        self.log(f"step {state.global_step}/{state.max_steps}  loss {loss:.4f}  {rewards}lr {record['lr'] or 0:.3g}  "
                 f"grad_norm {record['grad_norm'] or 0:.3g}  {tokens_per_s:.0f} tok/s  "
                 f"epoch {state.epoch or 0:.2f}  ETA {_hms(eta)}")
        return record

    def _write_pending(self) -> None:
        if self._pending is not None:
            record, self._pending = self._pending, None
            self._append(record)

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")  # one write per record: readers never see half a line
        if self.board is not None:  # train/… and eval/… as before: a step's record may carry both
            evaluated = {k for k in record if k.startswith("eval_")}
            trained = {k: v for k, v in record.items() if k not in evaluated}
            if "loss" in record:
                self.board.scalars(record["step"], trained, "train")
            if evaluated:
                self.board.scalars(record["step"], {k: record[k] for k in (*evaluated, "epoch") if k in record},
                                   "eval")


def _num(v: Any) -> float | None:
    """A JSON-safe number (NaN and inf are not JSON: they become null; the loss line says what happened)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class CommandCallback(TrainerCallback):
    """Pause and stop at step boundaries; end the run without saving when the loss stops being finite."""

    def __init__(self, commands: Commands, progress: Progress, status: RunStatus, nonfinite: Callable[[], bool],
                 log: Callable[[str], None]) -> None:
        self.commands = commands
        self.progress = progress
        self.status = status
        self.nonfinite = nonfinite
        self.log = log

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A pause that came while the model loaded holds before the first step, not after it."""
        decision = self.commands.sync()
        if decision.paused:
            self._hold(state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        decision = self.commands.at_step_end()  # under torchrun: the same on every rank, one step late (no wait)
        about_to_write = control.should_log or control.should_save or control.should_evaluate
        if (about_to_write or decision.stop) and ddp.any_rank(self.nonfinite()):
            # never checkpoint weights a NaN/inf step may have poisoned: the last good checkpoint stays
            self.status.nonfinite_step = state.global_step
            control.should_save = control.should_evaluate = False
            control.should_log = True
            control.should_training_stop = True
            return
        if decision.paused:
            decision = self._hold(state)
        if decision.stop:
            self.progress.update(Phase.SAVING, state.global_step, epoch=state.epoch)
            control.should_save = True
            control.should_log = True
            control.should_training_stop = True
        if state.global_step >= state.max_steps:
            control.should_log = True  # the final loss is always recorded

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.commands.settle()  # under torchrun: the last step's flags, still in flight

    def _hold(self, state: Any) -> Any:
        """Wait (every rank: each poll is a collective) until resumed or stopped; returns the decision then."""
        started = time.perf_counter()
        self.progress.update(Phase.PAUSED, state.global_step, epoch=state.epoch)
        self.log(f"paused at step {state.global_step}{_gpu_memory_held()} (overnight resume lifts it)")
        while True:
            time.sleep(0.1)
            decision = self.commands.sync()
            if decision.stop or not decision.paused:
                break
        self.status.paused_seconds += time.perf_counter() - started
        self.progress.update(Phase.TRAINING, state.global_step, epoch=state.epoch)
        if not decision.stop:
            self.log(f"resumed at step {state.global_step}")
        return decision


def _gpu_memory_held() -> str:
    """What a paused run keeps on the GPU (the model stays loaded so that resuming is instant)."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return ""
    gib = 2**30
    return (f"; GPU memory held: {torch.cuda.memory_allocated() / gib:.2f} GiB allocated, "
            f"{torch.cuda.memory_reserved() / gib:.2f} GiB reserved")


class CheckpointCallback(TrainerCallback):
    """Gives each finished checkpoint its `step-N` name, then prunes old ones (never the best, never adapter/)."""

    def __init__(self, checkpoints: Path, keep: int, status: RunStatus, progress: Progress,
                 log: Callable[[str], None]) -> None:
        self.checkpoints = checkpoints
        self.keep = keep
        self.status = status
        self.progress = progress
        self.log = log

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        ddp.barrier()  # under torchrun every rank writes its rng_state_N.pth into the folder: all done before the rename
        if not ddp.is_main():
            return
        path = ckpt.finalize(self.checkpoints, state.global_step)
        if path is None:
            return
        best = state.best_global_step or None
        self.status.best_step = best
        deleted = ckpt.apply_retention(self.checkpoints, self.keep, best)
        note = f"; removed {', '.join(step_name(s) for s in deleted)}" if deleted else ""
        self.log(f"checkpoint {path.name} saved{note}")
        self.progress.update(Phase.TRAINING, state.global_step, epoch=state.epoch)
