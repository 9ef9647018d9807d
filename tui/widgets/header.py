"""The top line: the home, whether a daemon serves it, how many runs are in each state, and the GPUs at a glance."""
from __future__ import annotations

import os

from rich.text import Text
from textual.widgets import Static

from daemon.core.states import State
from tui.homedata import HomeSnapshot
from tui.gpuprocs import gpu_summary
from tui.telemetry import Telemetry

_ORDER = (State.TRAINING, State.PREPARING, State.PAUSED, State.QUEUED)


def tilde(root: str) -> str:
    """The home as a shell shows it: under the user's home folder, `~/…` (it fits more often, and pastes as is)."""
    user = os.path.expanduser("~")
    if user not in ("", "/", "~") and (root == user or root.startswith(user.rstrip("/") + "/")):
        return "~" + root[len(user.rstrip("/")):]
    return root


def _home_label(root: str, width: int) -> str:
    root = tilde(root)
    return root if len(root) <= width else "…" + root[-(width - 1):]


class HomeHeader(Static):
    """`overnight │ HOME │ ● daemon PID … │ 1 training · 2 queued · … │ GPU 2×H100 87% · 61/160 GB` on one line.

    What gives way on a narrow terminal, in order: the product's name, the home path (down to 12 cells), the
    finished count, the GPU summary's long form, then the home path altogether."""

    DEFAULT_CSS = """
    HomeHeader { height: 1; background: $panel; color: $foreground; }
    """

    _snap: HomeSnapshot | None = None
    telemetry: Telemetry | None = None

    def on_resize(self) -> None:
        if self._snap is not None:
            self.show(self._snap)  # the home path gets the room the new width gives it

    def show_gpus(self, telemetry: Telemetry) -> None:
        """The GPU summary from a telemetry sample (redrawn only when the line changes)."""
        before = self.telemetry
        self.telemetry = telemetry
        if self._snap is not None and (before is None or gpu_summary(before.gpus, before.gpu_error)
                                       != gpu_summary(telemetry.gpus, telemetry.gpu_error)):
            self.show(self._snap)

    def show(self, snap: HomeSnapshot) -> None:
        """Render the snapshot's home, daemon state and run counts, and the GPU summary."""
        self._snap = snap
        width = self.size.width or 80
        counts = snap.counts()
        live = [f"{counts[s]} {s}" for s in _ORDER if counts.get(s)]
        finished = sum(n for s, n in counts.items() if s not in _ORDER)
        daemon = Text()
        if snap.daemon.alive:
            daemon.append("● daemon ", "bold green")
            daemon.append(f"PID {snap.daemon.pid}")
        else:
            daemon.append("○ no daemon", "bold yellow")
        t = self.telemetry
        gpus = [] if t is None else [gpu_summary(t.gpus, t.gpu_error), gpu_summary(t.gpus, t.gpu_error, compact=True)]
        # the forms of the right-hand part, longest first: the first leaving room for the home path is used
        forms = []
        for gpu in (gpus or [None]):
            for show_finished in (True, False):
                parts = live + ([f"{finished} finished"] if finished and show_finished else [])
                # a DB that cannot be read has runs it cannot count (the banner says why)
                empty = "runs unknown: the DB cannot be read" if snap.error else "no runs yet"
                rest = Text(" │ ") + daemon + Text(" │ " + (" · ".join(parts) if parts else empty))
                if gpu:
                    rest.append(" │ ")
                    rest.append(gpu, "bold" if not gpu.startswith("no GPU") else "dim")
                forms.append(rest)
        product = Text.assemble((" overnight ", "bold"), "│ ")
        rest = forms[0]
        if width - product.cell_len - rest.cell_len >= min(len(tilde(snap.root)), 24):
            self.update(product + Text(_home_label(snap.root, width - product.cell_len - rest.cell_len)) + rest)
            return
        # a narrow terminal: the counts, the daemon and the GPUs matter more than the product's name and the path
        for rest in forms:
            room = width - 1 - rest.cell_len
            if room >= 12:
                self.update(Text(" ") + Text(_home_label(snap.root, room)) + rest)
                return
        rest = min(forms, key=lambda f: f.cell_len)
        self.update(Text(" ") + rest[3:])  # no room for the path at all (the banner names the home without a daemon)


class DaemonBanner(Static):
    """Shown only while no daemon serves the home: how to start one (the dashboard still shows history)."""

    DEFAULT_CSS = """
    DaemonBanner { height: auto; max-height: 2; background: $warning 20%; color: $foreground; display: none; }
    DaemonBanner.-visible { display: block; }
    DaemonBanner.-problem { max-height: 6; }
    """

    def show(self, snap: HomeSnapshot) -> None:
        """Visible with the start command when no daemon is alive, or with the DB error when it cannot be read."""
        problem = snap.error or snap.daemon.problem
        self.set_class(bool(problem), "-problem")  # said whole: a broken overnight.toml's message holds its fix
        if problem:
            self.update(Text(f" {problem}", "bold"))
            self.set_class(True, "-visible")
            return
        self.set_class(not snap.daemon.alive, "-visible")
        if not snap.daemon.alive:
            self.update(Text.assemble(" No daemon on this home (showing history). Start one: ",
                                      (f"overnight daemon --home {tilde(snap.root)}", "bold")))
