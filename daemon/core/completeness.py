"""When a dropped file is complete: unchanged for SETTLE_S, and (where the platform can tell) open for writing by
no process. A writer that appends a line every few seconds, straight into the inbox, is waited for."""
from __future__ import annotations

from pathlib import Path

# Longer than the pause of a slow writer between two appends (a script logging a record every few seconds).
SETTLE_S = 6.0
# How often a drop found open for writing is checked again (each check walks every process's open files).
WRITERS_RECHECK_S = 2.0


def writers_of(paths: list[Path]) -> list[str]:
    """'PID NAME' of each process that holds one of `paths` open for writing (those of other users are unseen)."""
    import psutil
    wanted = {str(p.resolve()) for p in paths}
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            files = proc.open_files()
        except (psutil.Error, OSError):
            continue
        if any(f.path in wanted and any(m in (f.mode or "") for m in "wa+") for f in files):
            found.append(f"PID {proc.info['pid']} ({proc.info['name']})")
    return found
