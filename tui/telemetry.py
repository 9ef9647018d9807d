"""Machine telemetry for the System panel and the header: GPUs through NVML (with the processes on each, and
their ancestry through psutil so tui/gpuprocs.py can match them to runs), CPU/RAM/disk through psutil (no Textual
here).

A live source is sampled by one worker thread at most once a second; the panel only ever sees frozen
`Telemetry` snapshots. Tests inject a source of their own so pictures do not depend on the machine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import psutil

from tui.gpuprocs import GpuProcess, used_memory


@dataclass(frozen=True)
class GpuStat:
    """One GPU at one moment (None where the driver does not report a value)."""

    index: int
    name: str
    util_percent: float | None
    mem_used: int
    mem_total: int
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None
    error: str | None = None  # why NVML cannot report this GPU (the others are still shown)
    processes: tuple[GpuProcess, ...] = ()  # compute and graphics processes on it (NVML), with their memory


@dataclass(frozen=True)
class ProcInfo:
    """A process on a GPU, or one of its ancestors: enough to tell which run it belongs to."""

    pid: int
    ppid: int | None
    name: str | None


@dataclass(frozen=True)
class SystemStat:
    """CPU, memory and the disk holding the home."""

    cpu_percent: float
    cpu_count: int
    load_1m: float | None
    ram_used: int
    ram_total: int
    disk_used: int
    disk_total: int
    disk_path: str


@dataclass(frozen=True)
class Telemetry:
    """One sample: the GPUs (or why there are none) and the system."""

    gpus: tuple[GpuStat, ...]
    gpu_error: str | None
    system: SystemStat | None
    procs: tuple[ProcInfo, ...] = ()  # the GPU processes and their ancestors (psutil)

    def parent_of(self, pid: int) -> int | None:
        """A listed process's parent PID (None: not listed, or gone)."""
        return next((p.ppid for p in self.procs if p.pid == pid), None)

    def name_of(self, pid: int) -> str | None:
        """A listed process's name."""
        return next((p.name for p in self.procs if p.pid == pid), None)

    def procs_by_gpu(self) -> dict[int, tuple[GpuProcess, ...]]:
        """NVML's processes per GPU index."""
        return {g.index: g.processes for g in self.gpus}


class TelemetrySource(Protocol):
    """Anything that can produce a Telemetry sample (called from a worker thread)."""

    def sample(self) -> Telemetry: ...

    def close(self) -> None: ...


def ancestry(pids: Iterable[int], depth: int = 32) -> tuple[ProcInfo, ...]:
    """Each process and its ancestors up to init (psutil); a process that is gone or hidden ends its chain."""
    out: dict[int, ProcInfo] = {}
    for pid in pids:
        current = pid
        for _ in range(depth):
            if current in out or current <= 0:
                break
            try:
                proc = psutil.Process(current)
                ppid = proc.ppid()
            except (psutil.Error, OSError):
                out[current] = ProcInfo(current, None, None)
                break
            try:
                name = proc.name()
            except (psutil.Error, OSError):
                name = None
            out[current] = ProcInfo(current, ppid or None, name)
            current = ppid
    return tuple(sorted(out.values(), key=lambda p: p.pid))


def _nvml_processes(pynvml: Any, handle: Any) -> tuple[GpuProcess, ...]:
    """Compute processes (nvmlDeviceGetComputeRunningProcesses: v3 in today's bindings, v2 for older drivers)
    and graphics ones, as nvitop lists them; a query the driver lacks contributes nothing."""
    found: list[GpuProcess] = []
    for names in (("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"),
                  ("nvmlDeviceGetGraphicsRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses_v2")):
        for name in names:
            fn = getattr(pynvml, name, None)
            listed = None if fn is None else _nvml_value(fn, handle)
            if listed is not None:
                found += [GpuProcess(int(p.pid), used_memory(getattr(p, "usedGpuMemory", None))) for p in listed]
                break
    return tuple(found)


def _nvml_value(fn: Any, *args: Any) -> Any:
    """One NVML query; None when this GPU or driver does not support it."""
    import pynvml
    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


class LiveTelemetry:
    """NVML (initialised once; its absence is reported, not raised) + psutil for the disk holding `disk_path`."""

    def __init__(self, disk_path: Path) -> None:
        self.disk_path = Path(disk_path)
        self._nvml_error: str | None = None
        self._handles: list[tuple[int, Any, str | None]] = []  # (index, NVML handle or None, why there is none)
        self._nvml_up = False
        self._init_nvml()
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement window

    def _init_nvml(self) -> None:
        try:
            import pynvml
        except ImportError:
            self._nvml_error = "no NVIDIA GPU (NVML unavailable: the nvidia-ml-py package is not installed)"
            return
        try:
            pynvml.nvmlInit()
            self._nvml_up = True
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as e:
            self._nvml_error = f"no NVIDIA GPU (NVML unavailable: {e})"
            return
        # one GPU at a time: a GPU fallen off the bus (or hidden by a container) must not hide the healthy ones
        for i in range(count):
            try:
                self._handles.append((i, pynvml.nvmlDeviceGetHandleByIndex(i), None))
            except pynvml.NVMLError as e:
                self._handles.append((i, None, f"unavailable (NVML: {e})"))
        if not self._handles:
            self._nvml_error = "no NVIDIA GPU (NVML reports 0 devices)"

    def _gpu(self, index: int, handle: Any, error: str | None) -> GpuStat:
        import pynvml
        if error is not None:  # no handle: the error is all there is to show
            return GpuStat(index=index, name=f"GPU {index}", util_percent=None, mem_used=0, mem_total=0,
                           temperature_c=None, power_w=None, power_limit_w=None, error=error)
        name = _nvml_value(pynvml.nvmlDeviceGetName, handle) or f"GPU {index}"
        util = _nvml_value(pynvml.nvmlDeviceGetUtilizationRates, handle)
        mem = _nvml_value(pynvml.nvmlDeviceGetMemoryInfo, handle)
        temp = _nvml_value(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
        power = _nvml_value(pynvml.nvmlDeviceGetPowerUsage, handle)
        limit = _nvml_value(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        return GpuStat(index=index, name=name if isinstance(name, str) else name.decode(),
                       util_percent=None if util is None else float(util.gpu),
                       mem_used=int(mem.used) if mem else 0, mem_total=int(mem.total) if mem else 0,
                       temperature_c=None if temp is None else float(temp),
                       power_w=None if power is None else power / 1000.0,
                       power_limit_w=None if limit is None else limit / 1000.0,
                       processes=_nvml_processes(pynvml, handle))

    def _system(self) -> SystemStat:
        vm = psutil.virtual_memory()
        try:
            disk = psutil.disk_usage(str(self.disk_path))
            used, total = int(disk.used), int(disk.total)
        except OSError:
            used = total = 0
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = None
        return SystemStat(cpu_percent=psutil.cpu_percent(interval=None), cpu_count=psutil.cpu_count() or 1,
                          load_1m=load, ram_used=int(vm.total - vm.available), ram_total=int(vm.total),
                          disk_used=used, disk_total=total, disk_path=str(self.disk_path))

    def sample(self) -> Telemetry:
        """Query every GPU and the system once."""
        gpus = tuple(self._gpu(i, h, err) for i, h, err in self._handles)
        procs = ancestry(sorted({p.pid for g in gpus for p in g.processes}))
        return Telemetry(gpus=gpus, gpu_error=self._nvml_error, system=self._system(), procs=procs)

    def close(self) -> None:
        """Release NVML."""
        if self._nvml_up:
            import pynvml
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass  # already shut down: nothing left to release
            self._handles, self._nvml_up = [], False
