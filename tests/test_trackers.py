"""report_to (issue 26): trackers through the Trainer's integrations; a missing package or a tracker that raises
never fails a run."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from daemon.trainer.trackers import Guarded, guard
from tests.conftest import overnight
from tests.conftest_trainer import jsonl, make_run, reversal_records, train


@pytest.mark.e2e
def test_a_tracker_that_is_not_installed_is_one_line_and_the_run_completes(tmp_path: Path, tiny_model: Path) -> None:
    import importlib.util

    missing = [t for t in ("mlflow", "wandb") if importlib.util.find_spec(t) is None]
    if not missing:
        pytest.skip("both trackers are installed here")
    run = make_run(tmp_path, tiny_model, dataset_name="rev.jsonl", content=jsonl(reversal_records(20)),
                   schema="prompt_completion", records=20, options={"max_steps": 2, "report_to": missing})
    assert train(run) == 0
    console = (run / "console.log").read_text()
    for name in missing:
        assert f"report_to: {name} is not installed, so this run does not log to it. Fix: pip install {name}" in console
    assert "=== end: completed" in console


def test_report_to_is_the_owners_and_names_known_trackers(home: Path, tmp_path: Path) -> None:
    (home / "overnight.toml").write_text('report_to = ["tensorflow"]\n')
    out = overnight("check", str(home / "overnight.toml"), home=home)
    assert out.returncode == 1 and '"trackio", "mlflow", "wandb"' in out.stdout and "Fix:" in out.stdout
    (home / "overnight.toml").write_text("")
    (home / "d.toml").write_text('report_to = ["mlflow"]\n')
    out = overnight("check", str(home / "d.toml"), home=home)
    assert out.returncode == 1 and "report_to" in out.stdout and "overnight.toml" in out.stdout


class Flaky(TrainerCallback):
    __module__ = "transformers.integrations.integration_utils"  # where the Trainer's trackers live

    def __init__(self) -> None:
        self.calls = 0

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.calls += 1
        raise ConnectionError("tracking server went away")


def test_a_tracker_that_raises_is_switched_off_with_one_line() -> None:
    lines: list[str] = []
    flaky, plain = Flaky(), TrainerCallback()
    trainer = type("T", (), {"callback_handler": type("H", (), {"callbacks": [plain, flaky]})()})()
    guard(trainer, lines.append)
    wrapped = trainer.callback_handler.callbacks
    assert wrapped[0] is plain and isinstance(wrapped[1], Guarded)  # only the trackers are wrapped
    for _ in range(3):
        assert wrapped[1].on_log(None, None, None, logs={"loss": 1.0}) is None
    assert flaky.calls == 1 and lines == ["report_to: Flaky failed (ConnectionError: tracking server went away); "
                                          "training goes on without it"]
