"""One trainer process's session (what it has built so far) and the run's planned step count: shared by
daemon/trainer/run.py (the process) and daemon/trainer/setup.py (what it builds), so neither imports the other back."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from daemon.trainer import ddp
from daemon.trainer.config import RunConfig, TrainOptions
from daemon.trainer.finish import Result


@dataclass
class Session:
    """What one trainer process has built so far (for the result, whatever happens)."""

    cfg: RunConfig
    result: Result
    chat: Any = None  # the run's ChatFormat (daemon.core.templating), None without a chat template
    prompt_chat: bool = False  # prompt records shown as one chat exchange (prompt_format)
    objective: Any = None  # what the run optimises (daemon/trainer/objectives: sft, dpo, kto), from its data


def planned_steps(n_sequences: int, opts: TrainOptions, budget_batches: int | None = None) -> int:
    """Optimizer steps the run will take (the Trainer's own arithmetic for epochs, or max_steps).

    Under torchrun each optimizer step takes `batch_size` sequences on every rank (DDP, never DataParallel), or one
    of the epoch's `budget_batches` token-budget micro-batches on every rank.
    """
    if opts.max_steps > 0:
        return opts.max_steps
    world = ddp.world_size()
    batches = (math.ceil(budget_batches / world) if budget_batches is not None else
               math.ceil(n_sequences / (opts.batch_size * world)))
    per_epoch = max(math.ceil(batches / opts.grad_accum), 1)
    return math.ceil(opts.epochs * per_epoch)
