"""Read-only access to overnight.db for the CLI and dashboards: never writes, never locks the daemon out."""
from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import time
import unicodedata
from pathlib import Path
from typing import Any

from daemon.core.gpuset import parse_gpu_set
from daemon.core.rundir import in_this_home, run_dir_here
from daemon.core.runrecord import Run
from daemon.core.states import ACTIVE, State, values
from daemon.core.errors import BrokenDB, RefError


def _runs_query(states: tuple[str, ...] | None) -> tuple[str, tuple]:
    """`Reader.runs`' SQL: active runs, then queued ones, each by priority and arrival; then finished ones newest
    first."""
    where, args = "", ()
    if states:
        where, args = f"WHERE state IN ({','.join('?' * len(states))})", states
    queued = f"'{State.QUEUED}'"
    live = f"state IN {values(ACTIVE)} OR state = {queued}"  # several runs may be active: priority order too
    order = (f"CASE WHEN state IN {values(ACTIVE)} THEN 0 WHEN state = {queued} THEN 1 ELSE 2 END, "
             f"CASE WHEN {live} THEN -priority ELSE 0 END, "
             f"CASE WHEN {live} THEN seq ELSE -seq END")
    return f"SELECT * FROM runs {where} ORDER BY {order}", args


class Reader:
    """A read-only connection (WAL readers never block the writer). Missing DB = empty home."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)
        self.conn: sqlite3.Connection | None = None
        if self.path.exists():
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA busy_timeout = 5000")

    def close(self) -> None:
        if self.conn:
            self.conn.close()

    def _decoded(self, row: dict[str, Any]) -> dict[str, Any]:
        """A runs row as readers see it: `gpu_set` a list of NVML indices ([] = the CPU, or not recorded yet), and
        its folder here (`_here`)."""
        row["gpu_set"] = parse_gpu_set(row.get("gpu_set"))
        return self._here(row)

    def _here(self, row: dict[str, Any]) -> dict[str, Any]:
        """`run_dir` in this home when it was moved or copied since (the daemon records that at its next start)."""
        row["run_dir"] = run_dir_here(self.path.parent, row["id"], row.get("run_dir"))
        return row

    def _all(self, sql: str, args: tuple | list = ()) -> list[dict[str, Any]]:
        if self.conn is None:
            return []
        try:
            return [dict(r) for r in self.conn.execute(sql, args)]
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []  # the daemon has not created the schema yet
            raise
        except sqlite3.DatabaseError as e:  # not a database, or a malformed one
            raise BrokenDB(self.path, e) from None

    def runs(self, states: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Runs: active ones, then queued ones, each by priority and arrival; then finished ones newest first."""
        return [self._decoded(r) for r in self._all(*_runs_query(states))]

    def run_records(self, states: tuple[str, ...] | None = None, kind: type[Run] = Run) -> list[Run]:
        """The same runs as `runs`, as `Run`s (or `kind`, a subclass: the dashboard's row)."""
        return [kind.from_row(self._here(r)) for r in self._all(*_runs_query(states))]

    def run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM runs WHERE id = ?", (run_id,))
        return self._decoded(rows[0]) if rows else None

    def find_run(self, ref: str) -> dict[str, Any] | None:
        """A run by exact id, else the newest run whose id starts with `ref` or whose name is `ref` (NFC, as ids
        and names are stored: an é typed decomposed finds its run)."""
        ref = unicodedata.normalize("NFC", ref)
        return self.run(ref) or next(iter(map(self._decoded, self._all(
            "SELECT * FROM runs WHERE id LIKE ? OR name = ? ORDER BY seq DESC LIMIT 1", (ref + "%", ref)))), None)

    def group_runs(self, group_id: str) -> list[dict[str, Any]]:
        """The runs of a sweep (or of a base_model list), in grid order."""
        return [self._decoded(r) for r in self._all("SELECT * FROM runs WHERE group_id = ? ORDER BY seq",
                                                     (group_id,))]

    def find_groups(self, ref: str) -> list[str]:
        """Group ids `ref` names: that id exactly, else the groups whose id starts with it or whose runs' name
        it is (newest first; several means `ref` is ambiguous)."""
        ref = unicodedata.normalize("NFC", ref)
        if self._all("SELECT 1 FROM runs WHERE group_id = ? LIMIT 1", (ref,)):
            return [ref]
        rows = self._all("SELECT group_id, MAX(seq) AS newest FROM runs WHERE group_id IS NOT NULL AND "
                         "(substr(group_id, 1, ?) = ? OR name = ?) GROUP BY group_id "
                         "ORDER BY newest DESC", (len(ref), ref, ref))
        return [r["group_id"] for r in rows]

    def named_run(self, ref: str) -> dict[str, Any]:
        """The run `ref` names (the CLI's RUN): its exact id, else the one run whose name is `ref`, else the one whose
        id starts with `ref`. Several such runs are refused with their ids (RefError): picking the newest would act
        on a run the user did not mean."""
        ref = unicodedata.normalize("NFC", ref)  # NFC, as ids and names are stored
        run = self.run(ref)
        if run is not None:
            return run
        rows = self._all("SELECT id, state, name FROM runs WHERE substr(id, 1, ?) = ? OR name = ? ORDER BY seq DESC",
                         (len(ref), ref, ref))
        named = [r for r in rows if r["name"] == ref]
        rows = named or rows  # a run's exact name outranks ids that merely start with it (big vs big2-…)
        if not rows:
            raise RefError(f"no run matches {ref!r}. Fix: give a run's id or name as overnight runs lists it")
        if len(rows) > 1:
            listed = "\n".join(f"  {r['id']} ({r['state']})" for r in rows)
            raise RefError(f"{ref!r} matches {len(rows)} runs; name one by its id:\n{listed}")
        return self.run(rows[0]["id"])

    def compared(self, refs: tuple[str, ...] | list[str]) -> tuple[str | None, list[dict[str, Any]]]:
        """What `overnight compare REFS` compares: one ref is a group (by id, by prefix or name when unambiguous, or
        the group of a run) and gives (its id, its runs); several are runs (a group id among them: all its runs),
        giving (None, those runs). A ref that names none, or several groups: RefError."""
        if len(refs) == 1:
            ref = refs[0]
            groups = self.find_groups(ref)
            if len(groups) > 1:
                raise RefError(f"{ref!r} names {len(groups)} groups: {', '.join(groups[:8])}. "
                               f"Fix: give the group id, e.g. overnight compare {groups[0]}")
            if not groups:
                run = self.find_run(ref)
                if run is not None and run["group_id"]:
                    groups = [run["group_id"]]
            if not groups:
                raise RefError(f"no group matches {ref!r}: compare takes a sweep's group id (or its name), "
                               f"or two runs or model versions (NAME:V) or more. Fix: e.g. overnight compare RUN1 "
                               f"RUN2, or overnight compare --answers NAME:1 NAME:2 to compare answers")
            return groups[0], self.group_runs(groups[0])
        runs: dict[str, dict[str, Any]] = {}
        for ref in refs:
            members = self.group_runs(ref)  # a group id among the runs: all of its runs
            for r in members or [self.named_run(ref)]:
                runs.setdefault(r["id"], r)
        return None, list(runs.values())

    def transitions(self, run_id: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM transitions WHERE run_id = ? ORDER BY id", (run_id,))

    def control_events(self, limit: int = 20) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM control_events ORDER BY id DESC LIMIT ?", (limit,))

    def control_events_of(self, command_id: str) -> list[dict[str, Any]]:
        """The acknowledgements of one command (control/KIND.ID), oldest first."""
        return self._all("SELECT * FROM control_events WHERE command_id = ? ORDER BY id", (command_id,))

    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM metrics WHERE run_id = ? ORDER BY step", (run_id,))

    def evolution(self, run_id: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM evolution WHERE run_id = ? ORDER BY step, probe", (run_id,))

    def rungs(self, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Each ASHA trial's records, rung by rung (daemon/core/asha.py): step, metric, decision."""
        marks = ",".join("?" * len(run_ids))
        out: dict[str, list[dict[str, Any]]] = {}
        for r in self._all(f"SELECT * FROM rungs WHERE run_id IN ({marks}) ORDER BY rung", run_ids):
            out.setdefault(r["run_id"], []).append(r)
        return out

    def models(self) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM models ORDER BY name, version")
        pins = {r["key"].split(":", 1)[1]: r["value"] for r in self._all("SELECT key, value FROM meta "
                                                                         "WHERE key LIKE 'pinned:%'")}
        for r in rows:
            r["metrics"] = json.loads(r["metrics"] or "{}")
            r["pinned"] = pins.get(r["name"]) == str(r["version"])  # `overnight activate` chose it: new ones wait
            r["adapter_path"] = in_this_home(self.path.parent, r["adapter_path"])  # a moved or copied home
        return rows

    def daemon(self) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM daemon WHERE id = 1")
        return rows[0] if rows else None

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self._all("SELECT state, COUNT(*) AS n FROM runs GROUP BY state")}


# The daemon writes its heartbeat every 2 s: this much older, while it runs, means its writes fail (the DB is locked
# by another process, or cannot be written) and the PROBLEM line it would write cannot reach the DB either.
STALE_S = 15


def stale_problem(db_path: Path, daemon_row: dict[str, Any] | None, alive: dict[str, Any] | None,
                  now: float | None = None) -> str | None:
    """What `status` and the dashboard say when a running daemon (`alive`: its lock's pid and create_time) has not
    written overnight.db for STALE_S: its heartbeat is that old, or it has not written its own row since it started."""
    if not alive:
        return None
    now = time.time() if now is None else now
    row = daemon_row or {}
    try:
        if row.get("pid") != alive["pid"]:  # still starting: the row is an earlier daemon's
            age = now - float(alive["create_time"])
        else:
            # the heartbeat is local time, and a daemon under systemd may not share this shell's TZ: every write
            # also appends to the -wal (which the daemon's open connection keeps), whose time needs no time zone
            age = now - _dt.datetime.fromisoformat(row["heartbeat"]).timestamp()
            wal = Path(f"{db_path}-wal")
            if wal.exists():
                age = min(age, now - wal.stat().st_mtime)
    except (KeyError, TypeError, ValueError, OSError):
        return None
    if age < STALE_S:
        return None
    pid = alive["pid"]
    holders = _holders(db_path, {pid, os.getpid()})
    if holders:
        return (f"state DB busy: the daemon (PID {pid}) has not been able to write {db_path.name} for {age:.0f} s; "
                f"{', '.join(holders)} also has it open and may hold its write lock. Training goes on; the daemon "
                f"catches up once the lock is released. Fix: end that process's transaction (or the process)")
    return (f"the daemon (PID {pid}) has not written {db_path.name} for {age:.0f} s (the DB or its disk cannot be "
            f"written?). Fix: see the newest lines of overnight.log")


def _holders(db_path: Path, exclude: set[int]) -> list[str]:
    """Other processes that have overnight.db (or its -wal) open, as 'PID N (name)'."""
    import psutil
    names = {str(db_path.resolve()), str(db_path.resolve()) + "-wal"}
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.info["pid"] in exclude:
            continue
        try:
            if any(f.path in names for f in proc.open_files()):
                found.append(f"PID {proc.info['pid']} ({proc.info['name']})")
        except (psutil.Error, OSError):
            continue
    return found
