"""A run folder, runs/RUN_ID/: the name of every file in it, and how each file is read while it is written.

The only module that spells those names (config.json's comes with its format, daemon/core/runconfig.py). The trainer
writes the folder, the daemon, CLI and dashboard read it, so this module stays torch-free. Growing files are read
by one object each (after toolong's log_file.py): `JsonlTail` for metrics/evolution records, `LogTail` for
console.log; both start over when the file shrinks or is replaced, because the trainer rewrites them after a resume.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from daemon import __version__
from daemon.core.atomic import read_json, write_json
from daemon.core.runconfig import FILE as CONFIG_FILE, RunConfig
from daemon.core.runrecord import Run
from daemon.core.timefmt import iso, log_line

TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last: a checkpoint without it cannot be resumed
_STEP = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class RunFolder:
    """Every path of one run folder (runs/RUN_ID/)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # callers pass the DB's run_dir string as is

    dataset = property(lambda self: self.root / "dataset")
    init_adapter = property(lambda self: self.root / "init_adapter")
    config = property(lambda self: self.root / CONFIG_FILE)  # its format: daemon/core/runconfig.py
    stats = property(lambda self: self.root / "stats.json")
    metadata = property(lambda self: self.root / "metadata.json")
    console = property(lambda self: self.root / "console.log")
    hooks_log = property(lambda self: self.root / "hooks.log")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    evolution = property(lambda self: self.root / "evolution.jsonl")
    progress = property(lambda self: self.root / "progress.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    adapter = property(lambda self: self.root / "adapter")
    result = property(lambda self: self.root / "result.json")
    tokens = property(lambda self: self.root / "tokens.npz")
    tensorboard = property(lambda self: self.root / "tensorboard")  # event files: `tensorboard --logdir runs/`
    eval_report = property(lambda self: self.root / "eval_report.json")  # the version's end-of-run report
    # a trainer with no stdin from the daemon (a Slurm job) reads its commands here: every command of this job so
    # far, one a line, rewritten atomically by the daemon (daemon/trainer/commands.py follows it)
    commands = property(lambda self: self.root / "commands.txt")
    job_script = property(lambda self: self.root / "job.sh")  # the sbatch script the daemon submits
    job = property(lambda self: self.root / "job.json")  # the executor's job of the latest attempt: {"executor", "job_id", ...}

    def in_dataset(self, name: str) -> str:
        """config.json's name for a file of dataset/: relative, so a moved home still finds it."""
        return f"{self.dataset.name}/{name}"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_name(step)

    def newest_checkpoint(self) -> Path | None:
        return newest_complete(self.checkpoints)

    def options(self) -> dict[str, Any]:
        """The run's resolved options, from config.json ({} without one)."""
        return RunConfig.read(self.root).options

    def read_progress(self) -> dict[str, Any]:
        return _read_object(self.progress)

    def read_result(self) -> dict[str, Any]:
        return _read_object(self.result)

    def read_metadata(self) -> dict[str, Any]:
        return _read_object(self.metadata)


def _read_object(path: Path) -> dict[str, Any]:
    """A JSON object file; {} when absent or unreadable (a file cut short by a full disk is replaced by the next
    atomic write, so it must not stop a reader)."""
    try:
        data = read_json(path, {})
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------------------- checkpoints

def step_name(step: int) -> str:
    """A complete checkpoint's folder name: the Trainer's checkpoint-N is renamed to it once fully written."""
    return f"step-{step}"


def step_of(checkpoint: str | os.PathLike | None) -> int:
    """N of a `step-N` checkpoint (its folder or its name); 0 for none (a start from scratch)."""
    m = _STEP.match(Path(checkpoint).name) if checkpoint else None
    return int(m.group(1)) if m else 0


def step_dirs(checkpoints: Path) -> dict[int, Path]:
    """The step-N folders by step (damaged-step-N and checkpoint-N are not among them)."""
    if not checkpoints.is_dir():
        return {}
    found = {}
    for p in checkpoints.iterdir():
        m = _STEP.match(p.name)
        if m and p.is_dir():
            found[int(m.group(1))] = p
    return found


def newest_complete(checkpoints: Path) -> Path | None:
    """The newest step-N folder that holds its trainer state: what a resume starts from."""
    for _step, path in sorted(step_dirs(checkpoints).items(), reverse=True):
        if (path / TRAINER_STATE).exists():
            return path
    return None


# --------------------------------------------------------------------------------------------- daemon's writes

def append_console(run_dir: Path, message: str) -> bool:
    """Append one timestamped line to the run's console.log (one write: lines never interleave mid-line).

    A trainer that died mid-line (a traceback cut short) gets its line ended first, so ours starts on its own.
    The daemon's lines are a courtesy copy of what overnight.log and the DB record: a line that cannot be written (a
    full disk) is said in overnight.log and returns False, never raises into the state change that wrote it."""
    try:
        with open(RunFolder(run_dir).console, "a+b") as f:
            end = f.seek(0, 2)
            cut = end > 0 and f.seek(end - 1) is not None and f.read(1) != b"\n"
            f.write(("\n" if cut else "").encode() + log_line(message).encode("utf-8"))
        return True
    except OSError as e:
        logging.getLogger("overnight").warning(f"could not append to {RunFolder(run_dir).console} ({e}): {message}")
        return False


def write_metadata(run_dir: Path, run: Run | dict[str, Any], **extra: Any) -> None:
    """metadata.json: status, base model, dataset, metrics summary, timings and versions (atomic). `run`: the run
    (a `Run`, or its row as the Store gives it); its folder adds the dataset (config.json), the device, versions and
    training time (result.json), and keeps the model version `record_model` wrote."""
    folder = RunFolder(run_dir)
    config, result = RunConfig.read(folder.root), folder.read_result()
    record = run if isinstance(run, Run) else Run.from_row(run)
    known = {"dataset": config.dataset, "train_seconds": result.get("train_seconds"),
             "device": result.get("device_name") or result.get("device"),
             "versions": {"overnight": __version__, "python": platform.python_version(),
                          **(result.get("versions") or {})}}
    kept = folder.read_metadata()
    for key in ("model", "rungs"):  # written by record_model and record_rungs; a state change must not drop them
        if kept.get(key):
            known[key] = kept[key]
    write_json(folder.metadata, replace(record, updated=iso(), extra={**known, **extra}).to_metadata())


def record_model(run_dir: Path, model: dict[str, Any]) -> None:
    """Keep the run's model version (number, active, pinned, deleted…) in its metadata.json: the registry lives
    only in the DB otherwise, and a DB rebuilt from the run folders must find it."""
    update_metadata(run_dir, model=model)


def record_rungs(run_dir: Path, rungs: list[dict[str, Any]]) -> None:
    """Keep an ASHA trial's rungs (step, metric, decision at each) in its metadata.json, for a rebuilt DB."""
    update_metadata(run_dir, rungs=[{k: r.get(k) for k in ("rung", "step", "metric", "decision", "time")}
                                    for r in rungs])


def update_metadata(run_dir: Path, **fields: Any) -> None:
    """Set some keys of an existing metadata.json (atomic); no file yet: nothing to do (the next state change
    writes it whole, from the run's row)."""
    folder = RunFolder(run_dir)
    meta = folder.read_metadata()
    if meta:
        write_json(folder.metadata, {**meta, **fields})

# --------------------------------------------------------------------------------------------- growing files

def read_tail(path: Path, max_bytes: int = 4096) -> str:
    """The last bytes of a text file (for failure reasons): never reads a whole large log."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - max_bytes))
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _last_lines(f: IO[bytes], n: int | None, end: int, block: int = 64 * 1024) -> list[str]:
    """The last `n` lines before byte `end` (all when None)."""
    if n is None:
        f.seek(0)
        return f.read(end).decode("utf-8", "replace").splitlines()
    pos, data = end, b""
    while pos > 0 and data.count(b"\n") <= n:  # backwards in blocks: a log of millions of lines costs a few reads
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    return data.decode("utf-8", "replace").splitlines()[-n:] if n else []


class _Follower:
    """Where a growing file was read up to; a shrunk or replaced file (another inode) is read from its start."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset: int | None = None  # None: not read yet
        self.inode: int | None = None

    def restart(self) -> None:
        self.offset = self.inode = None

    def _open(self) -> tuple[IO[bytes], int, bool] | None:
        """The open file, its size, and whether it must be read afresh; None when it does not exist."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return None
        st = os.fstat(f.fileno())  # the opened file's own size and inode: a rename after open cannot mislead
        fresh = self.offset is None or st.st_size < self.offset or self.inode not in (None, st.st_ino)
        self.inode = st.st_ino
        return f, st.st_size, fresh


@dataclass(frozen=True)
class JsonlUpdate:
    """Records appended since the last poll; `reset`: the file was rewritten, forget what was read before."""

    records: list[dict[str, Any]]
    reset: bool = False


class JsonlTail(_Follower):
    """A JSONL file read incrementally: only complete new records; a torn last line waits for its newline."""

    def poll(self) -> JsonlUpdate:
        opened = self._open()
        if opened is None:
            return JsonlUpdate([])
        f, _size, fresh = opened
        reset, start = fresh and self.offset is not None, 0 if fresh else self.offset or 0
        with f:
            f.seek(start)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset = start + end
        return JsonlUpdate(_parse_jsonl(data[:end]), reset)


def _parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    """The JSON objects of complete lines; a line cut by a crash is skipped rather than stopping the reader."""
    records = []
    for line in data.splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes cut mid-character
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a JSONL file; [] when it does not exist."""
    return JsonlTail(path).poll().records


@dataclass(frozen=True)
class LogUpdate:
    """New log lines: `reset` means replace what is shown (first read, file rewritten, a jump too big to show)."""

    lines: tuple[str, ...]
    reset: bool


class LogTail(_Follower):
    """A log followed like tail -n KEEP -f: its last `keep` lines first (all when None), then complete new lines.

    A file that shrank or was replaced, or grew by more than `max_jump` bytes at once, is shown again from its
    last `keep` lines: a reader that fell behind skips ahead instead of replaying megabytes.
    """

    def __init__(self, path: Path, keep: int | None, max_jump: int | None = None) -> None:
        super().__init__(path)
        self.keep, self.max_jump = keep, max_jump
        self._partial = b""

    def poll(self) -> LogUpdate | None:
        """What changed since the last poll, or None when nothing did."""
        opened = self._open()
        if opened is None:
            if self.offset is None:
                self.offset = 0
                return LogUpdate((), reset=True)
            return None
        f, size, fresh = opened
        start = self.offset or 0
        with f:
            if fresh or (self.max_jump is not None and size - start > self.max_jump):
                self.offset, self._partial = size, b""
                return LogUpdate(tuple(_last_lines(f, self.keep, size)), reset=True)
            if size == start:
                return None
            f.seek(start)
            data = self._partial + f.read(size - start)
        self.offset = size
        *complete, self._partial = data.split(b"\n")
        if not complete:
            return None
        return LogUpdate(tuple(line.decode("utf-8", "replace") for line in complete), reset=False)


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # what peft saves, and what it loads


def has_weights(adapter: Path) -> bool:
    """An adapter folder holds its weights file (its adapter_config.json alone loads nothing)."""
    return any((adapter / w).is_file() for w in ADAPTER_WEIGHTS)


def run_dir_here(root: Path, run_id: str, recorded: str | None) -> str | None:
    """A run's recorded folder, or runs/RUN_ID under the home at `root` when the record names another home's: the
    home was moved or copied since (a home reached through a symbolic link is not). Another home's folder is never
    answered, even when it is missing here: a copy must not train in, or read from, the home it came from."""
    if not recorded:
        return recorded
    was, here = Path(recorded), Path(root) / "runs" / run_id
    if was == here or was.parent.name != "runs" or _same(was, here):
        return recorded
    return str(here)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def in_this_home(root: Path, adapter_path: str | None) -> str | None:
    """A recorded adapter path (runs/RUN/adapter, trash/NAME-vN-STAMP/adapter), or the same place under the home at
    `root` when the record names another home's (moved or copied since; there or not: never the other home's)."""
    path = Path(adapter_path or "")
    if path.parent.parent.name not in ("runs", "trash") or path.parent.parent.parent == Path(root):
        return adapter_path
    here = Path(root) / path.parent.parent.name / path.parent.name / path.name
    return adapter_path if _same(path, here) else str(here)


def run_folders(runs: Path) -> list[Path]:
    """Folders of `runs` that hold a run: metadata.json, or config.json beside dataset/ (accepted, not yet indexed).
    Hidden ones are intake's staging folders, not runs yet."""
    if not runs.is_dir():
        return []
    return sorted(d for d in runs.iterdir() if d.is_dir() and not d.name.startswith(".") and _holds_run(RunFolder(d)))


def _holds_run(f: RunFolder) -> bool:
    return f.metadata.is_file() or (f.config.is_file() and f.dataset.is_dir())
