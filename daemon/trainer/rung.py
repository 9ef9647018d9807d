"""An ASHA trial's stop at its rung (daemon/core/asha.py): evaluated, checkpointed, and back to the daemon, which holds
it there until the group's other trials say whether it goes on."""
from __future__ import annotations

import os
from typing import Any, Callable

from transformers import TrainerCallback

from daemon.core import asha
from daemon.trainer.commands import Commands


def rung_callback(options: dict[str, Any], commands: Commands, has_eval: bool,
                  log: Callable[[str], None]) -> TrainerCallback | None:
    """The callback for a trainer the daemon started towards a rung (its environment names it); None otherwise."""
    raw = os.environ.get(asha.RUNG_ENV)
    if raw is None or asha.settings(options) is None:
        return None
    return RungCallback(options, int(raw), commands, has_eval, log)


class RungCallback(TrainerCallback):
    """At the rung's step: evaluate there (the metric the trials are ranked on), then stop as a stop command would
    (CommandCallback, after this one, saves the checkpoint)."""

    def __init__(self, options: dict[str, Any], rung: int, commands: Commands, has_eval: bool,
                 log: Callable[[str], None]) -> None:
        self.options, self.rung, self.commands, self.has_eval, self.log = options, rung, commands, has_eval, log
        self.stop_at: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.stop_at = asha.stop_step(self.options, state.max_steps, self.rung)
        eta, rungs, min_steps = asha.settings(self.options) or (asha.DEFAULT_ETA, asha.DEFAULT_RUNGS, None)
        if self.rung == 0 and not asha.rung_steps(state.max_steps, eta, rungs, min_steps):
            # max_steps unset: the steps were known only now, from the data (the queue checks a max_steps set)
            self.log(f"ASHA: min_steps = {min_steps} puts the first rung at or past this trial's {state.max_steps} "
                     f"steps: it trains to its end and nothing is pruned. Fix: a lower min_steps (or none: the rungs "
                     f"are then fractions of the steps) for the next sweep")
        elif self.stop_at is not None:
            self.log(f"ASHA: this trial trains to rung {self.rung + 1}, step {self.stop_at} of {state.max_steps}; "
                     f"the daemon then decides whether it goes on")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop_at is None or state.global_step < self.stop_at or state.global_step >= state.max_steps:
            return
        self.commands.request_stop(f"{asha.RUNG_STOP} {self.rung + 1} at step {state.global_step}", every_rank=True)
        control.should_evaluate = control.should_evaluate or self.has_eval
        control.should_log = True
