"""What the dashboard shows, read from a home: frozen snapshots of the DB and the run folders (no Textual here).

Everything is read-only and cheap enough to poll once a second: short queries on a read-only WAL connection,
and run files read incrementally (the end of console.log, the new lines of metrics.jsonl) so a log of a million
lines or 100k metric records never has to be loaded again.
"""
from __future__ import annotations

import json
import math
import sqlite3
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from daemon.core import control, morning, rundir, sweep
from daemon.core.evolution import EvolutionReport, analyze, is_probe_record, kept_step, no_probes, with_lost
from daemon.core.home import Home, daemon_alive
from daemon.core.morning import FailedRun, RejectedDrop
from daemon.core.queries import Reader
from daemon.core.rundir import JsonlTail, LogUpdate, RunFolder
from daemon.core.runconfig import RunConfig
from daemon.core.runrecord import Run

LOG_LINES = 2000  # lines of console.log the dashboard keeps (Log(max_lines=…) bounds the widget the same way)
_MAX_APPEND_BYTES = 1 << 20  # a bigger jump in console.log is re-read from its end instead of in full


# --------------------------------------------------------------------------------------------- home snapshot

@dataclass(frozen=True)
class DaemonState:
    """Whether a daemon serves the home (by its lock: PID + start time), and its DB heartbeat."""

    alive: bool
    pid: int | None = None
    started: str | None = None
    heartbeat: str | None = field(default=None, compare=False)  # ticks every 2 s: not a reason to redraw
    version: str | None = None
    problem: str | None = None  # why the daemon cannot take drops (a broken overnight.toml)


@dataclass(frozen=True, kw_only=True)
class RunRow(Run):
    """One row of the runs table: the run (daemon.core.runrecord), and whether it is the best of its group."""

    best: bool = False  # the best completed run of its group (daemon.core.sweep.rank)
    rungs: int = 0  # ASHA rungs this trial reached (daemon.core.asha)
    waiting: bool = False  # held at its last rung until the group's other trials say whether it goes on
    paused: bool = False  # queued, never started, named by control/pause: passed by until resumed


@dataclass(frozen=True)
class ControlAck:
    """A control event as the daemon recorded it (requested / applied / rejected)."""

    id: int
    time: str
    command: str
    target: str | None
    source: str | None
    status: str
    message: str
    command_id: str | None = None  # the id of the command file it answers (control/KIND.ID)


@dataclass(frozen=True)
class ModelRow:
    """One registered model version."""

    name: str
    version: int
    run_id: str
    base_model: str | None
    active: bool
    created: str | None
    deleted: str | None
    adapter_path: str | None
    final_loss: float | None
    eval_loss: float | None
    parent: str | None = None  # what it continued from: `NAME:VERSION`, or an adapter folder (daemon.engine.lineage)
    rouge_l: float | None = None  # its eval report's (daemon/core/evalreport.py): ROUGE-L on the eval file
    forgetting: float | None = None  # the general-text loss's rise since its parent (or the base)
    regressed: bool = False  # it lost answers its parent had right, or its forgetting passed forgetting_alarm


@dataclass(frozen=True)
class HomeSnapshot:
    """Everything the dashboard shows about a home at one moment (compared for equality to skip redraws)."""

    root: str
    daemon: DaemonState
    runs: tuple[RunRow, ...] = ()
    events: tuple[ControlAck, ...] = ()
    models: tuple[ModelRow, ...] = ()
    paused: frozenset[str] = frozenset()  # what control/pause holds: run ids, "*" for whatever runs; empty if absent
    stop_held: bool = False  # an untargeted control/stop holds the queue
    error: str | None = None  # the DB could not be read this time (shown, retried next second)
    # what needs the user (daemon.core.morning, the same as `overnight status`): failed runs and rejected drops of the
    # last `morning.DEFAULT_SINCE_H` hours, newest first, and what holds the queue
    failed: tuple[FailedRun, ...] = ()
    rejected: tuple[RejectedDrop, ...] = ()
    held: str | None = None
    waiting: tuple[str, ...] = ()  # sidecars, probe and eval files alone in the inbox, each with why

    def run(self, run_id: str | None) -> RunRow | None:
        """The run with this id, if listed."""
        return next((r for r in self.runs if r.id == run_id), None)

    @property
    def active_runs(self) -> tuple[RunRow, ...]:
        """The runs the daemon is training (or preparing, or holding paused), several where `gpus_per_run`
        leaves room for more than one: highest priority first, then arrival."""
        return tuple(sorted((r for r in self.runs if r.active), key=lambda r: (-r.priority, r.seq or 0)))

    def counts(self) -> dict[str, int]:
        """Runs per state."""
        out: dict[str, int] = {}
        for r in self.runs:
            out[r.state.value] = out.get(r.state.value, 0) + 1
        return out


def _field_subset(cls: type, row: dict[str, Any]) -> dict[str, Any]:
    names = cls.__dataclass_fields__.keys()  # type: ignore[attr-defined]
    return {k: row.get(k) for k in names}


def _model_row(row: dict[str, Any]) -> ModelRow:
    metrics = row.get("metrics") or {}
    return ModelRow(name=row["name"], version=int(row["version"]), run_id=row.get("run_id") or "",
                    base_model=row.get("base_model"), active=bool(row.get("active")), created=row.get("created"),
                    deleted=row.get("deleted"), adapter_path=row.get("adapter_path"),
                    final_loss=metrics.get("final_loss"), eval_loss=metrics.get("eval_loss"),
                    parent=row.get("parent"), rouge_l=(metrics.get("report") or {}).get("rougeL"),
                    forgetting=(metrics.get("report") or {}).get("forgetting"),
                    regressed=bool((metrics.get("report") or {}).get("regressed")))


def _mark_best(runs: tuple[RunRow, ...], reader: Reader) -> tuple[RunRow, ...]:
    """Mark the best run of every group of two runs or more (probes learned are read only to break a tie)."""
    groups: dict[str, list[RunRow]] = {}
    for r in runs:
        if r.group_id:
            groups.setdefault(r.group_id, []).append(r)
    best: set[str] = set()
    for members in groups.values():
        if len(members) > 1:
            by = sweep.ranked_by(RunConfig.read(members[0].run_dir).options) if members[0].run_dir else "eval_loss"
            winner = sweep.best(members, lambda run: analyze(reader.evolution(run.id), until=kept_step(run.run_dir)).learned,
                                by)
            if winner:
                best.add(winner.id)
    return tuple(replace(r, best=True) if r.id in best else r for r in runs) if best else runs


def _mark_rungs(runs: tuple[RunRow, ...], reader: Reader) -> tuple[RunRow, ...]:
    """The rungs each trial of an ASHA sweep reached, and whether it waits at one."""
    records = reader.rungs([r.id for r in runs if r.group_id])
    if not records:
        return runs
    return tuple(replace(r, rungs=len(records[r.id]), waiting=records[r.id][-1]["decision"] == "waiting")
                 if r.id in records else r for r in runs)


class HomeWatcher:
    """Reads a home's state DB and control folder into HomeSnapshots; reopens the DB when it appears."""

    def __init__(self, home: Home, events: int = 20) -> None:
        self.home = home
        self.events = events
        self._reader: Reader | None = None
        self._identity: tuple[int, int] | None = None  # the (st_dev, st_ino) of the DB file the reader has open

    def _db(self) -> Reader:
        # by file identity, not by name: `overnight doctor --rebuild` renames the DB aside and puts a new file in
        # its place, and a connection kept open would go on reading the old one
        identity = _file_identity(self.home.db)
        if self._reader is None or identity != self._identity:
            self.close()
            self._reader, self._identity = Reader(self.home.db), identity
        return self._reader

    def snapshot(self) -> HomeSnapshot:
        """The home now. A DB that cannot be read gives a snapshot carrying the error instead of raising."""
        alive = daemon_alive(self.home)
        pause = control.paused(self.home)
        stop = control.held(self.home, "stop")
        try:
            reader = self._db()
            beat = reader.daemon() or {}
            daemon = DaemonState(alive=bool(alive), pid=(alive or {}).get("pid"), started=(alive or {}).get("started"),
                                 heartbeat=beat.get("heartbeat"), version=beat.get("version"),
                                 problem=morning.problem(self.home, beat, alive))
            runs = _mark_rungs(_mark_best(tuple(reader.run_records(kind=RunRow)), reader),  # type: ignore[arg-type]
                               reader)
            runs = tuple(replace(r, paused=True) if control.passed_by(r.state, r.id, r.started, pause) else r
                         for r in runs)
            since = morning.cutoff(morning.DEFAULT_SINCE_H)
            return HomeSnapshot(
                root=str(self.home.root), daemon=daemon, runs=runs,
                events=tuple(ControlAck(**_field_subset(ControlAck, e)) for e in reader.control_events(self.events)),
                models=tuple(_model_row(m) for m in reader.models()),
                paused=pause, stop_held=stop == "*",
                failed=tuple(morning.failed_runs(runs, since)),
                rejected=tuple(morning.rejected_drops(self.home, since)),
                held=morning.held(stop, daemon.problem), waiting=tuple(morning.waiting_files(self.home)))
        except (sqlite3.Error, json.JSONDecodeError) as e:
            self.close()  # a fresh connection next time
            return HomeSnapshot(root=str(self.home.root), daemon=DaemonState(alive=bool(alive)),
                                paused=pause, stop_held=stop == "*",
                                error=f"{self.home.db}: {e} (retrying every second)")

    def close(self) -> None:
        """Close the DB connection."""
        if self._reader is not None:
            self._reader.close()
            self._reader, self._identity = None, None


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino): which file a name points to now; None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


# --------------------------------------------------------------------------------------------- console.log

class LogTail(rundir.LogTail):
    """console.log as the dashboard shows it: at most `keep` lines, a big jump read again from the end."""

    def __init__(self, path: Path, keep: int = LOG_LINES) -> None:
        super().__init__(path, keep, max_jump=_MAX_APPEND_BYTES)


@dataclass(frozen=True)
class SearchResult:
    """Lines of a log containing a text (case-insensitive): the last `limit` of them, with 1-based numbers."""

    needle: str
    matches: tuple[tuple[int, str], ...]
    total: int
    lines_scanned: int


def grep_file(path: Path, needle: str, limit: int = LOG_LINES, chunk: int = 8 << 20) -> SearchResult:
    """Search a whole log in chunks (memory stays bounded by `chunk` and `limit`, whatever the file's size)."""
    target = needle.lower().encode("utf-8")
    found: deque[tuple[int, str]] = deque(maxlen=limit)
    total = lines_before = 0
    carry = b""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return SearchResult(needle, (), 0, 0)
    with f:
        while True:
            block = f.read(chunk)
            data = carry + block
            end = len(data) if not block else data.rfind(b"\n") + 1
            if end == 0 and block:
                carry = data  # one line longer than a chunk: keep reading it
                continue
            text, carry = data[:end], data[end:]
            total += _grep_block(text, target, lines_before, found)
            lines_before += text.count(b"\n")
            if not block:
                break
    if text and not text.endswith(b"\n"):
        lines_before += 1
    return SearchResult(needle, tuple(found), total, lines_before)


def _grep_block(text: bytes, target: bytes, first_line: int, found: deque[tuple[int, str]]) -> int:
    lowered = text.lower()
    pos, counted, line_no, hits = 0, 0, first_line, 0
    while target:
        pos = lowered.find(target, pos)
        if pos < 0:
            break
        start = text.rfind(b"\n", 0, pos) + 1
        stop = text.find(b"\n", pos)
        stop = len(text) if stop < 0 else stop
        line_no += text.count(b"\n", counted, start)
        counted = start
        found.append((line_no + 1, text[start:stop].decode("utf-8", "replace")))
        hits += 1
        pos = stop + 1
    return hits


# --------------------------------------------------------------------------------------------- metrics

@dataclass(frozen=True)
class Series:
    """One curve, downsampled for a plot."""

    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]


NO_SERIES = Series("", (), ())


@dataclass(frozen=True)
class ChartData:
    """The curves of one run: train loss, eval loss and learning rate, and a preference run's reward margin and
    accuracy (TRL's rewards/margins, rewards/accuracies); `points` = records behind them."""

    loss: Series
    eval_loss: Series
    lr: Series
    points: int
    margin: Series = NO_SERIES
    accuracy: Series = NO_SERIES

    @property
    def preference(self) -> bool:
        return bool(self.margin.xs)


def downsample(xs: array | list[float], ys: array | list[float], buckets: int) -> tuple[tuple[float, ...], ...]:
    """Bucket means: at most `buckets` points whatever the length (NaNs in `ys` are left out of their bucket).

    Sums run over array slices (C speed): 100k points take a few milliseconds, not a full Python loop.
    """
    n = len(xs)
    if n <= buckets:
        keep = [i for i in range(n) if not math.isnan(ys[i])]
        return tuple(xs[i] for i in keep), tuple(ys[i] for i in keep)
    out_x, out_y = [], []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        bx, by = xs[lo:hi], ys[lo:hi]
        total = sum(by)
        if math.isnan(total):  # a record without this value: average the others
            pairs = [(x, y) for x, y in zip(bx, by) if not math.isnan(y)]
            if not pairs:
                continue
            bx, by, total = [p[0] for p in pairs], [p[1] for p in pairs], sum(p[1] for p in pairs)
        out_x.append(sum(bx) / len(bx))
        out_y.append(total / len(by))
    return tuple(out_x), tuple(out_y)


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


class MetricsTail:
    """A run's metrics.jsonl read incrementally into compact float arrays (8 bytes per value)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tail = JsonlTail(path)
        self._clear()

    def _clear(self) -> None:
        self.steps, self.loss, self.lr = array("d"), array("d"), array("d")
        self.eval_steps, self.eval_loss = array("d"), array("d")
        self.margin, self.accuracy = array("d"), array("d")  # NaN in an SFT run's records: no curve
        self._cache: tuple[int, int, ChartData] | None = None  # (records, buckets, result)

    def poll(self) -> bool:
        """Read appended records; True when something changed."""
        update = self._tail.poll()
        if update.reset:
            self._clear()  # rewritten after a resume from checkpoint
        for r in update.records:
            step = _num(r.get("step"))
            if r.get("loss") is not None or r.get("lr") is not None:
                self.steps.append(step)
                self.loss.append(_num(r.get("loss")))
                self.lr.append(_num(r.get("lr")))
                self.margin.append(_num(r.get("rewards/margins")))
                self.accuracy.append(_num(r.get("rewards/accuracies")))
            if r.get("eval_loss") is not None:
                self.eval_steps.append(step)
                self.eval_loss.append(_num(r.get("eval_loss")))
        return bool(update.records) or update.reset

    def chart(self, buckets: int) -> ChartData:
        """The curves, downsampled to `buckets` points each (cached until new records arrive)."""
        self.poll()
        count = len(self.steps) + len(self.eval_steps)
        if self._cache and self._cache[:2] == (count, buckets):
            return self._cache[2]
        data = ChartData(loss=Series("loss", *downsample(self.steps, self.loss, buckets)),
                         eval_loss=Series("eval loss", *downsample(self.eval_steps, self.eval_loss, buckets)),
                         lr=Series("lr", *downsample(self.steps, self.lr, buckets)), points=count,
                         margin=Series("reward margin", *downsample(self.steps, self.margin, buckets)),
                         accuracy=Series("accuracy", *downsample(self.steps, self.accuracy, buckets)))
        self._cache = (count, buckets, data)
        return data


# --------------------------------------------------------------------------------------------- run detail

@dataclass(frozen=True)
class RunDetail:
    """The selected run: new log lines, charts (its own and the compared runs' loss), evolution, progress.json."""

    run_id: str
    log: LogUpdate | None
    charts: ChartData
    compare: tuple[Series, ...] = ()
    evolution: EvolutionReport | None = None
    progress: dict[str, Any] = field(default_factory=dict)


class EvolutionTail:
    """A run's evolution.jsonl read incrementally; the report is recomputed only when records arrive."""

    def __init__(self, run_dir: Path) -> None:
        self._run_dir = Path(run_dir)
        self._tail = JsonlTail(RunFolder(run_dir).evolution)
        self._records: list[dict[str, Any]] = []
        self._report: EvolutionReport | None = None
        self._no_probes: EvolutionReport | None = None  # a run without probes never gets a file: this says why
        self._stats_seen: float | None | bool = False  # stats.json's mtime when no_probes last looked
        self._report_seen: float | None = None  # eval_report.json's mtime when what was lost was last read

    def report(self) -> EvolutionReport | None:
        """None until the file exists, unless the run has no probes (a report saying why, kept: that is final)."""
        update = self._tail.poll()
        if update.reset:
            self._records, self._report = [], None
        new = [r for r in update.records if is_probe_record(r)]
        self._records += new
        # written once, when the run completes (result.json says which step an early-stopped adapter is from)
        seen = (_mtime(RunFolder(self._run_dir).eval_report), _mtime(RunFolder(self._run_dir).result))
        if new or (self._report is None and self._tail.path.exists()) or seen != self._report_seen:
            self._report_seen = seen
            self._report = with_lost(analyze(self._records, until=kept_step(self._run_dir)), self._run_dir)
        if self._report is not None and self._report.probes:
            return self._report
        if self._no_probes is None and self._stats_seen != (seen := _mtime(RunFolder(self._run_dir).stats)):
            self._stats_seen = seen  # the dashboard asks every second: the files are read again only when they change
            reason = no_probes(self._run_dir)
            if reason:
                self._no_probes = replace(analyze([]), no_probes=reason, summary=reason)
        return self._no_probes or self._report


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


class RunWatcher:
    """Incremental readers of run folders, kept for a few recently watched runs (bounded memory)."""

    def __init__(self, keep_runs: int = 8) -> None:
        self.keep_runs = keep_runs
        self._metrics: OrderedDict[str, MetricsTail] = OrderedDict()
        self._evolution: dict[str, EvolutionTail] = {}
        self._log: LogTail | None = None
        self._log_run: str | None = None

    def _metrics_for(self, run: RunRow) -> MetricsTail:
        tail = self._metrics.pop(run.id, None) or MetricsTail(RunFolder(run.run_dir).metrics)
        self._metrics[run.id] = tail
        while len(self._metrics) > self.keep_runs:
            old, _ = self._metrics.popitem(last=False)
            self._evolution.pop(old, None)
        return tail

    def _evolution_for(self, run: RunRow) -> EvolutionReport | None:
        tail = self._evolution.get(run.id) or EvolutionTail(Path(run.run_dir))
        self._evolution[run.id] = tail
        return tail.report()

    def restart_log(self) -> None:
        """The next detail carries the end of the log again (reset), e.g. when following resumes."""
        if self._log is not None:
            self._log.restart()

    def detail(self, run: RunRow, buckets: int, compare: tuple[RunRow, ...] = ()) -> RunDetail:
        """The selected run's detail; the log part holds only what changed since the previous call."""
        if self._log_run != run.id:
            self._log, self._log_run = LogTail(RunFolder(run.run_dir).console), run.id
        assert self._log is not None
        log = self._log.poll()
        charts = self._metrics_for(run).chart(buckets)
        overlays = tuple(replace(self._metrics_for(other).chart(buckets).loss, label=other.id)
                         for other in compare if other.id != run.id)
        return RunDetail(run_id=run.id, log=log, charts=charts, compare=overlays,
                         evolution=self._evolution_for(run),
                         progress=RunFolder(run.run_dir).read_progress() if run.run_dir else {})
