"""The "needs you" strip under the header: failed runs, rejected drops, a held queue, lone companion files in the
inbox and paused queued runs, counted, each with its newest item, so a morning glance at the dashboard tells what to
look at (`overnight status` lists them all)."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from daemon.core.morning import HELD_BY_STOP
from daemon.core.render import cells, cut, rejected_item
from daemon.core.states import State
from tui.homedata import HomeSnapshot


def needs_parts(snap: HomeSnapshot) -> list[tuple[str, str]]:
    """(what, its detail: the newest item, or how to lift a hold) for each kind of thing that needs the user; empty
    when nothing does."""
    parts = []
    if snap.failed:
        f = snap.failed[0]
        parts.append((f"{len(snap.failed)} failed", f"{f.id}: {f.reason}"))
    if snap.rejected:
        d, n = snap.rejected[0], len(snap.rejected)
        parts.append((f"{n} rejected drop{'s' if n > 1 else ''}", rejected_item(d.file, d.error)))
    if snap.held == HELD_BY_STOP:
        parts.append(("queue held by control/stop", HELD_BY_STOP.partition(" (")[2].rstrip(")")))
    elif snap.held:
        parts.append(("queue held", snap.held))
    if snap.waiting:
        n = len(snap.waiting)
        parts.append((f"{n} file{'s' if n > 1 else ''} without {'their' if n > 1 else 'its'} dataset", snap.waiting[0]))
    paused = [r.id for r in snap.runs if r.paused and r.state == State.QUEUED]
    if "*" in snap.paused:  # `overnight pause` alone: every run, the next ones too
        parts.append(("every run paused by control/pause", "overnight resume lifts it"))
    elif paused and not snap.held:  # passed by until resumed: `overnight status` lists them too
        parts.append((f"{len(paused)} held by control/pause", f"overnight resume {paused[0]} lets it start"))
    return parts


_MIN_DETAIL = 6  # a detail cut shorter than this says nothing: it is left out


def needs_line(parts: list[tuple[str, str]], width: int) -> str:
    """`1 failed (RUN: reason), 2 rejected drops (FILE: error), queue held by …` in `width` cells. The details give
    way first (shared evenly, the newest failure first when room is short) so every count and the hold stay in
    view."""
    remaining = width - cells(", ".join(head for head, _ in parts))
    need = {i: cells(d) + 3 for i, (_, d) in enumerate(parts) if d}  # " (" and ")" around each
    room: dict[int, int] = {}
    while need:  # short details whole, the long ones share what is left evenly
        fair = remaining // len(need)
        whole = [i for i, n in need.items() if n <= fair]
        if not whole:
            break
        for i in whole:
            room[i] = need.pop(i)
            remaining -= room[i]
    if need:
        fair = remaining // len(need)
        if fair >= _MIN_DETAIL + 3:
            room.update(dict.fromkeys(need, fair))
        elif remaining >= _MIN_DETAIL + 3:
            room[min(need)] = remaining  # too little to share: the newest failure first
    details = [cut(d, room[i] - 3) if i in room else "" for i, (_, d) in enumerate(parts)]
    return cut(", ".join(f"{head} ({d})" if d else head for (head, _), d in zip(parts, details)), width)


class NeedsStrip(Static):
    """One line, shown only while something needs the user; cut to the terminal's width."""

    DEFAULT_CSS = """
    NeedsStrip { height: 1; background: $error 25%; color: $foreground; display: none; }
    NeedsStrip.-visible { display: block; }
    """

    _parts: list[tuple[str, str]] = []

    def on_resize(self) -> None:
        self._draw()

    def show(self, snap: HomeSnapshot) -> None:
        """Visible with the summary when there is one, hidden otherwise."""
        self._parts = needs_parts(snap)
        self.set_class(bool(self._parts), "-visible")
        self._draw()

    def _draw(self) -> None:
        if not self._parts:
            return
        width = max((self.size.width or 80) - 1, 20)
        label = " needs you: "
        self.update(Text.assemble((label, "bold"), needs_line(self._parts, width - cells(label))))
