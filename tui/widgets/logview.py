"""The selected run's console.log: follows the tail, can be frozen (`f`) and searched over the whole file (`/`)."""
from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Log, Static

from daemon.core.render import fmt_bytes
from tui.homedata import LOG_LINES, LogUpdate, RunRow, SearchResult
from tui.fmt import short_stamp
from tui.widgets.runs import STATE_STYLE, shown_state


def run_note(run: RunRow | None, progress: dict, held: str | None = None) -> Text:
    """What the log header says about the run: its state (and device), or why it ended; a queued run that cannot
    start reads `held`, as in the runs table (`held`: what holds the queue)."""
    if run is None:
        return Text("")
    shown = shown_state(run.state, held, run.waiting, run.paused)
    if shown != run.state:
        return Text.assemble((shown, STATE_STYLE.get(shown, "")), f": {run.reason}" if run.reason else "")
    style = STATE_STYLE.get(run.state, "")
    if run.active:
        phase = progress.get("state")
        detail = f" ({phase})" if phase and phase != run.state else ""
        device = progress.get("device_name") or progress.get("device")
        return Text.assemble((run.state + detail, style), f" on {device}" if device else "", remote_gpus(progress))
    return Text.assemble((run.state, style), f": {run.reason}" if run.reason else "")


def remote_gpus(progress: dict) -> str:
    """A run on a Slurm node: its GPUs as its trainer's NVML sees them there (progress.json), which this machine's
    NVML cannot: ` · node gpu-3: GPU0 87% 41.0G/80.0G`; '' for a run trained here (the System panel has those)."""
    node, gpus = progress.get("node"), progress.get("gpus") or []
    if not node or not gpus:
        return ""
    shown = ", ".join(f"GPU{g.get('index')} {g.get('util_percent', 0):.0f}% "
                      f"{fmt_bytes(g.get('mem_used') or 0)}/{fmt_bytes(g.get('mem_total') or 0)}" for g in gpus)
    return f" · node {node}: {shown}"


class _Log(Log):
    """Textual's Log, whose new lines are measured in a thread that can outlive the dashboard by a moment (quit
    while a run's lines stream in): it then has no app to report to, and ends quietly instead of failing the exit."""

    @work(thread=True, exit_on_error=False)
    def _update_size(self, updates: int, lines: list[str]) -> None:
        if not lines:
            return
        width = max(cell_len(self._process_line(line)) for line in lines)
        try:
            self.app.call_from_thread(self._update_maximum_width, updates, width)
        except RuntimeError:  # NoActiveAppError, or an app no longer running
            pass


class LogPanel(Vertical):
    """A one-line header, the log (bounded: LOG_LINES lines) and a search box shown on `/`."""

    DEFAULT_CSS = """
    LogPanel { height: 1fr; }
    LogPanel #log-head { height: 1; color: $text-muted; }
    /* long lines scroll sideways (Tab to the log, then ← →) without a horizontal scrollbar: one appearing late
       made the view jump */
    LogPanel Log { height: 1fr; overflow-x: auto; overflow-y: auto; scrollbar-size-horizontal: 0; }
    LogPanel Input { display: none; }
    LogPanel.-searching Input { display: block; }
    """
    BINDINGS = [Binding("escape", "close_search", "Back to the tail")]

    class SearchRequested(Message):
        """The user asked for the lines of the whole log containing `needle`."""

        def __init__(self, needle: str) -> None:
            super().__init__()
            self.needle = needle

    class TailWanted(Message):
        """Following (re)starts: the log should be re-read from its end."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.run_id: str | None = None
        self.following = True
        self.search: SearchResult | None = None
        self.searching_for: str | None = None
        self.notice: str | None = None  # said in the header instead of the state until the next search or run
        self.lines_seen = 0
        self.note = Text("")
        self.head = Static(id="log-head", markup=False)
        self.log_widget = _Log(max_lines=LOG_LINES, auto_scroll=False, id="log-view")
        self.search_box = Input(placeholder="search the whole log (Enter: search, Esc: back to the tail)",
                                id="search", compact=True)

    def compose(self) -> ComposeResult:
        yield self.head
        yield self.log_widget
        yield self.search_box

    def _head(self) -> None:
        name = self.run_id or "no run selected"
        if self.notice is not None:
            state = self.notice
        elif self.searching_for is not None and self.search is None:
            state = f"searching for {self.searching_for!r}…"
        elif self.search is not None:
            s = self.search
            shown = f", last {len(s.matches)} shown" if len(s.matches) < s.total else ""
            state = f"{s.total:,} of {s.lines_scanned:,} lines match {s.needle!r}{shown} · Esc: back"
        elif self.following:
            state = "following · f: freeze · /: search"
        else:
            state = "frozen · f: follow · /: search"
        note = Text.assemble("  ", self.note) if self.note else ""
        self.head.update(Text.assemble((f" {name}", "bold"), note, f"  · {state}", no_wrap=True, overflow="ellipsis"))

    def on_descendant_blur(self) -> None:
        """Leaving the log puts it back at column 0: the scroll sideways (← →) has no scrollbar to show it, and new
        lines would be read without their first characters."""
        if self.log_widget.scroll_x:
            self.log_widget.scroll_to(x=0, animate=False)

    def no_run_to_search(self) -> None:
        """A search asked with no run selected: nothing to search, said instead of `searching for …` forever."""
        self._leave_search()
        self.following = True
        self.notice = "no run selected: nothing to search"
        self._head()

    def describe(self, note: Text) -> None:
        """Show the run's state or end reason beside its id (a no-op when unchanged)."""
        if note != self.note:
            self.note = note
            self._head()

    def set_run(self, run_id: str | None) -> None:
        """Another run was selected: clear, leave search mode, follow it."""
        if run_id == self.run_id:
            return
        self.run_id, self.notice = run_id, None
        self.log_widget.clear()
        self._leave_search()
        self.following = True
        self._head()

    def show_update(self, update: LogUpdate | None) -> None:
        """Apply new lines (ignored while frozen or showing search results)."""
        if not self.following or self.search is not None or self.searching_for is not None:
            return
        log = self.log_widget
        if update is None:
            if log.scroll_offset.y != log.max_scroll_y:
                # a layout after the last scroll (a scrollbar appearing, the header's height) moved the end
                log.scroll_end(animate=False, immediate=False, x_axis=False)
            return
        if update.reset:
            log.clear()
        if update.lines:
            log.write_lines([short_stamp(line) for line in update.lines], scroll_end=False)
        elif update.reset:
            log.write_line("(no console output yet: the run has not started)")
        # following is this panel's state (`f`), not Log's "was at the end" guess, which a horizontal
        # scrollbar appearing can defeat; scroll after the new size is laid out
        log.scroll_end(animate=False, immediate=False, x_axis=False)
        self.lines_seen += len(update.lines)
        self._head()

    def toggle_follow(self) -> None:
        """`f`: freeze the view where it is, or follow the tail again (re-read from the end)."""
        if self.search is not None or self.searching_for is not None:
            self.action_close_search()
            return
        self.following = not self.following
        if self.following:
            self.post_message(self.TailWanted())
        self._head()

    def open_search(self) -> None:
        """`/`: show the search box."""
        self.add_class("-searching")
        self.notice = None
        self.search_box.value = ""
        self.search_box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        needle = event.value.strip()
        if not needle:
            self.action_close_search()
            return
        self.searching_for, self.search = needle, None
        self.remove_class("-searching")
        self.log_widget.focus()
        self._head()
        self.post_message(self.SearchRequested(needle))

    def show_search(self, result: SearchResult) -> None:
        """Replace the view by the matching lines (numbered), until Esc."""
        if result.needle != self.searching_for:
            return  # an older search finished after a newer one started
        self.search = result
        log = self.log_widget
        log.clear()
        log.write_lines([f"{n:>8}  {short_stamp(line)}" for n, line in result.matches]
                        or [f"no line contains {result.needle!r}"])
        log.scroll_end(animate=False)
        self._head()

    def _leave_search(self) -> None:
        self.search, self.searching_for = None, None
        self.remove_class("-searching")

    def _searching(self) -> bool:
        return self.search is not None or self.searching_for is not None or self.has_class("-searching")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return action != "close_search" or self._searching()  # the key line offers Esc only where it does something

    def action_close_search(self) -> None:
        """Esc: back to following the tail."""
        was_searching = self._searching()
        self._leave_search()
        if was_searching:
            self.following = True
            self.log_widget.clear()
            self.post_message(self.TailWanted())
        self._head()
