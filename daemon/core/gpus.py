"""Which GPUs each trainer sees: the owner's `gpus`, cut into sets of `gpus_per_run` (no torch here).

A run whose set holds several GPUs is launched through torchrun (one process per GPU, DDP); a trainer that saw
several GPUs outside torchrun would be wrapped in nn.DataParallel by the Trainer (slow, and SPEC §12 forbids it).
Indices count within what the daemon itself may see: started with CUDA_VISIBLE_DEVICES=3,5 (Slurm, Kubernetes,
UUIDs), `gpus = [1]` means device 5. CUDA_DEVICE_ORDER=PCI_BUS_ID makes indices count the way nvidia-smi and NVML
(the dashboard) number the GPUs; CUDA's default orders by speed. Without a GPU, `max_parallel_runs` CPU slots share
the cores.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from daemon.core.errors import GpuChoiceError


@dataclass(frozen=True)
class Slot:
    """Where one run trains: CUDA_VISIBLE_DEVICES entries (none: the CPU) and, on the CPU, its share of threads."""

    devices: tuple[str, ...] = ()
    threads: int | None = None

    @property
    def label(self) -> str:
        return f"GPU {','.join(self.devices)}" if self.devices else "CPU"

    def nvml_indices(self) -> list[int]:
        """The set as NVML numbers the GPUs (the dashboard's numbers); UUID entries are looked up."""
        return [i for i in map(_nvml_index, self.devices) if i is not None]

    def env(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """The trainer's environment additions."""
        env = {"CUDA_VISIBLE_DEVICES": ",".join(self.devices),
               "CUDA_DEVICE_ORDER": inherited.get("CUDA_DEVICE_ORDER") or "PCI_BUS_ID"}  # the user's own order wins
        if self.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        return env


def plan(owner: Mapping[str, Any], inherited: Mapping[str, str],
         count_gpus: Callable[[], int | None] | None = None) -> list[Slot]:
    """The slots runs may take side by side, from `gpus`, `gpus_per_run` and `max_parallel_runs`.

    `gpus`: None or "all" (every visible GPU), a count N (the first N) or a list of indices. `gpus_per_run`: the
    size of a set (default: all of `gpus`; GPUs left over from the last whole set stay idle). `max_parallel_runs`:
    at most this many runs at once (default: one per set; one on the CPU). An inherited empty CUDA_VISIBLE_DEVICES
    (the CPU chosen on purpose) stays empty unless `gpus` names a GPU, which is then an error, as is any index out of
    range.
    """
    gpus, per_run, most = owner.get("gpus"), owner.get("gpus_per_run"), owner.get("max_parallel_runs")
    visible = _visible(inherited, count_gpus or _counted)
    chosen = _choose(gpus, visible, inherited.get("CUDA_VISIBLE_DEVICES"))
    if not chosen:
        n = most or 1
        cores = os.cpu_count() or 1
        return [Slot(threads=max(1, cores // n) if n > 1 else None)] * n
    size = per_run or len(chosen)
    if size > len(chosen):
        raise GpuChoiceError(f"gpus_per_run = {size} in overnight.toml, but overnight may use {len(chosen)} GPU(s) "
                             f"({','.join(chosen)}). Fix: set gpus_per_run to at most {len(chosen)}, or widen gpus; "
                             f"then `overnight resume RUN`.")
    sets = [Slot(tuple(chosen[i:i + size])) for i in range(0, len(chosen) - size + 1, size)]
    return sets[:most] if most else sets


def _visible(inherited: Mapping[str, str], count_gpus: Callable[[], int | None]) -> list[str] | None:
    """The device entries the daemon may hand out; None when the GPUs cannot be counted (NVML broken)."""
    raw = inherited.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        return [entry.strip() for entry in raw.split(",") if entry.strip()]
    count = count_gpus()
    return None if count is None else [str(i) for i in range(count)]


def _choose(gpus: Any, visible: list[str] | None, raw: str | None) -> list[str]:
    if isinstance(gpus, list):
        wanted = gpus
    elif isinstance(gpus, int) and not isinstance(gpus, bool):
        wanted = list(range(gpus))
    else:
        wanted = list(range(len(visible) if visible is not None else 1))
    if visible is None:  # a driver NVML cannot read: the GPUs asked for (else the first), as CUDA numbers them
        return [str(i) for i in wanted]
    for index in wanted:
        if index >= len(visible):
            where = (f"the daemon was started with CUDA_VISIBLE_DEVICES={raw!r}, which leaves it" if raw is not None
                     else "the NVIDIA driver shows")
            asked = f"{gpus} GPUs" if isinstance(gpus, int) else f"GPU index {index}"
            fix = ("remove gpus (this machine trains on its CPU)" if not visible else
                   f"set gpus to indices within that list (indices 0..{len(visible) - 1}), or remove it")
            raise GpuChoiceError(
                f"gpus = {gpus!r} in overnight.toml asks for {asked}, but {where} {len(visible)} GPU(s). Fix: {fix}, "
                f"or restart the daemon with the GPUs it should use visible; then `overnight resume RUN`.")
    return [visible[i] for i in wanted]


_COUNTED: tuple[float, int | None] | None = None


def _counted() -> int | None:
    """nvml_count, asked at most every 30 s (the daemon plans its slots at every pass)."""
    global _COUNTED
    if _COUNTED is None or time.monotonic() - _COUNTED[0] > 30:
        _COUNTED = (time.monotonic(), nvml_count())
    return _COUNTED[1]


def nvml_count() -> int | None:
    """GPUs the NVIDIA driver shows: 0 without a driver or NVML library, None when NVML fails otherwise."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        missing = (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        return 0 if getattr(e, "value", None) in missing else None
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def _nvml_index(entry: str) -> int | None:
    """NVML's index of a GPU named by UUID (CUDA_VISIBLE_DEVICES=GPU-…); None when NVML cannot tell."""
    if entry.isdigit():
        return int(entry)
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID(entry)))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - pynvml raises its own error classes for every way of having no GPU
        return None


def under_torchrun(environ: Mapping[str, str]) -> bool:
    """torchrun (and accelerate launch) set these for every process they start."""
    return "LOCAL_RANK" in environ or "WORLD_SIZE" in environ
