"""Model versions: every completed run registers one; nothing deletes an adapter on its own."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from daemon.core import evalreport
from daemon.core.atomic import read_json, write_json
from daemon.core.home import Home
from daemon.core.fsutil import SHORT_NAME, short_name, unique_path
from daemon.core.runconfig import RunConfig
from daemon.core.rundir import RunFolder
from daemon.engine.store import Store
from daemon.core.timefmt import run_id_stamp
from daemon.core.versionpick import already_deleted


def register(store: Store, run: dict[str, Any], activate: bool = True) -> int:
    """Register the completed run's adapter as the next version of its name; returns the version.

    `activate=False`: the version does not take over (a sweep with select = "best" chooses at its end). A run
    registers once: the daemon finishes a run again when a write after its registration failed (disk full, DB busy),
    and gets the version it has."""
    done = [m["version"] for m in store.models(run["name"]) if m["run_id"] == run["id"]]
    if done:
        return done[0]
    folder = RunFolder(run["run_dir"])
    result = folder.read_result()
    metrics = {k: result.get(k) for k in ("final_loss", "eval_loss", "step", "train_seconds") if result.get(k) is not None}
    config = RunConfig.read(folder.root)
    report = evalreport.summary(read_json(folder.eval_report, {}) or {})
    if report:
        metrics["report"] = report  # eval scores, forgetting, what was lost: `overnight models`, select_metric
    if report.get("regressed") and not config.options.get("allow_regressed"):
        activate = False  # the alarm: a version that lost what its parent knew never takes over by itself
    return store.add_model({"name": run["name"], "run_id": run["id"], "base_model": run["base_model"],
                            "metrics": metrics, "adapter_path": str(folder.adapter), "parent": config.parent},
                           activate=activate)


def regressed(store: Store, name: str, version: int) -> dict[str, Any] | None:
    """The report summary of a regressed version (None: it is not, or has no report)."""
    row = next((m for m in store.models(name) if m["version"] == version), None)
    report = (json.loads(row["metrics"] or "{}").get("report") or {}) if row else {}
    return report if report.get("regressed") else None


def delete(store: Store, home: Home, name: str, version: int) -> Path | None:
    """Move a version's adapter into trash/ (never deleted outright) and mark it deleted; the trash folder, or None
    when the adapter was missing already (the version is marked deleted where it was)."""
    rows = [m for m in store.models(name) if m["version"] == version]
    if not rows:
        raise KeyError(f"no model {name} version {version}. Fix: use a NAME and VERSION that overnight models "
                       f"lists.")
    row = rows[0]
    if row["deleted"]:
        raise KeyError(already_deleted(name, row))
    src = Path(row["adapter_path"])
    # a delete a crash cut short after the move: its trash folder is the one, not a second, empty one
    moved = None if src.exists() else trashed_adapter(home.trash, row["run_id"])
    if moved is None and not src.exists():
        store.mark_model_deleted(name, version, str(src))
        return None
    if moved is None:
        dest = unique_path(home.trash / f"{short_name(name, SHORT_NAME - 40)}-v{version}-{run_id_stamp()}")
        try:
            dest.mkdir(parents=True)
            write_json(dest / "model.json", row)  # first: a crash before the move leaves the version whole
            if src.exists():
                os.rename(src, dest / "adapter")
        except OSError as e:
            raise KeyError(f"cannot move the adapter of {name} v{version} into {dest}: {e.strerror or e}; the "
                           f"version is kept as it was. Fix: make {home.trash} a folder overnight can write to "
                           f"(move away a file of that name), then delete again.") from None
        moved = dest / "adapter"
    store.mark_model_deleted(name, version, str(moved))
    return moved.parent


def trashed_adapter(trash: Path, run_id: str) -> Path | None:
    """Where `delete` moved the adapter of `run_id`'s version (trash/NAME-vN-STAMP/adapter, beside the model.json
    it wrote), or None: the trash folders themselves are the record, whatever the DB says."""
    try:
        folders = sorted(trash.iterdir(), reverse=True)  # newest stamp first
    except OSError:
        return None
    for folder in folders:
        try:
            row = json.loads((folder / "model.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(row, dict) and row.get("run_id") == run_id and (folder / "adapter").is_dir():
            return folder / "adapter"
    return None
