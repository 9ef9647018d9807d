"""The top line: the home, whether a daemon serves it, and how many runs are in each state."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from daemon.states import State
from tui.data import HomeSnapshot

_ORDER = (State.TRAINING, State.PREPARING, State.PAUSED, State.QUEUED)


def _home_label(root: str, width: int) -> str:
    return root if len(root) <= width else "…" + root[-(width - 1):]


class HomeHeader(Static):
    """`overnight │ HOME │ ● daemon PID … │ 1 training · 2 queued · …` on one line."""

    DEFAULT_CSS = """
    HomeHeader { height: 1; background: $panel; color: $foreground; }
    """

    _snap: HomeSnapshot | None = None

    def on_resize(self) -> None:
        if self._snap is not None:
            self.show(self._snap)  # the home path gets the room the new width gives it

    def show(self, snap: HomeSnapshot) -> None:
        """Render the snapshot's home, daemon state and run counts."""
        self._snap = snap
        counts = snap.counts()
        parts = [f"{counts[s]} {s}" for s in _ORDER if counts.get(s)]
        finished = sum(n for s, n in counts.items() if s not in _ORDER)
        if finished:
            parts.append(f"{finished} finished")
        rest = Text(" │ ")
        if snap.daemon.alive:
            rest.append("● daemon ", "bold green")
            rest.append(f"PID {snap.daemon.pid}")
        else:
            rest.append("○ no daemon", "bold yellow")
        rest.append(" │ " + (" · ".join(parts) if parts else "no runs yet"))
        text = Text.assemble((" overnight ", "bold"), "│ ")
        if self.size.width - text.cell_len - rest.cell_len < min(len(snap.root), 24):
            text = Text(" ")  # a narrow terminal: the counts and the home matter more than the product's name
        # the home path gets what the counts leave (they matter more than the path's head)
        text.append(_home_label(snap.root, max(12, self.size.width - text.cell_len - rest.cell_len)))
        self.update(text + rest)


class DaemonBanner(Static):
    """Shown only while no daemon serves the home: how to start one (the dashboard still shows history)."""

    DEFAULT_CSS = """
    DaemonBanner { height: auto; max-height: 2; background: $warning 20%; color: $foreground; display: none; }
    DaemonBanner.-visible { display: block; }
    """

    def show(self, snap: HomeSnapshot) -> None:
        """Visible with the start command when no daemon is alive, or with the DB error when it cannot be read."""
        problem = snap.error or snap.daemon.problem
        if problem:
            self.update(Text(f" {problem}", "bold"))
            self.set_class(True, "-visible")
            return
        self.set_class(not snap.daemon.alive, "-visible")
        if not snap.daemon.alive:
            self.update(Text.assemble(" No daemon on this home (showing history). Start one: ",
                                      (f"overnight daemon --home {snap.root}", "bold")))
