"""The state DB: schema, migrations and every write. Only the daemon imports the write side of this module."""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import logging
import sqlite3
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

from daemon.core import control, rundir
from daemon.core.dataformats import SUPPORTED_SUFFIXES
from daemon.core.errors import NewerDB
from daemon.core.gpuset import format_gpu_set
from daemon.core.states import ALL
from daemon.core.timefmt import iso


def _import_sqlite_utils() -> ModuleType:
    """sqlite_utils imports pandas and numpy whenever they are installed (~80 MB resident), only to map their types,
    which no row here holds: hidden while it loads, the idle daemon stays small. A process that has them keeps them."""
    hidden = [m for m in ("pandas", "numpy") if m not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))  # None: `import pandas` raises ImportError, which sqlite_utils expects
    try:
        return importlib.import_module("sqlite_utils")
    finally:
        for m in hidden:
            del sys.modules[m]


sqlite_utils = _import_sqlite_utils()

RUN_COLUMNS: dict[str, type] = {
    "id": str, "name": str, "group_id": str, "dataset": str, "format": str, "schema": str, "records": int,
    "base_model": str, "state": str, "reason": str, "priority": int, "seq": int, "run_dir": str,
    "created": str, "started": str, "finished": str, "step": int, "max_steps": int, "epoch": float,
    "loss": float, "eval_loss": float, "tokens_per_s": float, "eta_s": float, "pid": int, "attempts": int,
    "resume_from": str, "updated": str, "gpu_set": str, "job_id": str, "node": str,
}


def _m1_initial(db: sqlite_utils.Database) -> None:
    columns = {k: v for k, v in RUN_COLUMNS.items() if k not in _LATER_RUN_COLUMNS}
    db["runs"].create(columns, pk="id", not_null={"state", "seq"}, defaults={"priority": 0, "attempts": 0})
    db["runs"].create_index(["state", "priority", "seq"])
    db["transitions"].create({"id": int, "run_id": str, "time": str, "from_state": str, "to_state": str,
                              "reason": str}, pk="id")
    db["transitions"].create_index(["run_id"])
    db["control_events"].create({"id": int, "time": str, "command": str, "target": str, "source": str,
                                 "status": str, "message": str}, pk="id")
    db["metrics"].create({"run_id": str, "step": int, "loss": float, "lr": float, "grad_norm": float,
                          "tokens_per_s": float, "epoch": float, "time": str, "eval_loss": float})
    db["metrics"].create_index(["run_id", "step"])
    db["evolution"].create({"run_id": str, "step": int, "probe": int, "prompt": str, "reference": str,
                            "generation": str, "loss": float, "exact": int, "similarity": float})
    db["evolution"].create_index(["run_id", "step", "probe"], unique=True)
    db["models"].create({"name": str, "version": int, "run_id": str, "base_model": str, "metrics": str,
                         "adapter_path": str, "created": str, "active": int, "deleted": str},
                        pk=("name", "version"), defaults={"active": 0})
    db["daemon"].create({"id": int, "pid": int, "started": str, "heartbeat": str, "version": str,
                         "home": str, "state": str}, pk="id")


def _m2_daemon_problem(db: sqlite_utils.Database) -> None:
    db["daemon"].add_column("problem", str)  # why the daemon cannot do its work (e.g. a broken overnight.toml)


def _m3_model_parent(db: sqlite_utils.Database) -> None:
    db["models"].add_column("parent", str)  # the version a run continued from ("support:3"), or an adapter folder


def _m4_run_gpu_set(db: sqlite_utils.Database) -> None:
    db["runs"].add_column("gpu_set", str)  # the GPUs its trainer holds, as NVML numbers them: "0,1"; "" = the CPU


def _m5_command_id(db: sqlite_utils.Database) -> None:
    db["control_events"].add_column("command_id", str)  # the id in the command file's name (stop.ID); the CLI waits on it
    db["control_events"].create_index(["command_id"])


def _m6_rungs(db: sqlite_utils.Database) -> None:
    # ASHA (daemon/core/asha.py): each trial's metric at each rung it reached, and what became of it there
    db["rungs"].create({"run_id": str, "rung": int, "step": int, "metric": float, "decision": str, "time": str},
                       pk=("run_id", "rung"))


def _m7_run_job(db: sqlite_utils.Database) -> None:
    db["runs"].add_column("job_id", str)  # the Slurm job of its latest attempt (daemon/engine/executors/slurm.py)
    db["runs"].add_column("node", str)  # the node that job runs on


_LATER_RUN_COLUMNS = ("gpu_set", "job_id", "node")  # runs columns that a migration after the first adds

# Each migration is a small function; a DB at version N runs migrations N+1.. in order.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_m1_initial, _m2_daemon_problem, _m3_model_parent,
                                                              _m4_run_gpu_set, _m5_command_id, _m6_rungs, _m7_run_job]
SCHEMA_VERSION = len(MIGRATIONS)


# How long one write waits for a lock another process holds on overnight.db (a sqlite3 shell or a script with an
# open transaction; the daemon is the only writer otherwise). Short: a write that fails is tried again at the next
# pass (nothing is lost: daemon/engine/runner.py keeps unwritten records, control files stay until acknowledged), while
# every second spent waiting here is a second the loop answers no control file and watches no trainer.
BUSY_TIMEOUT_S = 5


def busy_problem(error: BaseException, db_path: Path) -> str | None:
    """The PROBLEM line for a write that found overnight.db locked by another process, or None."""
    if not (isinstance(error, sqlite3.OperationalError) and "locked" in str(error)):
        return None
    return (f"state DB busy: another process holds a write lock on {db_path} ({error}); training goes on, the "
            f"daemon retries and catches up once it is released. Fix: end that process's transaction "
            f"(a sqlite3 shell or a script left inside BEGIN)")


class Store:
    """The daemon's read-write handle on overnight.db. One short transaction per unit of work."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        self.db = sqlite_utils.Database(conn)
        self.db.enable_wal()
        conn.execute("PRAGMA synchronous = NORMAL")
        self._migrate()
        self._inode = self.path.stat().st_ino

    def gone(self) -> bool:
        """Whether overnight.db was removed or replaced since it was opened (this connection writes a file no
        reader sees any more)."""
        try:
            return self.path.stat().st_ino != self._inode
        except FileNotFoundError:
            return True

    def _migrate(self) -> None:
        self.db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise NewerDB(f"{self.path} was written by a newer overnight (schema {current} > {SCHEMA_VERSION}). "
                          f"Fix: upgrade overnight, or index the runs again with this version (overnight doctor "
                          f"--rebuild keeps the newer DB beside it).")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self.db.conn:
                MIGRATIONS[version - 1](self.db)
                self.db["meta"].upsert({"key": "schema_version", "value": str(version)}, pk="key")

    def close(self) -> None:
        self.db.conn.close()

    def wait_writable(self, stop: Callable[[], bool], say: Callable[[str], None]) -> bool:
        """Wait until a write lock can be taken (another process may hold one); False when `stop()` says to give
        up first. The daemon's first writes (its row, the recovery of interrupted runs) cannot wait for a later pass."""
        told = False
        while not stop():
            try:
                self.db.conn.execute("BEGIN IMMEDIATE")  # waits BUSY_TIMEOUT_S for the lock
                self.db.conn.execute("ROLLBACK")
            except sqlite3.OperationalError as e:
                problem = busy_problem(e, self.path)
                if problem is None:
                    raise
                if not told:
                    say(f"{problem}. The daemon starts once it is released.")
                    told = True
                continue
            if told:
                say(f"{self.path.name} is free again: starting")
            return True
        return False

    # --- runs -------------------------------------------------------------------------------------------
    def next_seq(self) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchone()
        return int(row[0])

    def run_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM runs")}

    def group_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT DISTINCT group_id FROM runs WHERE group_id IS NOT NULL")}

    def runs_in_group(self, group_id: str) -> list[dict[str, Any]]:
        """The runs of a sweep (or of a base_model list), in grid order."""
        return [dict(r) for r in self.db.query("SELECT * FROM runs WHERE group_id = ? ORDER BY seq", [group_id])]

    def rungs(self, run_ids: Iterable[str]) -> list[dict[str, Any]]:
        """The ASHA records of these runs (daemon/core/asha.py), by run then rung."""
        ids = list(run_ids)
        marks = ",".join("?" * len(ids))
        return [dict(r) for r in self.db.query(f"SELECT * FROM rungs WHERE run_id IN ({marks}) ORDER BY run_id, rung",
                                               ids)] if ids else []

    def record_rung(self, run_id: str, rung: int, step: int | None, metric: float | None, decision: str) -> None:
        """A trial's record at a rung: reached (waiting), or what the daemon decided there."""
        row = {"run_id": run_id, "rung": rung, "decision": decision, "time": iso()}
        if step is not None:
            row.update(step=step, metric=metric)
        with self.db.conn:
            self.db["rungs"].upsert(row, pk=("run_id", "rung"))
        run = self.get_run(run_id)
        if run and run.get("run_dir"):  # the DB is an index: a rebuilt one finds the rungs in the run folder
            try:
                rundir.record_rungs(Path(run["run_dir"]), self.rungs([run_id]))
            except (OSError, ValueError) as e:
                logging.getLogger("overnight").warning(f"could not record {run_id}'s rungs in its metadata.json: {e}")

    def metrics_at(self, run_id: str, step: int | None) -> list[dict[str, Any]]:
        """The run's metrics records logged at `step` (training and eval), in the order they came."""
        return [dict(r) for r in self.db.query("SELECT * FROM metrics WHERE run_id = ? AND step = ? ORDER BY rowid",
                                               [run_id, step])]

    def held_run_ids(self) -> set[str]:
        """Queued trials waiting at an ASHA rung: the queue passes them by until they are promoted."""
        return {r[0] for r in self.db.execute("SELECT run_id FROM rungs WHERE decision = 'waiting'")}

    def startable(self, paused: Iterable[str]) -> list[dict[str, Any]]:
        """The queued runs that may take a slot (start, or preempt a running run), in queue order: not an ASHA trial
        waiting at its rung, nor a run the queue passes by for control/pause (`paused`: the runs it names)."""
        held, paused = self.held_run_ids(), set(paused)
        return [r for r in self.runs_in(["queued"])
                if r["id"] not in held and not control.passed_by(r["state"], r["id"], r["started"], paused)]

    def insert_run(self, run: dict[str, Any]) -> None:
        """A new run, queued (or already rejected elsewhere); records its first transition."""
        self.insert_runs([run])

    def insert_runs(self, runs: list[dict[str, Any]]) -> None:
        """New runs (a drop's group), all in one transaction or none; each with its first transition."""
        now = iso()
        with self.db.conn:
            for run in runs:
                self.db["runs"].insert({"created": now, **run, "updated": now})
                self.db["transitions"].insert({"run_id": run["id"], "time": now, "from_state": None,
                                               "to_state": run["state"], "reason": run.get("reason")})

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        try:
            return self.db["runs"].get(run_id)
        except sqlite_utils.db.NotFoundError:
            return None

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Progress fields (step, loss, eta…): no transition recorded."""
        fields["updated"] = iso()
        with self.db.conn:
            self.db["runs"].update(run_id, fields)

    def set_state(self, run_id: str, state: str, reason: str | None = None, **fields: Any) -> None:
        """Move a run to `state`, recording the transition in the same transaction."""
        assert state in ALL, state
        now = iso()
        old = self.get_run(run_id)
        with self.db.conn:
            self.db["runs"].update(run_id, {**fields, "state": state, "reason": reason, "updated": now})
            if not (old and old["state"] == state and old["reason"] == reason):  # not a retry of a change whose
                # follow-up (metadata.json, a log line) failed: the history holds each change once
                self.db["transitions"].insert({"run_id": run_id, "time": now, "from_state": old and old["state"],
                                               "to_state": state, "reason": reason})

    def set_gpu_set(self, run_id: str, indices: Iterable[int] | None) -> None:
        """Record the GPUs a run's trainer starts on, as NVML numbers them (`[0, 1]` → "0,1"); None or [] = the
        CPU (""). The dashboard shows it, `overnight status --json` lists it, metadata.json keeps it (the daemon
        writes it at every state change) so a DB rebuilt from runs/ does too."""
        with self.db.conn:
            self.db["runs"].update(run_id, {"gpu_set": format_gpu_set(indices), "updated": iso()})

    def runs_in(self, states: Iterable[str]) -> list[dict[str, Any]]:
        states = tuple(states)
        q = f"SELECT * FROM runs WHERE state IN ({','.join('?' * len(states))}) ORDER BY priority DESC, seq"
        return [dict(r) for r in self.db.query(q, states)]

    # --- control, metrics, evolution ------------------------------------------------------------------
    def control_event(self, command: str, target: str | None, source: str, status: str, message: str,
                      time: str | None = None, command_id: str | None = None) -> None:
        self.control_events([{"command": command, "target": target, "source": source, "status": status,
                              "message": message, "time": time or iso(), "command_id": command_id}])

    def control_events(self, events: list[dict[str, Any]]) -> None:
        """Acknowledgements, in one transaction: a client waiting on a command id sees all of its answers at once.
        Each: command, target, source, status, message, time (when it happened: it may be written late, its first
        write having found the DB full or busy), command_id."""
        with self.db.conn:
            self.db["control_events"].insert_all(events)

    def add_metrics(self, run_id: str, records: list[dict[str, Any]], forget: bool = False) -> None:
        """Mirror metrics.jsonl records; `forget`: the run's earlier rows go first, in the same transaction."""
        cols = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "epoch", "time", "eval_loss")
        rows = [{"run_id": run_id, **{c: r.get(c) for c in cols}} for r in records]
        with self.db.conn:
            if forget:
                self.db.execute("DELETE FROM metrics WHERE run_id = ?", [run_id])
            if rows:
                self.db["metrics"].insert_all(rows)

    def add_evolution(self, run_id: str, records: list[dict[str, Any]], forget: bool = False) -> None:
        cols = ("step", "probe", "prompt", "reference", "generation", "loss", "exact", "similarity")
        rows = [{"run_id": run_id, **{c: r.get(c) for c in cols}} for r in records]
        with self.db.conn:
            if forget:
                self.db.execute("DELETE FROM evolution WHERE run_id = ?", [run_id])
            if rows:
                self.db["evolution"].insert_all(rows, replace=True)

    # --- daemon heartbeat ------------------------------------------------------------------------------
    def daemon_started(self, pid: int, home: str, version: str) -> None:
        now = iso()
        with self.db.conn:
            self.db["daemon"].upsert({"id": 1, "pid": pid, "started": now, "heartbeat": now, "version": version,
                                      "home": home, "state": "running"}, pk="id")

    def heartbeat(self, state: str = "running", problem: str | None = None) -> None:
        with self.db.conn:
            self.db["daemon"].update(1, {"heartbeat": iso(), "state": state, "problem": problem})

    # --- model registry --------------------------------------------------------------------------------
    def models(self, name: str | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM models", []
        if name:
            q, args = q + " WHERE name = ?", [name]
        return [dict(r) for r in self.db.query(q + " ORDER BY name, version", args)]

    def follow_home(self, root: Path) -> list[str]:
        """Paths recorded under another home (this one was moved or copied there, with its runs/ and trash/):
        each run folder and adapter this home holds at the same place is pointed at again, so that nothing trains
        in, or reads from, the home it came from. Returns the homes it came from."""
        moved: dict[str, str] = {}  # run id: its folder here
        olds: set[str] = set()
        for row in self.db.query("SELECT id, run_dir FROM runs WHERE run_dir IS NOT NULL"):
            here = rundir.run_dir_here(root, row["id"], row["run_dir"])
            if here != row["run_dir"]:
                moved[row["id"]] = str(here)
                olds.add(str(Path(row["run_dir"]).parent.parent))
        if not moved:
            return []
        with self.db.conn:
            for run_id, here in moved.items():
                self.db.execute("UPDATE runs SET run_dir = ? WHERE id = ?", [here, run_id])
            for m in list(self.db.query("SELECT name, version, adapter_path FROM models")):
                here = rundir.in_this_home(root, m["adapter_path"])  # the rule a rebuilt registry follows
                if here != m["adapter_path"]:
                    self.db.execute("UPDATE models SET adapter_path = ? WHERE name = ? AND version = ?",
                                    [here, m["name"], m["version"]])
        return sorted(olds)

    def newest_run_of_dataset(self, stem: str) -> str | None:
        """The newest run made from a dataset named STEM.* (any format), or None."""
        names = [stem + suffix for suffix in SUPPORTED_SUFFIXES]
        row = self.db.execute(f"SELECT id FROM runs WHERE dataset IN ({','.join('?' * len(names))}) "
                              f"ORDER BY seq DESC LIMIT 1", names).fetchone()
        return row[0] if row else None

    def pinned_version(self, name: str) -> int | None:
        """The version `overnight activate` pinned for `name` (new versions and sweeps no longer take over)."""
        pin = self.db.execute("SELECT value FROM meta WHERE key = ?", [f"pinned:{name}"]).fetchone()
        return int(pin[0]) if pin and str(pin[0]).isdigit() else None

    def add_model(self, row: dict[str, Any], activate: bool = True) -> int:
        """Register the next version of `row['name']`; it becomes active unless the user pinned another (or
        `activate` is False: a sweep with select = "best" activates its best version when it ends)."""
        with self.db.conn:
            cur = self.db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE name = ?", [row["name"]])
            version = int(cur.fetchone()[0])
            pinned = self.db.execute("SELECT 1 FROM meta WHERE key = ?", [f"pinned:{row['name']}"]).fetchone()
            pinned = pinned or not activate
            if not pinned:
                self.db.execute("UPDATE models SET active = 0 WHERE name = ?", [row["name"]])
            self.db["models"].insert({**row, "version": version, "created": iso(), "active": 0 if pinned else 1,
                                      "metrics": json.dumps(row.get("metrics") or {})})
        self.record_models(row["name"])
        return version

    def activate_model(self, name: str, version: int, pin: bool = True) -> None:
        """Make `version` the active one and pin it (new versions no longer take over); `pin=False` (a sweep's
        selection) leaves the pin as it was."""
        with self.db.conn:
            self.db.execute("UPDATE models SET active = (version = ?) WHERE name = ?", [version, name])
            if pin:
                self.db["meta"].upsert({"key": f"pinned:{name}", "value": str(version)}, pk="key")
        self.record_models(name)

    def mark_model_deleted(self, name: str, version: int, trash_path: str) -> None:
        with self.db.conn:
            self.db.execute("UPDATE models SET deleted = ?, active = 0, adapter_path = ? WHERE name = ? AND version = ?",
                            [iso(), trash_path, name, version])
            # a pin on a version in the trash would keep every later version from taking over, unseen
            self.db.execute("DELETE FROM meta WHERE key = ? AND value = ?", [f"pinned:{name}", str(version)])
        self.record_models(name)

    def record_models(self, name: str) -> None:
        """Write every version of `name` into its run's metadata.json: the registry can then be rebuilt from the
        run folders (daemon/engine/rebuild.py). A failed write costs only that, never the registry change itself."""
        pin = self.db.execute("SELECT value FROM meta WHERE key = ?", [f"pinned:{name}"]).fetchone()
        recorded = _dt.datetime.now().isoformat(timespec="microseconds")  # a rebuild trusts the newest record most
        for m in self.models(name):
            run = self.get_run(m["run_id"])
            if not run or not run.get("run_dir"):
                continue
            pinned = bool(pin) and pin[0] == str(m["version"])
            record = {**m, "metrics": json.loads(m["metrics"] or "{}"), "pinned": pinned, "recorded": recorded}
            try:
                rundir.record_model(Path(run["run_dir"]), record)
            except (OSError, ValueError) as e:
                logging.getLogger("overnight").warning(f"could not record {name} v{m['version']} in "
                                                       f"{run['run_dir']}/metadata.json: {e}")

