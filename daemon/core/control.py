"""The control message type, shared by the daemon, the CLI and the dashboard: parse command files, move consumed
ones to done/ and bad ones to rejected/, and (client side) write a command and match the daemon's answer to it.

A command file is named for its kind: `control/KIND` (written by hand) or `control/KIND.ID` (the CLI and the
dashboard write each command under a name of its own, so that none overwrites another, and wait for the
acknowledgement carrying that id). Commands apply in the order their files were completed.

Convention: a command file's first line may name a run id; then it acts on that run only. An empty file acts
on the running job. `control/pause` and an untargeted `control/stop` are *states*: they hold while the file
exists (`pause` may name several runs, a line each). The other files, `pause.ID` and `stop.ID` too, are
*events*: consumed once applied (a `pause.ID` adds its run to control/pause, an untargeted `stop.ID` leaves
control/stop in place).
"""
from __future__ import annotations

import os
import re
import secrets
import sqlite3
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from daemon.core import completeness
from daemon.core.atomic import write_bytes, write_text
from daemon.core.home import Home
from daemon.core.fsutil import ignored, model_name, short_name, stored_name_problem, unique_path
from daemon.core.timefmt import run_id_stamp
from daemon.core.errors import ControlError

COMMANDS = ("pause", "stop", "skip", "priority", "resume", "activate", "delete")
_MAX_BYTES = 64 * 1024
MAX_PRIORITY = 1_000_000  # the priority option's range too (options.py): one meaning of priority
# The id the CLI and the dashboard give a command: when (to the microsecond: it orders commands written within
# one tick of the file system's clock), which process, and a random part (a pid reused). Files so named are
# written atomically (temp name, then rename): complete when seen.
COMMAND_ID = re.compile(r"\d{8}-\d{6}-\d{6}-\d+-[0-9a-f]{6}")
# What intake.safe_name leaves in a run id: letters and digits of any script, '_', '.', '-'; never a space, a
# slash or a control character.
RUN_ID = re.compile(r"[\w.-]+", re.UNICODE)


@dataclass
class Command:
    """One parsed control file."""

    kind: str
    path: Path
    target: str | None = None
    priorities: list[tuple[str, int]] = field(default_factory=list)
    model: tuple[str, int] | None = None  # activate / delete: NAME VERSION
    targets: list[str] = field(default_factory=list)  # pause: every run named (the held file may name several)

    @property
    def source(self) -> str:
        return f"control/{self.path.name}"

    @property
    def id(self) -> str | None:
        """What follows the kind in the file's name (`stop.ID`); None for a plain `control/stop`."""
        return split_name(self.path.name)[1]

    @property
    def held(self) -> bool:
        """The plain `control/pause` and `control/stop`: states in force while the file exists."""
        return self.kind in ("pause", "stop") and self.id is None


def split_name(name: str) -> tuple[str, str | None]:
    """`stop.ID` → ("stop", "ID"); `stop` → ("stop", None)."""
    kind, _, cid = name.partition(".")
    return kind, cid or None


def parse(path: Path) -> Command:
    """Read one control file; raise ControlError with the fix when it cannot be understood.

    FileNotFoundError (a file taken away by its writer) is passed on: there is nothing to reject then.
    """
    kind = split_name(path.name)[0]
    if kind not in COMMANDS:
        raise ControlError(f"control/{shown(path.name)}: unknown control file. Known: {', '.join(COMMANDS)} "
                           f"(a file's first line may name a run id). Fix: rename it to one of these.")
    where = f"control/{shown(path.name)}"
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ControlError(f"{where}: not a regular file (links and folders are refused). "
                           f"Fix: touch control/{kind}")
    raw = path.read_bytes()[:_MAX_BYTES + 1]
    if len(raw) > _MAX_BYTES:
        raise ControlError(f"{where}: larger than 64 KiB; a control file holds a run id or priority "
                           f"lines. Fix: echo RUN_ID > control/{kind}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ControlError(f"{where}: not UTF-8 text. Fix: write plain text, e.g. "
                           f"echo RUN_ID > control/{kind}") from None
    return parse_text(kind, text, path)


def shown(name: str) -> str:
    """A file name as a message shows it: printable and at most 80 characters."""
    name = name.encode("unicode_escape").decode("ascii")
    return name if len(name) <= 80 else name[:77] + "..."


def parse_text(kind: str, text: str, path: Path | None = None) -> Command:
    """A control file's text, as the daemon, the CLI and the dashboard all read it."""
    path = path or Path("control") / kind
    where = f"control/{shown(path.name)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if kind == "priority":
        return Command(kind, path, priorities=_parse_priorities(where, lines))
    if kind in ("activate", "delete"):
        return Command(kind, path, model=_parse_model(kind, where, lines, text))
    # NFC, as safe_name made the run id: a decomposed é typed on macOS names the same run
    targets = [unicodedata.normalize("NFC", ln) for ln in lines]
    several = kind == "pause"  # control/pause holds every run paused by name, a line each
    if (len(targets) > 1 and not several) or not all(RUN_ID.fullmatch(t) for t in targets):
        expected = "run ids, one per line" if several else "one run id on the first line"
        raise ControlError(f"{where}: expected nothing (act on the running job) or {expected}, got {text[:80]!r}. "
                           f"Fix: echo RUN_ID > control/{kind}")
    return Command(kind, path, target=targets[0] if targets else None, targets=targets)


def _parse_model(kind: str, where: str, lines: list[str], text: str) -> tuple[str, int]:
    """`NAME VERSION`: the name as stored (NFC; a dataset's file name may hold spaces), the version in ASCII digits."""
    parts = lines[0].rsplit(None, 1) if len(lines) == 1 else []
    if len(parts) != 2 or not re.fullmatch(r"[0-9]{1,18}", parts[1]):
        raise ControlError(f"{where}: expected one line 'NAME VERSION', got {text[:80]!r}. "
                           f"Fix: overnight {kind} NAME VERSION (see overnight models)")
    name = model_name(parts[0])
    problem = stored_name_problem(name)  # lenient: names taken from dataset file names may hold spaces
    if problem:
        raise ControlError(f"{where}: '{shown(parts[0])}' cannot name a model: {problem}. "
                           f"Fix: overnight {kind} NAME VERSION with a name from overnight models")
    return name, int(parts[1])


def _parse_priorities(where: str, lines: list[str]) -> list[tuple[str, int]]:
    if not lines:
        raise ControlError(f"{where}: empty. Fix: one line per run: RUN_OR_DATASET INTEGER, e.g. "
                           "'echo \"mydata-20260101-120000 10\" > control/priority'")
    out = []
    for i, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[+-]?\d+", parts[1]):
            raise ControlError(f"{where}, line {i}: {line[:80]!r} is not 'RUN_OR_DATASET INTEGER'. "
                               f"Fix: e.g. 'mydata 10' (higher runs first).")
        if abs(int(parts[1])) > MAX_PRIORITY:
            shown_value = parts[1] if len(parts[1]) <= 24 else f"{parts[1][:20]}… ({len(parts[1])} digits)"
            raise ControlError(f"{where}, line {i}: {shown_value} is out of range. "
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


class Completeness:
    """Which control files are complete: one the CLI or the dashboard wrote (`KIND.ID`, renamed into place) at
    once; one written by hand when unchanged for SETTLE_S and open for writing by no process, so that
    `( sleep 2; echo RUN ) > control/stop` is never read empty, as "every run". A file found complete is not
    checked again while its size and time stay the same (each check walks every process's open files)."""

    RECHECK_S = 0.5  # how soon a file found open for writing is looked at again (within the 1 s the spec allows)

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int]] = {}
        self._open: dict[str, float] = {}  # when a file was last found open for writing

    def __call__(self, path: Path) -> bool:
        if COMMAND_ID.fullmatch(split_name(path.name)[1] or ""):
            return True
        try:
            st = path.stat()
        except OSError:
            return True  # vanished: the caller finds nothing to read
        mark = (st.st_size, st.st_mtime_ns)
        if self._seen.get(path.name) == mark:
            return True
        if not settled(path) or time.monotonic() - self._open.get(path.name, -1e9) < self.RECHECK_S:
            return False
        if completeness.writers_of([path]):
            self._open[path.name] = time.monotonic()
            return False
        self._seen[path.name] = mark
        return True

    def written(self, path: Path) -> None:
        """The daemon wrote `path` itself (control/pause, control/stop): complete as it stands."""
        st = path.stat()
        self._seen[path.name] = (st.st_size, st.st_mtime_ns)


def held(home: Home, kind: str) -> str | None:
    """What a held control file (pause, stop) asks for: a run id, "*" for whatever runs, None when absent.

    A file that cannot be understood holds nothing: the daemon rejects it on its pass.
    """
    try:
        return parse(home.control / kind).target or "*"
    except (ControlError, OSError):
        return None


def paused(home: Home) -> frozenset[str]:
    """The runs control/pause holds: their ids, {"*"} for every run, empty when there is no (readable) file."""
    try:
        return frozenset(parse(home.control / "pause").targets or ("*",))
    except (ControlError, OSError):
        return frozenset()


def passed_by(state: str, run_id: str, started: str | None, paused: Iterable[str]) -> bool:
    """A queued run that control/pause names (or holds as one of every run, "*") and that never started: the queue
    passes it by until it is resumed; a pause of every run starts nothing new (no model loaded only to halt). A run
    paused while it trained keeps its place: requeued (a preemption, a daemon restart), it starts again and halts,
    holding its slot as a paused run does."""
    paused = set(paused)
    return state == "queued" and ("*" in paused or run_id in paused) and not started


def hold_pause(home: Home, runs: Iterable[str]) -> Path:
    """Write control/pause (atomically) holding `runs` ({"*"}: every run, an empty file); the daemon's hand."""
    runs = set(runs)
    path = home.control / "pause"
    write_text(path, "" if "*" in runs else "".join(f"{r}\n" for r in sorted(runs)))
    return path


def hold_stop(home: Home) -> Path:
    """Write an empty control/stop: the queue holds until it is removed (an untargeted `stop.ID`)."""
    path = home.control / "stop"
    write_text(path, "")
    return path


def command_files(home: Home) -> list[Path]:
    """Control files waiting to be read (sub-folders done/ and rejected/ are history), oldest write first."""
    found = []
    try:
        entries = list(home.control.iterdir())
    except FileNotFoundError:  # removed while the daemon runs: its next pass recreates it, and says so
        return []
    for p in entries:
        if ignored(p.name) or p.name in ("done", "rejected"):
            continue
        cid = split_name(p.name)[1] or ""
        try:
            found.append((p.lstat().st_mtime_ns, cid if COMMAND_ID.fullmatch(cid) else "", p.name, p))
        except OSError:
            continue  # taken away meanwhile
    return [p for *_, p in sorted(found)]


def _stamped(folder: Path, path: Path) -> Path:
    """Where `path` goes in done/ or rejected/: timestamped, its name (and so the command's id) kept, never over
    another file."""
    return unique_path(folder / f"{run_id_stamp()}-{short_name(path.name)}")


def consume(home: Home, path: Path) -> Path:
    """Move a handled command file to control/done/, timestamped (its name keeps the command's id)."""
    dest = _stamped(home.control_done, path)
    os.rename(path, dest)
    return dest


def keep(home: Home, path: Path) -> Path:
    """Copy a held file the daemon is about to rewrite into control/done/, timestamped."""
    dest = _stamped(home.control_done, path)
    write_bytes(dest, path.read_bytes())
    return dest


def reject(home: Home, path: Path, message: str) -> Path:
    """Move an unusable command file to control/rejected/ beside a .error.txt saying why."""
    dest = _stamped(home.control_rejected, path)
    if path.exists() or path.is_symlink():
        os.rename(path, dest)
    write_text(dest.with_name(dest.name + ".error.txt"), message + "\n")
    return dest


# --- the client side: what the CLI and the dashboard do ---------------------------------------------------
def new_id() -> str:
    now = time.time()
    return f"{run_id_stamp(now)}-{int(now * 1e6) % 1_000_000:06d}-{os.getpid()}-{secrets.token_hex(3)}"


def write_command(home: Home, kind: str, content: str = "", command_id: str | None = None) -> Path:
    """Write a command file atomically (temp name, then rename) under a name of its own, `KIND.ID`: the daemon
    never reads it half-written, and no other command, of this kind or another, replaces it."""
    assert kind in COMMANDS
    path = home.control / f"{kind}.{command_id or new_id()}"
    tmp = home.control / f".{path.name}.tmp"
    try:
        tmp.write_text(content + ("\n" if content else ""), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only control/: nothing half-written stays behind
        tmp.unlink(missing_ok=True)
        raise NotSent(f"could not write {path} ({e.strerror or e}): the command was not sent. Fix: free space on "
                      f"the disk of {home.control}, or make it writable, then send it again.") from None
    return path


class NotSent(OSError):
    """A command file that could not be written: one line with the fix (an OSError, for callers that catch those)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _get(event: Any, name: str) -> Any:
    return event[name] if isinstance(event, Mapping) else getattr(event, name)


@dataclass
class Ticket:
    """A command written, waiting for the daemon's answers: the control_events that carry its id."""

    kind: str
    path: Path
    id: str
    written: float = field(default_factory=time.monotonic)

    def answers(self, events: Iterable[Any]) -> list[Any]:
        """The events (DB rows or dashboard records) that answer this command, oldest first."""
        return sorted((e for e in events if _get(e, "command_id") == self.id), key=lambda e: _get(e, "id"))

    def wait(self, home: Home, timeout: float, poll: float = 0.1) -> list[dict[str, Any]]:
        """Block until the daemon answers (or `timeout` passes: then []), reading the DB. The answers of one
        command are written in one pass, so the first that shows brings the others."""
        end = time.monotonic() + timeout
        while True:
            found = self.answers(_events(home, self.id))
            if found or time.monotonic() >= end:
                return found
            time.sleep(poll)


def _events(home: Home, command_id: str) -> list[dict[str, Any]]:
    from daemon.core.queries import Reader  # sqlite only: the client stays light
    if not home.db.exists():
        return []
    try:
        reader = Reader(home.db)
        try:
            return reader.control_events_of(command_id)
        finally:
            reader.close()
    except sqlite3.Error:
        return []  # a DB being rebuilt (or not yet migrated) answers nothing yet: "not acknowledged yet"


def send(home: Home, kind: str, content: str = "") -> Ticket:
    """Write a command for the daemon; the ticket matches its acknowledgements by the command's id."""
    command_id = new_id()
    return Ticket(kind, write_command(home, kind, content, command_id), command_id)
