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

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from daemon.core.log import log
from daemon.core.notifytable import EVENTS, NotifyConfig, apprise_log, failure_reason, masked, url_problem
from daemon.core.rundir import RunFolder

# apprise's own notification kinds (they colour or tag the message on most services)
_KIND = {"failed": "failure", "completed": "success", "rejected": "warning", "stalled": "warning",
         "disk_low": "warning", "regressed": "warning"}
QUEUE_LIMIT = 200  # messages waiting for one URL's sender thread; beyond this new ones are dropped (and logged)
DELIVERY_TIMEOUT_S = 60.0  # one delivery to one URL, beyond apprise's socket timeouts (a DNS hang, a trickling server)
CLOSE_TIMEOUT_S = 10.0  # at shutdown, delivering what is queued (all URLs together) takes at most this long


# --- messages -------------------------------------------------------------------------------------------------
def title(what: str) -> str:
    return f"overnight on {socket.gethostname()}: {what}"


def rejected_message(file: Path, error: str, error_file: Path, home: Path) -> tuple[str, str]:
    """A rejected drop: the file, the error (as in NAME.error.txt), where the file is now and what to do."""
    body = (f"{file.name} was rejected.\n\n{error}\n\nThe file is now in {file.parent}/ (nothing was deleted); "
            f"the error is also in {error_file}.\nNext: fix it and drop it into {home / 'inbox'}/ again "
            f"(mv, or overnight add FILE --home {home}).")
    return title(f"{file.name} rejected"), body


def failed_message(run: dict[str, Any], reason: str | None, home: Path) -> tuple[str, str]:
    """A failed run: the run id, the failure reason and how to resume it."""
    body = (f"Run {run['id']} failed: {reason or 'no reason recorded'}\n"
            f"Dataset: {run.get('dataset')}   base model: {run.get('base_model')}\n"
            f"Log: {RunFolder(run['run_dir']).console}\n"
            + ("Next: drop the dataset again, as the Fix says (resuming this run would fail the same way)"
               if "Fix: drop" in (reason or "") else
               f"Next: fix the cause, then resume with: overnight resume {run['id']} --home {home}"))
    return title(f"run {run['id']} failed"), body


def completed_message(run: dict[str, Any], version: int | None, result: dict[str, Any]) -> tuple[str, str]:
    """A completed run: the run id, the model name and version, final/eval loss and the adapter path."""
    def loss(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"
    adapter = result.get("adapter") or str(RunFolder(run["run_dir"]).adapter)
    body = (f"Run {run['id']} completed: model {run['name']} version {version}, base model {run.get('base_model')}.\n"
            f"final loss {loss(result.get('final_loss', run.get('loss')))}, "
            f"eval loss {loss(result.get('eval_loss', run.get('eval_loss')))}, step {result.get('step', run.get('step'))}\n"
            f"Adapter: {adapter}")
    return title(f"run {run['id']} completed ({run['name']} v{version})"), body


def regressed_message(run: dict[str, Any], version: int, report: dict[str, Any], home: Path) -> tuple[str, str]:
    """A regressed version: what it lost since its parent (the forgetting alarm), and that it was not activated."""
    why = "; ".join(report.get("why") or []) or "it lost what its parent knew"
    name = run["name"]
    body = (f"Model {name} version {version} (run {run['id']}) is regressed since {report.get('parent') or 'the base'}"
            f": {why}.\nIt was registered but not activated.\n"
            f"What it lost: overnight models --home {home} (and {RunFolder(run['run_dir']).eval_report})\n"
            f"Next: to use this one anyway: overnight activate {name} {version} --home {home}")
    return title(f"{name} v{version} regressed"), body


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
        with apprise_log() as lines:
            ok = plugin.notify(body=msg.body, title=msg.title, notify_type=_KIND[msg.event])
        if ok:
            return (logging.INFO, f"notify: sent '{msg.event}' for {msg.subject} to {where}")
        return (logging.WARNING, f"notify: could not deliver '{msg.event}' for {msg.subject} to {where}: "
                                 f"{failure_reason(lines)}")
