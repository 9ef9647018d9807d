"""The one timestamp format shared by every log overnight writes."""
from __future__ import annotations

import datetime as _dt
import time


def stamp(t: float | None = None) -> str:
    """`YYYY-mm-dd HH:MM:SS.mmm` in local time, as console.log and overnight.log use."""
    t = time.time() if t is None else t
    d = _dt.datetime.fromtimestamp(t)
    return d.strftime("%Y-%m-%d %H:%M:%S.") + f"{d.microsecond // 1000:03d}"


def log_line(message: str, t: float | None = None) -> str:
    """One log line: `[timestamp] message` with a trailing newline."""
    return f"[{stamp(t)}] {message}\n"


def run_id_stamp(t: float | None = None) -> str:
    """`YYYYmmdd-HHMMSS`, the time part of a run id (no colons: safe in file names)."""
    t = time.time() if t is None else t
    return _dt.datetime.fromtimestamp(t).strftime("%Y%m%d-%H%M%S")


def iso(t: float | None = None) -> str:
    """ISO-8601 local time with seconds, for DB and JSON records."""
    t = time.time() if t is None else t
    return _dt.datetime.fromtimestamp(t).isoformat(timespec="seconds")
