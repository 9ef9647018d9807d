"""The server's own log, serve.log in the home, in overnight.log's style (overnight.log is the daemon's alone): one
line per write a client asked for, with the client's address."""
from __future__ import annotations

import logging
import re

from daemon.core import log as corelog
from daemon.core.home import Home

NAME = "overnight-serve"
log = logging.getLogger(NAME)
# what a client can put into a line (a path's %0A, a file name's ESC) and a reader of the log would take for a new
# line or a terminal command: C0, DEL, C1, and Unicode's own line and paragraph separators
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with every control character written as its escape (a newline as \\n): one line, whatever a client
    sent."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _one_line(record: logging.LogRecord) -> bool:
    record.msg, record.args = one_line(record.getMessage()), None
    return True


log.addFilter(_one_line)  # on the logger itself: every line of serve.log, however it is written, forges none


def setup(h: Home, echo: bool = True) -> logging.Logger:
    return corelog.setup(h.root / "serve.log", echo=echo, name=NAME)


def write(client: str, what: str) -> None:
    """A write a client asked for: who (address) and what."""
    log.info(f"{client}: {what}")
