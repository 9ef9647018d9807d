"""A home: the folder holding inbox/, control/, runs/, the state DB and the owner's overnight.toml."""
from __future__ import annotations

import fcntl
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from daemon.core.timefmt import iso
from daemon.core.errors import HomeDamaged, HomeLocked


@dataclass(frozen=True)
class Home:
    """Every path overnight uses inside one home."""

    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None, create: bool = True) -> "Home":
        """`--home`, else `$OVERNIGHT_HOME`, else the current directory; missing folders are created."""
        raw = home or os.environ.get("OVERNIGHT_HOME") or os.getcwd()
        h = cls(Path(raw).expanduser().resolve())
        if create:
            h.create()
        return h

    def cli(self, args: str) -> str:
        """`overnight ARGS` as a user types it for this home: with --home unless a bare command finds it there."""
        default = Path(os.environ.get("OVERNIGHT_HOME") or os.getcwd()).expanduser().resolve()
        return f"overnight {args}" + ("" if default == self.root else f" --home {shlex.quote(str(self.root))}")

    @property
    def folders(self) -> tuple[Path, ...]:
        """The folders a home needs, parents first."""
        return (self.inbox, self.rejected, self.control, self.control_done, self.control_rejected, self.runs)

    def create(self) -> None:
        """Create the folders a home needs (never touches what is there); HomeDamaged when one cannot be made."""
        for d in self.folders:
            try:
                d.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise HomeDamaged(self._not_a_folder(d)) from None
            except OSError as e:
                raise HomeDamaged(f"{d}: cannot create this folder of the home ({e.strerror or e}). Fix: check the "
                                  f"permissions of {d.parent} (or use another --home).") from None

    def repair(self) -> tuple[list[str], str | None]:
        """Recreate the home's folders that were removed under a running daemon (rm -rf control/).

        Returns the folders recreated, and what cannot be repaired (a file where a folder belongs) with
        its fix, or None. Nothing that exists is touched."""
        made: list[str] = []
        for d in self.folders:
            if d.is_dir():
                continue
            if d.exists() or d.is_symlink():  # parents come first: d's parent is a folder
                return made, self._not_a_folder(d)
            try:
                d.mkdir()
            except OSError as e:
                return made, (f"{d} is missing and cannot be recreated ({e.strerror or e}). Fix: mkdir {d}, or check "
                              f"the permissions of {d.parent}")
            made.append(str(d))
        return made, None

    def damage(self) -> str | None:
        """A file (or a link to none) where a folder of the home belongs, with the fix; None when there is none.
        Read-only: what `status` says when no daemon runs to say it."""
        for d in self.folders:
            if not d.is_dir() and (d.exists() or d.is_symlink()):
                return self._not_a_folder(d)
        return None

    def _not_a_folder(self, d: Path) -> str:
        what = "a symbolic link" if d.is_symlink() else "a file" if d.exists() else "missing"
        return (f"{d} is {what}, not a folder: overnight keeps its {d.name}/ there. Fix: move it aside "
                f"(mv {d} {d}.old) and overnight recreates the folder (or use another --home).")

    inbox = property(lambda self: self.root / "inbox")
    rejected = property(lambda self: self.root / "inbox" / "rejected")
    control = property(lambda self: self.root / "control")
    control_done = property(lambda self: self.root / "control" / "done")
    control_rejected = property(lambda self: self.root / "control" / "rejected")
    runs = property(lambda self: self.root / "runs")
    trash = property(lambda self: self.root / "trash")
    cache = property(lambda self: self.root / ".overnight")
    db = property(lambda self: self.root / "overnight.db")
    log = property(lambda self: self.root / "overnight.log")
    toml = property(lambda self: self.root / "overnight.toml")
    lock_path = property(lambda self: self.root / "overnight.lock")

    def run_dir(self, run_id: str) -> Path:
        """The folder of one run."""
        return self.runs / run_id

    def contains(self, path: Path) -> bool:
        """True when `path` (resolved) lies inside the home: names that would escape it are refused."""
        try:
            Path(os.path.realpath(path)).relative_to(self.root)
            return True
        except ValueError:
            return False


class DaemonLock:
    """The single-instance lock: an flock on overnight.lock, holding the owner's PID and start time.

    flock is released by the kernel when the process dies (kill -9 included), so a stale lock never blocks
    a restart; the PID and start time are there to name the holder and to let clients tell whether a
    daemon is alive.
    """

    def __init__(self, home: Home) -> None:
        self.home = home
        self._fd: int | None = None
        self._dir_fd: int | None = None
        self._info: dict = {}

    def acquire(self) -> None:
        """Take the lock or raise HomeLocked naming the process that holds it. The home folder itself is locked
        too: a removed overnight.lock must not let a second daemon in (where the filesystem locks folders)."""
        self._dir_fd = _locked(os.open(self.home.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), self.home,
                               optional=True)
        try:
            fd = _locked(os.open(self.home.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), self.home)
        except HomeLocked:
            self._close_dir()
            raise
        me = psutil.Process()
        self._info = {"pid": me.pid, "create_time": me.create_time(), "started": iso()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._info).encode(), 0)
        self._fd = fd

    def keep(self) -> None:
        """Write overnight.lock again when it was removed or replaced, so that clients still find the daemon."""
        if self._fd is None:
            return
        try:
            same = os.stat(self.home.lock_path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            from daemon.core.atomic import write_json
            write_json(self.home.lock_path, self._info)

    def release(self) -> None:
        """Drop the lock (the file stays; its content is ignored once no process holds the flock)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)  # its flock goes with it
            self._dir_fd = None


def _flock_holder(inode: int) -> dict[str, Any] | None:
    """The process holding a flock on the file with this inode, from /proc/locks (Linux), as read_lock_owner says
    it; None where that cannot be told."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            pid = int(fields[4])
            try:
                started = iso(psutil.Process(pid).create_time())
            except psutil.Error:
                started = "?"
            return {"pid": pid, "started": started}
    return None


def _locked(fd: int, home: Home, optional: bool = False) -> int | None:
    """`fd` with an exclusive flock, or HomeLocked naming the holder; `optional`: None where the filesystem cannot
    lock it (a folder over NFS)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        inode = os.fstat(fd).st_ino
        os.close(fd)
        holder = read_lock_owner(home) or _flock_holder(inode)  # overnight.lock removed by hand: the kernel knows
        who = f"PID {holder['pid']} (started {holder.get('started', '?')})" if holder else "another process"
        stop = f"kill -TERM {holder['pid']}" if holder else f"find it with: fuser -v {home.root}"
        raise HomeLocked(f"another overnight daemon already serves {home.root}: {who}. "
                         f"Stop it first ({stop}) or use another --home.") from None
    except OSError:
        os.close(fd)
        if optional:
            return None
        raise


def read_lock_owner(home: Home) -> dict | None:
    """The PID/start time written by the daemon holding the lock, or None."""
    try:
        return json.loads(home.lock_path.read_text() or "null")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def daemon_alive(home: Home) -> dict | None:
    """The live daemon's lock info, or None when no daemon serves this home (checked by PID + start time)."""
    owner = read_lock_owner(home)
    if not owner:
        return None
    try:
        proc = psutil.Process(owner["pid"])
        if abs(proc.create_time() - owner["create_time"]) > 1.0:
            return None  # the PID was reused by another process after a crash
    except (psutil.NoSuchProcess, KeyError):
        return None
    return owner
