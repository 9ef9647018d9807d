"""Free disk space before each checkpoint: short of it, the run waits (paused, with the reason) instead of failing
halfway through a write, and goes on by itself once space is freed, or once the owner lowers `min_free_gb` in
overnight.toml (a live option: read anew at each check, as the daemon reads it before it starts a run)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from daemon.core.space import DISK_LOW, needed, size_text
from daemon.core.states import Phase
from daemon.core.rundir import newest_complete
from daemon.trainer import ddp
from daemon.trainer.callbacks import Progress, RunStatus
from daemon.trainer.commands import Commands

RECHECK_S = 5.0


class DiskSpaceCallback(TrainerCallback):
    """Needs the larger of `min_free_gb` and the last checkpoint's size (plus as much again for the adapter).

    `min_free_gb`: a number, or a function giving the owner's current value (options.LiveSetting)."""

    def __init__(self, checkpoints: Path, min_free_gb: float | Callable[[], float], commands: Commands,
                 progress: Progress, status: RunStatus, log: Callable[[str], None],
                 recheck_s: float = RECHECK_S) -> None:
        self.checkpoints = checkpoints
        self.min_free_gb = min_free_gb if callable(min_free_gb) else (lambda: min_free_gb)
        self.commands, self.progress, self.status, self.log = commands, progress, status, log
        self.recheck_s = recheck_s

    def needed(self) -> int:
        return needed(newest_complete(self.checkpoints), float(self.min_free_gb()))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not control.should_save:
            return
        need, free = self.needed(), shutil.disk_usage(self.checkpoints).free
        if not ddp.from_main(free < need):  # under torchrun rank 0 decides for all (it writes the checkpoint)
            return
        started = time.perf_counter()
        reason = (f"{DISK_LOW}: only {size_text(free)} free on the disk of {self.checkpoints.parent}, and a checkpoint "
                  f"needs {size_text(need)} (min_free_gb = {float(self.min_free_gb()):.10g} in overnight.toml, or twice the "
                  f"last checkpoint). Fix: free space there, or lower min_free_gb; the run goes on by itself")
        self.progress.update(Phase.PAUSED, state.global_step, epoch=state.epoch, reason=reason)
        self.log(f"paused at step {state.global_step} before saving: {reason}")
        while ddp.from_main(shutil.disk_usage(self.checkpoints).free < self.needed() and
                            not self.commands.stop.is_set()):
            time.sleep(self.recheck_s)
        self.status.paused_seconds += time.perf_counter() - started
        stop = self.commands.sync().stop
        if ddp.from_main(stop and shutil.disk_usage(self.checkpoints).free < self.needed()):
            control.should_save = False  # a save would fail halfway: the last complete checkpoint stays the resume point
            self.log("stopping without a new checkpoint (the disk is still full); the run resumes from the last one")
            return
        self.progress.update(Phase.TRAINING, state.global_step, epoch=state.epoch)
        self.log(f"disk space is back ({size_text(shutil.disk_usage(self.checkpoints).free)} free, "
                 f"{size_text(self.needed())} needed): saving and going on at step {state.global_step}")
