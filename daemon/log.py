"""The daemon's own log, overnight.log in the home, in console.log's timestamp format."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from daemon.timefmt import stamp


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
        text = f"[{stamp(record.created)}] {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup(log_path: Path, echo: bool = True) -> logging.Logger:
    """The 'overnight' logger writing to `log_path` (and stderr when `echo`)."""
    logger = logging.getLogger("overnight")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    handlers: list[logging.Handler] = [logging.FileHandler(log_path, encoding="utf-8")]
    if echo:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(_Formatter())
        logger.addHandler(h)
    return logger


log = logging.getLogger("overnight")
