"""The control message type, shared by the daemon, the CLI and the dashboard: parse command files, move consumed
ones to done/ and bad ones to rejected/, and (client side) write a command and match the daemon's answer.

Convention: a command file's first line may name a run id; then it acts on that run only. An empty file acts
on the running job. `pause` and an untargeted `stop` are *states*: they hold while the file exists. The other
commands are *events*: consumed once applied.
"""
from __future__ import annotations

import os
import re
import sqlite3
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from daemon.atomic import write_text
from daemon.home import Home
from daemon.fsutil import ignored, model_name, short_name, stored_name_problem, unique_path
from daemon.timefmt import run_id_stamp

COMMANDS = ("pause", "stop", "skip", "priority", "resume", "activate", "delete")
_MAX_BYTES = 64 * 1024
MAX_PRIORITY = 9_999_999
# The events that answer a command besides its own kind: a priority change may preempt the running job.
_ANSWERED_BY = {"priority": ("priority", "preempt")}
# What intake.safe_name leaves in a run id: letters and digits of any script, '_', '.', '-'; never a space, a
# slash or a control character.
RUN_ID = re.compile(r"[\w.-]+", re.UNICODE)


class ControlError(ValueError):
    """An unreadable or unknown control file; the message says what to write instead."""


@dataclass
class Command:
    """One parsed control file."""

    kind: str
    path: Path
    target: str | None = None
    priorities: list[tuple[str, int]] = field(default_factory=list)
    model: tuple[str, int] | None = None  # activate / delete: NAME VERSION

    @property
    def source(self) -> str:
        return f"control/{self.path.name}"


def parse(path: Path) -> Command:
    """Read one control file; raise ControlError with the fix when it cannot be understood.

    FileNotFoundError (a file taken away by its writer) is passed on: there is nothing to reject then.
    """
    kind = path.name
    if kind not in COMMANDS:
        raise ControlError(f"control/{shown(kind)}: unknown control file. Known: {', '.join(COMMANDS)} "
                           f"(a file's first line may name a run id). Fix: rename it to one of these.")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ControlError(f"control/{kind}: not a regular file (links and folders are refused). "
                           f"Fix: touch control/{kind}")
    raw = path.read_bytes()[:_MAX_BYTES + 1]
    if len(raw) > _MAX_BYTES:
        raise ControlError(f"control/{kind}: larger than 64 KiB; a control file holds a run id or priority "
                           f"lines. Fix: echo RUN_ID > control/{kind}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ControlError(f"control/{kind}: not UTF-8 text. Fix: write plain text, e.g. "
                           f"echo RUN_ID > control/{kind}") from None
    return parse_text(kind, text, path)


def shown(name: str) -> str:
    """A file name as a message shows it: printable and at most 80 characters."""
    name = name.encode("unicode_escape").decode("ascii")
    return name if len(name) <= 80 else name[:77] + "..."


def parse_text(kind: str, text: str, path: Path | None = None) -> Command:
    """A control file's text, as the daemon, the CLI and the dashboard all read it."""
    path = path or Path("control") / kind
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if kind == "priority":
        return Command(kind, path, priorities=_parse_priorities(lines))
    if kind in ("activate", "delete"):
        return Command(kind, path, model=_parse_model(kind, lines, text))
    # NFC, as safe_name made the run id: a decomposed é typed on macOS names the same run
    target = unicodedata.normalize("NFC", lines[0]) if lines else None
    if len(lines) > 1 or (target and not RUN_ID.fullmatch(target)):
        raise ControlError(f"control/{kind}: expected nothing (act on the running job) or one run id on the first "
                           f"line, got {text[:80]!r}. Fix: echo RUN_ID > control/{kind}")
    return Command(kind, path, target=target)


def _parse_model(kind: str, lines: list[str], text: str) -> tuple[str, int]:
    """`NAME VERSION`: the name as stored (NFC; a dataset's file name may hold spaces), the version in ASCII digits."""
    parts = lines[0].rsplit(None, 1) if len(lines) == 1 else []
    if len(parts) != 2 or not re.fullmatch(r"[0-9]{1,18}", parts[1]):
        raise ControlError(f"control/{kind}: expected one line 'NAME VERSION', got {text[:80]!r}. "
                           f"Fix: overnight {kind} NAME VERSION (see overnight models)")
    name = model_name(parts[0])
    problem = stored_name_problem(name)  # lenient: names taken from dataset file names may hold spaces
    if problem:
        raise ControlError(f"control/{kind}: '{shown(parts[0])}' cannot name a model: {problem}. "
                           f"Fix: overnight {kind} NAME VERSION with a name from overnight models")
    return name, int(parts[1])


def _parse_priorities(lines: list[str]) -> list[tuple[str, int]]:
    if not lines:
        raise ControlError("control/priority: empty. Fix: one line per run: RUN_OR_DATASET INTEGER, e.g. "
                           "'echo \"mydata-20260101-120000 10\" > control/priority'")
    out = []
    for i, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[+-]?\d+", parts[1]):
            raise ControlError(f"control/priority, line {i}: {line[:80]!r} is not 'RUN_OR_DATASET INTEGER'. "
                               f"Fix: e.g. 'mydata 10' (higher runs first).")
        if abs(int(parts[1])) > MAX_PRIORITY:
            raise ControlError(f"control/priority, line {i}: {parts[1][:20]} is out of range. "
                               f"Fix: a priority between -{MAX_PRIORITY} and {MAX_PRIORITY}.")
        out.append((parts[0], int(parts[1])))
    return out


SETTLE_S = 0.3  # a shell's `>` creates the file empty and writes a moment later


def settled(path: Path, now: float | None = None) -> bool:
    """True when the file was last written SETTLE_S ago or more (a vanished file counts as settled)."""
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        return True
    return age >= SETTLE_S


def held(home: Home, kind: str) -> str | None:
    """What a held control file (pause, stop) asks for: a run id, "*" for whatever runs, None when absent.

    A file that cannot be understood holds nothing: the daemon rejects it on its pass.
    """
    try:
        return parse(home.control / kind).target or "*"
    except (ControlError, OSError):
        return None


def command_files(home: Home) -> list[Path]:
    """Control files waiting to be read (sub-folders done/ and rejected/ are history)."""
    return sorted(p for p in home.control.iterdir()
                  if not ignored(p.name) and p.name not in ("done", "rejected"))


def consume(home: Home, path: Path) -> Path:
    """Move a handled command file to control/done/, timestamped."""
    dest = unique_path(home.control_done / f"{run_id_stamp()}-{short_name(path.name)}")
    os.rename(path, dest)
    return dest


def reject(home: Home, path: Path, message: str) -> Path:
    """Move an unusable command file to control/rejected/ beside a .error.txt saying why."""
    dest = unique_path(home.control_rejected / f"{run_id_stamp()}-{short_name(path.name)}")
    if path.exists() or path.is_symlink():
        os.rename(path, dest)
    write_text(dest.with_name(dest.name + ".error.txt"), message + "\n")
    return dest


# --- the client side: what the CLI and the dashboard do ---------------------------------------------------
def write_command(home: Home, kind: str, content: str = "") -> Path:
    """Write a control file atomically (temp name, then rename): the daemon never reads it half-written."""
    assert kind in COMMANDS
    path = home.control / kind
    tmp = home.control / f".{kind}.{os.getpid()}.tmp"
    tmp.write_text(content + ("\n" if content else ""), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _get(event: Any, name: str) -> Any:
    return event[name] if isinstance(event, Mapping) else getattr(event, name)


@dataclass
class Ticket:
    """A command written, waiting for the daemon's answer: control_events newer than `after_id`."""

    kind: str
    path: Path
    after_id: int
    written: float = field(default_factory=time.monotonic)

    def answers(self, events: Iterable[Any]) -> list[Any]:
        """The events (DB rows or dashboard records) that answer this command, oldest first."""
        kinds = _ANSWERED_BY.get(self.kind, (self.kind,))
        found = [e for e in events if _get(e, "id") > self.after_id and _get(e, "command") in kinds]
        return sorted(found, key=lambda e: _get(e, "id"))

    def wait(self, home: Home, timeout: float, poll: float = 0.1) -> list[dict[str, Any]]:
        """Block until the daemon answers (or `timeout` passes: then []), reading the DB."""
        end = time.monotonic() + timeout
        while True:
            found = self.answers(_events(home, 50))
            if found or time.monotonic() >= end:
                return found
            time.sleep(poll)


def _events(home: Home, limit: int) -> list[dict[str, Any]]:
    from daemon.queries import Reader  # sqlite only: the client stays light
    if not home.db.exists():
        return []
    try:
        reader = Reader(home.db)
        try:
            return reader.control_events(limit)
        finally:
            reader.close()
    except sqlite3.Error:
        return []  # a DB being rebuilt answers nothing yet: the caller says "not acknowledged yet"


def send(home: Home, kind: str, content: str = "") -> Ticket:
    """Write a command for the daemon; the ticket matches its acknowledgement by event id, never by clock."""
    after = max((e["id"] for e in _events(home, 1)), default=0)
    return Ticket(kind, write_command(home, kind, content), after)
