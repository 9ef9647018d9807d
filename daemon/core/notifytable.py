"""The [notify] table of overnight.toml: its keys and events, the check of each URL against apprise's own URL
parsing (no network), and apprise's log read back as a reason. Shared by the options check and the daemon's sender
(notify.py); apprise is imported only when a URL is checked."""
from __future__ import annotations

import difflib
import functools
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.core.errors import OptionsError

EVENTS = ("failed", "completed", "rejected", "stalled", "disk_low", "regressed")
TABLE_KEYS = ("urls", "on")
URL_HELP = ("see https://github.com/caronc/apprise/wiki for your service's URL, e.g. ntfys://TOPIC, "
            "json://HOST:PORT/PATH, mailto://USER:PASSWORD@HOST, discord://WEBHOOK_ID/WEBHOOK_TOKEN")


# --- configuration ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NotifyConfig:
    """A validated [notify] table."""

    urls: tuple[str, ...]
    on: tuple[str, ...] = EVENTS

    @classmethod
    def from_table(cls, table: dict[str, Any] | None) -> "NotifyConfig | None":
        """The config of an already validated table (None when there is no [notify] table)."""
        if not table:
            return None
        return cls(tuple(_as_list(table["urls"])), tuple(_as_list(table["on"])) if "on" in table else EVENTS)


def _as_list(v: Any) -> list[Any]:
    return [v] if isinstance(v, str) else list(v)


def masked(url: str) -> str:
    """A URL fit for logs and messages: the password of `user:password@` hidden, the query string dropped."""
    url = re.sub(r"^([A-Za-z0-9+.-]+://[^/@:]*):[^/@]*@", r"\1:****@", url.strip())
    return url.split("?", 1)[0]


def check_table(source: Path | str, table: dict[str, Any]) -> None:
    """Validate a [notify] table; raise OptionsError naming the file, the key, the allowed values and the fix."""
    for key in table:
        if key not in TABLE_KEYS:
            close = next(iter(difflib.get_close_matches(key, TABLE_KEYS, n=1, cutoff=0.5)), None)
            raise OptionsError(f"{source}: [notify] has no key '{key}'{f' (did you mean {close!r}?)' if close else ''}; "
                               f"allowed keys: {', '.join(TABLE_KEYS)}. Fix: rename or remove '{key}' (e.g. "
                               f"urls = [\"ntfys://my-topic\"], on = [\"failed\", \"completed\"]).")
    urls = table.get("urls")
    if not urls or not all(isinstance(u, str) and u.strip() for u in _as_list(urls)):
        raise OptionsError(f"{source}: [notify] urls = {urls!r}: expected a non-empty list of apprise URLs. "
                           f"Fix: e.g. urls = [\"ntfys://my-topic\", \"mailto://me:app-password@gmail.com\"] "
                           f"({URL_HELP}), or remove the [notify] table.")
    for i, url in enumerate(_as_list(urls)):
        problem = url_problem(url.strip())
        if problem:
            raise OptionsError(f"{source}: [notify] urls[{i}] = '{masked(url)}' is not a URL apprise can send to: "
                               f"{problem}. Fix: {URL_HELP}.")
    if "on" in table:
        on = table["on"]
        if not isinstance(on, (str, list)) or not all(isinstance(e, str) for e in _as_list(on)):
            raise OptionsError(f"{source}: [notify] on = {on!r}: expected a list of event names; allowed: "
                               f"{', '.join(EVENTS)}. Fix: e.g. on = [\"failed\", \"completed\"], or remove 'on' "
                               f"to be told of every event.")
        for event in _as_list(on):
            if event not in EVENTS:
                raise OptionsError(f"{source}: [notify] on names an unknown event '{event}'; allowed: "
                                   f"{', '.join(EVENTS)}. Fix: use only these names (or remove 'on' to be told of "
                                   f"every event).")


@functools.lru_cache(maxsize=256)
def url_problem(url: str) -> str | None:
    """Why apprise cannot use `url` (its own URL parsing, no network), or None when it can."""
    import apprise

    with apprise_log() as lines:
        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if plugin is not None:
        # apprise takes `ntfy://` with no topic and only fails at send time ("no ntfy topics to notify").
        if getattr(plugin, "topics", None) == []:
            return "it names no topic (e.g. ntfys://my-topic, or ntfy://HOST/TOPIC for your own server)"
        return None
    said = [m for lvl, m in lines if lvl >= logging.WARNING]
    return "; ".join(_clean(m) for m in said) or "apprise does not recognise it"


def _clean(message: str) -> str:
    return message.strip().rstrip(".")


class _ThreadRecords(logging.Handler):
    """Collects the apprise log records emitted by one thread (apprise explains failures only in its log)."""

    def __init__(self, thread: int) -> None:
        super().__init__(logging.DEBUG)
        self.thread = thread
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append((record.levelno, record.getMessage()))


class apprise_log:
    """`with apprise_log() as lines:` — the (level, message) pairs apprise logs on this thread meanwhile.

    The apprise logger is lowered to DEBUG while any capture is open (captures on several threads may overlap)."""

    _lock = threading.Lock()
    _open = 0
    _saved_level = logging.NOTSET

    def __enter__(self) -> list[tuple[int, str]]:
        logger = logging.getLogger("apprise")
        self._handler = _ThreadRecords(threading.get_ident())
        with apprise_log._lock:
            if apprise_log._open == 0:
                apprise_log._saved_level = logger.level
                logger.setLevel(logging.DEBUG)
            apprise_log._open += 1
            logger.addHandler(self._handler)
        return self._handler.lines

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("apprise")
        with apprise_log._lock:
            logger.removeHandler(self._handler)
            apprise_log._open -= 1
            if apprise_log._open == 0:
                logger.setLevel(apprise_log._saved_level)


def failure_reason(lines: list[tuple[int, str]]) -> str:
    """The gist of apprise's log of a failed delivery: its warnings, plus the OS error (e.g. Connection refused) or
    the timeout that apprise's warning calls a connection error."""
    said = [_clean(m) for lvl, m in lines if lvl >= logging.WARNING]
    causes = [_cause(text) for _, text in lines]
    causes = [c for c in causes if c]
    if causes and not any(causes[-1] in s for s in said):
        said.append(causes[-1])
    return "; ".join(dict.fromkeys(said)) or "the service did not accept the message"


def _cause(text: str) -> str | None:
    errno = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
    if errno:
        return errno.group(1).strip()
    timeout = re.search(r"(Read|Connect) timed out.*?timeout=([\d.]+)", text)
    if timeout:
        return f"no {'answer' if timeout.group(1) == 'Read' else 'connection'} within {float(timeout.group(2)):g} s"
    return None
