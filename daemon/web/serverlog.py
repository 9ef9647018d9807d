"""The server's own log, serve.log in the home, in overnight.log's style (overnight.log is the daemon's alone): one
line per write a client asked for, with the client's address."""
from __future__ import annotations

import logging

from daemon.core import log as corelog
from daemon.core.home import Home

NAME = "overnight-serve"
log = logging.getLogger(NAME)


def setup(h: Home, echo: bool = True) -> logging.Logger:
    return corelog.setup(h.root / "serve.log", echo=echo, name=NAME)


def write(client: str, what: str) -> None:
    """A write a client asked for: who (address) and what."""
    log.info(f"{client}: {what}")
