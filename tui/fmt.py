"""How the dashboard writes bars, log stamps and times in a few cells (no Textual here). Numbers come from
daemon/core/render.py, so the CLI and the dashboard write them alike."""
from __future__ import annotations

import re


def progress_bar(fraction: float | None, width: int) -> str:
    """A text bar of `width` cells (eighths for the partial cell); blank when the total is unknown."""
    if fraction is None:
        return " " * width
    eighths = int(round(fraction * width * 8))
    full, part = divmod(eighths, 8)
    bar = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")
    return (bar + "░" * width)[:width] if full < width else "█" * width


_LOG_STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d (\d\d:\d\d:\d\d)\.\d{3}\] ")


def short_stamp(line: str) -> str:
    """`[2026-05-14 02:04:58.123] msg` -> `02:04:58 msg`: 16 more columns of log on an 80-column terminal."""
    return _LOG_STAMP.sub(r"\1 ", line, count=1)


def short_time(iso_time: str | None) -> str:
    """`05-14 03:12` from an ISO time (the date part matters for overnight history)."""
    if not iso_time or len(iso_time) < 16:
        return "-"
    return f"{iso_time[5:10]} {iso_time[11:16]}"
