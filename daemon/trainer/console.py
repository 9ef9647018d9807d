"""console.log: every line the trainer prints carries a `[YYYY-mm-dd HH:MM:SS.mmm] ` prefix and is flushed at once.

The daemon points the trainer's stdout and stderr at the run's console.log. Wrapping `sys.stdout` and
`sys.stderr` (before transformers is imported, so its logging handler writes through the wrapper too) stamps
print() output, warnings, library logs and tracebacks alike.

Under torchrun every rank's output goes to the same console.log: rank 0 alone `say`s anything, and what the other
ranks still print (a traceback when one fails) carries `rank N: ` after the timestamp.
"""
from __future__ import annotations

import io
import sys
import threading
from typing import TextIO

from daemon.core.timefmt import stamp

_lock = threading.Lock()  # stdout and stderr share one file: whole lines only, never interleaved


class TimestampedStream(io.TextIOBase):
    """A text stream that prefixes each line with the time it was completed and flushes it immediately."""

    def __init__(self, target: TextIO, tag: str = "") -> None:
        self._target = target
        self._partial = ""
        self._tag = tag

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with _lock:
            data = self._partial + text.replace("\r\n", "\n").replace("\r", "\n")
            *lines, self._partial = data.split("\n")
            if lines:
                prefix = f"[{stamp()}] {self._tag}"
                self._target.write("".join(prefix + line + "\n" for line in lines))
                self._target.flush()
        return len(text)

    def flush(self) -> None:
        with _lock:
            self._target.flush()

    def close_line(self) -> None:
        """Emit a pending partial line (at exit, so nothing printed is lost)."""
        if self._partial:
            self.write("\n")

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")


def install() -> None:
    """Replace sys.stdout/sys.stderr by timestamping wrappers (idempotent)."""
    from daemon.trainer import ddp

    tag = "" if ddp.is_main() else f"rank {ddp.rank()}: "
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, TimestampedStream):
            target = stream
            if hasattr(target, "reconfigure"):
                target.reconfigure(errors="backslashreplace")  # a stray byte must never kill a run
            setattr(sys, name, TimestampedStream(target, tag))


def finish() -> None:
    """Flush any partial line of both streams."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, TimestampedStream):
            stream.close_line()


def say(message: str) -> None:
    """Print one console line (the timestamp is added by the wrapper); under torchrun, rank 0's only."""
    from daemon.trainer import ddp

    if ddp.is_main():
        print(message, flush=True)
