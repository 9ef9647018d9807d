"""What a run optimises: one module per training objective behind one small protocol, so that the next objective
(ORPO, GRPO…) is one new file here plus its detection (`daemon/core/datasets.py`) and its "auto" rule
(`daemon/core/auto.py`).

An objective turns the run's examples into token splits (`encode`), builds the Trainer that trains on them
(`trainer`: its arguments, its collator, its loss), and says how many sequences each example puts through the model
in a step (`rows`, for the memory plan). Everything else — the model and its adapter, the callbacks that report,
obey the daemon and checkpoint, the out-of-memory ladder, the adapter at the end — is the same for every objective
(`daemon/trainer/setup.py`, `run.py`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from transformers import Trainer, TrainerCallback

    from daemon.trainer.config import TrainOptions
    from daemon.trainer.sequences import Prepared
    from daemon.trainer.session import Session

class Objective(Protocol):
    name: str
    rows: int  # sequences one example puts through the model per step (DPO: chosen and rejected)

    def encode(self, s: "Session", tokenizer: Any, stats: dict[str, Any]) -> "Prepared":
        """The run's examples as token splits (train, eval) and probes."""

    def trainer(self, built: Any, opts: "TrainOptions", callbacks: list["TrainerCallback"]) -> "Trainer":
        """The Trainer for this attempt: `built` holds the model, tokenizer, data and device (setup.Built)."""


def for_name(name: str) -> Objective:
    """The objective called `name`: "sft", "dpo" or "kto" (the run's `objective`, "auto" already decided)."""
    if name == "dpo":
        from daemon.trainer.objectives.dpo import Dpo

        return Dpo()
    if name == "kto":
        from daemon.trainer.objectives.kto import Kto

        return Kto()
    from daemon.trainer.objectives.sft import Sft

    return Sft()
