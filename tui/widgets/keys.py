"""`?`: every key of the dashboard on one screen (fits 80×24, unlike Textual's generic help panel)."""
from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = (
    ("↑ ↓", "select a run (Home, End: the first, the last)"),
    ("Enter", "on a sweep's row ▸: unfold its runs, ★ = the best (again: fold)"),
    ("1 … 6", "Log · Charts · Evolution · System · Models · Try"),
    ("p", "pause the selected run, or resume it; a queue held by control/stop: resume it"),
    ("s", "stop it: checkpoint, resumable with r (asks first)"),
    ("k", "skip it: checkpoint, the queue goes on (asks first)"),
    ("+  -", "raise / lower its priority (may preempt); on a sweep's row: all of it"),
    ("r", "queue a stopped, skipped or failed run again"),
    ("a", "in Models: activate the selected version, a roll back (asks first)"),
    ("d", "in Models: move the selected version to trash/ (asks first)"),
    ("f", "freeze / follow the log"),
    ("/", "search the whole log (Esc: back to the tail)"),
    ("c", "pin the run's loss curve onto other runs' charts (again: unpin)"),
    ("Enter", "in Evolution (↑↓ pick a probe): its answers over time"),
    ("e", "rejected drops of the last 24 h, Enter: the whole error"),
    ("Tab", "move between the runs table and the panel"),
    ("q", "quit (the daemon and its runs go on)"),
)


class KeysScreen(ModalScreen[None]):
    """The list of keys; any of Esc, ? or q closes it."""

    DEFAULT_CSS = """
    KeysScreen { align: center middle; }
    KeysScreen > VerticalScroll { width: 78; max-width: 100%; height: auto; max-height: 100%;
                                  border: round $accent; background: $surface; padding: 0 1; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key, what in KEYS:
            table.add_row(key, what)
        with VerticalScroll():  # a short terminal (60×20) scrolls the list (↑↓, PgUp, PgDn) instead of cutting it
            yield Static(table)
            yield Static("Esc, ? or q: close", classes="dim")

    def action_close(self) -> None:
        self.dismiss(None)
