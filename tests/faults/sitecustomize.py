"""Test-only fault injection, loaded by every Python process whose PYTHONPATH starts with this folder (the daemon a
test starts, and the trainers it starts, which inherit its environment). Nothing here is part of overnight.

A fault is on while its marker file exists in $OVERNIGHT_TEST_FAULTS (a folder the test owns): the test "fills the
disk" by creating the marker and "frees space" by deleting it. Each fault is an honest full disk at one write:
  checkpoint  the trainer's checkpoint write fails halfway (optimizer.pt cut short, ENOSPC); the marker may name
              the first step it hits
  adapter     the trainer's final adapter save fails (ENOSPC)
  disk        the daemon sees 0 bytes free (daemon/core/space.py), as it would on the disk those writes filled
  db          every write of the daemon's Store fails with sqlite's "database or disk is full"
  db.METHOD   only that Store method's writes fail (db.add_model: registering a model version)
  log         the daemon's log writes fail: overnight.log's handler and the console.log appends (ENOSPC)
  slow        each optimizer step of the trainer takes the marker's seconds longer (a loaded machine): a command
              sent after the first checkpoint lands before the tiny model trains out, on any host
Modules are patched right after they are first imported (a meta-path hook), so the code under test is untouched.
"""
from __future__ import annotations

import errno
import functools
import importlib.abc
import importlib.machinery
import os
import sys
import time
from pathlib import Path

FAULTS = os.environ.get("OVERNIGHT_TEST_FAULTS")


def on(name: str) -> bool:
    return bool(FAULTS) and os.path.exists(os.path.join(FAULTS, name))


def _from_step(name: str) -> int:
    """A marker may hold a step number: the fault hits only checkpoints from that step on."""
    text = open(os.path.join(FAULTS, name)).read().strip()
    return int(text) if text else 0


def enospc(what: object) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(what))


def _patch_torch(torch) -> None:
    save = torch.save

    @functools.wraps(save)
    def faulty_save(obj, f, *args, **kwargs):
        if on("checkpoint") and isinstance(f, (str, os.PathLike)) and "/checkpoint-" in str(f) and \
                int(str(f).split("/checkpoint-")[1].split("/")[0]) >= _from_step("checkpoint"):
            with open(f, "wb") as half:  # the disk filled halfway through the write
                half.write(b"PK\x03\x04 cut short")
            raise enospc(f)
        return save(obj, f, *args, **kwargs)

    torch.save = faulty_save


def _patch_safetensors(st) -> None:
    save_file = st.save_file

    @functools.wraps(save_file)
    def faulty_save_file(tensors, filename, *args, **kwargs):
        if on("adapter") and ".adapter.tmp" in str(filename):
            raise enospc(filename)
        return save_file(tensors, filename, *args, **kwargs)

    st.save_file = faulty_save_file


def _patch_space(space) -> None:
    """The daemon's view of free space (daemon/core/space.py); the trainer checks with its own shutil and finds room:
    the disk fills between its check and its write."""
    real = space.shutil

    class _Shutil:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def disk_usage(path):
            usage = real.disk_usage(path)
            return usage._replace(free=0) if on("disk") else usage

    space.shutil = _Shutil()


def _patch_store(store) -> None:
    import sqlite3
    writes = ("insert_run", "insert_runs", "update_run", "set_state", "control_event", "control_events", "add_metrics",
              "add_evolution", "heartbeat", "add_model", "activate_model", "mark_model_deleted")
    for name in writes:
        method = getattr(store.Store, name, None)
        if method is None:
            continue

        def faulty(self, *args, _method=method, _name=name, **kwargs):
            if on("db") or on(f"db.{_name}"):
                raise sqlite3.OperationalError("database or disk is full")
            return _method(self, *args, **kwargs)

        setattr(store.Store, name, functools.wraps(method)(faulty))


def _patch_rundir(rundir) -> None:
    append = rundir.append_console
    real_open = open

    def faulty_open(file, mode="r", *args, **kwargs):
        if on("log") and any(c in mode for c in "aw+") and Path(file).name == "console.log":
            raise enospc(file)
        return real_open(file, mode, *args, **kwargs)

    @functools.wraps(append)
    def faulty_append(*args, **kwargs):
        rundir.open = faulty_open  # the append's own open() (module globals first, then builtins)
        try:
            return append(*args, **kwargs)
        finally:
            del rundir.open

    rundir.append_console = faulty_append


def _patch_callbacks(tc) -> None:
    on_step_end = tc.CallbackHandler.on_step_end

    @functools.wraps(on_step_end)
    def slow_step_end(self, *args, **kwargs):
        if on("slow"):
            time.sleep(float(open(os.path.join(FAULTS, "slow")).read() or 0))
        return on_step_end(self, *args, **kwargs)

    tc.CallbackHandler.on_step_end = slow_step_end


def _patch_logging(logging) -> None:
    emit = logging.FileHandler.emit

    def faulty_emit(self, record):
        if on("log"):
            try:
                raise enospc(self.baseFilename)
            except OSError:
                self.handleError(record)  # what a FileHandler does when its write fails
            return
        emit(self, record)

    logging.FileHandler.emit = faulty_emit


PATCHES = {"torch": _patch_torch, "safetensors.torch": _patch_safetensors, "daemon.core.space": _patch_space,
           "daemon.engine.store": _patch_store, "daemon.core.rundir": _patch_rundir,
           "transformers.trainer_callback": _patch_callbacks}


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            PATCHES[fullname](module)

        spec.loader.exec_module = exec_and_patch
        return spec


if FAULTS:
    import logging
    _patch_logging(logging)
    sys.meta_path.insert(0, _AfterImport())
