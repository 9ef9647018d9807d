"""Notifications through apprise ([notify] in overnight.toml): ntfy, Slack, Discord, mail, JSON webhooks… by URL.

The daemon calls `Notifier.send(event, title, body, subject)` from its loop; the message is queued and delivered by
a background thread per URL, each delivery with a timeout, so a slow or dead notifier never holds the loop up, fails
a run, stops the daemon or delays the other URLs: a delivery that fails is one line in overnight.log
(`notify: could not deliver 'failed' for RUN to json://…: why`).

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from daemon.log import log
from daemon.errors import OptionsError
from daemon.rundir import RunFolder

EVENTS = ("failed", "completed", "rejected", "stalled", "disk_low")
TABLE_KEYS = ("urls", "on")
# apprise's own notification kinds (they colour or tag the message on most services)
_KIND = {"failed": "failure", "completed": "success", "rejected": "warning", "stalled": "warning",
         "disk_low": "warning"}
QUEUE_LIMIT = 200  # messages waiting for one URL's sender thread; beyond this new ones are dropped (and logged)
DELIVERY_TIMEOUT_S = 60.0  # one delivery to one URL, beyond apprise's socket timeouts (a DNS hang, a trickling server)
CLOSE_TIMEOUT_S = 10.0  # at shutdown, delivering what is queued (all URLs together) takes at most this long
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


_STOP = object()


class Notifier:
    """Queues notifications and delivers them from one background thread per URL; never raises into the caller.

    A receiver that is slow or never answers delays only its own messages: each URL has its own bounded queue and
    sender thread, and each delivery gives up after DELIVERY_TIMEOUT_S (beyond apprise's own socket timeouts).

    `config` is called on the caller's thread at each send and returns the current [notify] table (or None):
    an owner editing overnight.toml takes effect at the next event, no restart needed.
    """

    def __init__(self, config: Callable[[], dict[str, Any] | None]) -> None:
        self._config = config
        self._senders: dict[str, _Sender] = {}
        self._lock = threading.Lock()

    def send(self, event: str, title: str, body: str, subject: str = "") -> bool:
        """Queue `event` for every configured URL when [notify] `on` includes it; True when queued for any.

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
        msg = _Message(event, title, body, subject or title)
        queued = False
        for url in dict.fromkeys(cfg.urls):
            with self._lock:
                sender = self._senders.get(url)
                if sender is None:
                    sender = self._senders[url] = _Sender(url)
            try:
                sender.queue.put_nowait(msg)
                queued = True
            except queue.Full:
                log.warning(f"notify: {QUEUE_LIMIT} messages are waiting already for {masked(url)}; dropped "
                            f"'{event}' for {msg.subject} there")
        return queued

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued for at most `timeout` seconds (CLOSE_TIMEOUT_S), all URLs together, then stop the
        sender threads; what a receiver that does not answer still holds is abandoned (and logged)."""
        timeout = CLOSE_TIMEOUT_S if timeout is None else timeout
        with self._lock:
            senders, self._senders = list(self._senders.values()), {}
        end = time.monotonic() + timeout
        for s in senders:
            try:
                s.queue.put(_STOP, timeout=max(0.0, end - time.monotonic()))
            except queue.Full:
                pass
        for s in senders:
            s.thread.join(max(0.0, end - time.monotonic()))
        stuck = [s for s in senders if s.thread.is_alive()]
        if stuck:
            log.warning(f"notify: messages still being delivered after {timeout:.0f} s were abandoned: "
                        + ", ".join(f"{s.waiting()} to {masked(s.url)}" for s in stuck))


class _Sender:
    """One URL's queue and thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queue: "queue.Queue[_Message | object]" = queue.Queue(maxsize=QUEUE_LIMIT)
        self.plugin: Any = None
        self.busy = False
        self.thread = threading.Thread(target=self._work, name=f"notify {masked(url)}", daemon=True)
        self.thread.start()

    def waiting(self) -> int:
        """The messages not delivered yet (the one being delivered included)."""
        return sum(1 for m in list(self.queue.queue) if m is not _STOP) + int(self.busy)

    def _work(self) -> None:
        while True:
            msg = self.queue.get()
            if msg is _STOP:
                return
            assert isinstance(msg, _Message)
            self.busy = True
            self._deliver_bounded(msg)
            self.busy = False

    def _deliver_bounded(self, msg: _Message) -> None:
        """Deliver on a thread of its own, given up after DELIVERY_TIMEOUT_S (a thread cannot be killed: one that
        hangs for ever in a plugin is left behind, and the URL's next message goes on without it)."""
        said: list[tuple[int, str]] = []
        done = threading.Event()

        def run() -> None:
            try:
                said.append(self._deliver(msg))
            except Exception as e:  # noqa: BLE001 - keep the sender alive whatever a plugin does
                said.append((logging.WARNING, f"notify: could not deliver '{msg.event}' for {msg.subject} to "
                                              f"{masked(self.url)}: {type(e).__name__}: {e}"))
            finally:
                done.set()

        threading.Thread(target=run, name=f"notify {masked(self.url)} {msg.event}", daemon=True).start()
        timeout = DELIVERY_TIMEOUT_S
        if done.wait(timeout):
            log.log(*said[0])
            return
        self.plugin = None  # the abandoned delivery may still be using it
        log.warning(f"notify: could not deliver '{msg.event}' for {msg.subject} to {masked(self.url)}: no answer "
                    f"after {timeout:g} s; gave up")

    def _deliver(self, msg: _Message) -> tuple[int, str]:
        """Deliver one message; the (level, line) for overnight.log."""
        import apprise

        plugin = self.plugin
        if plugin is None:
            plugin = apprise.Apprise.instantiate(self.url, suppress_exceptions=True)
            if plugin is None:
                return (logging.WARNING, f"notify: could not deliver '{msg.event}' for {msg.subject} to "
                                         f"{masked(self.url)}: {url_problem(self.url) or 'apprise cannot use this URL'}")
            self.plugin = plugin
        where = masked(plugin.url(privacy=True))
        with _apprise_log() as lines:
            ok = plugin.notify(body=msg.body, title=msg.title, notify_type=_KIND[msg.event])
        if ok:
            return (logging.INFO, f"notify: sent '{msg.event}' for {msg.subject} to {where}")
        return (logging.WARNING, f"notify: could not deliver '{msg.event}' for {msg.subject} to {where}: "
                                 f"{failure_reason(lines)}")
