"""Small file-name rules shared by intake, control and the registry."""
from __future__ import annotations

from pathlib import Path

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".error.txt")
NAME_MAX = 255  # bytes in one file name, on every file system overnight runs on
# A taken name grows a date (run ids, control/done/) or `.error.txt` and `.1` (rejected/): room for those.
SHORT_NAME = 200


def ignored(name: str) -> bool:
    """Names the spec says are never taken: hidden files and downloads in progress."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


def short_name(name: str, limit: int = SHORT_NAME) -> str:
    """`name` cut to `limit` bytes (on a character boundary, marked with `~`), so that what is added still fits."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    return raw[:limit - 1].decode("utf-8", "ignore") + "~"


def unique_path(path: Path) -> Path:
    """`path`, or `path` with .1, .2… before the suffix when taken: a move never overwrites."""
    if not path.exists() and not path.is_symlink():
        return path
    for i in range(1, 10_000):
        stem = short_name(path.stem, NAME_MAX - len(f".{i}{path.suffix}".encode("utf-8", "surrogateescape")))
        cand = path.with_name(f"{stem}.{i}{path.suffix}")
        if not cand.exists() and not cand.is_symlink():
            return cand
    raise RuntimeError(f"no free name for {path}")
