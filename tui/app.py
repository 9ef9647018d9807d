"""`overnight tui`: the dashboard App — layout, key bindings and one refresh timer; panels live in tui/widgets/.

Reading happens in thread workers (the DB and run files through tui.homedata, telemetry through tui.telemetry);
only messages cross back to the UI thread. The App acts on the daemon solely by writing control files.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Input, Static, TabbedContent, TabPane, Tabs
from textual.worker import get_current_worker

from daemon.core.home import Home
from daemon.core.rundir import RunFolder
from tui import actions
from tui.actions import AckTracker, NotApplicable, Request
from tui.homedata import ControlAck, DaemonState, HomeSnapshot, HomeWatcher, ModelRow, RunRow, RunWatcher, grep_file
from tui.messages import Loaded, ReadFailed, Sampled, Searched
from tui.telemetry import LiveTelemetry, TelemetrySource
from tui.widgets.charts import ChartsPanel
from tui.widgets.confirm import ConfirmScreen
from tui.widgets.evolutionview import EvolutionPanel
from tui.widgets.header import DaemonBanner, HomeHeader
from tui.widgets.keys import KeysScreen
from tui.widgets.logview import LogPanel, run_note
from tui.widgets.models import ModelsTable
from tui.widgets.needs import NeedsStrip
from tui.widgets.rejected import RejectedScreen
from tui.widgets.runs import RunsTable
from tui.widgets.system import SystemPanel
from tui.widgets.trypanel import TryPanel

@dataclass(frozen=True)
class ReadRequest:
    """What the reader thread should read: the selected run, the runs pinned for comparison, the chart width."""

    selected: str | None
    compare: tuple[str, ...]
    buckets: int
    restart_log: bool  # read the selected run's log from its end again (a new selection, follow resumed)


REFRESH_S = 1.0  # DB and run files are polled at most once a second: dashboards never load the daemon
HEADER_SAMPLE_S = 5.0  # GPUs sampled for the header's summary while the System panel is not shown
TABS = ("log", "charts", "evolution", "system", "models", "try")


def _ack_line(e: ControlAck) -> str:
    return f"control {e.time[11:19]} {e.status}: {e.message}"


class OvernightApp(App[None]):
    """The dashboard for one home."""

    TITLE = "overnight"
    CSS = """
    Screen { layout: vertical; }
    RunsTable { height: 1fr; min-height: 4; max-height: 40%; }
    TabbedContent { height: 2fr; }
    TabbedContent ContentSwitcher { height: 1fr; }
    TabPane { padding: 0; }
    #status { height: 1; background: $panel; color: $text-muted; }
    Footer.-compact FooterLabel { margin: 0 1 0 0; }
    """
    # the key line shows every binding marked show at 80 columns (compact footer, + and - as one entry);
    # the rest are listed by `?` (tui/widgets/keys.py)
    _PRIO = Binding.Group("Prio", compact=True)
    BINDINGS = [
        Binding("p", "pause", "Pause"),
        Binding("s", "stop", "Stop"),
        Binding("k", "skip", "Skip"),
        Binding("plus,equals_sign", "priority(1)", "Prio+", key_display="+", group=_PRIO),
        Binding("minus", "priority(-1)", "Prio-", key_display="-", group=_PRIO),
        Binding("r", "requeue", "Requeue", show=False),
        Binding("a", "activate", "Activate", show=False),  # on Models: the selected version
        Binding("d", "delete", "Delete", show=False),
        Binding("e", "rejected", "Rejected", show=False),  # the drops the "needs you" strip counts, with errors
        Binding("slash", "search", "Search", key_display="/"),
        Binding("f", "follow", "Follow"),
        Binding("c", "compare", "Compare"),
        Binding("question_mark", "help", "Keys", key_display="?"),
        Binding("q", "leave", "Quit"),  # not "quit": ctrl+q (Textual's) quits from a dialog or a text box, q not
        *[Binding(str(i), f"tab('{name}')", name.title(), show=False) for i, name in enumerate(TABS, 1)],
    ]

    def __init__(self, home: Path, telemetry: TelemetrySource | None = None, refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        self.home = Home.resolve(home, create=False)
        self.refresh_s = refresh_s
        self.snapshot = HomeSnapshot(root=str(self.home.root), daemon=DaemonState(alive=False))
        self.loads = 0  # snapshots applied so far (tests wait on these counters)
        self.details = 0  # selected-run details applied so far
        self.chart_buckets = 0  # the resolution of the curves shown (the charts' width once they are laid out)
        self.compare: list[str] = []
        self.tracker = AckTracker()
        self._telemetry = telemetry
        self._homes = HomeWatcher(self.home)
        self._runs = RunWatcher()
        self._selected: str | None = None
        self._restart_log = False
        # The UI thread hands the reader thread what to read as immutable requests: nothing else is shared.
        self._requests: queue.SimpleQueue[ReadRequest] = queue.SimpleQueue()
        self._system_shown = threading.Event()
        self._last_error: str | None = None

    # --- layout ---------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        # the panels are kept as attributes: updates never query the DOM (a dialog may be on top, or the app
        # may be closing when a last message arrives)
        self.header, self.banner = HomeHeader(id="header"), DaemonBanner(id="banner")
        self.needs = NeedsStrip(id="needs")
        self.runs, self.tabs = RunsTable(id="runs"), TabbedContent(initial="log")
        self.log_panel, self.charts = LogPanel(id="log-panel"), ChartsPanel(id="charts-panel")
        self.evolution, self.system = EvolutionPanel(id="evolution-panel"), SystemPanel(id="system-panel")
        self.models = ModelsTable(id="models-table")
        # markup off: the status line shows the daemon's messages, which quote run ids and files (`[/` would crash)
        self.status = Static(" reading the home…", id="status", markup=False)
        self.try_panel = TryPanel(str(self.home.root), id="try-panel")
        yield self.header
        yield self.banner
        yield self.needs
        yield self.runs
        with self.tabs:
            with TabPane("Log", id="log"):
                yield self.log_panel
            with TabPane("Charts", id="charts"):
                yield self.charts
            with TabPane("Evolution", id="evolution"):
                yield self.evolution
            with TabPane("System", id="system"):
                with VerticalScroll():
                    yield self.system
            with TabPane("Models", id="models"):
                yield self.models
            with TabPane("Try", id="try"):
                yield self.try_panel
        yield self.status
        yield Footer(show_command_palette=False, compact=True)

    def on_mount(self) -> None:
        # the tab strip takes no focus: the number keys switch tabs, and Tab goes straight from the runs to the panel
        self.tabs.query_one(Tabs).can_focus = False
        self.runs.focus()
        self.set_interval(self.refresh_s, self.refresh_data)
        self._reader()
        self.refresh_data()
        self._sample_telemetry()

    # --- reading (thread workers) ---------------------------------------------------------------------
    def refresh_data(self) -> None:
        """Ask the reader thread for a fresh read of the home (the timer does this once a second)."""
        self._requests.put(ReadRequest(self._selected, tuple(self.compare), self.charts.buckets, self._restart_log))
        self._restart_log = False

    @work(thread=True, group="load")
    def _reader(self) -> None:
        """One long-lived thread does every read, so the incremental file readers are never shared."""
        worker = get_current_worker()
        while not worker.is_cancelled:
            try:
                request = self._requests.get(timeout=0.5)  # wakes twice a second at most to notice cancellation
            except queue.Empty:
                continue
            while True:  # only the newest request matters; a log restart asked on the way is kept
                try:
                    newer = self._requests.get_nowait()
                except queue.Empty:
                    break
                request = replace(newer, restart_log=newer.restart_log or request.restart_log)
            self._read(request)

    def _read(self, request: ReadRequest) -> None:
        """Read the home, then the selected run; a run file that cannot be read costs only its panel."""
        try:
            snap = self._homes.snapshot()
        except (OSError, ValueError) as e:  # one unreadable file must not close the dashboard
            self.post_message(ReadFailed(f"{type(e).__name__}: {e}"))
            return
        detail, buckets = None, request.buckets
        run = snap.run(request.selected)
        if run is not None:
            if request.restart_log:
                self._runs.restart_log()
            compare = tuple(r for r in (snap.run(i) for i in request.compare) if r is not None)
            try:
                detail = self._runs.detail(run, buckets, compare)
            except (OSError, ValueError) as e:
                self.post_message(ReadFailed(f"run {run.id}: {type(e).__name__}: {e}"))
        self.post_message(Loaded(snap, detail, buckets))

    @work(thread=True, group="telemetry")
    def _sample_telemetry(self) -> None:
        """Samples once a second while the System panel is shown, else every HEADER_SAMPLE_S (the header's GPU
        summary)."""
        worker = get_current_worker()
        source = self._telemetry or LiveTelemetry(self.home.root)
        try:
            last = None
            while not worker.is_cancelled:
                every = self.refresh_s if self._system_shown.is_set() else max(self.refresh_s, HEADER_SAMPLE_S)
                if last is None or time.monotonic() - last >= every - 0.01:
                    last = time.monotonic()
                    self.post_message(Sampled(source.sample()))
                worker.cancelled_event.wait(self.refresh_s)
        finally:
            source.close()

    @work(thread=True, group="search", exclusive=True)
    def _search(self, path: Path, needle: str) -> None:
        self.post_message(Searched(grep_file(path, needle)))

    # --- applying what was read -----------------------------------------------------------------------
    def on_loaded(self, message: Loaded) -> None:
        snap = message.snapshot
        changed = snap != self.snapshot or not self.loads
        self.snapshot = snap
        self.loads += 1
        if changed:  # an idle home costs no redraw
            self.header.show(snap)
            self.banner.show(snap)
            self.needs.show(snap)
            self.runs.show(snap)
            self.models.show(snap)
            self.system.show_runs(snap.runs)
        selected = snap.run(self._selected)
        self.try_panel.show(snap, selected.name if selected else None)
        if changed or self.tracker.pending:
            self._acknowledge(snap)
        detail = message.detail
        if detail is not None and detail.run_id == self._selected:
            self.log_panel.describe(run_note(snap.run(detail.run_id), detail.progress, snap.held))
            self.log_panel.show_update(detail.log)
            self.charts.show(detail.charts, detail.compare)
            self.chart_buckets = message.buckets
            self.evolution.show(detail.evolution)
            self.details += 1

    def on_read_failed(self, message: ReadFailed) -> None:
        if message.error != self._last_error:  # once per distinct problem, not every second
            self._last_error = message.error
            self.notify(f"could not read the home: {message.error} (retrying every second)", severity="error",
                        markup=False)

    def on_sampled(self, message: Sampled) -> None:
        self.header.show_gpus(message.telemetry)
        self.system.show(message.telemetry)

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "system":
            self._system_shown.set()
        else:
            self._system_shown.clear()
        # on Models, ↑↓ pick the version `a` and `d` act on, on Evolution the probe Enter opens; leaving them,
        # they pick runs again
        if event.pane.id == "models":
            self.models.focus()
        elif event.pane.id == "evolution":
            self.evolution.table.focus()
        elif event.pane.id == "try":
            self.try_panel.prompt_input.focus()  # typing goes to the prompt; Esc or Tab leave it
        elif self.focused in (self.models, self.evolution.table):
            self.runs.focus()

    def on_try_panel_left(self, _: TryPanel.Left) -> None:
        self.runs.focus()

    def on_searched(self, message: Searched) -> None:
        self.log_panel.show_search(message.result)

    def _acknowledge(self, snap: HomeSnapshot) -> None:
        """Toast the daemon's answers to our requests; keep the latest control event on the status line."""
        acks, late = self.tracker.answers(snap)
        for e in acks:
            self.notify(e.message, title=f"{e.command}: {e.status}",
                        severity="error" if e.status == "rejected" else "information", markup=False)
        for req in late if snap.daemon.alive else ():  # no daemon: the toast at the request said so already
            self.notify(f"{req.describe}: not acknowledged yet (is the daemon busy? see overnight.log)",
                        severity="warning", markup=False)
        status = self.status
        if self.tracker.pending:
            status.update(f" waiting for the daemon to acknowledge: {self.tracker.pending[-1].request.describe}")
        elif snap.events:
            status.update(" " + _ack_line(snap.events[0]))
        else:
            status.update(" ↑↓ run · 1-6 tabs · r requeue · c compare · Tab focus · ? all keys")

    # --- selection ------------------------------------------------------------------------------------
    @on(RunsTable.Selected)
    def _run_selected(self, event: RunsTable.Selected) -> None:
        self._selected = event.run_id
        self._restart_log = True
        self.log_panel.set_run(event.run_id)
        if event.run_id is None:  # no detail comes for no run: the panels say so themselves
            self.evolution.show_no_run()
        self.refresh_data()

    @on(ChartsPanel.Resized)
    def _charts_resized(self) -> None:
        self.refresh_data()  # curves are downsampled to the plot's width: read them again at the new one

    @on(LogPanel.TailWanted)
    def _tail_wanted(self) -> None:
        self._restart_log = True
        self.runs.focus()  # after a search, ↑↓ pick runs again (and keys act on the run the user sees selected)
        self.refresh_data()

    @on(LogPanel.SearchRequested)
    def _search_requested(self, event: LogPanel.SearchRequested) -> None:
        run = self.snapshot.run(self._selected)
        if run is not None:
            self._search(RunFolder(run.run_dir).console, event.needle)
        else:
            self.log_panel.no_run_to_search()
            self.notify("no run selected: nothing to search", severity="warning", markup=False)

    # --- keys -----------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """While a dialog is open, only it answers keys (no stop from behind a confirmation); while a text box has
        the focus, the keys are letters. Either way the key line shows none of the dashboard's keys (q closes a
        dialog, and types a q in a text box)."""
        if action == "quit":
            return True
        return len(self.screen_stack) == 1 and not isinstance(self.focused, Input)

    def action_leave(self) -> None:
        self.exit()

    @property
    def acted_on(self) -> RunRow | None:
        """The run p, s and k act on: the highlighted one, or on a folded sweep its running (else next queued) run."""
        return self.snapshot.run(self.runs.acted_on or self._selected)

    @property
    def selected_run(self) -> RunRow | None:
        """The run highlighted in the runs table (under its cursor now, even before the highlight was handled)."""
        return self.snapshot.run(self.runs.run_at_cursor or self._selected)

    def _request(self, make: Callable[[], Request]) -> None:
        try:
            request = make()
        except NotApplicable as e:
            self.notify(str(e), severity="warning", markup=False)
            return
        if request.confirm:
            self.push_screen(ConfirmScreen(request.confirm), lambda yes: self._send(request) if yes else None)
        else:
            self._send(request)

    def _send(self, request: Request) -> None:
        try:
            self.home.create()
            ticket = actions.send(self.home, request)
        except OSError as e:
            self.notify(f"could not write control/{request.kind}: {e}", severity="error", markup=False)
            return
        self.tracker.add(request, ticket)
        if self.snapshot.daemon.alive:
            self.notify(f"{request.describe}: wrote control/{request.kind}", markup=False)
        else:
            self.notify(f"{request.describe}: wrote control/{request.kind}, but no daemon is running; it applies "
                        f"this when one starts "
                        f"(overnight daemon --home {self.home.root})", severity="warning", markup=False)
        self.refresh_data()

    def action_pause(self) -> None:
        """Pause the selected run, or resume it when it is paused; on a queue held by control/stop, lift the hold."""
        self._request(lambda: actions.pause_or_resume(self.snapshot, self.acted_on, self.tracker.requests))

    def action_stop(self) -> None:
        """Stop the selected run (after confirmation)."""
        self._request(lambda: actions.stop(self.acted_on))

    def action_skip(self) -> None:
        """Skip the selected run (after confirmation)."""
        self._request(lambda: actions.skip(self.acted_on))

    def action_priority(self, delta: int) -> None:
        """Raise or lower the selected run's priority by one; on a folded sweep, its live runs' together."""
        group, asked = self.runs.selected_group, self.tracker.asked_priorities()
        self._request(lambda: actions.group_priority(group.group_id, group.runs, delta, asked) if group else
                      actions.priority(self.selected_run, delta, asked))

    def action_requeue(self) -> None:
        """Queue a stopped, skipped or failed run again."""
        self._request(lambda: actions.requeue(self.selected_run))

    def action_activate(self) -> None:
        """Make the selected model version the active one (after confirmation)."""
        self._request(lambda: actions.activate(self._model()))

    def action_delete(self) -> None:
        """Move the selected model version to the trash (after confirmation)."""
        self._request(lambda: actions.delete(self._model()))

    def _model(self) -> ModelRow | None:
        """The version highlighted in Models, only while Models is shown (a key never acts on an unseen row)."""
        return self.models.selected if self.tabs.active == "models" else None

    def action_follow(self) -> None:
        """Freeze or follow the log."""
        self.tabs.active = "log"
        self.log_panel.toggle_follow()

    def action_search(self) -> None:
        """Search the selected run's whole console.log."""
        self.tabs.active = "log"
        self.log_panel.open_search()

    def action_compare(self) -> None:
        """Add the selected run's loss curve to the loss chart (or take it off)."""
        run = self.selected_run
        if run is None:
            return
        if run.id in self.compare:
            self.compare.remove(run.id)
            self.notify(f"{run.id} unpinned from the loss chart", markup=False)
        else:
            self.compare.append(run.id)
            self.notify(f"{run.id} pinned: select another run to see both loss curves (c again: unpin)",
                        markup=False)
        self.tabs.active = "charts"
        self.refresh_data()

    def action_help(self) -> None:
        """Show the list of every key."""
        self.push_screen(KeysScreen())

    def action_rejected(self) -> None:
        """List the drops rejected in the last 24 h; Enter on one shows its whole error file."""
        self.push_screen(RejectedScreen(self.snapshot.rejected))

    def action_tab(self, name: str) -> None:
        """Show one of the panels."""
        self.tabs.active = name


def no_terminal() -> str | None:
    """Why the dashboard cannot be drawn here (one line with the fix), None when it can: without a terminal
    (`ssh HOST overnight tui` without -t) it would run forever writing escape codes nobody sees. A driver chosen
    for it (textual-serve's web driver: the browser dashboard of overnight serve) talks over pipes by design."""
    if os.environ.get("TEXTUAL_DRIVER"):
        return None
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return ("overnight tui needs a terminal (stdin and stdout are not one): over SSH use ssh -t HOST overnight "
                "tui, or overnight status for a plain-text view")
    if os.environ.get("TERM", "") in ("dumb", "unknown"):
        return ("overnight tui needs a terminal that can draw a full screen (TERM=dumb): set TERM (e.g. "
                "TERM=xterm-256color), or use overnight status for a plain-text view")
    return None


def run(home: Path, headless: bool = False) -> int:
    """Open the dashboard on `home` until the user quits; the exit status (1 when the app crashed)."""
    app = OvernightApp(Path(home))
    app.run(headless=headless)
    return app.return_code or 0
