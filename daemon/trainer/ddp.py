"""One run over several processes (torchrun → DDP): who this process is, and the few collective decisions.

The Trainer does the data-parallel training itself (accelerate sets up DDP from torchrun's environment); this module
only lets the ranks agree where our callbacks decide something: pause, stop, a non-finite loss, a disk short of
space. Rank 0 alone reads the daemon's commands and writes the run folder; the ranks exchange their flags (a sum of
small integers, `summed`/`summed_later`), so every rank pauses, saves and stops at the same optimizer step
(daemon/trainer/commands.py: at a step boundary that exchange is started at one step and read at the next).

The process group is initialised here, before the Trainer (the resume point must be agreed before there is one);
accelerate then finds it initialised and uses it. Control messages travel over gloo (a group of their own when the
training backend is NCCL), so they never touch the GPU streams.
"""
from __future__ import annotations

import os
import sys
import threading
from datetime import timedelta
from typing import Any

_group: Any = None  # the gloo group control messages use (None: the default group)
_initialised = False
BARRIER_S = 60  # the bound of the last barrier (`shutdown`): the ranks reach it within seconds of each other
LEAVE_ALONE_S = 10  # the bound of a lone rank's teardown (`shutdown`)


def rank() -> int:
    """This process's global rank (0 outside torchrun); readable before the process group exists."""
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main() -> bool:
    """The process that reads commands and writes the run folder."""
    return rank() == 0


def distributed() -> bool:
    return world_size() > 1


def worker() -> bool:
    """This process is one of torchrun's workers (one process under torchrun too)."""
    return "LOCAL_RANK" in os.environ


def launcher_pid() -> int:
    """The pid of the process the daemon started: torchrun's launcher (our parent) under torchrun, else us."""
    return os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ else os.getpid()


def backend(device_kind: str) -> str:
    return "nccl" if device_kind == "cuda" else "gloo"


def init(device_kind: str) -> None:
    """Join the process group torchrun set up (no-op outside torchrun; one process under torchrun joins a group
    of one, so the owner who asks for torchrun with nproc_per_node = 1 gets DDP over NCCL as on several GPUs)."""
    global _group, _initialised
    if not (distributed() or worker()) or _initialised:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend=backend(device_kind), timeout=timedelta(minutes=30))
    _group = dist.new_group(backend="gloo") if backend(device_kind) != "gloo" else None
    _initialised = True


def initialised() -> bool:
    """The process group is up (under torchrun, once training is being set up)."""
    return _initialised


def barrier() -> None:
    if _initialised:
        import torch.distributed as dist

        dist.barrier(group=_group)


def from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not _initialised:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=_group)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order."""
    if not _initialised:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value, group=_group)
    return out


def summed(values: list[int]) -> list[int]:
    """Each of a few integers summed over every rank (one all_reduce of a CPU tensor over gloo: no pickling)."""
    return summed_later(values).result()


def summed_later(values: list[int]) -> Sum:
    """`summed`, started now and read with `.result()` later: the ranks go on working while it travels."""
    return Sum(values)


class Sum:
    """An all_reduce (sum) of a few integers in flight; outside a process group, the values themselves."""

    def __init__(self, values: list[int]) -> None:
        self._values, self._work, self._tensor = list(values), None, None
        if _initialised:
            import torch
            import torch.distributed as dist

            self._tensor = torch.tensor(self._values, dtype=torch.int64)
            self._work = dist.all_reduce(self._tensor, group=_group, async_op=True)

    def result(self) -> list[int]:
        if self._work is not None:
            self._work.wait()
            self._values, self._work = self._tensor.tolist(), None
        return self._values


def any_rank(flag: bool) -> bool:
    return summed([int(bool(flag))])[0] > 0


def total(value: int) -> int:
    return summed([int(value)])[0]


def shutdown(*, together: bool) -> None:
    """Leave the process group, on every way out of a worker (daemon/trainer/run.py's `main`), while the
    interpreter is still whole.

    `together`: every rank ends at this same point (the run completed, or stopped at an agreed step boundary), so a
    last barrier first, bounded by BARRIER_S, lets no rank tear its connections down while another still uses them.
    A rank that failed on its own, or lost a peer, skips it: the others may never arrive.

    destroy_process_group() alone does not end gloo's threads (`gloo_tcp_loop`, `pt_gloo_runloop`): it forgets the
    group, but the DDP model still holds it, and the threads stop only when the group object is freed. Left to the
    interpreter's shutdown, that freeing raced with it: a gloo thread that needed the GIL then (releasing a tensor
    of its last collective) was ended by Python's finalisation (pthread_exit through C++ frames that may not be
    unwound), and the worker aborted with "terminate called without an active exception" (SIGABRT) after its run
    had ended. So the Trainer's garbage is collected here too, which frees the group and joins its threads. Whether
    that frees it depends on who else holds it (torch keeps references of its own: in a bare script with a DDP
    model the threads outlived destroy + gc.collect() and one exit in ten still aborted), so a worker skips the
    interpreter's shutdown altogether (`exit_now`)."""
    global _group, _initialised
    if not _initialised:
        return
    import gc

    import torch.distributed as dist

    def leave() -> None:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
        gc.collect()  # the Trainer and its DDP model (cycles): the last holders of the group, whose threads end with it

    if together:
        try:
            dist.monitored_barrier(group=_group, timeout=timedelta(seconds=BARRIER_S), wait_all_ranks=True)
        except Exception:  # noqa: BLE001 - a rank gone or late: leave anyway
            pass
        leave()
    else:  # a rank ending alone (out of memory, a failure): a peer still waits in a collective with it, and the
        # teardown can wait on that peer, which waits on this rank's exit (the launcher ends the peers once it
        # exits): bounded, after which the worker exits all the same (`exit_now`)
        leaving = threading.Thread(target=leave, name="leave-process-group", daemon=True)
        leaving.start()
        leaving.join(LEAVE_ALONE_S)
    _group, _initialised = None, False


def exit_now(code: int) -> None:
    """End a torchrun worker once everything is written: flush, then os._exit without the interpreter's shutdown.

    Nothing of ours waits for that shutdown (result.json and the checkpoints are written atomically, the console
    is flushed here), and it is where a library's C++ thread still running (gloo's, NCCL's watchdog) can abort
    the process on the way out (`shutdown`): a worker that ended its run must exit with the run's code."""
    import logging

    logging.shutdown()  # flushes the library loggers' handlers (they write through sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
