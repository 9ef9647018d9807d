"""The runs table: active and queued runs (in queue order) with progress, then the history of finished runs.

The runs of a group (a sweep, or a base_model list) fold into one row, placed where the first of them would be;
Enter on it unfolds its runs beneath it in grid order, the best completed one marked ★ (Enter again folds).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from daemon.core.render import fmt_duration, fmt_gpu_set, fmt_job, fmt_loss, fmt_priority, fmt_rate
from daemon.core.states import State
from tui.homedata import HomeSnapshot, RunRow
from tui.fmt import progress_bar, short_time

AT_RUNG = "at rung"  # an ASHA trial checkpointed at its rung, waiting for the group's other trials
HELD = "held"  # a queued run that cannot start (daemon.core.morning.held: control/stop, a full disk, a broken toml)
STATE_STYLE = {State.TRAINING: "bold green", State.PREPARING: "green", State.PAUSED: "bold yellow",
               State.QUEUED: "cyan", State.COMPLETED: "blue", State.FAILED: "bold red", State.STOPPED: "magenta",
               State.SKIPPED: "magenta", State.PRUNED: "dim magenta", HELD: "bold yellow",
               AT_RUNG: "cyan"}
BAR = 8


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int


_STAMP = re.compile(r"-\d{8}-\d{6}(-\d+)?$")  # NAME-YYYYMMDD-HHMMSS[-N], as intake names runs
PRIO = 5  # -9999 .. 99999 as they are; beyond, shortened (daemon.core.render.fmt_priority)
# gpu: an active run's GPU set as NVML numbers them (`0`, `0,1`, `0-3`) or `CPU`; several runs may train at once;
# a Slurm run's job and node instead (`12@node3`)
_NARROW = [Column("state", "state", 9), Column("progress", "progress", BAR + 10), Column("loss", "loss", 6),
           Column("eta", "ETA", 6), Column("gpu", "GPU", 4), Column("prio", "pri", PRIO)]
_WIDE = [Column("state", "state", 9), Column("progress", "progress", BAR + 10), Column("loss", "loss", 7),
         Column("eval", "eval", 7), Column("speed", "tok/s", 7), Column("eta", "ETA", 6), Column("gpu", "GPU", 5),
         Column("prio", "pri", PRIO), Column("when", "when", 11)]


def clip_id(run_id: str, width: int) -> str:
    """A run id in `width` cells, for every place that shortens one (the runs table, its groups, the models table).

    The name is what a user recognises, so the cut falls inside the time stamp: its time of day (what tells two
    runs of one name apart) is kept from the right, the date gets what room is left (`summaries-…021000`,
    `poems-2026…-022000`); only a name that leaves no room for the stamp is cut itself (`…` at its end).
    """
    if cell_len(run_id) <= width:  # cells, not characters: a CJK character takes two
        return run_id
    m = _STAMP.search(run_id)
    name, stamp = (run_id[:m.start()], run_id[m.start():]) if m else (run_id, "")
    room = width - cell_len(name)
    if stamp and room >= 4:  # the stamp is ASCII: one cell a character
        head = max(1, room - 1 - len("-HHMMSS"))
        return name + stamp[:head] + "…" + stamp[len(stamp) - (room - 1 - head):]
    return head_cells(run_id, max(0, width - 1)) + "…"


def head_cells(text: str, width: int) -> str:
    """The longest start of `text` that fits in `width` terminal cells."""
    used = 0
    for i, ch in enumerate(text):
        used += cell_len(ch)
        if used > width:
            return text[:i]
    return text


def plain(value: Text | str) -> Text:
    """A cell as Text: DataTable reads a str cell as markup, and a run id or a node name with `[/` would crash it."""
    return value if isinstance(value, Text) else Text(value)


def _steps(run: RunRow) -> str:
    if run.step is None:
        return ""
    return f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)


GROUP_KEY = "group:"  # row keys of group rows; run rows are keyed by their run id


@dataclass(frozen=True)
class Group:
    """A group's runs (grid order) as one row."""

    group_id: str
    runs: tuple[RunRow, ...]
    expanded: bool

    @property
    def key(self) -> str:
        return GROUP_KEY + self.group_id

    @property
    def best(self) -> RunRow | None:
        return next((r for r in self.runs if r.best), None)

    @property
    def active(self) -> RunRow | None:
        """Its highest-priority active run (several of a sweep may train at once, each on its GPU set)."""
        return min((r for r in self.runs if r.active), key=lambda r: (-r.priority, r.seq or 0), default=None)

    @property
    def shown_run(self) -> RunRow:
        """The run the panels show while the group row is selected: the running one, else the best, else the
        next queued one, else the first."""
        return (self.active or self.best or next((r for r in self.runs if r.state == State.QUEUED), None)
                or self.runs[0])

    @property
    def live_run(self) -> RunRow:
        """The run p, s and k act on from the group's row: the running one, else the next queued one (a held one
        first: p resumes it), else the run the panels show."""
        queued = sorted((r for r in self.runs if r.state == State.QUEUED), key=lambda r: not r.paused)
        return self.active or next(iter(queued), None) or self.shown_run

    @property
    def held_by_pause(self) -> bool:
        """Nothing of it trains and every queued run of it is held by control/pause."""
        queued = [r for r in self.runs if r.state == State.QUEUED]
        return not self.active and bool(queued) and all(r.paused for r in queued)

    @property
    def state(self) -> str:
        if self.active:
            return self.active.state
        if any(r.state == State.QUEUED for r in self.runs):
            return State.QUEUED
        return State.COMPLETED if all(r.state == State.COMPLETED for r in self.runs) else "ended"


@dataclass(frozen=True)
class Item:
    """One row of the table: a run (`child`: shown under its unfolded group) or a group."""

    key: str
    run: RunRow | None = None
    group: Group | None = None
    child: bool = False


def layout(runs: tuple[RunRow, ...], expanded: frozenset[str] | set[str]) -> tuple[Item, ...]:
    """The rows to show: each group of two runs or more folded into one row where its first run stands,
    followed by its runs (grid order) when it is unfolded."""
    sizes: dict[str, int] = {}
    for r in runs:
        if r.group_id:
            sizes[r.group_id] = sizes.get(r.group_id, 0) + 1
    out: list[Item] = []
    seen: set[str] = set()
    for r in runs:
        gid = r.group_id if r.group_id and sizes[r.group_id] > 1 else None
        if gid is None:
            out.append(Item(r.id, run=r))
            continue
        if gid in seen:
            continue
        seen.add(gid)
        members = tuple(sorted((m for m in runs if m.group_id == gid), key=lambda m: m.seq or 0))
        group = Group(gid, members, gid in expanded)
        out.append(Item(group.key, group=group))
        if group.expanded:
            out.extend(Item(m.id, run=m, child=True) for m in members)
    return tuple(out)


def child_label(run: RunRow, width: int) -> Text:
    """A run under its group: what its id adds to the group's (`lr3e-4-r16`), ★ on the best."""
    short = _STAMP.sub("", run.id)
    short = short[len(run.name) + 1:] if short.startswith(run.name + "-") and len(short) > len(run.name) + 1 \
        else run.id
    mark = Text("★ ", "bold yellow") if run.best else Text("  ")
    return Text.assemble("  ", mark, clip_id(short, max(4, width - 4)))


def rung_counts(group: Group) -> str:
    """An ASHA sweep's trials that reached each rung, then those that trained to the end: ` 16→5→1`; '' else."""
    deepest = max((r.rungs for r in group.runs), default=0)
    if not deepest:
        return ""
    reached = [sum(r.rungs >= k for r in group.runs) for k in range(1, deepest + 1)]
    return " " + "→".join(map(str, reached + [sum(r.state == State.COMPLETED for r in group.runs)]))


def group_label(group: Group, width: int) -> Text:
    """`▸ support-20261128-101350 ×4`, or `▸ support ×4` where the group id does not fit; an ASHA sweep adds its
    trials at each rung (`×16 16→5→1`)."""
    count = f" ×{len(group.runs)}{rung_counts(group)}"
    arrow = "▾ " if group.expanded else "▸ "
    room = max(4, width - 2 - len(count))
    name = group.group_id if cell_len(group.group_id) <= room else clip_id(group.runs[0].name, room)
    return Text.assemble((arrow, "bold"), (name, "bold"), (count, "dim"))


def shown_state(state: str, held: str | None, waiting: bool = False, paused: bool = False) -> str:
    """The state a row says: `held` for a queued run while something holds the queue or control/pause names it, as
    `overnight status` says; `at rung` for an ASHA trial waiting at its rung."""
    if state == State.QUEUED and waiting:
        return AT_RUNG
    return HELD if (held or paused) and state == State.QUEUED else state


def _group_cell(group: Group, key: str, held: str | None = None) -> Text | str:
    lead = group.best or group.active
    if key == "state":
        state = shown_state(group.state, held, paused=group.held_by_pause)
        return Text(state, STATE_STYLE.get(state, ""))
    if key == "progress":
        ended = sum(r.finished_state for r in group.runs)
        style = STATE_STYLE.get(group.state, "")
        return Text.assemble((progress_bar(ended / len(group.runs), BAR), style), f" {ended}/{len(group.runs)}")
    if key in ("loss", "eval"):
        return _cell(lead, key) if lead else "-"
    if key == "speed":
        run = group.active or group.best
        return _cell(run, key) if run else "-"
    if key == "eta":
        return _cell(group.active, key) if group.active else ""
    if key == "gpu":
        active = [r for r in group.runs if r.active]
        return fmt_gpu_set(sorted({i for r in active for i in r.gpu_set or ()})) if active else ""
    if key == "prio":
        live = [r.priority for r in group.runs if not r.finished_state]
        return fmt_priority(max(live) if live else group.runs[0].priority, PRIO)
    if key == "when":
        return short_time(max((r.finished or r.started or r.created or "" for r in group.runs), default="") or None)
    raise KeyError(key)


def _cell(run: RunRow, key: str, held: str | None = None) -> Text | str:
    if key == "state":
        state = shown_state(run.state, held, run.waiting, run.paused)
        return Text(state, STATE_STYLE.get(state, ""))
    if key == "progress":
        if run.state == State.QUEUED and run.step is None:
            return ""
        return Text.assemble((progress_bar(run.fraction, BAR), STATE_STYLE.get(run.state, "")), " ", _steps(run))
    if key == "loss":
        return fmt_loss(run.loss)
    if key == "eval":
        return fmt_loss(run.eval_loss)
    if key == "speed":
        return fmt_rate(run.tokens_per_s)
    if key == "eta":
        return fmt_duration(run.eta_s) if run.active and run.state != State.PAUSED else ""
    if key == "gpu":
        if run.job_id:  # a Slurm job: where it runs (its GPUs are the cluster's, not this machine's)
            return fmt_job({"job_id": run.job_id, "node": run.node}) if run.active else ""
        return fmt_gpu_set(run.gpu_set) if run.active else ""
    if key == "prio":
        return fmt_priority(run.priority, PRIO)
    if key == "when":
        return short_time(run.finished or run.started or run.created)
    raise KeyError(key)


class RunsTable(DataTable):
    """One row per run (or per folded group), keyed by run id; the selection follows the run, not the row."""

    DEFAULT_CSS = """
    RunsTable { height: 1fr; }
    """
    # a row is a run: Home and End go to the first and the last run (DataTable's own move between columns)
    BINDINGS = [Binding("home", "scroll_top", "First run", show=False),
                Binding("end", "scroll_bottom", "Last run", show=False)]

    class Selected(Message):
        """The highlighted run changed."""

        def __init__(self, run_id: str | None) -> None:
            super().__init__()
            self.run_id = run_id

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]
        self._rows: tuple[RunRow, ...] | None = None
        self._items: tuple[Item, ...] = ()
        self._layout: list[Column] = []
        self._id_width = 20
        self.expanded: set[str] = set()  # unfolded groups
        self.cursor_key: str | None = None  # the row under the cursor: a run id or GROUP_KEY + group id
        self.selected: str | None = None
        self.held: str | None = None  # what holds the queue (HomeSnapshot.held)
        # Until the user picks a row, the selection follows the newest active run: a dashboard opened before its
        # run starts (the demo) moves to it when it starts, instead of staying on an older run.
        self.chosen = False

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
        self._items = ()

    def on_resize(self) -> None:
        rows = self._rows
        self._build_columns()
        if rows is not None:
            self._fill(rows)

    def show(self, snap: HomeSnapshot) -> None:
        """Show the snapshot's runs (a no-op when nothing changed), keeping the selected row selected."""
        if not self._layout:
            self._build_columns()
        if snap.runs == self._rows and snap.held == self.held:
            return
        held_changed, self.held = snap.held != self.held, snap.held
        items = layout(snap.runs, self.expanded)
        if self._items and not held_changed and [i.key for i in items] == [i.key for i in self._items]:
            self._update(snap.runs, items)  # same rows in the same order: change cells only, the cursor stays put
        else:
            self._fill(snap.runs)

    def _first(self, item: Item) -> Text:
        if item.group is not None:
            return group_label(item.group, self._id_width)
        assert item.run is not None
        return child_label(item.run, self._id_width) if item.child else Text(clip_id(item.run.id, self._id_width))

    def _cells(self, item: Item) -> list[Text]:
        if item.group is not None:
            return [plain(_group_cell(item.group, c.key, self.held)) for c in self._layout]
        assert item.run is not None
        return [plain(_cell(item.run, c.key, self.held)) for c in self._layout]

    def _update(self, runs: tuple[RunRow, ...], items: tuple[Item, ...]) -> None:
        for old, new in zip(self._items, items):
            if old != new:
                self.update_cell(new.key, "run", self._first(new))
                for c, value in zip(self._layout, self._cells(new)):
                    self.update_cell(new.key, c.key, value)
        self._rows, self._items = runs, items
        if not self.chosen:
            follow = self._newest_active(runs, items)
            if follow is not None and follow != self.cursor_key:
                self.cursor_key = follow
                self.move_cursor(row=[i.key for i in items].index(follow), animate=False)
        if self.cursor_key and self.cursor_key.startswith(GROUP_KEY):  # the group's shown run may have changed
            self._select(self._run_of(self.cursor_key))
        elif not self.chosen:
            self._select(self._run_of(self.cursor_key))

    def _fill(self, runs: tuple[RunRow, ...]) -> None:
        items = layout(runs, self.expanded)
        keys = [i.key for i in items]
        keep = None
        if self.chosen:
            keep = self.cursor_key if self.cursor_key in keys else self._row_of(items, self.selected)
        if keep is None:
            keep = self._newest_active(runs, items) or (keys[0] if keys else None)
        self.clear()
        for item in items:
            self.add_row(self._first(item), *self._cells(item), key=item.key)
        self._rows, self._items = runs, items
        self.cursor_key = keep
        if keep is not None:
            self.move_cursor(row=keys.index(keep), animate=False)
        self._select(self._run_of(keep))

    def _newest_active(self, runs: tuple[RunRow, ...], items: tuple[Item, ...]) -> str | None:
        """The row of the run that started last among those running (several may train at once)."""
        newest = max((r for r in runs if r.active), key=lambda r: (r.started or r.created or "", r.seq or 0), default=None)
        return self._row_of(items, newest.id) if newest else None

    @staticmethod
    def _row_of(items: tuple[Item, ...], run_id: str | None) -> str | None:
        """The row showing a run: its own, else its folded group's."""
        if run_id is None:
            return None
        for item in items:
            if item.key == run_id:
                return item.key
        return next((i.key for i in items if i.group and any(r.id == run_id for r in i.group.runs)), None)

    def _key_at_cursor(self) -> str | None:
        """The key of the row under the cursor now: a key typed right after ↑↓ acts on that row, before the
        highlight message (which moves `cursor_key`) has been handled."""
        if not self.row_count:
            return None
        return self.ordered_rows[min(self.cursor_row, self.row_count - 1)].key.value

    @property
    def run_at_cursor(self) -> str | None:
        """The run of the row under the cursor (a folded group's: the run it shows)."""
        return self._run_of(self._key_at_cursor())

    @property
    def acted_on(self) -> str | None:
        """The run a steering key acts on: the row's, or a folded group's live run (Group.live_run)."""
        group = self.selected_group
        return group.live_run.id if group is not None else self.run_at_cursor

    @property
    def selected_group(self) -> Group | None:
        """The group whose folded row is under the cursor (a key then acts on the whole group), else None."""
        key = self._key_at_cursor()
        item = next((i for i in self._items if i.key == key), None)
        return item.group if item is not None and item.group is not None else None

    def _run_of(self, key: str | None) -> str | None:
        item = next((i for i in self._items if i.key == key), None)
        if item is None:
            return None
        return item.group.shown_run.id if item.group else item.key

    def _select(self, run_id: str | None) -> None:
        if run_id != self.selected:
            self.selected = run_id
            self.post_message(self.Selected(run_id))

    def toggle(self, group_id: str) -> None:
        """Fold or unfold a group; the cursor stays on (or goes back to) the group's row."""
        self.expanded ^= {group_id}
        self.chosen = True
        self.cursor_key = GROUP_KEY + group_id
        if self._rows is not None:
            self._fill(self._rows)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a group row folds or unfolds it; on one of its runs, folds it back."""
        event.stop()
        key = event.row_key.value if event.row_key is not None else None
        item = next((i for i in self._items if i.key == key), None)
        if item is None:
            return
        if item.group is not None:
            self.toggle(item.group.group_id)
        elif item.child and item.run is not None and item.run.group_id:
            self.toggle(item.run.group_id)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.cursor_row != self.cursor_row:
            return  # a stale event from before a refill (the cursor has moved on to the kept run)
        if event.row_key is not None and event.row_key.value is not None:
            if event.row_key.value != self.cursor_key:  # the cursor went where the table did not put it
                self.chosen = True
            self.cursor_key = event.row_key.value
            self._select(self._run_of(self.cursor_key))
