"""The runs table: active and queued runs (in queue order) with progress, then the history of finished runs."""
from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable

from tui.data import HomeSnapshot, RunRow
from tui.fmt import fmt_duration, fmt_loss, progress_bar, short_time

STATE_STYLE = {"training": "bold green", "preparing": "green", "paused": "bold yellow", "queued": "cyan",
               "completed": "blue", "failed": "bold red", "stopped": "magenta", "skipped": "magenta"}
BAR = 8


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int


_NARROW = [Column("state", "state", 9), Column("progress", "progress", BAR + 10), Column("loss", "loss", 6),
           Column("eta", "ETA", 6), Column("prio", "pri", 3)]
_WIDE = [Column("state", "state", 9), Column("progress", "progress", BAR + 12), Column("loss", "loss", 7),
         Column("eval", "eval", 7), Column("speed", "tok/s", 7), Column("eta", "ETA", 6), Column("prio", "pri", 3),
         Column("when", "when", 11)]


def clip_id(run_id: str, width: int) -> str:
    """Keep the name and the time of day of a long run id: `alpaca-sm…-031200`."""
    if len(run_id) <= width:
        return run_id
    tail = run_id[-7:] if width >= 16 else ""
    return run_id[: width - len(tail) - 1] + "…" + tail


def _steps(run: RunRow) -> str:
    if run.step is None:
        return ""
    return f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)


def _cell(run: RunRow, key: str) -> Text | str:
    if key == "state":
        return Text(run.state, STATE_STYLE.get(run.state, ""))
    if key == "progress":
        if run.state == "queued" and run.step is None:
            return ""
        return Text.assemble((progress_bar(run.fraction, BAR), STATE_STYLE.get(run.state, "")), " ", _steps(run))
    if key == "loss":
        return fmt_loss(run.loss)
    if key == "eval":
        return fmt_loss(run.eval_loss)
    if key == "speed":
        return "-" if run.tokens_per_s is None else f"{run.tokens_per_s:,.0f}"
    if key == "eta":
        return fmt_duration(run.eta_s) if run.active else ""
    if key == "prio":
        return str(run.priority)
    if key == "when":
        return short_time(run.finished or run.started or run.created)
    raise KeyError(key)


class RunsTable(DataTable):
    """One row per run, keyed by run id; the selection follows the run, not the row number."""

    DEFAULT_CSS = """
    RunsTable { height: 1fr; }
    """

    class Selected(Message):
        """The highlighted run changed."""

        def __init__(self, run_id: str | None) -> None:
            super().__init__()
            self.run_id = run_id

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]
        self._rows: tuple[RunRow, ...] | None = None
        self._layout: list[Column] = []
        self._id_width = 20
        self.selected: str | None = None

    def _columns_for(self, width: int) -> list[Column]:
        return _WIDE if width >= 110 else _NARROW

    def _build_columns(self) -> None:
        width = self.size.width or 80
        layout = self._columns_for(width)
        fixed = sum(c.width + 2 * self.cell_padding for c in layout)
        self._id_width = max(12, width - fixed - 2 * self.cell_padding - 2)  # 2: the vertical scrollbar
        self.clear(columns=True)
        self.add_column("run", key="run", width=self._id_width)
        for c in layout:
            self.add_column(c.label, key=c.key, width=c.width)
        self._layout = layout
        self._rows = None

    def on_resize(self) -> None:
        rows = self._rows
        self._build_columns()
        if rows is not None:
            self._fill(rows)

    def show(self, snap: HomeSnapshot) -> None:
        """Show the snapshot's runs (a no-op when nothing changed), keeping the selected run selected."""
        if not self._layout:
            self._build_columns()
        if snap.runs == self._rows:
            return
        if self._rows is not None and [r.id for r in snap.runs] == [r.id for r in self._rows]:
            self._update(snap.runs)  # same runs in the same order: change cells only, the cursor stays put
        else:
            self._fill(snap.runs)

    def _update(self, runs: tuple[RunRow, ...]) -> None:
        assert self._rows is not None
        for old, new in zip(self._rows, runs):
            if old != new:
                for c in self._layout:
                    self.update_cell(new.id, c.key, _cell(new, c.key))
        self._rows = runs

    def _fill(self, runs: tuple[RunRow, ...]) -> None:
        keep = self.selected
        self.clear()
        for run in runs:
            self.add_row(clip_id(run.id, self._id_width), *[_cell(run, c.key) for c in self._layout], key=run.id)
        self._rows = runs
        ids = [r.id for r in runs]
        if keep not in ids:
            active = next((r.id for r in runs if r.active), None)
            keep = active or (ids[0] if ids else None)
        if keep is not None:
            self.move_cursor(row=ids.index(keep), animate=False)
        self._select(keep)

    def _select(self, run_id: str | None) -> None:
        if run_id != self.selected:
            self.selected = run_id
            self.post_message(self.Selected(run_id))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.cursor_row != self.cursor_row:
            return  # a stale event from before a refill (the cursor has moved on to the kept run)
        if event.row_key is not None and event.row_key.value is not None:
            self._select(event.row_key.value)
