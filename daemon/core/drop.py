"""`overnight add` and the HTTP upload: a drop put into a home's inbox so that the daemon never sees half of it.
Which files go (the dataset, its sidecar and probes, named or found beside it), under which names, in which order,
refused when any would clash, and how each is placed. No click: the CLI prints what this says."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from daemon.core.home import Home
from daemon.core.dropfiles import EVAL_SUFFIX, PROBES_SUFFIX, name_problem, role_of, sidecar_beside
from daemon.core.errors import DropError
from daemon.core.fsutil import IGNORED_SUFFIXES, ignored


def plan(h: Home, src: Path, sidecar: str | os.PathLike | None,
         probes: str | os.PathLike | None, eval_file: str | os.PathLike | None = None) -> list[tuple[Path, Path]]:
    """(source, inbox destination) pairs: the sidecar, probes and eval file named, else those beside the dataset;
    the dataset last, so that its sidecar is already waiting for it."""
    stem = src.stem
    pairs = []
    for given, beside, name in ((sidecar, sidecar_beside(src) or src.with_suffix(".toml"), f"{stem}.toml"),
                                (probes, src.with_name(stem + PROBES_SUFFIX), f"{stem}{PROBES_SUFFIX}"),
                                (eval_file, src.with_name(stem + EVAL_SUFFIX), f"{stem}{EVAL_SUFFIX}")):
        if given or beside.exists():
            pairs.append((Path(given) if given else beside, h.inbox / name))
    return [*pairs, (src, h.inbox / src.name)]


def add(h: Home, src: Path, sidecar: str | os.PathLike | None, probes: str | os.PathLike | None,
        on_added: Callable[[Path, Path], None] = lambda src, dest: None, staged: bool = False,
        eval_file: str | os.PathLike | None = None) -> list[Path]:
    """Copy the drop into the inbox (`on_added(source, dest)` after each file); all or nothing: a failure removes
    the copies already placed (the originals stay) and raises. Returns the inbox paths. `staged`: the files were
    written on the inbox's file system for this drop (an upload): each is linked in itself, not copied again."""
    if ignored(src.name):
        raise DropError(f"{ignored_name(src.name)}; nothing was added. Fix: add it under another name, e.g. "
                        f"{plain_name(src.name)}.")
    if role_of(src) != "dataset":
        companion = role_of(src) in ("sidecar", "probes", "eval")
        raise DropError(f"{src.name} is not a dataset (.jsonl, .json, .csv, .parquet or .txt). " + (
            "Add the dataset and pass this file with --sidecar, --probes or --eval." if companion else
            "Fix: convert it to one of those formats, then add that file."))
    problem = name_problem(src.name)
    if problem:
        raise DropError(f"{problem} Nothing was added.")
    pairs = plan(h, src, sidecar, probes, eval_file)
    clashes = [dest for _, dest in pairs if dest.exists() or dest.is_symlink()]
    if clashes:  # checked before anything moves: a lone sidecar would attach to the earlier drop of that name
        raise DropError(f"{', '.join(d.name for d in clashes)} already exists in the inbox ({h.inbox}); "
                        f"nothing was added. Fix: rename your file or wait for it to be taken.")
    placed: list[Path] = []
    try:
        for s, dest in pairs:
            place(s, dest, copy=not staged)
            placed.append(dest)
            on_added(s, dest)
    except BaseException:
        for dest in placed:  # our copies only (the originals stay): a half-added drop must not be taken
            dest.unlink(missing_ok=True)
        raise
    return placed


def place(src: Path, dest: Path, copy: bool = True) -> None:
    """Copy under a hidden temporary name, then link it in: the daemon never sees half a file, and a file that
    appeared meanwhile is never overwritten. `copy=False`: `src` is that temporary file already (and is used up)."""
    tmp = dest.with_name(f".overnight-add.{os.getpid()}.tmp")  # short: dest's own name may be near 255 bytes
    if copy:
        shutil.copyfile(src, tmp)
    else:
        os.rename(src, tmp)
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise DropError(f"{dest.name} appeared in the inbox meanwhile. Fix: rename your file.") from None
    except OSError:  # a file system without hard links: the check above must do
        os.rename(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)



def ignored_name(name: str) -> str:
    """Why the inbox passes `name` by (fsutil.ignored)."""
    return (f"{name}: the inbox never takes this name (a name starting with '.' or ending in "
            f"{', '.join(IGNORED_SUFFIXES)} or '~' is a hidden file, a download in progress, an error report or an "
            f"editor's backup)")


def plain_name(name: str) -> str:
    """`name` without what makes the inbox pass a dataset by (a leading '.', a download's or editor's ending), with
    a dataset's suffix: `.data.jsonl` → data.jsonl, `x.jsonl.part` → x.jsonl, `x.tmp` → x.jsonl."""
    name = name.lstrip(".").strip("#").rstrip("~")
    if name.lower().endswith(".error.txt"):
        return name[: -len(".error.txt")] + ".txt"
    end = next((e for e in IGNORED_SUFFIXES if name.lower().endswith(e)), "")
    name = name[: len(name) - len(end)] or "data"
    return name if role_of(Path(name)) == "dataset" else f"{name}.jsonl"
