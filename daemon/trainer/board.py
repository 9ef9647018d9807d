"""TensorBoard event files for a run (`runs/RUN_ID/tensorboard/`): the numbers metrics.jsonl holds (loss, eval loss,
learning rate, grad norm, tokens/s, a preference run's rewards) and each evolution snapshot's answers as text, written
by rank 0 with tensorboardX, a small writer (no TensorBoard needed to write; `tensorboard --logdir runs/` shows every
run by its id). Each record is flushed as metrics.jsonl's is (a kill -9 loses no step the run keeps), and a resumed
run purges the events past its checkpoint, so a curve never holds a step twice.

The event files are a view, like the dashboard: a writer that fails (a full disk, a missing package) is one console
line and training goes on without it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from daemon.trainer import ddp

NOT_SCALARS = ("step", "epoch", "time")


class Board:
    """One run's event files; `open` at each (re)start of training, `close` at its end."""

    def __init__(self, folder: Path, log: Callable[[str], None]) -> None:
        self.folder = folder
        self.log = log
        self.writer: Any = None
        self._told = False

    def open(self, step: int) -> None:
        """Start writing; events after `step` (a resumed run's checkpoint) left by an earlier attempt are dropped."""
        self.close()
        if not ddp.is_main():
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return self._off("tensorboardX is not installed (pip install tensorboardX)")
        try:
            self.writer = SummaryWriter(logdir=str(self.folder), purge_step=step + 1 if step else None,
                                        flush_secs=10)
        except OSError as e:
            self._off(str(e))

    def scalars(self, step: int, record: dict[str, Any], prefix: str) -> None:
        """A metrics.jsonl record's numbers under `prefix/` (train/loss, eval/loss, train/rewards/margins…)."""
        values = {k.removeprefix("eval_"): v for k, v in record.items()
                  if k not in NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}

        def write(w: Any) -> None:
            for k, v in values.items():
                w.add_scalar(f"{prefix}/{k}", v, step)
            w.flush()
        self._write(write)

    def snapshot(self, step: int, records: list[dict[str, Any]]) -> None:
        """An evolution snapshot: each probe's answer (and margin) as text, one tag per probe."""
        def write(w: Any) -> None:
            for r in records:
                margin = f"  \nmargin {r['margin']:+.3f}" if "margin" in r else ""
                w.add_text(f"evolution/probe {r['probe']}", f"**{r['prompt']}**  \n{r['generation']}{margin}", step)
            w.flush()
        self._write(write)

    def close(self) -> None:
        if self.writer is not None:
            self._write(lambda w: w.close())
            self.writer = None

    def _write(self, fn: Callable[[Any], Any]) -> None:
        if self.writer is None:
            return
        try:
            fn(self.writer)
        except OSError as e:
            self.writer = None
            self._off(str(e))

    def _off(self, why: str) -> None:
        if not self._told:
            self._told = True
            self.log(f"tensorboard: no event files for this run ({why}); metrics.jsonl has every number")
