"""`e`: the drops the intake rejected in the last 24 h (as the "needs you" strip counts them), each with its error;
Enter shows the whole NAME.error.txt, which says what to fix and how to drop the file again."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from daemon.core.morning import DEFAULT_SINCE_H, RejectedDrop

MAX_ERROR_CHARS = 64 * 1024  # an error file is a few lines; a huge one is not read whole into the UI


def error_text(drop: RejectedDrop) -> str:
    """The whole .error.txt, or why it cannot be shown (moved or deleted since the list was read)."""
    try:
        with open(drop.error_file, encoding="utf-8", errors="replace") as f:
            return f.read(MAX_ERROR_CHARS)
    except OSError as e:
        return f"cannot read {drop.error_file}: {e.strerror or e}"


def _without_file(drop: RejectedDrop) -> str:
    """The error without the file name it starts with (the file column has it), and another file of the drop (its
    sidecar) by its name, not its path: room for the reason."""
    error = drop.error.removeprefix(f"{drop.file}:").strip() or drop.error
    head, sep, rest = error.partition(": ")
    if sep and head.startswith("/") and " " not in head:
        return f"{Path(head).name}: {rest}"
    return error


class RejectedScreen(ModalScreen[None]):
    """The rejected drops, newest first: when, the file, the first line of its error. Esc, e or q closes."""

    DEFAULT_CSS = """
    RejectedScreen { align: center middle; }
    RejectedScreen > Vertical { width: 90%; height: 80%; border: thick $error; background: $surface; padding: 0 1; }
    RejectedScreen #rejected-title { height: 1; }
    RejectedScreen DataTable { height: 1fr; }
    RejectedScreen #rejected-hint { height: 1; color: $text-muted; }
    """
    BINDINGS = [Binding("escape,e,q", "dismiss", "Close")]

    def __init__(self, drops: tuple[RejectedDrop, ...] | list[RejectedDrop]) -> None:
        super().__init__()
        self.drops = list(drops)

    def compose(self) -> ComposeResult:
        n = len(self.drops)
        title = (f"{n} drop{'s' if n != 1 else ''} rejected in the last {DEFAULT_SINCE_H:g} h" if n else
                 f"no drop rejected in the last {DEFAULT_SINCE_H:g} h")
        with Vertical():
            yield Static(Text(title, "bold"), id="rejected-title")
            table: DataTable = DataTable(cursor_type="row", id="rejected-table")
            table.add_column("time", key="time", width=11)
            table.add_column("file", key="file", width=24)
            table.add_column("error", key="error")
            for i, d in enumerate(self.drops):
                table.add_row(Text(d.time[5:16].replace("T", " ")), Text(d.file, overflow="ellipsis", no_wrap=True),
                              Text(_without_file(d), overflow="ellipsis", no_wrap=True), key=str(i))
            yield table
            yield Static("Enter: the whole error and its fix · Esc: close", id="rejected-hint")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.app.push_screen(RejectedErrorScreen(self.drops[int(event.row_key.value)]))


class RejectedErrorScreen(ModalScreen[None]):
    """One drop's whole .error.txt; Esc or q goes back to the list."""

    DEFAULT_CSS = """
    RejectedErrorScreen { align: center middle; }
    RejectedErrorScreen VerticalScroll { width: 90%; height: 80%; border: thick $error; background: $surface;
                                         padding: 0 1; }
    """
    BINDINGS = [Binding("escape,q", "dismiss", "Back")]

    def __init__(self, drop: RejectedDrop) -> None:
        super().__init__()
        self.drop = drop

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text(Path(self.drop.error_file).name, "bold"), id="error-title")
            yield Static(Text(error_text(self.drop)), id="error-text")
