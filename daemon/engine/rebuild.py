"""overnight.db is an index of the run folders: check it against them, and rebuild it from them.

The files in runs/RUN/ are the truth (metadata.json, config.json, metrics.jsonl, evolution.jsonl, and the model
version that metadata.json keeps since the registry writes it there), so a DB that is lost, damaged or behind
the folders is rebuilt, never repaired. Nothing here deletes: a bad DB is moved aside as
overnight.db.broken-STAMP (with its -wal and -shm) for whoever wants to look at it.
Torch-free: the daemon calls this at start, `overnight doctor` from the CLI.
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


from daemon.core.home import DaemonLock, Home
from daemon.core.log import log
from daemon.core.queries import Reader
from daemon.core.runconfig import RunConfig
from daemon.core.rundir import RunFolder, in_this_home, read_jsonl, run_folders
from daemon.core.runrecord import Run, dataset_columns
from daemon.core.states import ACTIVE, ALL, Outcome, State, values
from daemon.core.versionpick import missing_adapter
from daemon.engine.store import SCHEMA_VERSION, Store
from daemon.core.timefmt import iso, run_id_stamp

SIDE_FILES = ("-wal", "-shm")  # SQLite's companions of a WAL database: they move with it
REBUILT = "rebuilt from its run folder"
INTERRUPTED = "interrupted (DB rebuilt)"  # a run active when the DB was lost: its Slurm job may still run


@dataclass
class Finding:
    """Something wrong with the DB, and the command that fixes it."""

    problem: str
    fix: str


@dataclass
class Recovered:
    """What a rebuild put into the new DB."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    metrics: int = 0
    evolution: int = 0

    def summary(self) -> str:
        states: dict[str, int] = {}
        for r in self.runs:
            states[r["state"]] = states.get(r["state"], 0) + 1
        active = [f"{m['name']} v{m['version']}" for m in self.models if m["active"]]
        return (f"{_n(len(self.runs), 'run')} ({', '.join(f'{n} {s}' for s, n in sorted(states.items())) or 'none'}), "
                f"{_n(self.metrics, 'metric record')}, {_n(self.evolution, 'evolution record')}, "
                f"{_n(len(self.models), 'model version')}{' (active: ' + ', '.join(active) + ')' if active else ''}")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# --------------------------------------------------------------------------------------------- looking

def open_db(path: Path, check: str = "quick_check") -> tuple[str | None, int | None, set[str]]:
    """(what makes the DB unusable or None, its schema version, the run ids it indexes), read-only."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as e:
        return f"cannot be opened ({e})", None, set()
    try:
        rows = [r[0] for r in conn.execute(f"PRAGMA {check}")]
        if rows != ["ok"]:
            return f"is damaged ({check}: {'; '.join(map(str, rows[:3]))})", None, set()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() \
            if "meta" in tables else None
        ids = {r[0] for r in conn.execute("SELECT id FROM runs")} if "runs" in tables else set()
        return None, int(version[0]) if version else None, ids
    except (sqlite3.Error, ValueError) as e:
        return f"cannot be read ({e})", None, set()
    finally:
        conn.close()


def diagnose(home: Home, daemon_running: bool) -> tuple[list[str], list[Finding]]:
    """(what is fine, what is wrong) about overnight.db and the run folders."""
    if not home.root.is_dir():
        return [], [Finding(f"{home.root} does not exist", "give the home with --home DIR or $OVERNIGHT_HOME")]
    folders = {d.name: d for d in run_folders(home.runs)}
    if not home.db.exists():
        if not folders:
            return ["no overnight.db and no runs yet: a fresh home"], []
        return [], [Finding(f"{home.db} is missing, but runs/ holds {_n(len(folders), 'run')}",
                            "overnight doctor --rebuild (or start the daemon: it rebuilds the DB itself)")]
    problem, version, ids = open_db(home.db, "integrity_check")
    if problem:
        return [], [Finding(f"{home.db} {problem}", "overnight doctor --rebuild (the damaged file is kept aside)")]
    ok = ["integrity_check: ok"] + ([_schema_note(version)] if (version or 0) <= SCHEMA_VERSION else [])
    findings = [f for f in (_schema_finding(version), _unindexed(folders, ids), _folderless(home, folders, ids),
                            _unreadable(folders), _adapterless(home), _write_locked(home.db)) if f]
    if not daemon_running:
        findings += [f for f in [_disagreeing(home, folders, ids)] if f]
    if not findings:
        ok.append(f"all {len(folders)} run folders are indexed, and every indexed run has its folder")
    return ok, findings


def _schema_note(version: int | None) -> str:
    if version is None or version == SCHEMA_VERSION:
        return f"schema version {version if version is not None else '(none yet)'}"
    return f"schema version {version} (the daemon migrates it to {SCHEMA_VERSION} at its next start)"


def _schema_finding(version: int | None) -> Finding | None:
    if version is None or version <= SCHEMA_VERSION:
        return None
    return Finding(f"overnight.db has schema version {version}, newer than this overnight's {SCHEMA_VERSION}",
                   "upgrade overnight (or overnight doctor --rebuild to index the runs with this version)")


def _unindexed(folders: dict[str, Path], ids: set[str]) -> Finding | None:
    missing = sorted(set(folders) - ids)
    if not missing:
        return None
    return Finding(f"{_n(len(missing), 'run folder')} not in the DB: {_some(missing)}",
                   "overnight doctor --rebuild (or restart the daemon: it rebuilds the DB itself)")


def _folderless(home: Home, folders: dict[str, Path], ids: set[str]) -> Finding | None:
    gone = sorted(ids - set(folders))
    if not gone:
        return None
    return Finding(f"{_n(len(gone), 'run')} in the DB without a folder in {home.runs}: {_some(gone)}",
                   "put the folders back, or overnight doctor --rebuild to forget those runs")


def _adapterless(home: Home) -> Finding | None:
    """Model versions, not deleted, whose adapter is not where the registry says (a run folder moved or emptied by
    hand): `ask`, `export` and `init_adapter` of them fail."""
    reader = Reader(home.db)  # its paths follow a moved or copied home
    try:
        models = reader.models()
    except sqlite3.Error:
        return None
    finally:
        reader.close()
    gone = [f"{m['name']} v{m['version']} ({m['adapter_path']})" for m in models if missing_adapter(m)]
    if not gone:
        return None
    return Finding(f"{_n(len(gone), 'model version')} without an adapter: {_some(gone)}",
                   "put their run folders back; or delete those versions (overnight delete NAME VERSION)")


def _write_locked(db: Path, wait_s: float = 3.0) -> Finding | None:
    """Another process holds the write lock longer than any of the daemon's transactions (a sqlite3 shell or a
    script left inside BEGIN): the daemon cannot record anything meanwhile. Taken and given back, nothing written."""
    conn = sqlite3.connect(db, timeout=wait_s, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        if "locked" not in str(e):
            raise
        return Finding(f"another process holds a write lock on {db} ({e}): the daemon can record nothing until it "
                       f"is released", "end that process's transaction (a sqlite3 shell or a script left inside BEGIN)")
    finally:
        conn.close()
    return None


def _unreadable(folders: dict[str, Path]) -> Finding | None:
    """Run folders whose metadata.json is there but not a JSON object (a disk fault, a hand edit): a rebuild takes
    their state from result.json instead."""
    bad = sorted(rid for rid, d in folders.items() if _damaged(d))
    if not bad:
        return None
    return Finding(f"{_n(len(bad), 'run')} whose metadata.json cannot be read: {_some(bad)}",
                   "restore the file from a backup, or overnight doctor --rebuild (it takes each run's state from its "
                   "result.json)")


def _damaged(folder: Path) -> bool:
    return (folder / "metadata.json").is_file() and not RunFolder(folder).read_metadata()


def _disagreeing(home: Home, folders: dict[str, Path], ids: set[str]) -> Finding | None:
    """Runs whose DB state is not what their metadata.json says: the DB lost writes (a deleted -wal)."""
    if not set(folders) & ids:
        return None
    conn = sqlite3.connect(f"file:{home.db}?mode=ro", uri=True, timeout=5)
    try:
        states = dict(conn.execute("SELECT id, state FROM runs").fetchall())
    finally:
        conn.close()
    odd = sorted(rid for rid in set(folders) & ids
                 if (RunFolder(folders[rid]).read_metadata().get("status") or states[rid]) != states[rid])
    if not odd:
        return None
    return Finding(f"{_n(len(odd), 'run')} with another state in the DB than in metadata.json: {_some(odd)}",
                   "overnight doctor --rebuild (the run folders are the truth)")


def _some(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


# --------------------------------------------------------------------------------------------- rebuilding

def prepare_for_daemon(home: Home) -> None:
    """At daemon start (lock held): make sure overnight.db indexes the run folders, rebuilding it when it is
    missing, damaged or behind them. A DB of a newer overnight is left to Store, which says to upgrade."""
    folders = {d.name: d for d in run_folders(home.runs)}
    if not home.db.exists():
        if folders:
            recovered = rebuild(home)
            log.warning(f"{home.db} was missing: rebuilt it from {home.runs}: {recovered.summary()}")
        return
    problem, version, ids = open_db(home.db)
    if problem is None and (version or 0) <= SCHEMA_VERSION:
        problem = _behind(home, folders, ids)
    if problem:
        aside = move_aside(home)
        recovered = rebuild(home)
        log.warning(f"{home.db} {problem}: moved it aside to {aside.name} and rebuilt it from {home.runs}: "
                    f"{recovered.summary()}")


def _behind(home: Home, folders: dict[str, Path], ids: set[str]) -> str | None:
    """Why a readable DB no longer indexes runs/ (a deleted -wal, a crash between a run folder and its row).
    With no daemon running, the DB and metadata.json agree: both are written at every state change."""
    stale = _unindexed(folders, ids) or _disagreeing(home, folders, ids)
    return f"is behind {home.runs} ({stale.problem})" if stale else None


def rebuild_locked(home: Home) -> tuple[Path | None, Recovered]:
    """`overnight doctor --rebuild`: under the daemon's lock (raises HomeLocked while a daemon runs), move the DB
    aside and rebuild it. Returns where the old one went (None: there was none) and what was recovered."""
    lock = DaemonLock(home)
    lock.acquire()
    try:
        aside = move_aside(home) if home.db.exists() else None
        return aside, rebuild(home)
    finally:
        lock.release()


def move_aside(home: Home) -> Path:
    """Rename overnight.db (and its -wal, -shm) to overnight.db.broken-STAMP: never deleted."""
    base = f"{home.db.name}.broken-{run_id_stamp()}"
    dest, i = home.root / base, 2
    while any(Path(f"{dest}{s}").exists() for s in ("",) + SIDE_FILES):
        dest, i = home.root / f"{base}-{i}", i + 1
    os.rename(home.db, dest)
    for s in SIDE_FILES:
        if Path(f"{home.db}{s}").exists():
            os.rename(f"{home.db}{s}", f"{dest}{s}")
    return dest


def rebuild(home: Home) -> Recovered:
    """Build overnight.db from the run folders (there must be none): into a temp file, renamed into place
    whole, so a crash halfway leaves no half-built index that would look usable."""
    tmp = home.root / f".{home.db.name}.rebuilding"
    for s in ("",) + SIDE_FILES:
        Path(f"{tmp}{s}").unlink(missing_ok=True)  # a crashed earlier attempt's, never a real DB
    store = Store(tmp)
    try:
        recovered = _fill(store, home)
    finally:
        store.close()
    os.replace(tmp, home.db)
    return recovered


def _fill(store: Store, home: Home) -> Recovered:
    recovered = Recovered()
    # each row stays with the metadata it was read from: the queue order below is not the folders' order
    found = []
    for d in run_folders(home.runs):
        meta = RunFolder(d).read_metadata()
        found.append((_run(d, meta, RunConfig.read(d)).to_row(), meta))
    _number([row for row, _ in found])
    found.sort(key=lambda pair: pair[0]["seq"])
    for row, _ in found:
        _insert_run(store, row, recovered)
    for row, meta in found:  # an ASHA trial's rungs (rundir.record_rungs)
        for r in meta.get("rungs") or []:
            if isinstance(r, dict) and isinstance(r.get("rung"), int) and r.get("decision"):
                store.db["rungs"].upsert({**r, "run_id": row["id"]}, pk=("run_id", "rung"))
    recovered.models = _models(home, found)
    for m in recovered.models:
        row = {k: v for k, v in m.items() if k not in ("pinned", "recorded")}
        store.db["models"].insert({**row, "metrics": json.dumps(m["metrics"])})
        if m.get("pinned"):
            store.db["meta"].upsert({"key": f"pinned:{m['name']}", "value": str(m["version"])}, pk="key")
    for name in sorted({m["name"] for m in recovered.models}):
        store.record_models(name)  # the folders say what the rebuilt registry says: the next rebuild agrees
    return recovered


def _run(folder: Path, meta: dict[str, Any], config: RunConfig) -> Run:
    """The run as its folder says (metadata.json, config.json where it says nothing); a run that was active comes
    back queued, to resume."""
    opts, run = config.options, Run.from_metadata(meta)
    state, reason = _state(folder, meta)
    return replace(run, id=folder.name, name=run.name or config.name or folder.name,
                   group_id=run.group_id or config.group,
                   **dataset_columns(config.dataset or meta.get("dataset") or {"path": None}),
                   base_model=run.base_model or opts.get("base_model"), state=State(state), reason=reason,
                   priority=run.priority or int(opts.get("priority") or 0), run_dir=str(folder),
                   created=run.created or iso(folder.stat().st_mtime),
                   max_steps=run.max_steps or opts.get("max_steps") or None, attempts=run.attempts or 0,
                   updated=iso(), extra={})


def _state(folder: Path, meta: dict[str, Any]) -> tuple[str, str | None]:
    status = meta.get("status")
    if status in values(ALL) and status not in values(ACTIVE):
        return status, meta.get("reason")
    if status is None and _damaged(folder):  # how its last trainer ended says the most
        outcome = RunFolder(folder).read_result().get("outcome")
        if outcome in {o.value for o in Outcome}:
            return outcome, f"its metadata.json cannot be read: state from result.json ({outcome})"
    if status is None and not (folder / "metadata.json").is_file():
        return State.QUEUED.value, "accepted but not yet in the DB when it was lost; queued by the rebuild"
    # a trainer still running on it (its daemon was killed) is ended by the next daemon before anything starts
    ckpt = RunFolder(folder).newest_checkpoint()
    return State.QUEUED.value, f"{INTERRUPTED}; resumes from {ckpt.name if ckpt else 'the start'}"


def _number(rows: list[dict[str, Any]]) -> None:
    """Queue order, in place: the recorded seq where one is (and unique), then the rest by creation time."""
    seen: set[int] = set()
    for r in sorted(rows, key=lambda r: (r["created"], r["id"])):
        if not isinstance(r["seq"], int) or r["seq"] in seen:
            r["seq"] = None
        else:
            seen.add(r["seq"])
    nxt = max(seen, default=0)
    for r in sorted((r for r in rows if r["seq"] is None), key=lambda r: (r["created"], r["id"])):
        nxt += 1
        r["seq"] = nxt


def _insert_run(store: Store, row: dict[str, Any], recovered: Recovered) -> None:
    folder = Path(row["run_dir"])
    store.db["runs"].insert(row)
    store.db["transitions"].insert({"run_id": row["id"], "time": row["updated"], "from_state": None,
                                    "to_state": row["state"], "reason": REBUILT})
    metrics = read_jsonl(RunFolder(folder).metrics)
    evolution = read_jsonl(RunFolder(folder).evolution)
    if metrics:
        store.add_metrics(row["id"], metrics)
    if evolution:
        store.add_evolution(row["id"], evolution)
    recovered.runs.append(row)
    recovered.metrics += len(metrics)
    recovered.evolution += len(evolution)


# --------------------------------------------------------------------------------------------- the registry

def _models(home: Home, runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Model versions: as metadata.json records them, else a deleted one's trash/*/model.json, else (runs that
    completed before versions were recorded) numbered in the order the runs finished. Two folders that claim one
    version (a folder put back after the registry went on without it): the newest record keeps it, the other
    takes a number after every number seen, never one that named another adapter."""
    claims = [_model({**m, **_bound_to(home, row, m)}) for row, meta in runs
              for m in [meta.get("model")] if isinstance(m, dict) and m.get("name") and isinstance(m.get("version"), int)]
    found: dict[tuple[str, int], dict[str, Any]] = {}
    displaced = []
    for m in sorted(claims, key=lambda m: m["recorded"] or "", reverse=True):
        if (m["name"], m["version"]) in found:
            displaced.append(m)
        else:
            found[(m["name"], m["version"])] = m
    for m in _trashed(home):
        found.setdefault((m["name"], m["version"]), m)
    known = {m["run_id"] for m in found.values()} | {m["run_id"] for m in displaced}
    for m in sorted(displaced, key=lambda m: (m["created"] or "", m["run_id"])):
        version = _next_version(found, m["name"])
        found[(m["name"], version)] = {**m, "version": version, "active": 0, "pinned": False}
    for row in sorted((r for r, _ in runs if r["state"] == State.COMPLETED.value and r["id"] not in known),
                      key=lambda r: (r["finished"] or "", r["seq"])):
        version = _next_version(found, row["name"])
        found[(row["name"], version)] = _inferred(row, version)
    models = sorted(found.values(), key=lambda m: (m["name"], m["version"]))
    _one_active(models)
    return models


def _bound_to(home: Home, row: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    """A version recorded in a run folder's metadata.json belongs to that folder, whatever its record says (the
    folder was renamed, or the home moved or copied): its adapter is there, or in this home's trash."""
    if m.get("deleted"):
        return {"run_id": row["id"], "adapter_path": in_this_home(home.root, m.get("adapter_path"))}
    return {"run_id": row["id"], "adapter_path": str(Path(row["run_dir"]) / "adapter")}


def _model(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "version", "run_id", "base_model", "metrics", "adapter_path", "created", "active", "deleted",
            "parent", "pinned", "recorded")
    out = {k: m.get(k) for k in keys}
    out["active"] = 1 if m.get("active") and not m.get("deleted") else 0
    out["metrics"] = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
    return out


def _trashed(home: Home) -> list[dict[str, Any]]:
    """`overnight delete` leaves the version's row in trash/NAME-vN-STAMP/model.json beside the adapter."""
    out = []
    for path in sorted(home.trash.glob("*/model.json")) if home.trash.is_dir() else []:
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
            metrics = m.get("metrics")
            m["metrics"] = json.loads(metrics) if isinstance(metrics, str) else metrics
        except (OSError, ValueError):
            continue
        if m.get("name") and isinstance(m.get("version"), int):
            out.append(_model({**m, "deleted": m.get("deleted") or iso(path.stat().st_mtime), "active": 0,
                               "adapter_path": str(path.parent / "adapter"), "pinned": False}))
    return out


def _next_version(found: dict[tuple[str, int], dict[str, Any]], name: str) -> int:
    return max((v for n, v in found if n == name), default=0) + 1


def _inferred(run: dict[str, Any], version: int) -> dict[str, Any]:
    folder = RunFolder(run["run_dir"])
    result, config = folder.read_result(), RunConfig.read(folder.root)
    metrics = {k: result.get(k) for k in ("final_loss", "eval_loss", "step", "train_seconds")
               if result.get(k) is not None}
    return {"name": run["name"], "version": version, "run_id": run["id"], "base_model": run["base_model"],
            "metrics": metrics, "adapter_path": str(folder.adapter),
            "created": run["finished"] or run["created"], "active": None, "deleted": None,
            "parent": config.parent, "pinned": False}


def _one_active(models: list[dict[str, Any]]) -> None:
    """Per name at most one active version: as recorded (several say so: the newest record); where nothing says
    (inferred versions), the newest. Only the active version can be pinned."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for m in models:
        by_name.setdefault(m["name"], []).append(m)
    for versions in by_name.values():
        claimed = [m for m in versions if m["active"]]
        chosen = max(claimed, key=lambda m: (m.get("recorded") or "", m["version"])) if claimed else None
        if chosen is None and any(m["active"] is None for m in versions):
            chosen = next((m for m in reversed(versions) if not m["deleted"]), None)
        for m in versions:
            m["active"] = 1 if m is chosen else 0
            m["pinned"] = bool(m.get("pinned")) and m is chosen
