"""Registered model versions, the active one of each name marked."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import DataTable

from daemon.render import fmt_loss
from tui.data import HomeSnapshot, ModelRow
from tui.fmt import short_time


def _row(m: ModelRow) -> list:
    mark = Text("●", "bold green") if m.active else Text("")
    state = Text("in trash", "dim") if m.deleted else Text("active", "green") if m.active else Text("")
    base = Path(m.base_model).name if m.base_model else "-"
    return [mark, Text(m.name, "bold" if m.active else ""), f"v{m.version}", state, fmt_loss(m.final_loss),
            fmt_loss(m.eval_loss), short_time(m.created), base, m.run_id]


class ModelsTable(DataTable):
    """One row per version: ● marks the active version of its name."""

    DEFAULT_CSS = """
    ModelsTable { height: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", **kwargs)  # type: ignore[arg-type]
        self._models: tuple[ModelRow, ...] | None = None

    def on_mount(self) -> None:
        for label in ("", "name", "ver", "state", "loss", "eval", "created", "base", "run"):
            self.add_column(label)

    def show(self, snap: HomeSnapshot) -> None:
        """Show the snapshot's model versions (a no-op when unchanged)."""
        if snap.models == self._models:
            return
        self._models = snap.models
        self.clear()
        for column in self.columns.values():  # widths follow the rows shown now, not the placeholder's
            column.content_width = column.label.cell_len
        for m in snap.models:
            self.add_row(*_row(m), key=f"{m.name}:{m.version}")
        if not snap.models:
            self.add_row("", Text("no models yet: a completed run registers one", "dim"), *[""] * 7, key="none")
