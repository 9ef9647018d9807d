"""Disk space as the daemon sees it: a full disk makes runs wait, never fail or take the daemon down.

The trainer checks the same rule before each checkpoint (daemon/trainer/diskspace.py); the daemon checks it before
starting a run, and recognises a trainer or a DB write that died of a full disk anyway (filled between two checks).
"""
from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

GB = 10**9
DISK_LOW = "disk_low"  # the reason a trainer paused itself before a checkpoint it had no room for starts so


def waits_for_space(run: dict) -> bool:
    """A paused run its trainer paused for disk space (it goes on by itself once freed), not a user's pause."""
    return run.get("state") == "paused" and str(run.get("reason") or "").startswith(DISK_LOW)
_FULL_MARKS = ("No space left on device", "[Errno 28]", "database or disk is full", "Disk quota exceeded")


def size_text(n: int | float) -> str:
    """A size for a message, precise enough to compare two of them: "1.25 GB", "512 MB", "40 kB"."""
    if n >= GB:
        return f"{n / GB:.2f} GB"
    if n >= 10**6:
        return f"{n / 10**6:.0f} MB"
    return f"{n / 10**3:.0f} kB" if n >= 10**3 else f"{n:.0f} bytes"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def needed(newest_checkpoint: Path | None, min_free_gb: float) -> int:
    """Bytes a run needs free: min_free_gb, or twice its last checkpoint (the next one, and the adapter)."""
    return max(int(min_free_gb * GB), 2 * folder_bytes(newest_checkpoint) if newest_checkpoint else 0)


def shortage(run_dir: Path, newest_checkpoint: Path | None, min_free_gb: float) -> str | None:
    """Why the run cannot start for lack of space (with the fix), or None."""
    need, free = needed(newest_checkpoint, min_free_gb), shutil.disk_usage(run_dir).free
    if free >= need:
        return None
    return (f"disk low: only {size_text(free)} free on the disk of {run_dir.parent}, and {run_dir.name} needs "
            f"{size_text(need)} (min_free_gb = {min_free_gb:.10g} in overnight.toml, or twice its last checkpoint). "
            f"Fix: free space there, or lower min_free_gb; the run starts by itself")


def is_disk_full(error: BaseException | str) -> bool:
    """An exception, or a trainer's last words, that mean the disk (or the quota) is full."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, BaseException) and not isinstance(error, sqlite3.Error):
        return False
    return any(mark in str(error) for mark in _FULL_MARKS)


FULL_BYTES = 8 * 2**20  # less free than this on the home's disk: the DB and logs can no longer be written


def disk_full_problem(root: Path) -> str | None:
    """What `status` and the dashboard say when the home's disk is full (the daemon cannot write the DB then)."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return None
    if free >= FULL_BYTES:
        return None
    return (f"disk full: {free / 2**20:.0f} MiB free on the disk of {root}; training waits and the state DB cannot "
            f"be written. Fix: free space there; overnight goes on by itself")
