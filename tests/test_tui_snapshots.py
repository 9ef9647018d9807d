"""Pictures of the dashboard at 80×24 and 120×40 (pytest-textual-snapshot).

Deterministic by construction: fixed times in the fixture home, a fixed telemetry sample, and a home shown as `~/home`
(HOME is the test's own temp folder, so neither TMPDIR nor pytest's numbering reaches a picture, and two runs of the
suite on one host never share a home). Update after an intended change with `pytest tests/test_tui_snapshots.py
--snapshot-update` and look at the pictures (the report shows the differences).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from tests.test_tui import until
from daemon.core.home import Home
from tests.tui_fixtures import (NO_GPU, ONE_GPU, TWO_GPUS, FixedTelemetry, FixtureHome, add_second_trainer, add_sweep,
                                build_home)
from tui.app import OvernightApp
from tui.telemetry import Telemetry

@pytest.fixture
def snap_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fixture home in the test's temp folder, which is also HOME: the dashboard shows it as `~/home`."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return build_home(tmp_path / "home").root


def ready(*keys: str) -> Callable[[Any], Any]:
    """run_before: wait for the data, the selected run's detail and a telemetry sample, then press `keys`."""
    async def run_before(pilot: Any) -> None:
        app = pilot.app
        await until(pilot, lambda: app.details >= 1 and app.system.telemetry is not None,
                    what="first load")
        log = app.log_panel.log_widget  # the scroll to the log's end is deferred to after the next layout
        await until(pilot, lambda: log.max_scroll_y > 0 and log.scroll_offset.y == log.max_scroll_y,
                    what="the log scrolled to its end")
        for key in keys:
            await pilot.press(key)
            await pilot.pause(0.1)
        if app.tabs.active == "charts":  # curves re-read at the plots' width once they are laid out
            await until(pilot, lambda: app.chart_buckets == app.charts.buckets, what="charts at full width")
        await pilot.pause(0.2)
    return run_before


def app(home: Path, telemetry: Telemetry = NO_GPU) -> OvernightApp:
    return OvernightApp(home, telemetry=FixedTelemetry(telemetry))


def test_log_view_80x24(snap_compare: Any, snap_home: Path) -> None:
    """Runs with progress, ETA and priority; the training run's console log, following; no daemon banner."""
    assert snap_compare(app(snap_home), terminal_size=(80, 24), run_before=ready())


def test_evolution_view_80x24(snap_compare: Any, snap_home: Path) -> None:
    """Probes × snapshots: learned early, learned late, learned then forgotten, never learned."""
    assert snap_compare(app(snap_home), terminal_size=(80, 24), run_before=ready("3"))


def test_system_with_a_gpu_80x24(snap_compare: Any, snap_home: Path) -> None:
    """One GPU: utilisation, memory, temperature, power; CPU, RAM and disk."""
    assert snap_compare(app(snap_home, ONE_GPU), terminal_size=(80, 24), run_before=ready("4"))


def test_stop_asks_first_80x24(snap_compare: Any, snap_home: Path) -> None:
    """`s` opens a confirmation before anything is written."""
    assert snap_compare(app(snap_home), terminal_size=(80, 24), run_before=ready("s"))


def test_charts_120x40(snap_compare: Any, snap_home: Path) -> None:
    """Loss with eval loss, and the learning-rate schedule; the wide runs table (eval, tok/s, when)."""
    assert snap_compare(app(snap_home), terminal_size=(120, 40), run_before=ready("2"))


def test_models_and_history_120x40(snap_compare: Any, snap_home: Path) -> None:
    """Model versions with the active one marked; every run of the history visible."""
    assert snap_compare(app(snap_home), terminal_size=(120, 40), run_before=ready("5"))


def test_sweep_unfolded_80x24(snap_compare: Any, snap_home: Path) -> None:
    """A sweep's four runs folded into one row, unfolded with Enter: grid order, ★ on the best (selected: its log)."""
    add_sweep(FixtureHome(snap_home, Home.resolve(snap_home, create=False)))
    assert snap_compare(app(snap_home), terminal_size=(80, 24),
                        run_before=ready("down", "down", "down", "enter", "down", "down"))


def test_two_trainers_on_two_gpus_80x24(snap_compare: Any, snap_home: Path) -> None:
    """Two runs training at once, each on its GPU (the higher priority selected first); the header's GPU summary;
    the System tab: which run (and PID) holds each GPU, and someone else's job beside one of them."""
    add_second_trainer(FixtureHome(snap_home, Home.resolve(snap_home, create=False)))
    assert snap_compare(app(snap_home, TWO_GPUS), terminal_size=(80, 24), run_before=ready("4"))
