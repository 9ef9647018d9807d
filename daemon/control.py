"""The control folder: parse command files, and move consumed ones to done/ and bad ones to rejected/.

Convention: a command file's first line may name a run id; then it acts on that run only. An empty file acts
on the running job. `pause` and an untargeted `stop` are *states*: they hold while the file exists. The other
commands are *events*: consumed once applied.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemon.atomic import write_text
from daemon.home import Home
from daemon.fsutil import ignored, unique_path
from daemon.timefmt import run_id_stamp

COMMANDS = ("pause", "stop", "skip", "priority", "resume", "activate", "delete")
_MAX_BYTES = 64 * 1024


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
    """Read one control file; raise ControlError with the fix when it cannot be understood."""
    kind = path.name
    if kind not in COMMANDS:
        raise ControlError(f"control/{kind}: unknown control file. Known: {', '.join(COMMANDS)} "
                           f"(a file's first line may name a run id). Fix: rename it to one of these.")
    if path.is_symlink() or not path.is_file():
        raise ControlError(f"control/{kind}: not a regular file (links and folders are refused). Fix: touch control/{kind}")
    raw = path.read_bytes()[:_MAX_BYTES + 1]
    if len(raw) > _MAX_BYTES:
        raise ControlError(f"control/{kind}: larger than 64 KiB; a control file holds a run id or priority lines.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ControlError(f"control/{kind}: not UTF-8 text. Fix: write plain text, e.g. "
                           f"echo RUN_ID > control/{kind}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if kind == "priority":
        return Command(kind, path, priorities=_parse_priorities(lines))
    if kind in ("activate", "delete"):
        parts = lines[0].split() if len(lines) == 1 else []
        if len(parts) != 2 or not parts[1].isdigit():
            raise ControlError(f"control/{kind}: expected one line 'NAME VERSION', got {text[:80]!r}. "
                               f"Fix: overnight {kind} NAME VERSION")
        return Command(kind, path, model=(parts[0], int(parts[1])))
    if len(lines) > 1 or (lines and not re.fullmatch(r"[A-Za-z0-9._-]+", lines[0])):
        raise ControlError(f"control/{kind}: expected nothing (act on the running job) or one run id on the first "
                           f"line, got {text[:80]!r}. Fix: echo RUN_ID > control/{kind}")
    return Command(kind, path, target=lines[0] if lines else None)


def _parse_priorities(lines: list[str]) -> list[tuple[str, int]]:
    if not lines:
        raise ControlError("control/priority: empty. Fix: one line per run: RUN_OR_DATASET INTEGER, e.g. "
                           "'echo \"mydata-20260101-120000 10\" > control/priority'")
    out = []
    for i, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[+-]?\d{1,7}", parts[1]):
            raise ControlError(f"control/priority, line {i}: {line!r} is not 'RUN_OR_DATASET INTEGER'. "
                               f"Fix: e.g. 'mydata 10' (higher runs first).")
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


def command_files(home: Home) -> list[Path]:
    """Control files waiting to be read (sub-folders done/ and rejected/ are history)."""
    return sorted(p for p in home.control.iterdir()
                  if not ignored(p.name) and p.name not in ("done", "rejected"))


def consume(home: Home, path: Path) -> Path:
    """Move a handled command file to control/done/, timestamped."""
    dest = unique_path(home.control_done / f"{run_id_stamp()}-{path.name}")
    os.rename(path, dest)
    return dest


def reject(home: Home, path: Path, message: str) -> Path:
    """Move an unusable command file to control/rejected/ beside a .error.txt saying why."""
    dest = unique_path(home.control_rejected / f"{run_id_stamp()}-{path.name}")
    if path.exists() or path.is_symlink():
        os.rename(path, dest)
    write_text(dest.with_name(dest.name + ".error.txt"), message + "\n")
    return dest


def write_command(home: Home, kind: str, content: str = "") -> Path:
    """What the CLI and TUI do: write a control file atomically (temp name, then rename)."""
    assert kind in COMMANDS
    path = home.control / kind
    tmp = home.control / f".{kind}.{os.getpid()}.tmp"
    tmp.write_text(content + ("\n" if content else ""), encoding="utf-8")
    os.replace(tmp, path)
    return path
