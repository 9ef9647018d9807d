"""The inbox: find complete drops, pair sidecars and probes, accept into run folders or reject with a reason.

Watch events are only hints that wake the daemon; every decision is made here from a listing of the folder,
so a missed or overflowing inotify queue loses nothing (the daemon also rescans on a timer).
"""
from __future__ import annotations

import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from daemon import rundir
from daemon.atomic import write_json, write_text
from daemon.fsutil import ignored, unique_path
from daemon.home import Home
from daemon.log import log
from daemon.store import Store
from daemon.submission import Submission, SubmissionError, role_of, sha256_file, stem_of, validate
from daemon.timefmt import iso, run_id_stamp

def safe_name(text: str) -> str:
    """A file-system- and run-id-safe version of a dataset or model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "dataset"


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


class Intake:
    """Scans the inbox; called from the daemon's main loop (the only writer of the DB)."""

    def __init__(self, home: Home, store: Store, settle: float = 1.0) -> None:
        self.home, self.store, self.settle = home, store, settle
        self._seen: dict[str, _Seen] = {}
        self._waiting_logged: set[str] = set()

    def stable(self, path: Path, now: float) -> bool:
        """True once size and mtime have not changed for `settle` seconds (a file still growing waits)."""
        st = path.stat()
        cur = self._seen.get(path.name)
        if cur is None or (cur.size, cur.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._seen[path.name] = _Seen(st.st_size, st.st_mtime_ns, now)
            return False
        return now - cur.since >= self.settle

    def pending(self) -> list[Path]:
        """Files in the inbox that overnight will take once complete."""
        return sorted(p for p in self.home.inbox.iterdir() if not ignored(p.name) and (p.is_file() or p.is_symlink()))

    def scan(self) -> int:
        """Take every complete drop in the inbox; return how many drops were handled."""
        now = time.monotonic()
        files = self.pending()
        self._seen = {k: v for k, v in self._seen.items() if k in {p.name for p in files}}
        handled = 0
        for p in files:
            if p.is_symlink():
                self._reject([p], stem_of(p), f"{p.name} is a symbolic link; overnight refuses links so that "
                              f"nothing outside the home is read or moved. Fix: move or copy the real file into "
                              f"the inbox (mv /path/to/{p.name} {self.home.inbox}/).")
                handled += 1
        by_stem: dict[str, dict[str, Path]] = {}
        for p in files:
            if p.exists() and not p.is_symlink():
                by_stem.setdefault(stem_of(p), {})[role_of(p)] = p
        for stem, group in sorted(by_stem.items()):
            try:
                if not all(self.stable(p, now) for p in group.values()):
                    continue
            except FileNotFoundError:
                continue  # moved away between listing and stat
            handled += self._take(stem, group)
        return handled

    def _take(self, stem: str, group: dict[str, Path]) -> int:
        if "unsupported" in group:
            p = group["unsupported"]
            self._reject([p], stem, f"{p.name}: unsupported file type '{p.suffix or '(none)'}'. overnight takes "
                         f"datasets ending in .jsonl, .json, .csv, .parquet or .txt, a sidecar NAME.toml and a "
                         f"probe file NAME.probes.jsonl. Fix: convert the file to one of these formats.")
            return 1
        dataset = group.get("dataset")
        if dataset is None:
            if stem not in self._waiting_logged:
                names = ", ".join(p.name for p in group.values())
                log.info(f"inbox: {names} waits for its dataset {stem}.jsonl/.json/.csv/.parquet/.txt")
                self._waiting_logged.add(stem)
            return 0
        self._waiting_logged.discard(stem)
        files = [p for p in (dataset, group.get("sidecar"), group.get("probes")) if p]
        try:
            sub = validate(dataset, group.get("sidecar"), group.get("probes"), self.home.toml)
        except SubmissionError as e:
            self._reject(files, stem, str(e))
            return 1
        except Exception as e:  # the daemon must survive any file; say what broke instead of dying
            log.error(f"inbox: unexpected error on {dataset.name}: {e}\n{traceback.format_exc()}")
            self._reject(files, stem, f"{dataset.name}: overnight could not read this file ({type(e).__name__}: "
                                      f"{e}). This is likely a bug in overnight; the file is kept here unchanged.")
            return 1
        self.accept(sub)
        return 1

    def _reject(self, files: list[Path], stem: str, message: str) -> None:
        """Move the drop to inbox/rejected/ beside NAME.error.txt; nothing is deleted."""
        moved = []
        for p in files:
            dest = unique_path(self.home.rejected / p.name)
            os.rename(p, dest)
            moved.append(dest.name)
        err = unique_path(self.home.rejected / f"{safe_name(stem)}.error.txt")
        write_text(err, f"{message}\n\nRejected files (moved to {self.home.rejected}): {', '.join(moved)}\n"
                        f"After fixing, drop the file into {self.home.inbox} again (mv, or overnight add FILE).\n")
        log.warning(f"inbox: rejected {', '.join(moved)}: {message.splitlines()[0]} (see {err})")

    def new_run_id(self, name: str) -> str:
        """NAME-YYYYmmdd-HHMMSS, with -2, -3… when two collide."""
        base = f"{safe_name(name)}-{run_id_stamp()}"
        taken = self.store.run_ids()
        rid, i = base, 2
        while rid in taken or self.home.run_dir(rid).exists():
            rid, i = f"{base}-{i}", i + 1
        return rid

    def accept(self, sub: Submission) -> list[str]:
        """Create one queued run per base model; the drop is moved into the first run's dataset/ folder.

        Each run folder is assembled under a hidden staging name and renamed into runs/ complete, so a
        reader never sees a run folder without its config.json.
        """
        models = sub.options.base_models
        sha = sha256_file(sub.dataset)
        group_id = None
        run_ids: list[str] = []
        first_dataset_dir: Path | None = None
        for model in models:
            suffix = f"-{safe_name(Path(model.rstrip('/')).name)}" if len(models) > 1 else ""
            rid = self.new_run_id(sub.name + suffix)
            group_id = group_id or (rid if len(models) > 1 else None)
            staging = self.home.runs / f".{rid}.partial"
            (staging / "dataset").mkdir(parents=True)
            if first_dataset_dir is None:
                for p in (sub.dataset, sub.sidecar, sub.probes):
                    if p:
                        os.rename(p, staging / "dataset" / p.name)
            else:  # the same bytes for the other models of the group: a hard link costs no space
                for p in first_dataset_dir.iterdir():
                    _link_or_copy(p, staging / "dataset" / p.name)
            row = self._write_run_files(rid, staging, sub, model, sha, group_id)
            os.rename(staging, self.home.run_dir(rid))
            self.store.insert_run(row)
            first_dataset_dir = self.home.run_dir(rid) / "dataset" if first_dataset_dir is None else first_dataset_dir
            run_ids.append(rid)
        log.info(f"inbox: accepted {sub.dataset.name} ({sub.report.schema}, {sub.report.records} records) "
                 f"as {', '.join(run_ids)}")
        return run_ids

    def _write_run_files(self, rid: str, folder: Path, sub: Submission, model: str, sha: str,
                         group_id: str | None) -> dict:
        """config.json, stats.json, metadata.json and the console header; returns the run's DB row."""
        opts = sub.options.for_model(model)
        dataset_info = {"path": f"dataset/{sub.dataset.name}", "file": sub.dataset.name, "format": sub.report.format,
                        "schema": sub.report.schema, "records": sub.report.records, "sha256": sha}
        write_json(folder / "config.json", {
            "run_id": rid, "name": sub.name, "group": group_id, **opts.to_config(), "dataset": dataset_info,
            "probes": f"dataset/{sub.probes.name}" if sub.probes else None,
            "sidecar": f"dataset/{sub.sidecar.name}" if sub.sidecar else None,
        })
        write_json(folder / "stats.json", sub.report.to_dict())
        row = {"id": rid, "name": sub.name, "group_id": group_id, "dataset": sub.dataset.name,
               "format": sub.report.format, "schema": sub.report.schema, "records": sub.report.records,
               "base_model": model, "state": "queued", "priority": int(opts.values["priority"]),
               "seq": self.store.next_seq(), "run_dir": str(self.home.run_dir(rid)),
               "max_steps": opts.values["max_steps"] or None, "created": iso()}
        rundir.write_metadata(folder, row)
        rundir.append_console(folder, f"overnight run {rid} queued: dataset {sub.dataset.name} "
                                      f"({sub.report.format}, schema {sub.report.schema}, {sub.report.records} "
                                      f"records), base model {model}")
        return row


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
