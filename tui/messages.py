"""Messages from the dashboard's reader threads to the UI thread (the only way data crosses between them)."""
from __future__ import annotations

from textual.message import Message

from tui.homedata import HomeSnapshot, RunDetail, SearchResult
from tui.telemetry import Telemetry


class Loaded(Message):
    """A refresh finished: the home snapshot and the selected run's detail (None when no run is selected)."""

    def __init__(self, snapshot: HomeSnapshot, detail: RunDetail | None, buckets: int = 0) -> None:
        super().__init__()
        self.snapshot = snapshot
        self.detail = detail
        self.buckets = buckets  # the chart resolution the detail was read at


class Sampled(Message):
    """A telemetry sample."""

    def __init__(self, telemetry: Telemetry) -> None:
        super().__init__()
        self.telemetry = telemetry


class ReadFailed(Message):
    """A read of the home failed (a file that cannot be read); the next read tries again."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class Searched(Message):
    """A search over the whole console.log finished."""

    def __init__(self, result: SearchResult) -> None:
        super().__init__()
        self.result = result
