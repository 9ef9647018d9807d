"""Small file-name rules shared by intake, control and the registry."""
from __future__ import annotations

from pathlib import Path

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".error.txt")


def ignored(name: str) -> bool:
    """Names the spec says are never taken: hidden files and downloads in progress."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


def unique_path(path: Path) -> Path:
    """`path`, or `path` with .1, .2… before the suffix when taken: a move never overwrites."""
    if not path.exists() and not path.is_symlink():
        return path
    for i in range(1, 10_000):
        cand = path.with_name(f"{path.stem}.{i}{path.suffix}")
        if not cand.exists() and not cand.is_symlink():
            return cand
    raise RuntimeError(f"no free name for {path}")
