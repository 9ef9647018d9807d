"""The dashboard: its data layer on real run files, and the App driven like a user at 80×24 (Pilot)."""
from __future__ import annotations

import asyncio
import json
import io
import os
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from textual.widgets import DataTable, Log, Static, TabbedContent

from daemon.core import control
from daemon.core.home import DaemonLock, Home
from daemon.core.render import fmt_loss
from daemon.engine.store import Store
from tests.conftest import budget
from tests.nvml_fake import GIB, FakeGpu, fake_pynvml
from tests.tui_fixtures import (COMPLETED, FAILED, NO_GPU, ONE_GPU, QUEUED_HIGH, QUEUED_LOW, SECOND, TRAINING,
                                FixedTelemetry, acknowledge, add_second_trainer, build_home, metrics_records,
                                write_big_log, written)
from tui import actions
from tui.actions import AckTracker, NotApplicable
from tui.app import OvernightApp
from tui.homedata import LOG_LINES, HomeWatcher, LogTail, MetricsTail, downsample, grep_file
from tui.fmt import short_stamp
from tui.telemetry import LiveTelemetry
from tui.widgets.confirm import ConfirmScreen
from tui.widgets.evolutionview import ProbeScreen
from tui.widgets.rejected import RejectedErrorScreen, RejectedScreen
from tui.widgets.runs import RunsTable, clip_id


@pytest.fixture
def fx(tmp_path: Path):
    return build_home(tmp_path / "home")


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A console.log of a million lines (about 55 MB), written once for the module."""
    path = tmp_path_factory.mktemp("biglog") / "console.log"
    write_big_log(path, 1_000_000)
    return path


def drive(app: OvernightApp, body: Callable[[Any], Awaitable[None]], size: tuple[int, int] = (80, 24),
          notifications: bool = False, message_hook: Callable[[Any], None] | None = None) -> None:
    """Run `body(pilot)` against the app in a headless terminal of `size`."""
    async def main() -> None:
        async with app.run_test(size=size, notifications=notifications, message_hook=message_hook) as pilot:
            await body(pilot)
    asyncio.run(main())


async def until(pilot: Any, predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Let the app run until `predicate()` holds (fails the test after `timeout` seconds, scaled by the slack: a
    loaded CI machine takes seconds for what takes milliseconds here)."""
    end = time.monotonic() + budget(timeout)
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.02)


async def loaded(pilot: Any) -> None:
    """Wait for the first snapshot and the selected run's detail to be on screen."""
    app = pilot.app
    await until(pilot, lambda: app.loads >= 1 and (app.details >= 1 or not app.snapshot.runs), what="first load")
    await pilot.pause()


def app_for(root: Path, telemetry: Any = NO_GPU) -> OvernightApp:
    """The dashboard with a fixed telemetry sample, polling 4× a second so tests wait less."""
    return OvernightApp(root, telemetry=FixedTelemetry(telemetry), refresh_s=0.25)


def cell_text(table: DataTable, row: str, column: str) -> str:
    value = table.get_cell(row, column)
    return getattr(value, "plain", str(value))


def static_text(app: OvernightApp, selector: str) -> str:
    widget = app.query_one(selector, Static)
    return str(widget.render())


def screen_text(app: OvernightApp) -> str:
    """The terminal picture as plain text, line by line."""
    update = app.screen._compositor.render_full_update()
    return "\n".join("".join(strip.text for strip in line) for line in update.strips)


def toasts(app: OvernightApp) -> list[str]:
    return [n.message for n in app._notifications]


# ----------------------------------------------------------------------------------------------- data layer

def test_log_tail_shows_the_end_then_only_what_was_appended(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_text("".join(f"line {i}\n" for i in range(5000)))
    tail = LogTail(path, keep=100)
    first = tail.poll()
    assert first.reset and first.lines[0] == "line 4900" and first.lines[-1] == "line 4999" and len(first.lines) == 100
    assert tail.poll() is None
    with open(path, "a") as f:
        f.write("line 5000\nhalf a li")
    update = tail.poll()
    assert not update.reset and update.lines == ("line 5000",)  # the unfinished line waits for its newline
    with open(path, "a") as f:
        f.write("ne\n")
    assert tail.poll().lines == ("half a line",)
    path.write_text("rewritten\n")  # replaced by a shorter file: start again from its end
    again = tail.poll()
    assert again.reset and again.lines == ("rewritten",)


def _best_of(runs: int, fn: Callable[[], object]) -> float:
    """The fastest of `runs` timings: a loaded machine adds to some of them, never takes away."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def test_a_million_line_log_is_tailed_and_searched_fast_in_bounded_memory(big_log: Path) -> None:
    # speed figures: bench/tui_speed.py; here ratios measured side by side, which a loaded machine keeps
    update = LogTail(big_log).poll()
    assert len(update.lines) == LOG_LINES and update.lines[-1].startswith("[2026-05-14 02:00:00.000] step 1000000 ")
    tail_s = _best_of(3, lambda: LogTail(big_log).poll())

    t0 = time.perf_counter()
    result = grep_file(big_log, "STEP 99999 ", limit=50)  # case-insensitive; the space ends the number
    search_s = time.perf_counter() - t0
    assert result.total == 1 and result.matches[0][0] == 99999 and "step 99999 loss" in result.matches[0][1]
    assert result.lines_scanned == 1_000_000
    many = grep_file(big_log, "loss", limit=100)
    assert many.total == 1_000_000 and len(many.matches) == 100 and many.matches[-1][0] == 1_000_000
    # a tail that read the whole file would cost about what one pass of the search costs (measured: ~1000x less)
    assert tail_s * 10 <= search_s, f"tailing took {tail_s * 1000:.1f} ms against {search_s * 1000:.0f} ms " \
                                    f"for one pass over the file"
    assert search_s < budget(10), f"searching a 1M-line log took {search_s:.1f}s"


def test_grep_numbers_lines_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_text("".join(("needle here" if i % 7 == 0 else f"hay {i}") + "\n" for i in range(1, 1001)))
    result = grep_file(path, "Needle", limit=1000, chunk=97)  # tiny chunks: lines cross chunk borders
    assert [n for n, _ in result.matches] == list(range(7, 1001, 7))
    assert result.total == 142 and result.lines_scanned == 1000


def test_100k_metric_records_are_read_incrementally_and_downsampled(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    records = metrics_records(100_000, 100_000, eval_every=1000)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    tail = MetricsTail(path)
    # speed figures: bench/tui_speed.py; here each cost against another measured beside it
    t0 = time.perf_counter()
    for line in path.read_text().splitlines():
        json.loads(line)
    parse_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    chart = tail.chart(buckets=160)
    first_s = time.perf_counter() - t0
    assert chart.points == 100_100 and len(chart.loss.xs) == 160 and len(chart.eval_loss.xs) == 100
    assert chart.loss.xs[0] < chart.loss.xs[-1] and chart.loss.ys[0] > chart.loss.ys[-1]  # a falling loss
    # the first chart is about one JSON parse of the file (measured: 1.2x); work per record beyond that shows here
    assert first_s <= 5 * parse_s, f"the first chart took {first_s:.2f}s, parsing the file alone {parse_s:.2f}s"
    t0 = time.perf_counter()
    assert tail.chart(buckets=160) is chart  # nothing new: the cached curves, no re-read
    cached_s = time.perf_counter() - t0
    assert cached_s * 10 <= first_s, f"the cached chart took {cached_s * 1000:.1f} ms, the first {first_s:.2f}s"
    with open(path, "a") as f:
        f.write(json.dumps({"step": 100_001, "loss": 0.5, "lr": 1e-5}) + "\n")
    assert tail.chart(buckets=160).points == 100_101
    path.write_text(json.dumps({"step": 1, "loss": 2.0, "lr": 1e-3}) + "\n")  # rewritten after a resume
    assert tail.chart(buckets=160).points == 1


def test_downsample_keeps_bucket_means() -> None:
    xs, ys = downsample(list(range(10)), [float(i) for i in range(10)], 5)
    assert xs == (0.5, 2.5, 4.5, 6.5, 8.5) and ys == xs
    assert downsample([1, 2], [1.0, float("nan")], 5) == ((1,), (1.0,))


def test_home_snapshot_orders_runs_and_reads_control_files(fx) -> None:
    watcher = HomeWatcher(fx.home)
    snap = watcher.snapshot()
    assert [r.id for r in snap.runs][:3] == [TRAINING, QUEUED_HIGH, QUEUED_LOW]  # running, then queue order
    assert snap.active_runs[0].id == TRAINING and snap.run(FAILED).reason.startswith("loss became nan")
    assert not snap.daemon.alive and snap.paused == set() and snap.events[0].command == "priority"
    assert [(m.version, m.active) for m in snap.models] == [(1, False), (2, True)]
    (fx.home.control / "pause").write_text(f"{TRAINING}\n{QUEUED_LOW}\n")  # what the daemon holds
    assert watcher.snapshot().paused == {TRAINING, QUEUED_LOW}
    (fx.home.control / "stop").write_text("")
    assert watcher.snapshot().stop_held


def test_a_home_without_db_is_empty_until_the_daemon_creates_it(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "new", create=True)
    watcher = HomeWatcher(home)
    snap = watcher.snapshot()
    assert snap.runs == () and snap.error is None and not snap.daemon.alive
    Store(home.db).close()
    assert watcher.snapshot().error is None


def test_keys_map_to_the_control_files_the_cli_writes(fx) -> None:
    snap = HomeWatcher(fx.home).snapshot()
    running, queued, done = snap.run(TRAINING), snap.run(QUEUED_HIGH), snap.run(COMPLETED)
    assert (r := actions.pause_or_resume(snap, running)).kind == "pause" and r.content == TRAINING
    assert actions.stop(running).content == TRAINING and actions.stop(running).confirm
    assert actions.skip(queued).content == QUEUED_HIGH and actions.skip(queued).confirm
    assert actions.priority(queued, +1).content == f"{QUEUED_HIGH} 6"
    assert actions.priority(queued, -1).content == f"{QUEUED_HIGH} 4"
    assert actions.requeue(snap.run(FAILED)).kind == "resume"
    # `+` on a folded sweep moves its live runs together, above the highest of them; the ended ones stay
    sweep = (running, queued, done)
    top = max(running.priority, queued.priority)
    r = actions.group_priority("support-1", sweep, +1)
    assert (r.kind, r.content) == ("priority", f"{TRAINING} {top + 1}\n{QUEUED_HIGH} {top + 1}\n")
    assert control.parse_text("priority", r.content).priorities == [(TRAINING, top + 1), (QUEUED_HIGH, top + 1)]
    with pytest.raises(NotApplicable):
        actions.group_priority("support-1", (done,), -1)
    for bad in (lambda: actions.pause_or_resume(snap, done), lambda: actions.stop(done),
                lambda: actions.requeue(running), lambda: actions.stop(None)):
        with pytest.raises(NotApplicable):
            bad()
    (fx.home.control / "pause").write_text(f"{TRAINING}\n")
    held = HomeWatcher(fx.home).snapshot()
    r = actions.pause_or_resume(held, held.run(TRAINING))
    assert (r.kind, r.content) == ("resume", TRAINING)
    (fx.home.control / "pause").write_text("")  # every run: a queued one resumes by name too (the daemon lifts it)
    held = HomeWatcher(fx.home).snapshot()
    assert (actions.pause_or_resume(held, held.run(QUEUED_LOW)).content) == QUEUED_LOW


def test_acknowledgements_are_matched_to_requests(fx) -> None:
    watcher = HomeWatcher(fx.home)
    tracker = AckTracker(timeout_s=0)
    snap = watcher.snapshot()
    request = actions.pause_or_resume(snap, snap.run(TRAINING))
    tracker.add(request, actions.send(fx.home, request))
    acks, late = tracker.answers(watcher.snapshot())
    assert acks == [] and [r.kind for r in late] == ["pause"]
    store = Store(fx.db)
    store.control_event("pause", None, "control/pause", "applied", "another command's answer")
    store.close()
    assert tracker.answers(watcher.snapshot())[0] == []
    acknowledge(fx.home, "pause", None, f"pause {TRAINING}: halting at the next step")
    acks, late = tracker.answers(watcher.snapshot())
    assert [a.message for a in acks] == [f"pause {TRAINING}: halting at the next step"] and not tracker.pending


def test_live_telemetry_reports_this_machine() -> None:
    t = LiveTelemetry(Path("/")).sample()
    assert t.system is not None and t.system.ram_total > 0 and t.system.disk_total > 0
    if t.gpus:
        assert all(g.error or g.mem_total > 0 for g in t.gpus)
    else:
        assert t.gpu_error.startswith("no NVIDIA GPU")


def test_one_gpu_nvml_cannot_reach_does_not_hide_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake pynvml with three GPUs whose second is lost: GPUs 0 and 2 are shown, GPU 1 as a line with the reason."""
    import sys
    import types

    from rich.console import Console

    from tui.widgets.system import render_telemetry

    class NVMLError(Exception):
        pass

    def handle(i: int) -> str:
        if i == 1:
            raise NVMLError("GPU is lost")
        return f"h{i}"

    shut: list[bool] = []
    fake = types.SimpleNamespace(
        NVMLError=NVMLError, NVML_TEMPERATURE_GPU=0, nvmlInit=lambda: None, nvmlShutdown=lambda: shut.append(True),
        nvmlDeviceGetCount=lambda: 3, nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetName=lambda h: f"NVIDIA A100 ({h})",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=50),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=1 << 30, total=80 << 30),
        nvmlDeviceGetTemperature=lambda h, kind: 60, nvmlDeviceGetPowerUsage=lambda h: 250_000,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 400_000)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    live = LiveTelemetry(Path("/"))
    t = live.sample()
    assert t.gpu_error is None and [g.index for g in t.gpus] == [0, 1, 2]
    assert [g.error for g in t.gpus] == [None, "unavailable (NVML: GPU is lost)", None]
    assert t.gpus[2].name == "NVIDIA A100 (h2)" and t.gpus[2].mem_total == 80 << 30
    console = Console(width=80, record=True)
    console.print(render_telemetry(t, 80))
    text = console.export_text()
    assert "GPU0" in text and "GPU2" in text and "GPU1 unavailable (NVML: GPU is lost)" in text
    live.close()
    assert shut == [True]


# ----------------------------------------------------------------------------------------------- the App

def test_dashboard_shows_runs_progress_and_the_selected_runs_log(fx) -> None:
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        table = app.query_one("#runs", DataTable)
        assert table.row_count == 6 and app.query_one("#runs").selected == TRAINING
        assert cell_text(table, TRAINING, "state") == "training"
        assert "120/300" in cell_text(table, TRAINING, "progress")
        assert cell_text(table, TRAINING, "eta") == "6m01s" and cell_text(table, QUEUED_HIGH, "prio") == "5"
        log = app.query_one("#log-view", Log)
        lines = (fx.home.runs / TRAINING / "console.log").read_text().splitlines()
        assert list(log.lines)[-3:] == [short_stamp(line) for line in lines[-3:]]
        assert log.lines[-1] == "02:05:00 step 120/300 loss 1.3945 lr 1.86e-03 tok/s 2306"  # time of day only
        header = static_text(app, "#header")
        assert "no daemon" in header and "1 training · 2 queued · 3 finished" in header
        assert f"overnight daemon --home {fx.root}" in static_text(app, "#banner")
        assert "priority" in static_text(app, "#status")

        with open(fx.home.runs / TRAINING / "console.log", "a") as f:  # the trainer writes on: the view follows
            f.write("[2026-05-14 02:05:02.000] step 121/300 loss 1.3810\n")
        await until(pilot, lambda: log.lines[-1].endswith("step 121/300 loss 1.3810"), what="followed line")
        await until(pilot, lambda: log.scroll_y == log.max_scroll_y > 0, what="scrolled to the new end")

        assert "training on cpu" in static_text(app, "#log-head")  # progress.json's device
        await pilot.press("down")  # a queued run has no console.log yet
        await until(pilot, lambda: "has not started" in log.lines[-1], what="queued run's log")
        await pilot.press("down", "down")  # the completed run: its own log
        await until(pilot, lambda: "completed (exit code 0)" in log.lines[-1], what="other run's log")
        await pilot.press("down")  # a failed run says why beside its id
        await until(pilot, lambda: "failed: loss became nan at step 57" in static_text(app, "#log-head"))
    drive(app, body)


def test_follow_can_be_frozen_and_search_covers_the_whole_log(fx) -> None:
    app = app_for(fx.root)
    console = fx.home.runs / TRAINING / "console.log"

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        log = app.query_one("#log-view", Log)
        await pilot.press("f")
        with open(console, "a") as f:
            f.write("[2026-05-14 02:05:02.000] written while frozen\n")
        seen = app.loads
        await until(pilot, lambda: app.loads >= seen + 3, what="a few reads")
        assert "written while frozen" not in log.lines[-1] and "frozen" in static_text(app, "#log-head")
        await pilot.press("f")
        await until(pilot, lambda: log.lines and "written while frozen" in log.lines[-1], what="follow again")

        await pilot.press("slash", *"step 3/300", "enter")
        await until(pilot, lambda: "lines match" in static_text(app, "#log-head"), what="search result")
        assert "1 of 124 lines match 'step 3/300'" in static_text(app, "#log-head")
        assert log.lines[0].split()[0] == "6" and "step 3/300 loss" in log.lines[0]  # numbered like the file
        await pilot.press("escape")
        await until(pilot, lambda: log.lines and "written while frozen" in log.lines[-1], what="back to the tail")
        assert app.focused is app.runs  # ↑↓ pick runs again after a search
    drive(app, body)


def test_question_mark_lists_every_key_at_80x24(fx) -> None:
    from tui.widgets.keys import KeysScreen
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, KeysScreen)
        text = screen_text(app)
        for words in ("pause the selected run", "stop it", "skip it", "priority", "search the whole log", "quit"):
            assert words in text, words
        await pilot.press("p")  # keys behind the list do nothing
        assert not (fx.home.control / "pause").exists()
        await pilot.press("escape")
        assert not isinstance(app.screen, KeysScreen)
    drive(app, body)


def test_keys_write_control_files_with_confirmation_for_stop_and_skip(fx) -> None:
    app = app_for(fx.root)
    control = fx.home.control

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("p")
        assert written(control, "pause") == f"{TRAINING}\n"
        (control / "pause").write_text(f"{TRAINING}\n")  # the daemon's part: control/pause holds it
        await until(pilot, lambda: app.snapshot.paused == {TRAINING}, what="pause seen")
        await pilot.press("p")  # a pause in force for this run: p resumes it, as `overnight resume RUN` does
        assert written(control, "resume") == f"{TRAINING}\n"

        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen) and not written(control, "stop")
        await pilot.press("p")  # keys behind the dialog do nothing
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmScreen) and not written(control, "stop")
        await pilot.press("s", "y")
        assert written(control, "stop") == f"{TRAINING}\n"

        await pilot.press("down")  # the queued run with priority 5
        await until(pilot, lambda: app.query_one("#runs").selected == QUEUED_HIGH)
        await pilot.press("plus")
        assert written(control, "priority") == f"{QUEUED_HIGH} 6\n"
        await pilot.press("minus")  # from the 6 just asked (no daemon answers here): back to 5
        assert written(control, "priority") == f"{QUEUED_HIGH} 5\n"
        assert len(list(control.glob("priority.*"))) == 2  # each its own command: neither overwrites the other
        await pilot.press("k", "y")
        assert written(control, "skip") == f"{QUEUED_HIGH}\n"

        await pilot.press("down", "down", "down")  # the failed run: r queues it again, p does nothing
        await until(pilot, lambda: app.query_one("#runs").selected == FAILED)
        await pilot.press("r")
        assert written(control, "resume") == f"{FAILED}\n"
        await pilot.press("p")
        await until(pilot, lambda: any("is failed" in t for t in toasts(app)), what="warning toast")
    drive(app, body, notifications=True)


def test_keys_typed_fast_act_on_the_row_under_the_cursor_and_each_step_counts(fx) -> None:
    """Type-ahead (over SSH, or a quick hand): + right after ↓ is the new row's, and + + + before the daemon answers
    asks three steps, not the same one three times."""
    app = app_for(fx.root)
    control = fx.home.control

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        assert app.query_one("#runs").selected == TRAINING
        await pilot.press("down", "plus")  # no wait: the highlight message may not have been handled yet
        assert written(control, "priority") == f"{QUEUED_HIGH} 6\n"
        await pilot.press("plus", "plus")
        assert sorted(p.read_text() for p in control.glob("priority.*")) == [
            f"{QUEUED_HIGH} 6\n", f"{QUEUED_HIGH} 7\n", f"{QUEUED_HIGH} 8\n"]
    drive(app, body)


def test_the_daemons_acknowledgement_is_shown(fx) -> None:
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("p")
        await until(pilot, lambda: any("no daemon is running" in t for t in toasts(app)), what="no-daemon toast")
        assert "waiting for the daemon" in static_text(app, "#status")
        acknowledge(fx.home, "pause", TRAINING, f"pause {TRAINING}: halting at the next step boundary")
        await until(pilot, lambda: any("halting at the next step boundary" in t for t in toasts(app)), what="ack")
        assert f"applied: pause {TRAINING}: halting" in static_text(app, "#status")
    drive(app, body, notifications=True)


def test_a_live_daemon_is_shown_and_the_banner_goes(fx) -> None:
    lock = DaemonLock(fx.home)
    lock.acquire()  # this process holds the home and writes its row, exactly as a daemon does
    store = Store(fx.home.db)
    store.daemon_started(os.getpid(), str(fx.root), "test")
    store.close()
    try:
        app = app_for(fx.root)

        async def body(pilot: Any) -> None:
            await loaded(pilot)
            assert f"● daemon PID {os.getpid()}" in static_text(app, "#header")
            assert not app.query_one("#banner").has_class("-visible")
        drive(app, body)
    finally:
        lock.release()


def test_a_daemon_that_cannot_take_drops_says_why(fx) -> None:
    lock = DaemonLock(fx.home)
    lock.acquire()
    store = Store(fx.home.db)
    store.daemon_started(os.getpid(), str(fx.root), "test")
    problem = (f"{fx.root}/overnight.toml: not valid TOML: Unclosed array (at line 2, column 1). Fix: correct that "
               f"place (text goes in double quotes, closed on the same line: name = \"mydata\"; numbers and "
               f"true/false bare; one key = value per line, e.g. learning_rate = 3e-4)")
    store.heartbeat(problem=problem)
    store.close()
    try:
        app = app_for(fx.root)

        async def body(pilot: Any) -> None:
            await loaded(pilot)
            banner = app.query_one("#banner")
            assert banner.has_class("-visible")
            assert "Unclosed array" in static_text(app, "#banner")
            # said whole at 80 columns: its fix is its last line
            assert banner.size.height >= 4 and "3e-4)" in screen_text(app), screen_text(app)
        drive(app, body, size=(80, 30))
    finally:
        lock.release()


def test_system_panel_without_gpu_and_with_one(fx) -> None:
    for telemetry, expected in ((NO_GPU, ["no NVIDIA GPU (NVML unavailable", "37% of 16 cores", "48.0G/128.0G"]),
                                (ONE_GPU, ["NVIDIA H100", "87%", "41.0G/80.0G", "64°C", "512/700W"])):
        app = app_for(fx.root, telemetry)

        async def body(pilot: Any) -> None:
            await loaded(pilot)
            await pilot.press("4")
            await until(pilot, lambda: app.query_one("#system-panel").telemetry is not None)
            await pilot.pause()
            text = screen_text(app)
            for part in expected:
                assert part in text, (part, text)
        drive(app, body)


def test_evolution_panel_shows_learned_and_forgotten_probes(fx) -> None:
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("3")
        table = app.query_one("#evo-table", DataTable)
        await until(pilot, lambda: table.row_count == 4, what="probe rows")
        assert [cell_text(table, str(i), "status") for i in range(4)] == \
            ["✓ learned 40", "✓ learned 80", "✗ forgotten 120", "· not yet"]
        assert cell_text(table, "2", "marks") == "·██·" and cell_text(table, "2", "latest") == "blue red"
        assert "2/4 learned, 1 forgotten at step 120" in static_text(app, "#evo-summary")
        # straight from the tab key: ↑↓ pick a probe and Enter opens it, no Tab needed
        await pilot.press("down", "down", "enter")
        assert isinstance(app.screen, ProbeScreen) and app.screen.probe.probe == 2
        await pilot.press("escape")
        # a new snapshot while the run trains refills the table: the cursor stays on the probe picked
        evolution = fx.root / "runs" / TRAINING / "evolution.jsonl"
        newest = [json.loads(line) for line in evolution.read_text().splitlines()][-4:]
        with evolution.open("a") as f:
            f.writelines(json.dumps({**r, "step": r["step"] + 40}) + "\n" for r in newest)
        await until(pilot, lambda: app.evolution.report.snapshots[-1] == newest[0]["step"] + 40, what="new snapshot")
        await pilot.press("enter")
        assert isinstance(app.screen, ProbeScreen) and app.screen.probe.probe == 2
        await pilot.press("escape")
        assert not isinstance(app.screen, ProbeScreen)
        await pilot.press("1", "down")  # leaving the tab, ↑↓ pick runs again
        assert app.focused is app.runs
    drive(app, body)


def test_e_lists_the_rejected_drops_and_enter_shows_the_whole_error(fx) -> None:
    rejected = fx.root / "inbox" / "rejected"
    sidecar = fx.root / "inbox" / "chat.toml"  # a sidecar's error names it by its whole path
    for name, error, age_s in (("chat.jsonl", f"{sidecar}: option 'lora_r' = 0: out of range (1 .. 1024)", 3 * 3600),
                               ("data.jsonl", "data.jsonl: line 12: not JSON (Expecting value)", 600),
                               ("old.jsonl", "old.jsonl: line 1: not JSON", 3 * 86400)):
        (rejected / name).write_text("{}\n")
        err = rejected / f"{name.rsplit('.', 1)[0]}.error.txt"
        err.write_text(f"{error}\n\nRejected files (moved to {rejected}): {name}\n"
                       f"After fixing, drop the file into {fx.root / 'inbox'} again.\n")
        stamp = time.time() - age_s
        os.utime(err, (stamp, stamp))
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await until(pilot, lambda: len(app.snapshot.rejected) == 2, what="the rejected drops read")
        await pilot.press("e")
        assert isinstance(app.screen, RejectedScreen)
        await pilot.pause()
        text = screen_text(app)
        assert "2 drops rejected in the last 24 h" in text
        # newest first; the one from three days ago is past the window, as in the "needs you" strip
        assert text.index("data.jsonl") < text.index("chat.jsonl") and "old.jsonl" not in text
        assert "line 12: not JSON (Expecting value)" in text
        assert "chat.toml: option 'lora_r' = 0: out of range" in text  # the reason, not the sidecar's folder
        await pilot.press("down", "enter")
        assert isinstance(app.screen, RejectedErrorScreen)
        await pilot.pause()
        text = screen_text(app)
        assert "chat.error.txt" in text and "option 'lora_r' = 0: out of range" in text
        assert "again." in text  # the whole file, not only its first line
        await pilot.press("escape")
        assert isinstance(app.screen, RejectedScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, (RejectedScreen, RejectedErrorScreen))
    drive(app, body, size=(100, 30))


def test_e_on_a_home_without_rejected_drops_says_so(fx) -> None:
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("e")
        assert isinstance(app.screen, RejectedScreen)
        await pilot.pause()
        assert "no drop rejected in the last 24 h" in screen_text(app)
        await pilot.press("e")
        assert not isinstance(app.screen, RejectedScreen)
    drive(app, body)


def test_models_panel_marks_the_active_version(fx) -> None:
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("5")
        table = app.query_one("#models-table", DataTable)
        assert table.row_count == 2
        assert table.get_row("alpaca-small:2")[0].plain == "●" and table.get_row("alpaca-small:1")[0].plain == ""
    drive(app, body)


def test_charts_and_comparison_overlay(fx) -> None:
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("2")
        charts = app.query_one("#charts-panel")
        await until(pilot, lambda: charts._shown is not None and charts._shown[0].points == 123, what="curves")
        await pilot.press("c", "down", "down", "down")  # compare the training run's loss with the completed one
        await until(pilot, lambda: app.query_one("#runs").selected == COMPLETED)
        await until(pilot, lambda: charts._shown[1] and charts._shown[1][0].label == TRAINING, what="overlay")
        assert charts._shown[0].points == 307  # 300 steps + 7 eval records of the completed run
    drive(app, body, size=(120, 40))


def test_a_preference_run_charts_its_reward_margin_and_accuracy(fx) -> None:
    metrics = fx.home.runs / TRAINING / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    metrics.write_text("".join(json.dumps({**r, "rewards/margins": 0.01 * r["step"], "rewards/accuracies": 0.5}
                                          if "loss" in r else r) + "\n" for r in records))
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("2")
        charts = app.query_one("#charts-panel")
        await until(pilot, lambda: charts._shown is not None and charts._shown[0].preference, what="reward curves")
        shown = charts._shown[0]
        assert shown.margin.ys[-1] > shown.margin.ys[0] and set(shown.accuracy.ys) == {0.5}
        await pilot.press("down", "down", "down")  # the completed run trained with SFT: its learning rate again
        await until(pilot, lambda: app.query_one("#runs").selected == COMPLETED)
        await until(pilot, lambda: charts._shown[0].points == 307 and not charts._shown[0].preference,
                    what="the SFT run's curves")
    drive(app, body, size=(120, 40))


def test_a_million_line_log_opens_fast_with_bounded_memory(fx, big_log: Path) -> None:
    console = fx.home.runs / TRAINING / "console.log"
    console.unlink()
    os.symlink(big_log, console)
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        t0 = time.perf_counter()
        await loaded(pilot)
        log = app.query_one("#log-view", Log)
        await until(pilot, lambda: log.line_count == LOG_LINES, what="tail shown")
        # an order-of-magnitude bound (about 0.5 s on a loaded 2-core VM: bench/tui_speed.py): reading the
        # whole log into the view would blow it
        assert time.perf_counter() - t0 < budget(5)
        assert log.lines[-1].startswith("02:00:00 step 1000000 ")
        await pilot.press("slash", *"step 424242 ", "enter")
        await until(pilot, lambda: "lines match" in static_text(app, "#log-head"), timeout=20, what="search")
        assert "1 of 1,000,000 lines match" in static_text(app, "#log-head")
        assert log.lines[0].split()[0] == "424242"
    drive(app, body)


def test_an_empty_home_says_so_and_keys_do_nothing(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "empty", create=True)
    app = app_for(home.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        assert "no runs yet" in static_text(app, "#header")
        await pilot.press("p", "s")
        await until(pilot, lambda: any("no run selected" in t for t in toasts(app)), what="warning")
        assert not isinstance(app.screen, ConfirmScreen)
        assert sorted(p.name for p in home.control.iterdir()) == ["done", "rejected"]
        assert app.query_one(TabbedContent).active == "log"
    drive(app, body, notifications=True)


def test_a_db_that_cannot_be_read_is_not_said_as_an_empty_home(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "broken", create=True)
    home.db.write_bytes(b"\x00garbage" * 500)
    app = app_for(home.root)

    async def body(pilot: Any) -> None:
        await until(pilot, lambda: "runs unknown: the DB cannot be read" in static_text(app, "#header"),
                    what="the header")
        assert "no runs yet" not in static_text(app, "#header")
    drive(app, body)


def test_unreadable_run_files_cost_a_toast_not_the_dashboard(fx) -> None:
    run_dir = fx.home.runs / TRAINING
    (run_dir / "progress.json").write_text('{"state": "train')  # cut short
    (run_dir / "console.log").unlink()
    (run_dir / "console.log").mkdir()  # cannot be read as a file
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await until(pilot, lambda: any("run " + TRAINING in t and "IsADirectoryError" in t for t in toasts(app)),
                    what="error toast")
        assert app.loads >= 1 and app.query_one("#runs", DataTable).row_count == 6  # the rest still shows
        seen = app.loads
        await until(pilot, lambda: app.loads >= seen + 3, what="reads go on")
        assert sum("IsADirectoryError" in t for t in toasts(app)) == 1  # told once, not every second
    drive(app, body, notifications=True)


def test_the_selection_stays_on_its_run_when_runs_arrive(fx) -> None:
    app = app_for(fx.root)
    selections: list[str | None] = []
    watching = False

    def hook(message: Any) -> None:
        if watching and isinstance(message, RunsTable.Selected):
            selections.append(message.run_id)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("down", "down", "down")
        await until(pilot, lambda: app.query_one("#runs").selected == COMPLETED)
        nonlocal watching
        watching = True
        store = Store(fx.db)  # a new dataset arrives: queued above the history
        store.insert_run({"id": "late-20260514-030000", "name": "late", "state": "queued", "priority": 0, "seq": 7,
                          "run_dir": str(fx.home.runs / "late-20260514-030000")})
        store.close()
        table = app.query_one("#runs", DataTable)
        await until(pilot, lambda: table.row_count == 7, what="the new row")
        await pilot.pause(0.5)
        assert app.query_one("#runs").selected == COMPLETED and table.cursor_row == 4
        assert selections == []  # the log of the selected run was never swapped out
    drive(app, body, message_hook=hook)


def test_a_folded_sweep_whose_last_trial_is_paused_reads_held_and_p_resumes_that_trial(fx) -> None:
    from tests.tui_fixtures import SWEEP, SWEEP_GROUP, add_sweep
    add_sweep(fx)
    waiting = SWEEP[3][0]
    store = Store(fx.db)  # its last trial was paused (overnight pause RUN) before it started
    store.db.execute("UPDATE runs SET state = 'queued', started = NULL, finished = NULL WHERE id = ?", [waiting])
    store.close()
    (fx.home.control / "pause").write_text(waiting + "\n")
    app = app_for(fx.root)
    group_key = f"group:{SWEEP_GROUP}"

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        table = app.query_one("#runs", DataTable)
        await until(pilot, lambda: cell_text(table, group_key, "state") == "held", what="the group reads held")
        table.move_cursor(row=table.get_row_index(group_key))
        await until(pilot, lambda: app.runs.cursor_key == group_key, what="the group row")
        await pilot.press("p")  # on the folded row: the trial control/pause holds, not the best (completed) run
        assert written(fx.home.control, "resume") == f"{waiting}\n"
    drive(app, body)


def test_a_sweep_is_one_row_that_unfolds_with_the_best_marked(fx) -> None:
    from tests.tui_fixtures import SWEEP, SWEEP_BEST, SWEEP_GROUP, add_sweep
    add_sweep(fx)
    app = app_for(fx.root)
    group_key = f"group:{SWEEP_GROUP}"

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        table = app.query_one("#runs", DataTable)
        assert table.row_count == 7  # six runs, and the sweep's four folded into one row
        label = cell_text(table, group_key, "run")
        assert label == "▸ support ×4"  # the group id where it fits (wider terminals)
        assert cell_text(table, group_key, "state") == "ended"  # one of its runs failed
        assert "4/4" in cell_text(table, group_key, "progress")
        assert cell_text(table, group_key, "loss") == fmt_loss(1.2121 - 0.1)  # the best run's
        await pilot.press("down", "down", "down")  # the newest history: the sweep
        await until(pilot, lambda: app.runs.cursor_key == group_key, what="the group row")
        await until(pilot, lambda: app.runs.selected == SWEEP_BEST, what="the best run shown")
        await pilot.press("plus")  # on the folded row, + is the whole sweep's: every run of this one has ended
        await until(pilot, lambda: any("no run of it is queued or running" in t for t in toasts(app)), what="toast")
        await pilot.press("enter")
        await until(pilot, lambda: table.row_count == 11, what="unfolded")
        assert cell_text(table, group_key, "run").startswith("▾ ")
        children = [cell_text(table, run_id, "run") for run_id, _, _ in SWEEP]
        assert [c.strip() for c in children] == ["lr1e-4-r8", "★ lr1e-4-r16", "lr3e-4-r8", "lr3e-4-r16"]
        assert [table.get_row_index(run_id) for run_id, _, _ in SWEEP] == [4, 5, 6, 7]  # grid order, under it
        assert cell_text(table, SWEEP[2][0], "state") == "failed"
        await pilot.press("down", "down", "down")  # a run of the sweep: its own log
        await until(pilot, lambda: app.runs.selected == SWEEP[2][0], what="a child run")
        await until(pilot, lambda: "failed" in static_text(app, "#log-head"), what="its log")
        await pilot.press("enter")  # Enter on one of its runs folds the group back
        await until(pilot, lambda: table.row_count == 7, what="folded")
        assert app.runs.cursor_key == group_key and table.cursor_row == 3
        await pilot.press("question_mark")
        assert "unfold its runs, ★ = the best" in screen_text(app)
    drive(app, body, notifications=True)


# ----------------------------------------------------------------------------------------------- several GPUs

def two_gpus(monkeypatch: pytest.MonkeyPatch) -> LiveTelemetry:
    """The live telemetry source on a fake NVML: two H100s, each held by one of the fixture's trainers (PIDs 4242
    and 5353, as the DB records them), and on GPU 1 also a job of no run whose memory NVML cannot report."""
    import sys
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([
        FakeGpu(util=90, used=30 * GIB, compute=[(4242, 20 * GIB)]),
        FakeGpu(util=84, used=31 * GIB, compute=[(5353, 21 * GIB), (4_000_001, None)])]))
    return LiveTelemetry(Path("/"))


def test_two_runs_training_at_once_each_on_its_gpu(fx, monkeypatch: pytest.MonkeyPatch) -> None:
    add_second_trainer(fx)
    app = OvernightApp(fx.root, telemetry=two_gpus(monkeypatch), refresh_s=0.25)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        table = app.query_one("#runs", DataTable)
        assert [table.coordinate_to_cell_key((i, 0)).row_key.value for i in range(2)] == [SECOND, TRAINING]
        assert app.runs.selected == SECOND  # the newest active run is shown first
        assert [cell_text(table, r, "state") for r in (SECOND, TRAINING)] == ["training", "training"]
        assert [cell_text(table, r, "gpu") for r in (SECOND, TRAINING)] == ["1", "0"]
        assert cell_text(table, SECOND, "prio") == "1000" and cell_text(table, QUEUED_HIGH, "gpu") == ""
        await until(pilot, lambda: "GPU 2×H100 87% · 61/160 GB" in static_text(app, "#header"), what="GPU summary")
        # at 80 columns the finished count gives way to the GPU summary
        assert static_text(app, "#header").endswith("│ ○ no daemon │ 2 training · 2 queued │ GPU 2×H100 87% · 61/160 GB")
        text = screen_text(app)
        assert " summaries-…21000  training   █▎░░░░░░ 30/200     4.038   20m00s  1     1000 " in text
        assert " reverse-words-2…  training   ███▎░░░░ 120/300    1.395   6m01s   0     0 " in text
        log = app.query_one("#log-view", Log)
        await until(pilot, lambda: log.lines and "step 30/200" in log.lines[-1], what="the selected run's log")
        await pilot.press("down")  # the other trainer: its own log
        await until(pilot, lambda: app.runs.selected == TRAINING and "step 120/300" in log.lines[-1])

        await pilot.press("4")
        await until(pilot, lambda: "on the GPU" in screen_text(app), what="the System tab")
        rows = [line.split() for line in screen_text(app).splitlines()]
        head = rows.index(["on", "the", "GPU", "PID", "memory"])
        assert rows[head + 1:head + 4] == [["GPU0", TRAINING, "4242", "20.0G"], ["GPU1", SECOND, "5353", "21.0G"],
                                           ["not", "overnight", "4000001", "-"]]
    drive(app, body)


def test_the_header_says_when_there_is_no_gpu(fx) -> None:
    app = app_for(fx.root, NO_GPU)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await until(pilot, lambda: "no GPU (CPU)" in static_text(app, "#header"), what="GPU summary")
        header = static_text(app, "#header")
        assert "no daemon" in header and "1 training · 2 queued · 3 finished │ no GPU (CPU)" in header
        assert cell_text(app.query_one("#runs", DataTable), TRAINING, "gpu") == "CPU"  # no GPU set recorded
    drive(app, body)


def test_every_key_of_the_key_line_is_visible_at_80x24(fx) -> None:
    app = app_for(fx.root, ONE_GPU)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        last = screen_text(app).splitlines()[-1]
        shown = [b for b in app.BINDINGS if b.show]
        assert last.rstrip().endswith("q Quit") and len(last.rstrip()) < 80, last
        for b in shown:
            described = b.group.description if b.group else b.description
            assert f"{b.key_display or b.key} " in last or described in last, (b, last)
        assert "+- Prio / Search" in last and "? Keys" in last
    drive(app, body)


def test_the_key_line_shows_what_keys_do_while_typing_and_under_a_dialog(fx) -> None:
    """Letters typed into a text box are text: the key line offers Esc (and Tab in Try), not the dashboard's
    one-key commands; under a dialog it offers nothing the dialog would take as its own."""
    app = app_for(fx.root)

    def key_line() -> str:
        return screen_text(app).splitlines()[-1]

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("slash")
        await until(pilot, lambda: "Back to the tail" in key_line(), what="the search's key line")
        assert "Pause" not in key_line() and "Quit" not in key_line(), key_line()
        await pilot.press("escape")
        await until(pilot, lambda: "Pause" in key_line(), what="the dashboard's keys again")
        assert "Back to the tail" not in key_line() and key_line().rstrip().endswith("q Quit")
        await pilot.press("6")
        await until(pilot, lambda: "Leave the prompt" in key_line(), what="the Try prompt's key line")
        assert "The other field" in key_line() and "Quit" not in key_line() and "Prio" not in key_line()
        await pilot.press("escape", "question_mark")
        await until(pilot, lambda: len(app.screen_stack) > 1, what="the keys dialog")
        await pilot.pause(0.3)
        assert "Quit" not in key_line() and "Pause" not in key_line(), key_line()
        await pilot.press("q")  # closes the dialog, as its own text says; the dashboard goes on
        await until(pilot, lambda: len(app.screen_stack) == 1, what="the dialog closed")
        assert app.is_running
    drive(app, body)


# ----------------------------------------------------------------------------------------------- models, ids, held

def test_a_run_id_is_cut_in_its_time_stamp_so_the_name_stays_readable() -> None:
    assert clip_id("summaries-20260514-021000", 17) == "summaries-…021000"
    assert clip_id("poems-20260514-022000", 17) == "poems-202…-022000"
    assert clip_id("poems-20260514-022000", 21) == "poems-20260514-022000"
    assert clip_id("a-very-long-dataset-name-20260514-010000", 17) == "a-very-long-data…"  # no room for the stamp


def test_models_show_the_active_version_its_lineage_and_a_readable_run_id_at_80x24(fx) -> None:
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("5")
        table = app.query_one("#models-table", DataTable)
        await until(pilot, lambda: app.focused is table, what="Models focused")
        assert cell_text(table, "alpaca-small:2", "continues from") == "alpaca-small:1"
        assert cell_text(table, "alpaca-small:1", "continues from") == ""
        assert cell_text(table, "alpaca-small:2", "state") == "active"
        run = cell_text(table, "alpaca-small:2", "run")
        assert run.startswith("alpaca-small-2") and run.endswith("-010000") and run == clip_id(COMPLETED, len(run))
        assert run in screen_text(app)  # the whole cell is on screen, not cut at the terminal's edge
    drive(app, body)


def test_a_and_d_on_models_write_activate_and_delete_after_confirmation(fx) -> None:
    app = app_for(fx.root)
    control = fx.home.control

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("a")  # on the Log tab no version is in sight: nothing is written
        await until(pilot, lambda: any("open Models (5)" in t for t in toasts(app)), what="warning toast")
        await pilot.press("5")
        await until(pilot, lambda: app.focused is app.models, what="Models focused")
        assert app.models.selected.version == 1  # the first row: the older version

        await pilot.press("a")
        assert isinstance(app.screen, ConfirmScreen) and not written(control, "activate")
        assert "Activate alpaca-small v1?" in screen_text(app)
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmScreen) and not written(control, "activate")
        await pilot.press("a", "y")
        assert written(control, "activate") == "alpaca-small 1\n"  # what `overnight activate` writes
        await until(pilot, lambda: "waiting for the daemon to acknowledge: activate alpaca-small v1"
                    in static_text(app, "#status"), what="waiting")
        store = Store(fx.db)  # what the daemon does and records when it applies control/activate.ID
        store.activate_model("alpaca-small", 1)
        store.close()
        acknowledge(fx.home, "activate", "alpaca-small 1", "activate alpaca-small v1: now the active version (pinned)")
        await until(pilot, lambda: any("now the active version" in t for t in toasts(app)), what="ack")
        table = app.query_one("#models-table", DataTable)
        await until(pilot, lambda: cell_text(table, "alpaca-small:1", "mark") == "●", what="v1 active")
        assert app.models.selected.version == 1  # the cursor stays on its version when the table is redrawn

        await pilot.press("a")  # already active: a warning, no dialog
        await until(pilot, lambda: any("already the active version" in t for t in toasts(app)), what="warning")
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("down", "d")
        assert isinstance(app.screen, ConfirmScreen) and not written(control, "delete")
        assert "Delete alpaca-small v2?" in screen_text(app)
        await pilot.press("y")
        assert written(control, "delete") == "alpaca-small 2\n"  # what `overnight delete` writes

        await pilot.press("1", "down")  # back on Log, ↑↓ move through runs again
        await until(pilot, lambda: app.runs.selected == QUEUED_HIGH, what="the next run")
    drive(app, body, notifications=True)


def test_queued_runs_held_by_control_stop_say_held(fx) -> None:
    (fx.home.control / "stop").write_text("")  # untargeted: holds the queue, as `overnight status` says
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        table = app.query_one("#runs", DataTable)
        await until(pilot, lambda: cell_text(table, QUEUED_HIGH, "state") == "held", what="held")
        assert cell_text(table, QUEUED_LOW, "state") == "held" and cell_text(table, TRAINING, "state") == "training"
        await pilot.press("down")  # the log header of a held run says so too
        await until(pilot, lambda: static_text(app, "#log-head").find("held") >= 0, what="held in the log header")
        (fx.home.control / "stop").unlink()  # `overnight resume` lifts it
        await until(pilot, lambda: cell_text(table, QUEUED_HIGH, "state") == "queued", what="queued again")
    drive(app, body)


def test_the_newest_active_run_is_selected_at_start_and_when_a_run_starts(fx) -> None:
    add_second_trainer(fx)
    store = Store(fx.db)  # the newer trainer below the older in priority: still the one shown first
    store.db.execute("UPDATE runs SET priority = -1 WHERE id = ?", [SECOND])
    store.close()
    app = app_for(fx.root)

    def start(run_id: str, seq: int) -> None:
        store = Store(fx.db)
        store.insert_run({"id": run_id, "name": run_id.rsplit("-", 2)[0], "state": "training", "priority": 0,
                          "seq": seq, "run_dir": str(fx.home.runs / run_id), "started": "2026-05-14T03:00:00"})
        store.close()

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        assert app.runs.selected == SECOND
        start("demo-20260514-030000", 8)  # a second demo: the dashboard moves to the run that started
        await until(pilot, lambda: app.runs.selected == "demo-20260514-030000", what="the new run selected")
        await pilot.press("down")  # a run the user picked stays selected when another starts
        await until(pilot, lambda: app.runs.selected != "demo-20260514-030000", what="the user's pick")
        picked = app.runs.selected
        start("demo-20260514-031000", 9)
        await until(pilot, lambda: app.runs.row_count == 9, what="the new row")
        await pilot.pause(0.5)
        assert app.runs.selected == picked
    drive(app, body)


def test_tab_goes_from_the_runs_to_the_panel_and_esc_leaves_the_try_prompt(fx) -> None:
    """Tab reaches the log at once (the tab strip takes no focus: ← → scroll the log, as the help says), and Esc in
    the Try tab's prompt gives the keys back to the dashboard (a `2` typed after it switches tabs, not into the
    prompt)."""
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        assert app.focused is app.runs
        await pilot.press("tab")
        assert app.focused is not None and app.log_panel in app.focused.ancestors_with_self, app.focused
        await pilot.press("6")
        await until(pilot, lambda: app.focused is app.try_panel.prompt_input, what="the prompt focused")
        # Tab goes to the versions and back, never out to the runs table (whose keys are commands)
        versions = app.try_panel.models_input
        before = versions.value
        await pilot.press("tab")
        assert app.focused is versions
        await pilot.press("x")  # typed onto the versions filled in, not over them
        assert versions.value == before + "x" if before else versions.value == "x"
        await pilot.press("backspace", "tab")
        assert app.focused is app.try_panel.prompt_input and versions.value == before
        await pilot.press("shift+tab")
        assert app.focused is versions
        await pilot.press("shift+tab")
        await pilot.press("escape", "2")
        await until(pilot, lambda: app.query_one(TabbedContent).active == "charts", what="charts")
        assert app.try_panel.prompt_input.value == "" and app.focused is app.runs
    drive(app, body)


# ----------------------------------------------------------------------------------------------- text, not markup

ODD = "data[/]set-20260514-030000"  # `[/` closes a markup tag that was never opened: a MarkupError if read as markup


def test_text_with_markup_brackets_is_shown_as_written(fx, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run id, a control rejection and a version typed in Try, each holding `[/`, are shown as they are: the
    dashboard opens on them, and one arriving while it runs does not close it."""
    from tui.widgets import trypanel
    store = Store(fx.db)
    store.insert_run({"id": ODD, "name": "data[/]set", "state": "queued", "priority": 0, "seq": 7,
                      "run_dir": str(fx.home.runs / ODD)})
    store.control_event("priority", None, "control/priority", "rejected", "control/priority: 'data[/]set' names no "
                        "queued run")
    store.close()
    # the answers process's reply quotes the version it was asked for
    monkeypatch.setattr(trypanel, "WORKER", [sys.executable, "-c", "import json; input(); print(json.dumps("
                                             "{'error': 'no version named data[/]set'}))"])
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        assert "names no queued run" in static_text(app, "#status")
        assert cell_text(app.runs, ODD, "run") == clip_id(ODD, app.runs._id_width)
        store = Store(fx.db)  # a rejection arriving while the dashboard runs
        store.control_event("stop", "x[/]y", "control/stop", "rejected", "control/stop: 'x[/]y' names no run")
        store.close()
        await until(pilot, lambda: "'x[/]y' names no run" in static_text(app, "#status"), what="the new event")
        await pilot.press("6")
        await until(pilot, lambda: app.focused is app.try_panel.prompt_input, what="the prompt focused")
        app.try_panel.models_input.value = "data[/]set"
        app.try_panel.prompt_input.value = "hello"
        await pilot.press("enter")
        await until(pilot, lambda: app.try_panel.answered == 1, what="the answer")
        assert "no version named data[/]set" in static_text(app, "#try-status")
    drive(app, body)


# ----------------------------------------------------------------------------------------------- the DB replaced

def test_a_db_replaced_by_a_new_file_is_read_from_the_new_one(fx) -> None:
    """`overnight doctor --rebuild` renames overnight.db aside and writes a new one: the dashboard reads the new one."""
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        assert app.runs.row_count == 6
        for suffix in ("", "-wal", "-shm"):
            old = fx.db.with_name(fx.db.name + suffix)
            if old.exists():
                old.rename(old.with_name(old.name + ".old"))
        store = Store(fx.db)
        store.insert_run({"id": "rebuilt-20260514-040000", "name": "rebuilt", "state": "queued", "priority": 0,
                          "seq": 1, "run_dir": str(fx.home.runs / "rebuilt-20260514-040000")})
        store.close()
        await until(pilot, lambda: [r.id for r in app.snapshot.runs] == ["rebuilt-20260514-040000"],
                    what="the new DB read")
        assert app.runs.row_count == 1
    drive(app, body)


# ----------------------------------------------------------------------------------------------- exit status, terminal

def test_the_exit_status_says_whether_the_dashboard_crashed(fx, monkeypatch: pytest.MonkeyPatch) -> None:
    from tui import app as tui_app

    def crash(self: OvernightApp) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(OvernightApp, "on_mount", crash)
    assert tui_app.run(fx.root, headless=True) == 1
    monkeypatch.setattr(OvernightApp, "on_mount", lambda self: self.exit())
    assert tui_app.run(fx.root, headless=True) == 0


def test_overnight_tui_exits_with_the_apps_status_and_refuses_without_a_terminal(
        fx, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from daemon.client.cli import main
    from tui import app as tui_app
    runner = CliRunner()
    monkeypatch.setattr(tui_app, "run", lambda home: 0)  # were the dashboard opened, it would return at once
    result = runner.invoke(main, ["tui", "--home", str(fx.root)])  # CliRunner's stdin and stdout are no terminal
    assert result.exit_code == 1 and "ssh -t" in result.output and "overnight status" in result.output
    assert len(result.output.strip().splitlines()) == 1

    monkeypatch.setattr(tui_app, "no_terminal", lambda: None)
    monkeypatch.setattr(tui_app, "run", lambda home: 1)  # the app crashed
    assert runner.invoke(main, ["tui", "--home", str(fx.root)]).exit_code == 1
    monkeypatch.setattr(tui_app, "run", lambda home: 0)
    assert runner.invoke(main, ["tui", "--home", str(fx.root)]).exit_code == 0


def test_a_dumb_terminal_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from tui.app import no_terminal
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty())
    monkeypatch.setattr(sys, "stdout", Tty())
    monkeypatch.setenv("TERM", "dumb")
    assert "TERM=dumb" in no_terminal() and "overnight status" in no_terminal()
    monkeypatch.setenv("TERM", "xterm-256color")
    assert no_terminal() is None


# ----------------------------------------------------------------------------------------------- p: holds, type-ahead

def test_p_on_a_queue_held_by_control_stop_resumes_the_queue(fx) -> None:
    """`overnight stop` left an empty control/stop: p on a held run lifts the hold (what `overnight resume` writes),
    not a pause of that run; p again before the daemon answers says it is waiting."""
    (fx.home.control / "stop").write_text("")
    app = app_for(fx.root)
    control = fx.home.control

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("down")
        await until(pilot, lambda: app.runs.selected == QUEUED_HIGH and app.snapshot.stop_held, what="held run")
        await pilot.press("p")
        assert written(control, "resume") == "" and written(control, "pause") is None
        await until(pilot, lambda: any("resume the queue (lifts control/stop" in t for t in toasts(app)),
                    what="feedback")
        await pilot.press("p")
        await until(pilot, lambda: any("waiting for the daemon to lift control/stop" in t for t in toasts(app)),
                    what="waiting")
        assert len(list(control.glob("resume.*"))) == 1 and written(control, "pause") is None
    drive(app, body, notifications=True)


def test_p_twice_before_the_daemon_answers_pauses_then_resumes(fx) -> None:
    app = app_for(fx.root)
    control = fx.home.control

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("p", "p")  # no daemon answers: the second p goes by the pause asked, not the DB
        assert [p.read_text() for p in control.glob("pause.*")] == [f"{TRAINING}\n"]
        assert [p.read_text() for p in control.glob("resume.*")] == [f"{TRAINING}\n"]
        await pilot.press("p")
        assert len(list(control.glob("pause.*"))) == 2
    drive(app, body)


# ----------------------------------------------------------------------------------------------- layout

def test_the_keys_dialog_scrolls_on_a_short_terminal(fx) -> None:
    from textual.containers import VerticalScroll

    from tui.widgets.keys import KeysScreen
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, KeysScreen)
        await pilot.pause(0.1)
        box = app.screen.query_one(VerticalScroll)
        assert box.outer_size.height <= 20 and box.max_scroll_y > 0
        assert "quit (the daemon" not in screen_text(app)
        await pilot.press("end")
        await until(pilot, lambda: "quit (the daemon" in screen_text(app), what="the last key in view")
        await pilot.press("escape")
        assert not isinstance(app.screen, KeysScreen)
    drive(app, body, size=(60, 20))


def test_a_long_model_name_leaves_loss_and_run_in_view_at_80x24(fx) -> None:
    long = "a-model-name-much-longer-than-any-column-should-be"
    store = Store(fx.db)
    store.add_model({"name": long, "run_id": COMPLETED, "base_model": "/models/tiny-qwen2",
                     "metrics": {"final_loss": 0.4321}, "adapter_path": str(fx.root / "adapter"),
                     "parent": "alpaca-small:2"})
    store.close()
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("5")
        table = app.query_one("#models-table", DataTable)
        await until(pilot, lambda: table.row_count == 3, what="three versions")
        text = screen_text(app)
        assert "0.4321" in text and "from" in text and "continues fro" not in text
        row = next(line for line in text.splitlines() if "0.4321" in line)
        run = cell_text(table, f"{long}:1", "run")
        assert "a-model-name-" in row and run in row and run.endswith("0000")  # the name cut, the run id whole
    drive(app, body)


def test_a_wide_character_run_id_keeps_its_time_stamp(fx) -> None:
    from rich.cells import cell_len
    wide = "日本語の要約データセット-20260514-031500"
    assert cell_len(clip_id(wide, 17)) <= 17 and clip_id(wide, 17).endswith("…")  # no room for the stamp
    assert clip_id(wide, 40).endswith("031500") and cell_len(clip_id(wide, 40)) <= 40
    store = Store(fx.db)
    store.insert_run({"id": wide, "name": "日本語の要約データセット", "state": "queued", "priority": 9, "seq": 7,
                      "run_dir": str(fx.home.runs / wide)})
    store.close()
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        shown = cell_text(app.runs, wide, "run")
        assert cell_len(shown) <= app.runs._id_width and shown == clip_id(wide, app.runs._id_width)
        assert shown in screen_text(app) or cell_len(wide) <= app.runs._id_width
    drive(app, body, size=(110, 24))


def test_the_log_goes_back_to_column_0_when_focus_leaves_it(fx) -> None:
    with open(fx.home.runs / TRAINING / "console.log", "a") as f:
        f.write("[2026-05-14 02:10:00.000] " + "a very long line " * 20 + "\n")
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        log = app.log_panel.log_widget
        await pilot.press("tab")
        assert app.focused is log
        await pilot.press(*["right"] * 10)
        await until(pilot, lambda: log.scroll_x > 0, what="scrolled sideways")
        await pilot.press("shift+tab")
        assert app.focused is app.runs
        await until(pilot, lambda: log.scroll_x == 0, what="back at column 0")
    drive(app, body)


def test_home_and_end_go_to_the_first_and_the_last_run(fx) -> None:
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("end")
        await until(pilot, lambda: app.runs.selected == app.snapshot.runs[-1].id, what="the last run")
        await pilot.press("home")
        await until(pilot, lambda: app.runs.selected == app.snapshot.runs[0].id, what="the first run")
    drive(app, body)


# ----------------------------------------------------------------------------------------------- an empty home

def test_search_and_evolution_on_an_empty_home_say_no_run_is_selected(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "empty", create=True)
    app = app_for(home.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("slash", "l", "o", "s", "s", "enter")
        await until(pilot, lambda: "nothing to search" in static_text(app, "#log-head"), what="said")
        assert "searching for" not in static_text(app, "#log-head")
        assert any("no run selected" in t for t in toasts(app))
        await pilot.press("3")
        assert "no run selected" in static_text(app, "#evo-summary")
        assert "when training starts" not in static_text(app, "#evo-summary")
    drive(app, body, notifications=True)


def test_overnight_tui_without_a_terminal_says_so_and_exits_1(fx) -> None:
    """`ssh box overnight tui` without -t: no terminal at either end; refused at once, not drawn for nobody."""
    import subprocess
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "daemon", "tui", "--home", str(fx.root)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=budget(60), env=env)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "ssh -t" in done.stderr
