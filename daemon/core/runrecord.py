"""One run, one type: `Run` is a row of the runs table and the run's part of metadata.json (torch-free).

A run is written in two places: its row in overnight.db (daemon/engine/store.py) and runs/RUN_ID/metadata.json
(daemon/core/rundir.py), which is how a lost DB is rebuilt (daemon/engine/rebuild.py). Both are read back through
this class, so their field names are spelled once: the fields are the runs table's columns, and `to_metadata` /
`from_metadata` map them onto metadata.json's keys (`run_id`, `group`, `status`, `metrics`, `timings`, …).

Values are kept as stored (a loss of 2 stays the int 2): writing a record read back gives the same bytes. Only
`state` (a `State`) and `gpu_set` (NVML indices; None: no trainer started yet, (): the CPU) are typed on the way in.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from daemon.core.gpuset import format_gpu_set, parse_gpu_set
from daemon.core.states import ACTIVE, ENDED, State

# metadata.json's "metrics" and "timings" objects: which fields they hold, in the file's order
METRIC_KEYS = ("step", "max_steps", "loss", "eval_loss", "tokens_per_s", "epoch")
TIMING_KEYS = ("created", "started", "finished")
# metadata.json keys that come from the run folder, not from the run's row (config.json, result.json): a Run read
# from metadata.json keeps them, with any key it does not know, in `extra`, and writes them back in place
_FOLDER_KEYS = ("dataset", "train_seconds", "device", "versions")
_META_KEYS = frozenset({"run_id", "name", "group", "status", "reason", "base_model", "priority", "seq", "attempts",
                        "gpu_set", "metrics", "timings", "updated", "job_id", "node"})


@dataclass(frozen=True, kw_only=True)
class Run:
    """One run: the runs table's columns (same names, same order)."""

    id: str
    name: str
    group_id: str | None = None  # a sweep (or a base_model list): the runs of one drop
    dataset: str | None = None  # the dataset's file name
    format: str | None = None
    schema: str | None = None
    records: int | None = None
    base_model: str | None = None
    state: State = State.QUEUED
    reason: str | None = None
    priority: int = 0
    seq: int | None = None  # queue order (arrival)
    run_dir: str = ""  # "" when not recorded (NULL in the DB)
    created: str | None = None
    started: str | None = None
    finished: str | None = None
    step: int | None = None
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    pid: int | None = None  # its trainer's PID (torchrun: the launcher, whose children hold the GPUs)
    attempts: int | None = None
    resume_from: str | None = None
    updated: str | None = None
    gpu_set: tuple[int, ...] | None = None  # the GPUs its trainer was started on (NVML numbers); () = the CPU
    job_id: str | None = None  # the Slurm job of its latest attempt (None: the local executor)
    node: str | None = None  # the machine that job runs on
    # metadata.json keys that are no column (dataset, train_seconds, device, versions, model, unknown ones)
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False, repr=False)

    # ----------------------------------------------------------------------------------------- the DB row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Run:
        """A runs row (as sqlite gives it, or as `queries.Reader` decodes it: `gpu_set` a list); other keys are
        ignored, missing ones default."""
        values = {name: row[name] for name in COLUMNS if name in row}
        values["name"] = row.get("name") or row["id"]
        values["state"] = State(row["state"]) if row.get("state") is not None else State.QUEUED
        values["priority"] = int(row.get("priority") or 0)
        values["run_dir"] = row.get("run_dir") or ""
        values["gpu_set"] = _gpu_set(row.get("gpu_set"))
        return cls(**values)

    def to_row(self) -> dict[str, Any]:
        """The runs row, every column (in the table's order), as the DB stores it (`gpu_set` "0,1", "" = the CPU)."""
        row = {name: getattr(self, name) for name in COLUMNS}
        row["state"] = self.state.value
        row["run_dir"] = self.run_dir or None
        row["gpu_set"] = None if self.gpu_set is None else format_gpu_set(self.gpu_set)
        return row

    # ----------------------------------------------------------------------------------------- metadata.json

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Run:
        """A run from its metadata.json: missing keys default (a status it does not know reads as queued), keys
        that are no column are kept in `extra`."""
        numbers = _object(meta.get("metrics"))
        times = _object(meta.get("timings"))
        status = meta.get("status")
        extra = {k: v for k, v in meta.items() if k not in _META_KEYS}
        if "train_seconds" in times:
            extra["train_seconds"] = times["train_seconds"]
        gpus = meta.get("gpu_set")
        return cls(id=meta.get("run_id") or "", name=meta.get("name") or "", group_id=meta.get("group"),
                   **dataset_columns(_object(meta.get("dataset"))),
                   base_model=meta.get("base_model"),
                   state=State(status) if status in _STATES else State.QUEUED, reason=meta.get("reason"),
                   priority=int(meta.get("priority") or 0), seq=meta.get("seq"), attempts=meta.get("attempts"),
                   gpu_set=None if gpus is None else tuple(parse_gpu_set(gpus)),
                   **{k: numbers.get(k) for k in METRIC_KEYS}, **{k: times.get(k) for k in TIMING_KEYS},
                   updated=meta.get("updated"), job_id=meta.get("job_id"), node=meta.get("node"),
                   extra=MappingProxyType(extra))

    def to_metadata(self) -> dict[str, Any]:
        """metadata.json's object, in the file's key order: the row's part from the fields, the folder's part
        (`dataset`, `device`, `versions`, the `train_seconds` of `timings`) and the rest of `extra` (`model`, keys
        this version does not know) from `extra`."""
        extra = dict(self.extra)
        folder = {k: extra.pop(k, None) for k in _FOLDER_KEYS}
        meta = {
            "run_id": self.id,
            "name": self.name,
            "group": self.group_id,
            "status": self.state.value,
            "reason": self.reason,
            "base_model": self.base_model,
            "dataset": folder["dataset"],
            "priority": self.priority,
            "seq": self.seq,  # queue order: a DB rebuilt from the run folders keeps it (daemon/engine/rebuild.py)
            "attempts": self.attempts,
            # the GPUs (NVML indices) its latest trainer held, [] = the CPU; null: no trainer started yet
            "gpu_set": None if self.gpu_set is None else list(self.gpu_set),
            "metrics": {k: getattr(self, k) for k in METRIC_KEYS},
            "timings": {**{k: getattr(self, k) for k in TIMING_KEYS}, "train_seconds": folder["train_seconds"]},
            "device": folder["device"],
            "versions": folder["versions"],
            "updated": self.updated,
        }
        if self.job_id:  # a Slurm run: a rebuilt DB still knows its job, so no second one is submitted
            meta.update(job_id=self.job_id, node=self.node)
        meta.update(extra)
        return meta

    # ----------------------------------------------------------------------------------------- what it is

    @property
    def active(self) -> bool:
        """Preparing, training or paused: a trainer runs (or is being started) for it."""
        return self.state in ACTIVE

    @property
    def finished_state(self) -> bool:
        """Completed, failed, stopped or skipped: history."""
        return self.state in ENDED

    @property
    def fraction(self) -> float | None:
        """Progress 0..1, or None when the total is not known yet."""
        if self.state == State.COMPLETED:
            return 1.0
        if not self.max_steps or self.step is None:
            return None
        return max(0.0, min(1.0, self.step / self.max_steps))


COLUMNS = tuple(f.name for f in fields(Run) if f.name != "extra")  # the runs table's columns
_STATES = frozenset(s.value for s in State)


def dataset_columns(data: Mapping[str, Any]) -> dict[str, Any]:
    """The runs row's dataset columns from config.json's (or metadata.json's) `dataset` object; {} gives none."""
    if not data:
        return {"dataset": None, "format": None, "schema": None, "records": None}
    return {"dataset": data.get("file") or Path(data.get("path") or "-").name, "format": data.get("format"),
            "schema": data.get("schema"), "records": data.get("records")}


def _gpu_set(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(parse_gpu_set(value))


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}
