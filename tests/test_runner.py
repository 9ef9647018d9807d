"""The daemon's view of a trainer: the ETA it shows in status and the dashboard."""
from __future__ import annotations

from pathlib import Path

import pytest

from daemon import runner
from daemon.runner import TrainerProcess


def test_eta_counts_only_the_pace_of_training_steps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clock = [100.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    t = TrainerProcess("r", tmp_path, proc=None)  # type: ignore[arg-type]
    assert t._eta(168, 2000, training=False) is None  # loading the model after a resume: no pace yet
    clock[0] += 30  # setup time must not count as step time
    assert t._eta(168, 2000, training=True) is None
    clock[0] += 10
    assert t._eta(178, 2000, training=True) == pytest.approx(1822.0)  # 1 s a step, 1822 steps left
    assert t._eta(178, 2000, training=False) is None  # paused
    clock[0] += 600
    assert t._eta(178, 2000, training=True) is None  # the pause is not step time either
    clock[0] += 2
    assert t._eta(180, 2000, training=True) == pytest.approx(1820.0)
