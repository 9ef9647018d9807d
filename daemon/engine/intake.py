"""The inbox: find complete drops, pair sidecars and probes, accept into run folders or reject with a reason.

Watch events are only hints that wake the daemon; every decision is made here from a listing of the folder,
so a missed or overflowing inotify queue loses nothing (the daemon also rescans on a timer).
"""
from __future__ import annotations

import os
import shutil
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from daemon.core import rundir, search, sweep
from daemon.core.rundir import RunFolder
from daemon.core.runconfig import RunConfig
from daemon.core.atomic import write_json, write_text
from daemon.core.completeness import SETTLE_S, WRITERS_RECHECK_S, writers_of
from daemon.core.fsutil import (sha256_file, SHORT_NAME, ignored, model_name, model_name_problem, safe_name,
                                short_name, shown_name, suggested_model_name, unique_paths)
from daemon.core.dropfiles import name_problem
from daemon.core.home import Home
from daemon.engine.lineage import check_parent, copy_adapter
from daemon.core.log import log
from daemon.core.options import Resolved, owner_toml
from daemon.core.states import State
from daemon.core.space import is_disk_full
from daemon.engine.store import Store, busy_problem
from daemon.engine.submission import (Submission, SubmissionError, check_owner_files, check_owner_models, pair,
                                      stem_of, twins_message, validate)
from daemon.core.timefmt import iso, run_id_stamp


BIG_DROP_BYTES = 10 * 2**20  # drops this large get a log line when their validation starts


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


@dataclass
class _Verdict:
    """What validation said about one drop: a submission to accept (with the dataset's sha256), or an error."""

    sub: Submission | None = None
    sha: str = ""
    error: str = ""


@dataclass
class _Checking:
    """A drop being validated in the background, and the files as they were when validation began."""

    future: "Future[_Verdict]"
    fingerprint: dict[str, tuple[int, int]]


UNRECORDED_RETRY_S = 5.0  # a drop whose run could not be recorded (disk full, DB busy) is tried again this often
REAPPEARED_S = 300.0  # a name back within this long of being taken may be the rest of a file still being appended
REAPPEARED_SETTLE = 5  # ...and waits until unchanged this many times the settle time (30 s by default)


class Intake:
    """Scans the inbox; called from the daemon's main loop (the only writer of the DB)."""

    def __init__(self, home: Home, store: Store, settle: float = SETTLE_S,
                 on_verdict: Callable[[], None] | None = None,
                 on_reject: Callable[[list[Path], str, Path], None] | None = None) -> None:
        """`on_reject(files, message, error_file)` is called on the loop after a drop was moved to rejected/."""
        self.home, self.store, self.settle = home, store, settle
        self._on_reject = on_reject
        self._seen: dict[str, _Seen] = {}
        self._taken: dict[str, float] = {}  # dataset file names taken, and when (monotonic)
        self._reappeared_said: set[str] = set()
        self._waiting_logged: set[str] = set()
        self._held_open: dict[str, float] = {}  # drops a writer holds open -> when that was last asked
        # Validation streams whole files (minutes for a multi-GB drop): it runs on this thread so the daemon's
        # loop keeps answering control files; the accept/reject moves and DB writes stay on the loop.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate")
        self._checking: dict[str, _Checking] = {}
        self._on_verdict = on_verdict
        self._toml_problem: str | None = None  # why drops wait (a broken overnight.toml), for the log and status
        self.home_problem: str | None = None  # a folder of the home that is a file (cannot be recreated)
        self._unrecorded: dict[str, float] = {}  # drops whose run could not be recorded -> when to try again
        self._recover_staging()

    def _recover_staging(self) -> None:
        """A daemon that died while it made a drop's run folders: those the DB records already (it died between
        the commit and the renames) take their place in runs/; otherwise the drop, in runs/.RUN.partial/dataset/,
        goes back into the inbox (to be taken again whole) and the half-made folders go."""
        known = self.store.run_ids()
        for staging in sorted(self.home.runs.glob(".*.partial")):
            rid = staging.name[1:].removesuffix(".partial")
            if rid in known and not self.home.run_dir(rid).exists():
                os.rename(staging, self.home.run_dir(rid))
                log.warning(f"inbox: {rid} was being made when the daemon stopped: its run folder is in place now")
                continue
            dataset = RunFolder(staging).dataset
            for p in sorted(dataset.iterdir()) if dataset.is_dir() else []:
                dest = self.home.inbox / p.name
                if p.is_file() and p.stat().st_nlink == 1 and not dest.exists():
                    os.rename(p, dest)
                    log.warning(f"inbox: {shown_name(p.name)} was being taken when the daemon stopped: back in "
                                f"the inbox, taken again")
            if not any(p.stat().st_nlink == 1 for p in dataset.rglob("*") if p.is_file()):
                shutil.rmtree(staging, ignore_errors=True)

    def close(self) -> None:
        """Stop validating (a drop being checked stays in the inbox and is checked again at the next start)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def stable(self, path: Path, now: float) -> bool:
        """True once size and mtime have not changed for `settle` seconds (a file still growing waits); longer for a
        name taken moments ago (`>>` appending with pauses longer than `settle` makes the file anew after each one)."""
        st = path.stat()
        cur = self._seen.get(path.name)
        if cur is None or (cur.size, cur.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._seen[path.name] = _Seen(st.st_size, st.st_mtime_ns, now)
            return False
        return now - cur.since >= self._settle_of(path.name)

    def _settle_of(self, name: str) -> float:
        taken = self._taken.get(name)
        if taken is None or time.monotonic() - taken > REAPPEARED_S:
            return self.settle
        wait = self.settle * REAPPEARED_SETTLE
        if name not in self._reappeared_said:
            self._reappeared_said.add(name)
            log.warning(f"inbox: {shown_name(name)} is back {time.monotonic() - taken:.0f} s after a file of that name "
                        f"was taken: in case it is still being appended to, it waits until unchanged for {wait:g} s. "
                        f"Fix: write it elsewhere and mv it into the inbox when complete")
        return wait

    def pending(self) -> list[Path]:
        """Files in the inbox that overnight will take once complete."""
        return sorted(p for p in self.home.inbox.iterdir() if not ignored(p.name) and p != self.home.rejected)

    @property
    def problem(self) -> str | None:
        """Why drops wait: a home folder that is a file, a broken overnight.toml (the daemon's PROBLEM line)."""
        return self.home_problem or self._toml_problem

    def _home_ok(self) -> bool:
        """The home's folders, recreated when removed under the daemon (rm -rf control/) with a line in the log;
        a file where a folder belongs is a PROBLEM (said once) until the owner moves it aside."""
        made, problem = self.home.repair()
        if made:
            log.warning(f"{', '.join(made)} {'was' if len(made) == 1 else 'were'} missing (removed while the daemon "
                        f"ran?): recreated, empty")
        if problem != self.home_problem:
            if problem:
                log.error(problem)
            elif self.home_problem:
                log.info("the home's folders are back: going on")
        self.home_problem = problem
        return problem is None

    def scan(self) -> int:
        """Take every complete drop in the inbox; return how many drops were handled."""
        if not self._home_ok():
            return 0
        now = time.monotonic()
        files = self.pending()
        self._seen = {k: v for k, v in self._seen.items() if k in {p.name for p in files}}
        handled = 0
        for p in files:
            problem = _refused_name(p, self.home.inbox)
            if problem and (p.is_symlink() or p.is_file() or self.stable(p, now)):  # a folder being copied waits
                self._reject([p], stem_of(p), problem)
                handled += 1
        drops, twins = pair(files)
        self._held_open = {k: v for k, v in self._held_open.items() if k in drops}
        toml_ok = self._owner_toml_ok()
        for key in [k for k in self._checking if not toml_ok or k not in drops]:
            self._checking.pop(key).future.cancel()  # taken away while being checked, or its options changed
        if not toml_ok:
            return handled
        for stem, group in sorted(twins.items()):
            if self._all_stable(group, now):
                self._reject(group, stem, twins_message(stem, group))
                handled += 1
        for key, group in sorted(drops.items()):
            if self._all_stable(list(group.values()), now):
                handled += self._take(key, group)
        return handled

    def _all_stable(self, files: list[Path], now: float) -> bool:
        try:
            return all([self.stable(p, now) for p in files])  # a list: every file's clock starts on this pass
        except FileNotFoundError:
            return False  # moved away between listing and stat

    def _take(self, stem: str, group: dict[str, Path]) -> int:
        if "unsupported" in group:
            p = group["unsupported"]
            # beside a dataset of its name it is most likely options meant for it (NAME.yaml): the dataset is set
            # aside too rather than trained without them
            others = [q for role, q in group.items() if role != "unsupported"] if "dataset" in group else []
            if others and (checking := self._checking.pop(stem, None)) is not None:
                checking.future.cancel()
            with_it = (f" {', '.join(shown_name(q.name) for q in others)} of the same name "
                       f"{'was' if len(others) == 1 else 'were'} set aside with it, so that {stem} does not train "
                       f"without what {p.name} was meant to give it." if others else "")
            self._reject([p, *others], stem, f"{p.name}: unsupported file type '{p.suffix or '(none)'}'. overnight "
                         f"takes datasets ending in .jsonl, .json, .csv, .parquet or .txt, a sidecar NAME.toml (TOML), "
                         f"a probe file NAME.probes.jsonl and an eval file NAME.eval.jsonl.{with_it} Fix: convert the "
                         f"file to one of these formats (options: {stem}.toml), or leave it out of the inbox.")
            return 1
        dataset = group.get("dataset")
        if dataset is None:
            if stem not in self._waiting_logged:
                names = ", ".join(shown_name(p.name) for p in group.values())
                taken = self.store.newest_run_of_dataset(stem)
                if taken:  # came after its dataset: the run was made without it
                    log.warning(f"inbox: {names} came after its dataset was taken as run {taken}, which does not use "
                                f"it; it waits for a new {stem} dataset. Fix: to train with it, drop the dataset again "
                                f"(the run's copy is in runs/{taken}/dataset/)")
                else:
                    log.info(f"inbox: {names} waits for its dataset {stem}.jsonl/.json/.csv/.parquet/.txt")
                self._waiting_logged.add(stem)
            return 0
        self._waiting_logged.discard(stem)
        fingerprint = _fingerprint(group)
        checking = self._checking.get(stem)
        if checking is None or checking.fingerprint != fingerprint:  # new, or changed while being checked
            if checking is not None:
                checking.future.cancel()
            if self._still_written(stem, group):
                return 0
            future = self._pool.submit(self._judge, dict(group))
            if self._on_verdict:
                future.add_done_callback(lambda _f: self._on_verdict())
            self._checking[stem] = _Checking(future, fingerprint)
            return 0
        if not checking.future.done():
            return 0
        verdict = checking.future.result()
        files = [p for p in (dataset, group.get("sidecar"), group.get("probes"), group.get("eval")) if p]
        if verdict.sub is None:
            del self._checking[stem]
            self._reject(files, stem, verdict.error)
        else:
            if time.monotonic() < self._unrecorded.get(stem, 0):
                return 0  # its run could not be recorded a moment ago: not moved back and forth every pass
            self._accept_or_reject(verdict, files, stem)  # raises when the drop waits: its verdict is kept
            del self._checking[stem]
        return 1

    def _still_written(self, stem: str, group: dict[str, Path]) -> bool:
        """A process holds a file of the drop open for writing: it waits (said once in the log). Asking every
        process costs ~0.1 s, so a drop found held open is asked about again only every WRITERS_RECHECK_S."""
        now = time.monotonic()
        held_since = self._held_open.get(stem)
        if held_since is not None and now - held_since < WRITERS_RECHECK_S:
            return True
        writers = writers_of(list(group.values()))
        if not writers:
            self._held_open.pop(stem, None)
            return False
        if held_since is None:
            log.info(f"inbox: {shown_name(group['dataset'].name)} waits: {', '.join(writers)} still has it open "
                     f"for writing")
        self._held_open[stem] = now
        return True

    def busy(self) -> bool:
        """A drop is being validated."""
        return bool(self._checking)

    def _judge(self, group: dict[str, Path]) -> _Verdict:
        """Validate one drop (on the validation thread): the same checks as `overnight check`."""
        dataset = group["dataset"]
        size = dataset.stat().st_size
        if size >= BIG_DROP_BYTES:  # say why a big drop takes a while to show up
            log.info(f"inbox: validating {shown_name(dataset.name)} ({size / 2**20:,.0f} MiB)…")
        try:
            sub = validate(dataset, group.get("sidecar"), group.get("probes"), self.home.toml,
                           eval_file=group.get("eval"))
            return _Verdict(sub=sub, sha=sha256_file(dataset))
        except SubmissionError as e:
            return _Verdict(error=str(e))
        except Exception as e:  # the daemon must survive any file; say what broke instead of dying
            log.error(f"inbox: unexpected error on {shown_name(dataset.name)}: {e}\n{traceback.format_exc()}")
            return _Verdict(error=f"{shown_name(dataset.name)}: overnight could not read this file "
                                  f"({type(e).__name__}: {e}). This is likely a bug in overnight; the file is kept "
                                  f"here unchanged.")

    def _accept_or_reject(self, verdict: _Verdict, files: list[Path], stem: str) -> None:
        """Accept a validated drop; if making its run folder fails, the drop goes to rejected/ with the reason."""
        try:
            self.accept(verdict.sub, verdict.sha)
            self._taken[verdict.sub.dataset.name] = time.monotonic()
            self._reappeared_said.discard(verdict.sub.dataset.name)
        except Exception as e:  # noqa: BLE001 - a drop is never left half-moved (accept put it back)
            if (is_disk_full(e) or busy_problem(e, self.home.db)) and all(p.exists() for p in files):
                # the machine's fault, not the file's: the drop waits in the inbox (checked already) and is taken
                # once the disk has room or the DB is free again; the daemon reports the fault (scheduler._guard)
                if stem not in self._unrecorded:
                    log.warning(f"inbox: {shown_name(files[0].name)} waits in the inbox: its run could not be "
                                f"recorded ({e}); it is taken once that works again")
                self._unrecorded[stem] = time.monotonic() + UNRECORDED_RETRY_S
                raise
            self._unrecorded.pop(stem, None)
            log.error(f"inbox: could not create a run for {shown_name(files[0].name)}: {e}\n{traceback.format_exc()}")
            self._reject([p for p in files if p.exists()], stem,
                         f"{shown_name(files[0].name)}: overnight could not create its run folder "
                         f"({type(e).__name__}: {e}). Fix: free disk space or check permissions of "
                         f"{self.home.runs}, then drop the file again.")

    def _owner_toml_ok(self) -> bool:
        """Drops wait (they are not rejected), and queued runs wait to start, while the owner's overnight.toml, a
        file it names for every run (eval_file, forgetting_sample) or its base model is broken or missing."""
        state = owner_toml(self.home.toml).read()
        problem = state.problem
        if problem is None:
            try:
                check_owner_files(state.values, self.home.toml)
                check_owner_models(state.values, self.home.toml)
            except SubmissionError as e:
                problem = str(e)
        if problem is not None:
            if self._toml_problem != problem:
                log.error(f"{problem}\nDrops wait in the inbox, and queued runs wait to start, until it is fixed.")
            self._toml_problem = problem
            return False
        if self._toml_problem:
            log.info(f"{self.home.toml} is valid again: taking drops")
        self._toml_problem = None
        return True

    def _reject(self, files: list[Path], stem: str, message: str) -> None:
        """Move the drop to inbox/rejected/ beside NAME.error.txt; nothing is deleted."""
        moved: list[Path] = []
        # one number for the files and their error: NAME.1.jsonl beside NAME.1.error.txt
        *dests, err = unique_paths([*((self.home.rejected / p.name, None) for p in files),
                                    (self.home.rejected / f"{short_name(safe_name(stem))}.error.txt", ".error.txt")])
        for p, dest in zip(files, dests):
            os.rename(p, dest)
            moved.append(dest)
            message = message.replace(str(p), str(dest))  # the path it is read at now, to be fixed there
        names = ", ".join(shown_name(p.name) for p in moved)
        them = "the files" if len(moved) > 1 else "the file"
        write_text(err, f"{message}\n\nRejected files (moved to {self.home.rejected}): {names}\n"
                        f"After fixing, drop {them} into {self.home.inbox} again (mv, or overnight add FILE).\n")
        log.warning(f"inbox: rejected {names}: {message.splitlines()[0]} (see {err})")
        if self._on_reject and moved:
            try:
                self._on_reject(moved, message, err)
            except Exception:  # noqa: BLE001 - a hook or notifier never stops the intake
                log.exception(f"inbox: telling about the rejection of {names} failed")

    def new_run_id(self, name: str, stamp: str | None = None, also_taken: set[str] | None = None) -> str:
        """NAME-YYYYmmdd-HHMMSS, with -2, -3… when two collide (with a run or a group id)."""
        base = f"{short_name(safe_name(name), SHORT_NAME - 40)}-{stamp or run_id_stamp()}"  # room: -N, .partial
        taken = self.store.run_ids() | self.store.group_ids() | (also_taken or set())
        rid, i = base, 2
        while rid in taken or self.home.run_dir(rid).exists():
            rid, i = f"{base}-{i}", i + 1
        return rid

    def accept(self, sub: Submission, sha: str | None = None) -> list[str]:
        """Create one queued run per base model and per combination of a sweep's values (daemon/core/sweep.py), in
        the grid's order; the drop is moved into the first run's dataset/ folder.

        Each run folder is assembled under a hidden staging name and renamed into runs/ complete, so a
        reader never sees a run folder without its config.json.
        """
        name = model_name_of(sub)
        if name != sub.name:  # a user who dropped "my data.jsonl" looks for "my data": say which name it got
            log.info(f"inbox: {shown_name(sub.dataset.name)}: model name: {name} (from the file name)")
        drawn = search.searching(sub.options.values)  # a search: each trial's values are drawn when it starts
        points = sweep.expand(sub.options) if not drawn else [sweep.Point(sub.options.base_models[0])] * \
            sweep.run_count(sub.options)
        several_models = len(sub.options.base_models) > 1
        sha = sha or sha256_file(sub.dataset)
        stamp = run_id_stamp()  # one time for the whole group: the ids differ only by their values
        group_id = self.new_run_id(name, stamp) if len(points) > 1 or drawn else None
        run_ids: list[str] = []
        staged: list[RunFolder] = []  # each run's folder, made under a hidden staging name
        rows: list[dict] = []
        first_seq = self.store.next_seq()
        try:
            for i, point in enumerate(points):
                rid = search.trial_run_id(group_id, name, i + 1) if drawn else self.new_run_id(
                    name + sweep.run_suffix(point, several_models), stamp, {group_id, *run_ids} - {None})
                staged.append(RunFolder(self.home.runs / f".{rid}.partial"))
                staged[-1].dataset.mkdir(parents=True)
                run_ids.append(rid)
                # overnight's own files first: a disk too full for them fails here, before the drop has moved
                rows.append(self._write_run_files(rid, name, staged[-1].root, sub, sweep.options_for(sub.options, point),
                                                  sha, group_id, point, (i + 1, len(points)), first_seq + i))
                if i == 0:
                    for p in (sub.dataset, sub.sidecar, sub.probes, sub.eval_file):
                        if p:
                            os.rename(p, staged[0].dataset / p.name)
                else:  # the same bytes for the other runs of the group: a hard link costs no space
                    for p in staged[0].dataset.iterdir():
                        _link_or_copy(p, staged[-1].dataset / p.name)
            # the commit: one transaction records the whole group; a daemon killed before it takes the drop again
            # whole, one killed after it puts the folders in place at its next start (_recover_staging)
            self.store.insert_runs(rows)
        except BaseException:
            self._unstage(staged, sub)
            raise
        for rid, folder in zip(run_ids, staged):
            os.rename(folder.root, self.home.run_dir(rid))
        grouped = f" (group {group_id}: {sweep.describe(sub.options)})" if group_id else ""
        log.info(f"inbox: accepted {sub.dataset.name} ({sub.report.schema}, {sub.report.records} records) "
                 f"as {', '.join(run_ids)}{grouped}")
        return run_ids

    def _unstage(self, staged: list[RunFolder], sub: Submission) -> None:
        """A group that could not be recorded: the drop back where it was, its staging folders gone."""
        for p in (sub.dataset, sub.sidecar, sub.probes, sub.eval_file) if staged else ():
            if p and (staged[0].dataset / p.name).exists() and not p.exists():
                os.rename(staged[0].dataset / p.name, p)
        for folder in staged:
            shutil.rmtree(folder.root, ignore_errors=True)

    def _write_run_files(self, rid: str, name: str, folder: Path, sub: Submission, opts: Resolved, sha: str,
                         group_id: str | None, point: sweep.Point, place: tuple[int, int], seq: int) -> dict:
        """config.json, stats.json, metadata.json and the console header; returns the run's DB row."""
        model = opts.values["base_model"]
        run = RunFolder(folder)
        dataset_info = {"path": run.in_dataset(sub.dataset.name), "file": sub.dataset.name, "format": sub.report.format,
                        "schema": sub.report.schema, "records": sub.report.records, "sha256": sha}
        parent = check_parent(opts, self.home.toml)
        RunConfig(run_id=rid, name=name, group=group_id, sweep=dict(point.values) or None, **opts.to_config(),
                  dataset=dataset_info, init_adapter=copy_adapter(parent, run.init_adapter) if parent else None,
                  probes=run.in_dataset(sub.probes.name) if sub.probes else None,
                  sidecar=run.in_dataset(sub.sidecar.name) if sub.sidecar else None,
                  extra={"eval_file": run.in_dataset(sub.eval_file.name)} if sub.eval_file else {}).write(folder)
        write_json(run.stats, {**sub.report.to_dict(), "path": dataset_info["path"]})
        row = {"id": rid, "name": name, "group_id": group_id, "dataset": sub.dataset.name,
               "format": sub.report.format, "schema": sub.report.schema, "records": sub.report.records,
               "base_model": model, "state": State.QUEUED, "priority": int(opts.values["priority"]),
               "seq": seq, "run_dir": str(self.home.run_dir(rid)),
               "max_steps": opts.values["max_steps"] or None, "created": iso()}
        rundir.write_metadata(folder, row)
        in_group = f"; group {group_id}, run {place[0]} of {place[1]}" if group_id else ""
        if point.values:
            in_group += ": " + ", ".join(f"{k} = {v}" for k, v in point.values)
        rundir.append_console(folder, f"overnight run {rid} queued: dataset {sub.dataset.name} "
                                      f"({sub.report.format}, schema {sub.report.schema}, {sub.report.records} "
                                      f"records), base model {model}{in_group}")
        if name != sub.name:
            rundir.append_console(folder, f"model name: {name} (from the file name)")
        return row


def model_name_of(sub: Submission) -> str:
    """The name the drop's model is registered under: the `name` option, else the dataset's file name by the run
    id's rule (spaces and symbols become '-'), so that `init_adapter = "NAME"`, `overnight activate NAME` and the
    run id all spell it alike."""
    if sub.options.values.get("name"):
        return sub.options.values["name"]
    derived = safe_name(model_name(stem_of(sub.dataset)))
    # a name the `name` option would refuse (`_notes`, too long) could not be named again: init_adapter, activate
    return derived if model_name_problem(derived) is None else suggested_model_name(derived)


def _fingerprint(group: dict[str, Path]) -> dict[str, tuple[int, int]]:
    out = {}
    for p in group.values():
        st = p.stat()
        out[p.name] = (st.st_size, st.st_mtime_ns)
    return out


def _refused_name(p: Path, inbox: Path) -> str | None:
    """Why a file is refused before it is read: a symbolic link, not a file, or its name (dropfiles.name_problem)."""
    if p.is_symlink():
        return (f"{shown_name(p.name)} is a symbolic link; overnight refuses links so that nothing outside the "
                f"home is read or moved. Fix: move or copy the real file into the inbox "
                f"(mv /path/to/{shown_name(p.name)} {inbox}/).")
    if p.is_dir():
        return (f"{shown_name(p.name)} is a folder; overnight takes one dataset file per run. Fix: join its "
                f"records into one .jsonl file (or drop its files one by one) and drop that.")
    if not p.is_file():
        return f"{shown_name(p.name)} is not a regular file (a pipe or a device?). Fix: drop a dataset file."
    return name_problem(p.name)


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
