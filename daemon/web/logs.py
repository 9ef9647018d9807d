"""A run's console.log over HTTP: read from a byte offset (whole lines only, so that a client that asks again from
`next_offset` never sees half a line or half a character), and followed live as server-sent events."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import AsyncIterator, Callable

CHUNK = 1 << 20  # at most this much per read: a client pages through a long log
POLL_S = 0.25


def _read(path: Path, offset: int, limit: int) -> tuple[int, bytes]:
    """(where the read began, the whole lines from there; a line longer than `limit` comes whole-chunk). It begins at
    `offset`, or at the end when `offset` lies past it (a file truncated since, or an offset no file has: seeking
    there fails on some file systems). A missing file: (0, nothing)."""
    try:
        with open(path, "rb") as f:
            start = min(max(offset, 0), os.fstat(f.fileno()).st_size)
            f.seek(start)
            data = f.read(limit)
    except FileNotFoundError:
        return 0, b""
    cut = data.rfind(b"\n") + 1
    return start, data if cut == 0 and len(data) == limit else data[:cut]


def read_from(path: Path, offset: int, limit: int = CHUNK) -> tuple[int, str, int]:
    """(where the read began: `offset`, or the end of a shorter file; the whole lines from there; the offset after
    them)."""
    start, data = _read(path, offset, limit)
    return start, data.decode("utf-8", "replace"), start + len(data)


async def follow(path: Path, offset: int, ended: Callable[[], bool],
                 stopping: Callable[[], bool] = lambda: False) -> AsyncIterator[str]:
    """Server-sent events: one event per line, its `id` the offset after that line (a reconnecting EventSource sends
    it back as Last-Event-ID); an `end` event once the run has ended and every line is sent. It also ends, without
    that event (a browser reconnects), once the server is `stopping`."""
    while not stopping():
        finished = await asyncio.to_thread(ended)  # asked before reading: a last line written before the end is sent
        offset, data = await asyncio.to_thread(_read, path, offset, CHUNK)
        for line in data.splitlines(keepends=True):
            offset += len(line)
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")
            yield f"id: {offset}\ndata: {text}\n\n"
        if not data and finished:
            yield f"event: end\nid: {offset}\ndata: ended\n\n"
            return
        if not data:
            await asyncio.sleep(POLL_S)
