"""The files a run folder holds that the daemon writes: config.json, stats.json, metadata.json, console lines."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.atomic import read_json, write_json
from daemon.timefmt import iso, log_line


def append_console(run_dir: Path, message: str) -> None:
    """Append one timestamped line to the run's console.log (one write: lines never interleave mid-line).

    A trainer that died mid-line (a traceback cut short) gets its line ended first, so ours starts on its own."""
    with open(run_dir / "console.log", "a+b") as f:
        end = f.seek(0, 2)
        cut = end > 0 and f.seek(end - 1) is not None and f.read(1) != b"\n"
        f.write(("\n" if cut else "").encode() + log_line(message).encode("utf-8"))


def write_metadata(run_dir: Path, run: dict[str, Any], **extra: Any) -> None:
    """metadata.json: status, base model, dataset, metrics summary, timings and versions (atomic)."""
    config = read_json(run_dir / "config.json", {})
    result = read_json(run_dir / "result.json", {})
    meta = {
        "run_id": run["id"],
        "name": run["name"],
        "group": run.get("group_id"),
        "status": run["state"],
        "reason": run.get("reason"),
        "base_model": run.get("base_model"),
        "dataset": config.get("dataset", {}),
        "priority": run.get("priority"),
        "seq": run.get("seq"),  # queue order: a DB rebuilt from the run folders keeps it (daemon/rebuild.py)
        "attempts": run.get("attempts"),
        "metrics": {"step": run.get("step"), "max_steps": run.get("max_steps"), "loss": run.get("loss"),
                    "eval_loss": run.get("eval_loss"), "tokens_per_s": run.get("tokens_per_s"),
                    "epoch": run.get("epoch")},
        "timings": {"created": run.get("created"), "started": run.get("started"), "finished": run.get("finished"),
                    "train_seconds": result.get("train_seconds")},
        "device": result.get("device_name") or result.get("device"),
        "versions": {"overnight": __version__, "python": platform.python_version(), **(result.get("versions") or {})},
        "updated": iso(),
    }
    model = _read_metadata(run_dir).get("model")
    if model:
        meta["model"] = model  # written by record_model; a state change must not drop it
    meta.update(extra)
    write_json(run_dir / "metadata.json", meta)


def record_model(run_dir: Path, model: dict[str, Any]) -> None:
    """Keep the run's model version (number, active, pinned, deleted…) in its metadata.json: the registry lives
    only in the DB otherwise, and a DB rebuilt from the run folders must find it."""
    meta = _read_metadata(run_dir)
    if meta:
        write_json(run_dir / "metadata.json", {**meta, "model": model})


def _read_metadata(run_dir: Path) -> dict[str, Any]:
    try:
        return read_json(run_dir / "metadata.json", {}) or {}
    except ValueError:  # torn by a crash before atomic writes, or edited by hand: rewritten whole anyway
        return {}


def read_tail(path: Path, max_bytes: int = 4096) -> str:
    """The last bytes of a text file (for failure reasons): never reads a whole large log."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def read_jsonl_from(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines appended after byte `offset`; returns them and the new offset.

    A last line without its newline is still being written: it is left for the next call.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn line after a crash: skip it rather than stop ingesting
    return records, offset + end
