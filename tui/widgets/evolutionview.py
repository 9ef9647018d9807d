"""The evolution view: probes × snapshots, learned/forgotten markers and steps, each probe's latest answer."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from daemon.core.evolution import EvolutionReport, ProbeHistory, answer_mark

STATUS = {"learned": ("✓ learned", "bold green"), "relearned": ("↻ relearned", "green"),
          "forgotten": ("✗ forgotten", "bold red"), "not learned": ("· not yet", "yellow")}
MARKS_MAX = 24  # snapshot marks shown per probe (the most recent ones)
NO_RUN = " no run selected: select one in the runs table to see its probes"


def matching_at(probe: ProbeHistory, steps: list[int]) -> list[bool]:
    """Whether the probe matched at each snapshot step, replayed from its learned/forgotten events."""
    out, state, events = [], False, list(probe.events)
    for step in steps:
        while events and events[0][1] <= step:
            state = events.pop(0)[0] == "learned"
        out.append(state)
    return out


def marks(probe: ProbeHistory, steps: list[int], width: int = MARKS_MAX) -> Text:
    """One cell per snapshot (the last `width`): █ matching the reference, · not."""
    text = Text()
    for ok in matching_at(probe, steps)[-width:]:
        text.append("█" if ok else "·", "green" if ok else "dim")
    return text


def status_cell(probe: ProbeHistory) -> Text:
    """`✓ learned 40`, `✗ forgotten 80`…: the status and the step it happened at."""
    label, style = STATUS[probe.status]
    step = probe.forgotten_at if probe.status == "forgotten" else (probe.events[-1][1] if probe.events else None)
    return Text.assemble((label, style), f" {step}" if step is not None else "")


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", "⏎ ")


class EvolutionPanel(Vertical):
    """A summary line and one row per probe; Enter opens the probe's answers over time."""

    DEFAULT_CSS = """
    EvolutionPanel { height: 1fr; }
    EvolutionPanel #evo-summary { height: 1; color: $text-muted; }
    EvolutionPanel DataTable { height: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.report: EvolutionReport | None = None
        self.no_run = True  # nothing selected (an empty home): the summary says so, not "when training starts"
        self.summary = Static(NO_RUN, id="evo-summary", markup=False)  # a reason may name files holding `[/`
        self.table: DataTable = DataTable(cursor_type="row", id="evo-table")

    def compose(self) -> ComposeResult:
        yield self.summary
        yield self.table

    def on_mount(self) -> None:
        table = self.table
        table.add_column("#", key="probe", width=3)
        table.add_column("status", key="status", width=17)  # "✗ forgotten 12345"
        table.add_column("snapshots", key="marks", width=min(MARKS_MAX, 16))
        table.add_column("latest answer", key="latest")

    def show(self, report: EvolutionReport | None) -> None:
        """Show a run's report (None: no evolution.jsonl yet); a no-op when unchanged."""
        if report is self.report and not self.no_run:
            return
        self.report, self.no_run = report, False
        summary, table = self.summary, self.table
        # a new snapshot refills the table: the cursor stays on the probe the user is on, so Enter opens that one
        keep = table.ordered_rows[min(table.cursor_row, table.row_count - 1)].key.value if table.row_count else None
        table.clear()
        reason = report.no_probes if report is not None else None
        summary.styles.height = "auto" if reason else 1  # the whole reason, wrapped, rather than cut at 80 columns
        if report is None or not report.probes:
            summary.update(f" {reason}" if reason else
                           " no evolution snapshots yet: the first one is taken when training starts")
            return
        lost = (("  ✗ lost since ", "bold red"), (f"{report.parent}: {len(report.lost)}", "bold red")) \
            if report.lost else ()
        summary.update(Text.assemble(" probes: ", (report.summary, "bold"), *lost, "  (Enter: answers over time)"))
        width = min(MARKS_MAX, max(len(report.snapshots), 9))
        table.columns["marks"].width = width  # type: ignore[index]
        for p in report.probes:
            latest = Text(_one_line(p.latest.generation) or "(empty)", "green" if p.learned_now else "",
                          no_wrap=True, overflow="ellipsis")
            table.add_row(str(p.probe), status_cell(p), marks(p, report.snapshots, width), latest, key=str(p.probe))
        for i, x in enumerate(report.lost):  # what the parent knew and this version lost: marked, below its probes
            was = Text.assemble((f"\"{x.get('answer') or ''}\"", "red"), f" (parent: \"{x.get('parent_answer')}\")  ",
                                (_one_line(str(x.get("prompt", ""))), "dim"), no_wrap=True, overflow="ellipsis")
            table.add_row("-", Text(f"✗ lost since {report.parent}", "bold red"), Text(""), was, key=f"lost-{i}")
        keys = [row.key.value for row in table.ordered_rows]
        if keep in keys:
            table.move_cursor(row=keys.index(keep), animate=False)

    def show_no_run(self) -> None:
        """No run is selected: no probes to show."""
        self.report, self.no_run = None, True
        self.table.clear()
        self.summary.styles.height = 1
        self.summary.update(NO_RUN)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if self.report is None or event.row_key.value is None:
            return
        probe = next((p for p in self.report.probes if str(p.probe) == event.row_key.value), None)
        if probe is not None:
            self.app.push_screen(ProbeScreen(probe))


def probe_story(probe: ProbeHistory) -> Table:
    """The probe's prompt, reference, events and every answer that differed from the one before."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    label, style = STATUS[probe.status]
    story = ", ".join(f"{kind} at step {step}" for kind, step in probe.events) or "never matched"
    grid.add_row("probe", Text.assemble((f"{probe.probe}  {label}", style), f"  ({story})"))
    grid.add_row("prompt", Text(probe.prompt))
    grid.add_row("reference", Text(probe.reference))
    for a in probe.answers:
        mark = answer_mark(a)
        loss = "" if a.loss is None else f"  loss {a.loss:.3f}"
        grid.add_row(f"step {a.step}", Text.assemble((f"[{mark}{loss}] ", "dim"), a.generation or "(empty)"))
    return grid


class ProbeScreen(ModalScreen[None]):
    """A probe's answers over time; Esc closes."""

    DEFAULT_CSS = """
    ProbeScreen { align: center middle; }
    ProbeScreen VerticalScroll { width: 90%; height: 80%; border: thick $accent; background: $surface; }
    """
    BINDINGS = [Binding("escape", "dismiss", "Close"), Binding("q", "dismiss", "Close", show=False)]

    def __init__(self, probe: ProbeHistory) -> None:
        super().__init__()
        self.probe = probe

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(probe_story(self.probe))
