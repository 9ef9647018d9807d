"""One run over several processes (torchrun → DDP): who this process is, and the few collective decisions.

The Trainer does the data-parallel training itself (accelerate sets up DDP from torchrun's environment); this module
only lets the ranks agree where our callbacks decide something: pause, stop, a non-finite loss, a disk short of
space. Rank 0 alone reads the daemon's commands and writes the run folder; at each step boundary it broadcasts
its flags, so every rank pauses, saves and stops at the same optimizer step.

The process group is initialised here, before the Trainer (the resume point must be agreed before there is one);
accelerate then finds it initialised and uses it. Control messages travel over gloo (a group of their own when the
training backend is NCCL), so they never touch the GPU streams.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

_group: Any = None  # the gloo group control messages use (None: the default group)
_initialised = False


def rank() -> int:
    """This process's global rank (0 outside torchrun); readable before the process group exists."""
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main() -> bool:
    """The process that reads commands and writes the run folder."""
    return rank() == 0


def distributed() -> bool:
    return world_size() > 1


def launcher_pid() -> int:
    """The pid of the process the daemon started: torchrun's launcher (our parent) under torchrun, else us."""
    return os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ else os.getpid()


def backend(device_kind: str) -> str:
    return "nccl" if device_kind == "cuda" else "gloo"


def init(device_kind: str) -> None:
    """Join the process group torchrun set up (no-op outside torchrun; one process under torchrun joins a group
    of one, so the owner who asks for torchrun with nproc_per_node = 1 gets DDP over NCCL as on several GPUs)."""
    global _group, _initialised
    if not (distributed() or "LOCAL_RANK" in os.environ) or _initialised:
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


def any_rank(flag: bool) -> bool:
    return any(gather(bool(flag)))


def total(value: int) -> int:
    return sum(gather(int(value)))


def shutdown() -> None:
    global _initialised
    if _initialised:
        import torch.distributed as dist

        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
        _initialised = False
