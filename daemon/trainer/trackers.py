"""`report_to`: the experiment trackers a run also logs to, through the Trainer's own integrations (trackio,
MLflow, Weights & Biases). A tracker whose package is missing is one console line with the pip command, never a
failed run; one that raises is switched off with one line, and training goes on (metrics.jsonl, the TensorBoard
files and the dashboard have every number anyway)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

PACKAGES = {"trackio": "trackio", "mlflow": "mlflow", "wandb": "wandb"}


def available(requested: list[str], run_dir: Path, log: Callable[[str], None]) -> list[str]:
    """The trackers of `requested` whose package is installed, each set up to stay on this machine unless the owner
    configured it otherwise: MLflow in a sqlite store in the home, W&B offline (runs/RUN/wandb)."""
    out = []
    for name in requested:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            log(f"report_to: {name} is not installed, so this run does not log to it. Fix: pip install {name} "
                f"(in the environment the daemon runs), then the next run logs to it")
            continue
        home = run_dir.parent.parent
        if name == "mlflow":
            os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        if name == "wandb":
            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_DIR", str(run_dir))
        out.append(name)
    if out:
        log(f"report_to: {', '.join(out)}")
    return out


class Guarded(TrainerCallback):
    """A tracker's callback whose errors end its logging, not the run: the first exception is told once and the
    tracker is left out from then on."""

    def __init__(self, inner: TrainerCallback, log: Callable[[str], None]) -> None:
        self.inner, self.log, self.failed = inner, log, False

    def _call(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return None
        try:
            return getattr(self.inner, event)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a tracker must never stop training
            self.failed = True
            self.log(f"report_to: {type(self.inner).__name__} failed ({type(e).__name__}: {e}); training goes on "
                     f"without it")
            return None


for _event in [n for n in vars(TrainerCallback) if n.startswith("on_")]:
    setattr(Guarded, _event, lambda self, *a, _event=_event, **k: self._call(_event, *a, **k))


def guard(trainer: Any, log: Callable[[str], None]) -> None:
    """Wrap each of the trainer's tracker callbacks (transformers.integrations) in `Guarded`."""
    callbacks = trainer.callback_handler.callbacks
    for i, cb in enumerate(callbacks):
        if type(cb).__module__.startswith("transformers.integrations"):
            callbacks[i] = Guarded(cb, log)
