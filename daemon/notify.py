"""Notifications through apprise ([notify] in overnight.toml): ntfy, Slack, Discord, mail, JSON webhooks… by URL.

The daemon calls `Notifier.send(event, title, body, subject)` from its loop; the message is queued and delivered by
one background thread, so a slow or dead notifier never holds the loop up, fails a run or stops the daemon: a
delivery that fails is one line in overnight.log (`notify: could not deliver 'failed' for RUN to json://…: why`).

Events: `failed`, `completed`, `rejected` (the daemon sends these), `stalled` and `disk_low` (for the daemon's
reliability checks: `notifier.send("stalled", title, body, subject=run_id)`). `[notify] on` picks which are sent
(default: all of them).
"""
from __future__ import annotations

import difflib
import functools
import logging
import queue
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from daemon.log import log
from daemon.options import OptionsError
from daemon.rundir import RunFolder

EVENTS = ("failed", "completed", "rejected", "stalled", "disk_low")
TABLE_KEYS = ("urls", "on")
# apprise's own notification kinds (they colour or tag the message on most services)
_KIND = {"failed": "failure", "completed": "success", "rejected": "warning", "stalled": "warning",
         "disk_low": "warning"}
QUEUE_LIMIT = 200  # messages waiting for the sender thread; beyond this new ones are dropped (and logged)
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

    with _apprise_log() as lines:
        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if plugin is not None:
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


class _apprise_log:
    """`with _apprise_log() as lines:` — the (level, message) pairs apprise logs on this thread meanwhile.

    The apprise logger is lowered to DEBUG while any capture is open (captures on several threads may overlap)."""

    _lock = threading.Lock()
    _open = 0
    _saved_level = logging.NOTSET

    def __enter__(self) -> list[tuple[int, str]]:
        logger = logging.getLogger("apprise")
        self._handler = _ThreadRecords(threading.get_ident())
        with _apprise_log._lock:
            if _apprise_log._open == 0:
                _apprise_log._saved_level = logger.level
                logger.setLevel(logging.DEBUG)
            _apprise_log._open += 1
            logger.addHandler(self._handler)
        return self._handler.lines

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("apprise")
        with _apprise_log._lock:
            logger.removeHandler(self._handler)
            _apprise_log._open -= 1
            if _apprise_log._open == 0:
                logger.setLevel(_apprise_log._saved_level)


def failure_reason(lines: list[tuple[int, str]]) -> str:
    """The gist of apprise's log of a failed delivery: its warnings, plus the OS error (e.g. Connection refused)."""
    said = [_clean(m) for lvl, m in lines if lvl >= logging.WARNING]
    errno = [m.group(1).strip() for _, text in lines for m in [re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)] if m]
    if errno and not any(errno[-1] in s for s in said):
        said.append(errno[-1])
    return "; ".join(dict.fromkeys(said)) or "the service did not accept the message"


# --- messages -------------------------------------------------------------------------------------------------
def _title(what: str) -> str:
    return f"overnight on {socket.gethostname()}: {what}"


def rejected_message(file: Path, error: str, error_file: Path, home: Path) -> tuple[str, str]:
    """A rejected drop: the file, the error (as in NAME.error.txt), where the file is now and what to do."""
    body = (f"{file.name} was rejected.\n\n{error}\n\nThe file is now in {file.parent}/ (nothing was deleted); "
            f"the error is also in {error_file}.\nNext: fix it and drop it into {home / 'inbox'}/ again "
            f"(mv, or overnight add FILE --home {home}).")
    return _title(f"{file.name} rejected"), body


def failed_message(run: dict[str, Any], reason: str | None, home: Path) -> tuple[str, str]:
    """A failed run: the run id, the failure reason and how to resume it."""
    body = (f"Run {run['id']} failed: {reason or 'no reason recorded'}\n"
            f"Dataset: {run.get('dataset')}   base model: {run.get('base_model')}\n"
            f"Log: {RunFolder(run['run_dir']).console}\n"
            f"Next: fix the cause, then resume with: overnight resume {run['id']} --home {home}")
    return _title(f"run {run['id']} failed"), body


def completed_message(run: dict[str, Any], version: int | None, result: dict[str, Any]) -> tuple[str, str]:
    """A completed run: the run id, the model name and version, final/eval loss and the adapter path."""
    def loss(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"
    adapter = result.get("adapter") or str(RunFolder(run["run_dir"]).adapter)
    body = (f"Run {run['id']} completed: model {run['name']} version {version}, base model {run.get('base_model')}.\n"
            f"final loss {loss(result.get('final_loss', run.get('loss')))}, "
            f"eval loss {loss(result.get('eval_loss', run.get('eval_loss')))}, step {result.get('step', run.get('step'))}\n"
            f"Adapter: {adapter}")
    return _title(f"run {run['id']} completed ({run['name']} v{version})"), body


# --- delivery -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Message:
    event: str
    title: str
    body: str
    subject: str
    urls: tuple[str, ...]


_STOP = object()


class Notifier:
    """Queues notifications and delivers them from one background thread; never raises into the caller.

    `config` is called on the caller's thread at each send and returns the current [notify] table (or None):
    an owner editing overnight.toml takes effect at the next event, no restart needed.
    """

    def __init__(self, config: Callable[[], dict[str, Any] | None]) -> None:
        self._config = config
        self._queue: "queue.Queue[_Message | object]" = queue.Queue(maxsize=QUEUE_LIMIT)
        self._thread: threading.Thread | None = None
        self._plugins: dict[str, Any] = {}
        self._lock = threading.Lock()

    def send(self, event: str, title: str, body: str, subject: str = "") -> bool:
        """Queue `event` for every configured URL when [notify] `on` includes it; True when queued.

        `subject` names the run or file in the log line of a failed delivery. Safe from any thread; never blocks.
        """
        if event not in EVENTS:
            raise ValueError(f"unknown notification event {event!r}; events: {', '.join(EVENTS)}")
        try:
            cfg = NotifyConfig.from_table(self._config())
        except Exception as e:  # noqa: BLE001 - a notification must never break the daemon
            log.warning(f"notify: not sending '{event}' for {subject or title}: {e}")
            return False
        if cfg is None or event not in cfg.on:
            return False
        self._start()
        try:
            self._queue.put_nowait(_Message(event, title, body, subject or title, cfg.urls))
        except queue.Full:
            log.warning(f"notify: {QUEUE_LIMIT} messages are waiting already; dropped '{event}' for {subject}")
            return False
        return True

    def close(self, timeout: float = 15.0) -> None:
        """Deliver what is queued for at most `timeout` seconds, then stop the sender thread."""
        with self._lock:
            t, self._thread = self._thread, None
        if t is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        t.join(timeout)
        if t.is_alive():
            log.warning(f"notify: messages still being delivered after {timeout:.0f} s were abandoned")

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="notify", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is _STOP:
                return
            assert isinstance(msg, _Message)
            for url in msg.urls:
                try:
                    self._deliver(msg, url)
                except Exception as e:  # noqa: BLE001 - keep the sender alive whatever a plugin does
                    log.warning(f"notify: could not deliver '{msg.event}' for {msg.subject} to {masked(url)}: "
                                f"{type(e).__name__}: {e}")

    def _deliver(self, msg: _Message, url: str) -> None:
        import apprise

        plugin = self._plugins.get(url)
        if plugin is None:
            plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
            if plugin is None:
                log.warning(f"notify: could not deliver '{msg.event}' for {msg.subject} to {masked(url)}: "
                            f"{url_problem(url) or 'apprise cannot use this URL'}")
                return
            self._plugins[url] = plugin
        where = masked(plugin.url(privacy=True))
        with _apprise_log() as lines:
            ok = plugin.notify(body=msg.body, title=msg.title, notify_type=_KIND[msg.event])
        if ok:
            log.info(f"notify: sent '{msg.event}' for {msg.subject} to {where}")
        else:
            log.warning(f"notify: could not deliver '{msg.event}' for {msg.subject} to {where}: "
                        f"{failure_reason(lines)}")

