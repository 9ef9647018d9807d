"""What happened overnight and needs the user: failed runs, rejected drops, a held queue. Read by `overnight status`
and the dashboard's "needs you" strip alike, so both say the same. Read-only, no torch, no click, no Textual."""
from __future__ import annotations

import datetime as _dt
import functools
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable

from daemon.core.home import Home
from daemon.core.queries import stale_problem
from daemon.core.rundir import run_folders
from daemon.core.options import owner_toml
from daemon.core.space import disk_full_problem
from daemon.core.states import State
from daemon.core.timefmt import run_id_stamp

DEFAULT_SINCE_H = 24.0
HELD_BY_STOP = "control/stop (overnight resume lifts it)"
ERROR_SUFFIX = ".error.txt"
MAX_REJECTED = 50  # a morning view, not an archive: inbox/rejected/ keeps every one


@dataclass(frozen=True)
class FailedRun:
    id: str
    reason: str  # its first line: the rest is in the run's console.log
    ended: str | None


@dataclass(frozen=True)
class RejectedDrop:
    file: str
    error: str  # the first line of NAME.error.txt
    error_file: str
    time: str  # when it was rejected (the .error.txt's mtime), ISO local time as in the DB


def first_line(text: str | None) -> str:
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")


def cutoff(since_h: float, now: float | None = None) -> str:
    """The window's start as the DB writes times (ISO local, seconds), so it compares as text."""
    now = _dt.datetime.now().timestamp() if now is None else now
    # no later than 1970 (nothing overnight wrote is older): a window of 1e12 hours is everything, not an error
    return _dt.datetime.fromtimestamp(max(0.0, now - since_h * 3600)).isoformat(timespec="seconds")


def _get(row: Any, key: str) -> Any:
    return row.get(key) if isinstance(row, dict) else getattr(row, key, None)


def failed_runs(rows: Iterable[Any], since: str) -> list[FailedRun]:
    """Failed runs that ended at or after `since` (run dicts from queries.Reader, or the dashboard's RunRows),
    newest first."""
    found = []
    for r in rows:
        if _get(r, "state") != State.FAILED:
            continue
        ended = _get(r, "finished") or _get(r, "updated") or _get(r, "created")
        if ended and ended >= since:
            found.append(FailedRun(_get(r, "id"), first_line(_get(r, "reason")) or "no reason recorded", ended))
    return sorted(found, key=lambda f: f.ended or "", reverse=True)


WAITING_S = 60  # a drop's companion file alone this long in the inbox is said: its dataset is not coming


def waiting_files(home: Home, now: float | None = None) -> list[str]:
    """Sidecars, probe and eval files alone in the inbox for over a minute, each with why it waits (its dataset is
    not there: misnamed, or it came after its dataset was taken)."""
    from daemon.core.dropfiles import companion_hint, role_of, stem_of
    try:
        files = [p for p in home.inbox.iterdir() if p.is_file() and not p.name.startswith(".")]
    except OSError:
        return []
    datasets = {stem_of(p) for p in files if role_of(p) == "dataset"}
    now = time.time() if now is None else now
    out = []
    for p in sorted(files):
        if role_of(p) not in ("sidecar", "probes", "eval") or stem_of(p) in datasets:
            continue
        try:
            if now - p.stat().st_mtime < WAITING_S:
                continue
        except OSError:
            continue
        out.append(companion_hint(p) or (
            f"{p.name} waits for a dataset named {stem_of(p)} (.jsonl, .json, .csv, .parquet or .txt); if that "
            f"dataset was taken already, its run did not use this file: drop the dataset again with it"))
    return out


def rejected_drops(home: Home, since: str) -> list[RejectedDrop]:
    """Drops the intake rejected since `since`, newest first: one per NAME.error.txt in inbox/rejected/."""
    try:
        entries = [e for e in os.scandir(home.rejected) if e.name.endswith(ERROR_SUFFIX) and e.is_file()]
    except OSError:
        return []
    dated = []
    for e in entries:
        try:
            st = e.stat()
        except OSError:
            continue
        stamp = _dt.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds")
        if stamp >= since:
            dated.append((stamp, e.name, e.path, st.st_mtime_ns, st.st_size))
    if not dated:
        return []  # the dashboard asks every second: runs/ is listed only when a rejection needs it
    dated.sort(reverse=True)
    out = []
    taken = _run_stamps(home)
    for stamp, name, path, mtime_ns, size in dated[:MAX_REJECTED]:
        if _taken_since(name, run_id_stamp(mtime_ns / 1e9), taken):
            continue  # dropped again, fixed, and taken: nothing needs the user any more
        read = _read_error(path, name, mtime_ns, size)
        if read is not None:
            out.append(RejectedDrop(read[0], read[1], path, stamp))
    return out


_RUN_ID = re.compile(r"^(?P<stem>.+)-(?P<stamp>\d{8}-\d{6})(?:-\d+)?$")  # NAME-YYYYmmdd-HHMMSS[-N]


def _run_stamps(home: Home) -> dict[str, str]:
    """Each run name in runs/ and when its newest run was accepted (the stamp of its id)."""
    out: dict[str, str] = {}
    try:
        names = os.listdir(home.runs)
    except OSError:
        return out
    for m in filter(None, map(_RUN_ID.match, names)):
        out[m["stem"]] = max(out.get(m["stem"], ""), m["stamp"])
    return out


def _taken_since(error_name: str, rejected_at: str, taken: dict[str, str]) -> bool:
    """A rejected drop (NAME.error.txt, NAME.1.error.txt…) whose name a run accepted later."""
    stem = re.sub(r"\.\d+$", "", error_name[: -len(ERROR_SUFFIX)])
    return taken.get(stem, "") >= rejected_at


@functools.lru_cache(maxsize=4 * MAX_REJECTED)
def _read_error(path: str, name: str, mtime_ns: int, size: int) -> tuple[str, str] | None:
    """(the dropped file, the error's first line) of one .error.txt; cached by its mtime and size, as the
    dashboard asks every second."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(64 * 1024)  # the error and the list of moved files come first
    except OSError:
        return None
    return _dropped_file(text, name), first_line(text) or "no error recorded"


def _moved_line(text: str) -> str:
    """The files an .error.txt says the intake moved, as its line lists them (`Rejected files (moved to DIR): A, B`:
    "A, B", each as shown_name shows it); "" when that line is missing (an older or hand-written file)."""
    for line in text.splitlines():
        if line.startswith("Rejected files (moved to "):
            return line.rpartition("): ")[2].strip()
    return ""


def names_moved(text: str, name: str) -> bool:
    """Whether the .error.txt lists `name` among the files it moved: a whole entry (a name may hold ", " itself)."""
    listed = _moved_line(text)
    return listed == name or listed.startswith(name + ", ") or listed.endswith(", " + name) or \
        f", {name}, " in listed


def _dropped_file(text: str, error_name: str) -> str:
    """The dataset of the drop (the first file the .error.txt names); the .error.txt's own stem without that line."""
    return _moved_line(text).split(", ")[0] or error_name[: -len(ERROR_SUFFIX)]


def problem(home: Home, beat: dict[str, Any] | None, alive: dict[str, Any] | None) -> str | None:
    """The PROBLEM line of `overnight status` and the dashboard: what the running daemon (`alive`: its lock's pid and
    create_time) wrote in its row (`beat`), else a full disk (the daemon cannot write its PROBLEM line into the DB
    then), else a daemon that has not been able to write the DB; with no daemon running, a damaged home folder or a
    missing DB whose runs are safe in runs/. None when nothing is wrong."""
    found = (((beat or {}).get("problem") if alive else None) or disk_full_problem(home.root)
             or stale_problem(home.db, beat, alive))
    if not found and not alive:
        found = home.damage() or missing_db_problem(home) or owner_toml(home.toml).read().problem
    return found


def held(stop_target: str | None, problem: str | None) -> str | None:
    """What keeps queued runs from starting: an untargeted control/stop, else a full disk or a broken
    overnight.toml (the PROBLEM line's text); None when nothing does. A stalled trainer or a busy DB holds nothing."""
    if stop_target == "*":
        return HELD_BY_STOP
    line = first_line(problem)
    if line and (line.startswith("disk full") or "overnight.toml" in line):
        return line
    return None


def missing_db_problem(home: Home) -> str | None:
    """What `status` says, no daemon running, when overnight.db is gone but runs/ holds runs (its index is lost, the
    runs are not): the daemon rebuilds it at its start."""
    if home.db.exists():
        return None
    folders = run_folders(home.runs)
    if not folders:
        return None
    return (f"{home.db} is missing, but {home.runs} holds {len(folders)} run folder{'s' * (len(folders) != 1)}: the "
            f"runs are safe there (the DB is only their index), so status lists none. Fix: start the daemon "
            f"({home.cli('daemon')}): it rebuilds the DB from {home.runs} at its start (or run "
            f"{home.cli('doctor --rebuild')} now)")
