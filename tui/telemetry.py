"""Machine telemetry for the System panel: GPUs through NVML, CPU/RAM/disk through psutil (no Textual here).

A live source is sampled by one worker thread at most once a second; the panel only ever sees frozen
`Telemetry` snapshots. Tests inject a source of their own so pictures do not depend on the machine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil


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


class TelemetrySource(Protocol):
    """Anything that can produce a Telemetry sample (called from a worker thread)."""

    def sample(self) -> Telemetry: ...

    def close(self) -> None: ...


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
                       power_limit_w=None if limit is None else limit / 1000.0)

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
        return Telemetry(gpus=gpus, gpu_error=self._nvml_error, system=self._system())

    def close(self) -> None:
        """Release NVML."""
        if self._nvml_up:
            import pynvml
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass  # already shut down: nothing left to release
            self._handles, self._nvml_up = [], False
