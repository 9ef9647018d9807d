"""Reading the end of a log without loading it: `overnight logs -n` and `-f`, and the dashboard."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator


def last_lines(path: Path, n: int, block: int = 64 * 1024) -> list[str]:
    """The last `n` lines of a file, reading backwards in blocks (fast on a log of millions of lines)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    with f:
        f.seek(0, 2)
        pos = f.tell()
        data = b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-n:] if n else []


def follow_file(path: Path, poll: float = 0.25) -> Iterator[str]:
    """Yield lines appended to `path` from its current end, forever (tail -f)."""
    pos = path.stat().st_size if path.exists() else 0
    buf = b""
    while True:
        try:
            with open(path, "rb") as f:
                if f.seek(0, 2) < pos:
                    pos = 0  # truncated or replaced
                f.seek(pos)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            pos += len(chunk)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")
        else:
            time.sleep(poll)
