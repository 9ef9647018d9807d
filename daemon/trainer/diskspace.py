"""Free disk space before each checkpoint: short of it, the run waits (paused, with the reason) instead of failing
halfway through a write, and goes on by itself once space is freed."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from daemon.space import GB, needed
from daemon.trainer import checkpoints as ckpt
from daemon.trainer import ddp
from daemon.trainer.callbacks import Progress, RunStatus
from daemon.trainer.commands import Commands

RECHECK_S = 5.0


class DiskSpaceCallback(TrainerCallback):
    """Needs the larger of `min_free_gb` and the last checkpoint's size (plus as much again for the adapter)."""

    def __init__(self, checkpoints: Path, min_free_gb: float, commands: Commands, progress: Progress,
                 status: RunStatus, log: Callable[[str], None], recheck_s: float = RECHECK_S) -> None:
        self.checkpoints, self.min_free = checkpoints, int(min_free_gb * GB)
        self.commands, self.progress, self.status, self.log = commands, progress, status, log
        self.recheck_s = recheck_s

    def needed(self) -> int:
        return needed(ckpt.newest_complete(self.checkpoints), self.min_free / GB)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not control.should_save:
            return
        need, free = self.needed(), shutil.disk_usage(self.checkpoints).free
        if not ddp.from_main(free < need):  # under torchrun rank 0 decides for all (it writes the checkpoint)
            return
        started = time.perf_counter()
        reason = (f"disk_low: only {free / GB:.1f} GB free on the disk of {self.checkpoints.parent}, and a checkpoint "
                  f"needs {need / GB:.1f} GB (min_free_gb or twice the last checkpoint). Fix: free space there; the "
                  f"run goes on by itself")
        self.progress.update("paused", state.global_step, epoch=state.epoch, reason=reason)
        self.log(f"paused at step {state.global_step} before saving: {reason}")
        while ddp.from_main(shutil.disk_usage(self.checkpoints).free < need and not self.commands.stop.is_set()):
            time.sleep(self.recheck_s)
        self.status.paused_seconds += time.perf_counter() - started
        stop = self.commands.sync().stop
        if ddp.from_main(stop and shutil.disk_usage(self.checkpoints).free < need):
            control.should_save = False  # a save would fail halfway: the last complete checkpoint stays the resume point
            self.log("stopping without a new checkpoint (the disk is still full); the run resumes from the last one")
            return
        self.progress.update("training", state.global_step, epoch=state.epoch)
        self.log(f"disk space is back ({shutil.disk_usage(self.checkpoints).free / GB:.1f} GB free): saving and "
                 f"going on at step {state.global_step}")
