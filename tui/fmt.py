"""How the dashboard writes numbers, times and bars in a few cells (no Textual here)."""
from __future__ import annotations

import math
import re


def fmt_duration(seconds: float | None) -> str:
    """`1h02m`, `3m20s`, `45s`; `-` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def fmt_loss(value: float | None) -> str:
    """A loss with 4 significant figures; `-` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def fmt_bytes(n: float | None) -> str:
    """`12.3G`, `512M`: binary units, short."""
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit in ("B", "K") else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}P"


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
