"""What the daemon made of an uploaded drop: the runs it queued, or its rejection with the .error.txt text. The
dataset file is followed by its inode: the intake moves it (rename) into the run's dataset/ folder or into
inbox/rejected/, so the same inode names it wherever it went."""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from daemon.core.home import Home, daemon_alive
from daemon.core.fsutil import shown_name
from daemon.core.morning import ERROR_SUFFIX, names_moved
from daemon.core.queries import Reader
from daemon.core.rundir import RunFolder

QUEUED, REJECTED, WAITING, GONE = "queued", "rejected", "waiting", "gone"


@dataclass
class Verdict:
    state: str
    files: list[str]
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    rejected: list[str] = field(default_factory=list)
    note: str | None = None


@dataclass
class Placed:
    """A drop put into the inbox: its files (the dataset last, as drop.add places it) and the dataset's inode."""

    files: list[Path]
    inode: int
    since: float = field(default_factory=time.time)

    @property
    def dataset(self) -> Path:
        return self.files[-1]

    def look(self, h: Home) -> Verdict | None:
        """The daemon's verdict if it has given one (None: the drop still waits)."""
        if self.dataset.exists() and self.dataset.stat().st_ino == self.inode:
            return None
        shown = [str(f) for f in self.files]
        moved = [p for p in _entries(h.rejected) if _inode(p) == self.inode]
        if moved:
            error = self._error_text(h, moved[0].name)
            # every file of the drop the intake moved (the sidecar and probes too): names are unique in rejected/
            others = [str(p) for p in _entries(h.rejected) if p != moved[0] and error
                      and names_moved(error, shown_name(p.name))]
            return Verdict(REJECTED, shown, error=error, rejected=[str(moved[0]), *sorted(others)]) if error else None
        runs = self._runs(h)
        return Verdict(QUEUED, shown, runs=runs) if runs else None

    def _error_text(self, h: Home, moved_name: str) -> str | None:
        """The .error.txt the intake wrote for this drop: written after the move, naming the moved file."""
        for p in sorted(_entries(h.rejected), key=_mtime, reverse=True):
            if p.name.endswith(ERROR_SUFFIX) and _mtime(p) >= self.since - 1:
                text = p.read_text(encoding="utf-8", errors="replace")
                if names_moved(text, shown_name(moved_name)):  # by name: another drop's error may hold this one's
                    return text
        return None

    def _runs(self, h: Home) -> list[dict[str, Any]]:
        """The runs whose dataset/ holds this very file (a group's other runs hold hard links: the same inode)."""
        if not h.db.exists():
            return []
        reader = Reader(h.db)
        try:
            rows = [r for r in reader.runs() if r["dataset"] == self.dataset.name]
        finally:
            reader.close()
        return [r for r in rows if _inode(RunFolder(r["run_dir"]).dataset / self.dataset.name) == self.inode]


async def _never() -> bool:
    return False


async def wait(h: Home, placed: Placed, timeout: float, poll: float = 0.2,
               gone: Callable[[], Awaitable[bool]] = _never) -> Verdict:
    """Up to `timeout` seconds for the daemon's verdict (each look in a thread, none held while waiting); without a
    daemon, say so at once; once the client is `gone`, stop (nobody is left to tell)."""
    end = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(placed.look, h)
        if found:
            return found
        if await gone():
            return Verdict(GONE, [str(f) for f in placed.files], note="the client went away before the verdict")
        if not await asyncio.to_thread(daemon_alive, h):
            return Verdict(WAITING, [str(f) for f in placed.files],
                           note="no daemon is running: it takes the drop when it starts (overnight daemon)")
        if time.monotonic() >= end:
            return Verdict(WAITING, [str(f) for f in placed.files],
                           note=f"the daemon has not taken the drop yet (waited {timeout:g} s); see GET /api/status")
        await asyncio.sleep(poll)


def _entries(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def _inode(p: Path) -> int | None:
    try:
        return p.lstat().st_ino
    except OSError:
        return None


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0
