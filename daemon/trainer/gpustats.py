"""The GPUs this trainer trains on, as NVML sees them from where it runs, for progress.json: a run on another
machine (a Slurm node) is out of reach of the dashboards' own NVML, which read its figures from there instead."""
from __future__ import annotations

import os
from typing import Any

_nvml: Any = None  # the initialised binding; False once NVML turned out to be missing


def _binding() -> Any:
    global _nvml
    if _nvml is None:
        try:
            import pynvml
            pynvml.nvmlInit()
            _nvml = pynvml
        except Exception:  # noqa: BLE001 - no driver, no library: no figures, never a failed run
            _nvml = False
    return _nvml


def _handles(nvml: Any) -> list[tuple[str, Any]]:
    """(label, handle) of each GPU CUDA_VISIBLE_DEVICES names (indices or UUIDs), or of every GPU when unset."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",") if v.strip()] if visible is not None else \
        [str(i) for i in range(nvml.nvmlDeviceGetCount())]
    out = []
    for name in names:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(int(name)) if name.isdigit() else \
                nvml.nvmlDeviceGetHandleByUUID(name)
        except Exception:  # noqa: BLE001 - a GPU this process may not query (a cgroup, a MIG slice): left out
            continue
        out.append((name, handle))
    return out


def sample() -> list[dict[str, Any]]:
    """[{index, name, util_percent, mem_used, mem_total}] for each GPU this trainer uses; [] without NVML."""
    nvml = _binding()
    if not nvml:
        return []
    out = []
    for label, handle in _handles(nvml):
        try:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
            name = nvml.nvmlDeviceGetName(handle)
        except Exception:  # noqa: BLE001
            continue
        out.append({"index": label, "name": name.decode() if isinstance(name, bytes) else name,
                    "util_percent": util, "mem_used": int(memory.used), "mem_total": int(memory.total)})
    return out
