"""A stand-in `pynvml` module answering with NVML's own structures, so the dashboard's NVML code runs without a GPU.

The answers are built from the real binding's ctypes structures (`c_nvmlProcessInfo_t`: pid, usedGpuMemory;
`c_nvmlUtilization_t`: gpu, memory; `c_nvmlMemory_t`: total, free, used) the way nvidia-ml-py returns them: a
process list whose usedGpuMemory is None where the driver reports NVML_VALUE_NOT_AVAILABLE (v3 binding), or that
raw value (2**64 - 1) from an older binding. Install it with `monkeypatch.setitem(sys.modules, "pynvml", fake)`.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field

import pynvml as real

GIB = 1 << 30
NOT_AVAILABLE = real.NVML_VALUE_NOT_AVAILABLE_ulonglong.value  # 2**64 - 1


@dataclass
class FakeGpu:
    """One GPU's answers: name, utilisation %, memory (bytes), and its processes as (pid, usedGpuMemory)."""

    name: str = "NVIDIA H100 80GB HBM3"
    util: int = 0
    used: int = 0
    total: int = 80 * GIB
    compute: list[tuple[int, int | None]] = field(default_factory=list)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)


def _procs(entries: list[tuple[int, int | None]]) -> list:
    out = []
    for pid, mem in entries:
        info = real.c_nvmlProcessInfo_t(pid=pid, usedGpuMemory=NOT_AVAILABLE if mem is None else mem)
        obj = real.nvmlStructToFriendlyObject(info)
        if mem is None:
            obj.usedGpuMemory = None  # what nvmlDeviceGetComputeRunningProcesses_v3 does with NOT_AVAILABLE
        out.append(obj)
    return out


def fake_pynvml(gpus: list[FakeGpu], raw_graphics: bool = True) -> types.SimpleNamespace:
    """The module: every call the dashboard makes, answering from `gpus` (handles are the indices).
    `raw_graphics`: graphics lists keep NOT_AVAILABLE as the number an older binding passes on."""

    def handle(i: int) -> int:
        if not 0 <= i < len(gpus):
            raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        return i

    def graphics(h: int) -> list:
        if raw_graphics:
            return [real.nvmlStructToFriendlyObject(real.c_nvmlProcessInfo_t(
                pid=pid, usedGpuMemory=NOT_AVAILABLE if mem is None else mem)) for pid, mem in gpus[h].graphics]
        return _procs(gpus[h].graphics)

    def not_supported(*_: object) -> None:
        raise real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED)

    return types.SimpleNamespace(
        NVMLError=real.NVMLError, NVML_TEMPERATURE_GPU=real.NVML_TEMPERATURE_GPU,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetName=lambda h: gpus[h].name,
        nvmlDeviceGetUtilizationRates=lambda h: real.c_nvmlUtilization_t(gpu=gpus[h].util, memory=gpus[h].util // 2),
        nvmlDeviceGetMemoryInfo=lambda h: real.c_nvmlMemory_t(total=gpus[h].total, used=gpus[h].used,
                                                              free=gpus[h].total - gpus[h].used),
        nvmlDeviceGetTemperature=lambda h, kind: 60 + h, nvmlDeviceGetPowerUsage=lambda h: 300_000 + 1000 * h,
        nvmlDeviceGetEnforcedPowerLimit=not_supported,
        nvmlDeviceGetComputeRunningProcesses=lambda h: _procs(gpus[h].compute),
        nvmlDeviceGetGraphicsRunningProcesses=graphics)
