"""Registered model versions: the active one of each name marked, what each continued from; `a` activates the
selected version, `d` moves it to the trash (tui/actions.py)."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import DataTable

from daemon.core.render import fmt_forgetting, fmt_loss
from tui.homedata import HomeSnapshot, ModelRow
from tui.fmt import short_time
from tui.widgets.runs import clip_id

WIDE = ("", "name", "ver", "state", "loss", "eval", "created", "base", "continues from", "run")
# from WIDEST_AT columns on, the eval report's ROUGE-L and forgetting score too (a regressed version's state says so
# at any width)
WIDEST = ("", "name", "ver", "state", "loss", "eval", "rougeL", "forget", "created", "base", "continues from", "run")
WIDEST_AT = 150
# below WIDE_AT columns: what tells versions apart and which to activate; the run id last, cut by clip_id
NARROW = ("", "name", "ver", "state", "loss", "continues from", "run")
WIDE_AT = 110
NARROW_HEADERS = {"continues from": "from"}  # "continues from" would be cut at 80 columns
CUT = ("name", "continues from", "base")  # a long name (and so its lineage) gives way: loss and run stay in view


def lineage(m: ModelRow) -> str:
    """The version it continued from: `alpaca-small:1`, an adapter folder's name, or nothing (a fresh start)."""
    if not m.parent:
        return ""
    name, _, version = m.parent.rpartition(":")
    return m.parent if name and version.isdigit() else Path(m.parent).name


def _row(m: ModelRow) -> dict[str, Text]:
    mark = Text("●", "bold green") if m.active else Text("")
    state = (Text("in trash", "dim") if m.deleted else Text("active", "green") if m.active else
             Text("regressed", "bold red") if m.regressed else Text(""))
    base = Path(m.base_model).name if m.base_model else "-"
    return {"": mark, "name": Text(m.name, "bold" if m.active else ""), "ver": Text(f"v{m.version}"),
            "state": state, "loss": Text(fmt_loss(m.final_loss)), "eval": Text(fmt_loss(m.eval_loss)),
            "rougeL": Text("-" if m.rouge_l is None else f"{m.rouge_l:.2f}"),
            "forget": Text("-" if m.forgetting is None else fmt_forgetting(m.forgetting), "red" if m.regressed else ""),
            "created": Text(short_time(m.created)), "base": Text(base), "continues from": Text(lineage(m)),
            "run": Text(m.run_id)}


def _cut(row: dict[str, Text], width: int) -> dict[str, Text]:
    """The row with its CUT cells in at most `width` cells each (`…` at the end)."""
    for key in CUT:
        if row[key].cell_len > width:
            row[key].truncate(width - 1)
            row[key].append("…")
    return row


class ModelsTable(DataTable):
    """One row per version, keyed `NAME:VERSION`: ● marks the active version of its name."""

    DEFAULT_CSS = """
    ModelsTable { height: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", **kwargs)  # type: ignore[arg-type]
        self._models: tuple[ModelRow, ...] | None = None

    def on_resize(self) -> None:
        if self._models is not None:
            self._fill(self._models)  # the run column gets the room the new width gives it

    @property
    def selected(self) -> ModelRow | None:
        """The version under the cursor."""
        if not self._models or not self.row_count:
            return None
        key = self.coordinate_to_cell_key((self.cursor_row, 0)).row_key.value
        return next((m for m in self._models if f"{m.name}:{m.version}" == key), None)

    def show(self, snap: HomeSnapshot) -> None:
        """Show the snapshot's model versions (a no-op when unchanged), the cursor staying on its version."""
        if snap.models == self._models:
            return
        self._fill(snap.models)

    def _fill(self, models: tuple[ModelRow, ...]) -> None:
        kept = self.selected
        self._models = models
        width = self.size.width or 80
        labels = WIDEST if width >= WIDEST_AT else WIDE if width >= WIDE_AT else NARROW
        headers = NARROW_HEADERS if labels is NARROW else {}
        self.clear(columns=True)  # widths follow the rows shown now
        for label in labels:
            self.add_column(headers.get(label, label), key=label or "mark")
        rows = [_cut(_row(m), max(10, width // 5)) for m in models]
        # a run id is cut by the same rule as in the runs table, never by the terminal's edge (`support-`)
        others = sum(max([len(headers.get(label, label))] + [r[label].cell_len for r in rows]) + 2 * self.cell_padding
                     for label in labels[:-1])
        room = max(12, width - others - 2 * self.cell_padding - 2)  # 2: the scrollbar
        for m, row in zip(models, rows):
            row["run"] = Text(clip_id(m.run_id, room))
            self.add_row(*(row[label] for label in labels), key=f"{m.name}:{m.version}")
        if not models:
            self.add_row("", Text("no models yet: a completed run registers one", "dim"), *[""] * (len(labels) - 2),
                         key="none")
        elif kept is not None:
            keys = [f"{m.name}:{m.version}" for m in models]
            key = f"{kept.name}:{kept.version}"
            if key in keys:
                self.move_cursor(row=keys.index(key), animate=False)

