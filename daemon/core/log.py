"""The daemon's own log, overnight.log in the home, in console.log's timestamp format."""
from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

from daemon.core.timefmt import stamp


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
        text = f"[{stamp(record.created)}] {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _Terminal(logging.StreamHandler):
    """The echo to the daemon's terminal, which may go away while the daemon goes on (the terminal closed: every
    write fails with EIO; a pipe whose reader died: EPIPE). The first failed write silences it for good: the
    terminal's descriptors are pointed at /dev/null (so that no other write to them fails either) and
    overnight.log, which has every line, says so once."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.gone = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.gone:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        why = sys.exc_info()[1]
        if self.gone:
            return
        if not (isinstance(why, ValueError) and "closed file" in str(why) or
                isinstance(why, OSError) and why.errno in (errno.EIO, errno.EPIPE, errno.EBADF, errno.ENXIO)):
            super().handleError(record)  # not a terminal that went away
            return
        self.gone = True
        _to_devnull(self.stream)
        logging.getLogger("overnight").warning(f"the terminal is gone ({why}): logging to overnight.log only")


class _File(logging.FileHandler):
    """overnight.log, which a full disk may refuse: the line still reaches the terminal (the other handler), and the
    refusal is said there once, not as a "--- Logging error ---" stack per line; written again once it can be."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self.failing = self.failed_now = False

    def emit(self, record: logging.LogRecord) -> None:
        self.failed_now = False
        super().emit(record)  # a failed write calls handleError
        self.failing = self.failed_now

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        why = sys.exc_info()[1]
        if not isinstance(why, OSError):
            super().handleError(record)
            return
        self.failed_now = True
        if not self.failing:
            self.failing = True
            try:
                sys.stderr.write(f"overnight: cannot write {self.baseFilename} ({why.strerror or why}); its lines "
                                 f"go to this terminal only until it can be written again\n")
            except (OSError, ValueError):
                pass


def _to_devnull(stream: object) -> None:
    """Point the descriptor of `stream` (and stdout/stdin, when they are the same terminal or pipe) at /dev/null."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        gone = os.fstat(fd)
        null = os.open(os.devnull, os.O_RDWR)
    except (OSError, ValueError, AttributeError):
        return
    try:
        for other in {fd, 0, 1, 2}:
            try:
                if other == fd or os.path.samestat(os.fstat(other), gone):
                    os.dup2(null, other)
            except OSError:
                pass
    finally:
        os.close(null)


def setup(log_path: Path, echo: bool = True, name: str = "overnight") -> logging.Logger:
    """The 'overnight' logger (or another process's own, `name`) writing to `log_path` (and stderr when `echo`)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    handlers: list[logging.Handler] = [_File(log_path)]
    if echo:
        handlers.append(_Terminal())
    for h in handlers:
        h.setFormatter(_Formatter())
        logger.addHandler(h)
    return logger


log = logging.getLogger("overnight")
