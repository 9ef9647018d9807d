"""Who holds each GPU, and the box at a glance (no Textual, no torch, no NVML calls here: pure functions).

NVML lists the processes on each GPU (compute and graphics, with the memory each uses); the DB records each
active run's trainer PID. A torchrun run's GPUs are held by its workers, whose parent is the recorded PID, so a
process belongs to a run when the run's PID is the process or one of its ancestors (`parent_of` walks up, from
psutil in the live dashboard, from a table in the tests).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from daemon.core.states import ACTIVE

NVML_VALUE_NOT_AVAILABLE = (1 << 64) - 1  # usedGpuMemory when the driver cannot say (older bindings pass it raw)
_MAX_DEPTH = 32  # ancestors looked at per process (a cycle or a very deep tree stops there)


@dataclass(frozen=True)
class GpuProcess:
    """One process NVML lists on a GPU."""

    pid: int
    used_memory: int | None  # bytes; None: NVML_VALUE_NOT_AVAILABLE


@dataclass(frozen=True)
class Holder:
    """A process on a GPU, matched to the overnight run it belongs to (None: not overnight's)."""

    pid: int
    run_id: str | None
    name: str | None  # the process name (what a process of no run is shown by)
    used_memory: int | None

    def label(self) -> str:
        """`RUN_ID`, or `python3 (not overnight)` (`not overnight` alone when the name cannot be read)."""
        if self.run_id:
            return self.run_id
        return f"{self.name} (not overnight)" if self.name else "not overnight"


@dataclass(frozen=True)
class GpuUse:
    """One GPU: its index, and the processes on it (the runs' first) and the active runs whose set names it."""

    index: int
    holders: tuple[Holder, ...]
    assigned: tuple[str, ...] = ()

    @property
    def waiting(self) -> tuple[str, ...]:
        """Runs given this GPU that hold no memory on it yet (a trainer still loading its model)."""
        holding = {h.run_id for h in self.holders}
        return tuple(r for r in self.assigned if r not in holding)


def used_memory(value: Any) -> int | None:
    """NVML's usedGpuMemory as bytes, or None when it is not available."""
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return None if n < 0 or n >= NVML_VALUE_NOT_AVAILABLE else n


def _get(run: Any, key: str) -> Any:
    return run.get(key) if isinstance(run, Mapping) else getattr(run, key, None)


def owner_of(pid: int, trainers: Mapping[int, str], parent_of: Callable[[int], int | None]) -> str | None:
    """The run whose trainer is `pid` or one of its ancestors."""
    seen: set[int] = set()
    current: int | None = pid
    for _ in range(_MAX_DEPTH):
        if current is None or current in seen or current <= 0:
            return None
        if current in trainers:
            return trainers[current]
        seen.add(current)
        try:
            current = parent_of(current)
        except Exception:  # the process is gone, or not ours to look at: no owner found through it
            return None
    return None


def map_gpu_processes(gpus: Iterable[Any], procs_by_gpu: Mapping[int, Sequence[GpuProcess | tuple[int, Any]]],
                      runs: Iterable[Any], parent_of: Callable[[int], int | None],
                      name_of: Callable[[int], str | None] = lambda pid: None) -> tuple[GpuUse, ...]:
    """Each GPU (anything with an `index`, or plain indices) with the processes NVML lists on it, matched to
    the active runs (rows or RunRows with `id`, `state`, `pid`, `gpu_set`) by PID and ancestry.

    A process listed twice on one GPU (compute and graphics) is one holder (memory summed where known)."""
    trainers: dict[int, str] = {}
    assigned: dict[int, list[str]] = {}
    for run in runs:
        if _get(run, "state") not in ACTIVE:
            continue  # an ended run's PID may belong to someone else by now
        pid = _get(run, "pid")
        if pid:
            trainers[int(pid)] = _get(run, "id")
        for i in _gpu_list(_get(run, "gpu_set")):
            assigned.setdefault(i, []).append(_get(run, "id"))
    out = []
    for gpu in gpus:
        index = gpu if isinstance(gpu, int) else gpu.index
        merged: dict[int, int | None] = {}
        for p in procs_by_gpu.get(index, ()):
            pid, mem = (p.pid, p.used_memory) if isinstance(p, GpuProcess) else (int(p[0]), used_memory(p[1]))
            if pid in merged:
                known = [m for m in (merged[pid], mem) if m is not None]
                merged[pid] = sum(known) if known else None
            else:
                merged[pid] = mem
        holders = [Holder(pid, owner_of(pid, trainers, parent_of), None, mem) for pid, mem in merged.items()]
        holders = [h if h.run_id else Holder(h.pid, None, _safe_name(name_of, h.pid), h.used_memory)
                   for h in holders]
        holders.sort(key=lambda h: (h.run_id is None, h.run_id or "", h.pid))
        out.append(GpuUse(index, tuple(holders), tuple(assigned.get(index, ()))))
    return tuple(out)


def _safe_name(name_of: Callable[[int], str | None], pid: int) -> str | None:
    try:
        return name_of(pid)
    except Exception:  # gone meanwhile
        return None


def _gpu_list(value: Any) -> list[int]:
    if not value:
        return []
    if isinstance(value, str):
        value = value.split(",")
    try:
        return [int(i) for i in value if str(i).strip()]
    except (TypeError, ValueError):
        return []


# --------------------------------------------------------------------------------------------- the header line

_VENDOR = {"nvidia", "geforce", "tesla", "quadro"}
_NOISE = re.compile(r"^(\d+(\.\d+)?[GT]B|HBM\d*e?|PCIE|SXM\d*|NVL|NVLINK|MIG|GENERATION|ADA|LAPTOP|GPU)$", re.I)
_TWO_WORDS = {"rtx", "gtx", "titan"}


def short_gpu_name(name: str) -> str:
    """`NVIDIA H100 80GB HBM3` → `H100`, `Tesla V100-SXM2-16GB` → `V100`, `NVIDIA GeForce RTX 4090` → `RTX 4090`."""
    words = [w for w in re.split(r"[\s\-_]+", name) if w and w.lower() not in _VENDOR]
    words = [w for w in words if not _NOISE.match(w)] or words
    if not words:
        return name.strip() or "GPU"
    keep = 2 if words[0].lower() in _TWO_WORDS and len(words) > 1 else 1
    return " ".join(words[:keep])


def gpu_summary(gpus: Sequence[Any], error: str | None, compact: bool = False) -> str:
    """One line for the header: `GPU 2×H100 87% · 61/160 GB` (count × model, mean utilisation, memory used/total
    over all GPUs), `no GPU (CPU)` when NVML finds none; `compact`: `2×H100 87% 61/160G`."""
    healthy = [g for g in gpus if not getattr(g, "error", None)]
    lost = len(gpus) - len(healthy)
    if not healthy:
        return "no GPU (CPU)" if not lost else f"GPU: {lost} unreachable"
    counts: dict[str, int] = {}
    for g in healthy:
        short = short_gpu_name(g.name)
        counts[short] = counts.get(short, 0) + 1
    models = "+".join(f"{n}×{name}" for name, n in counts.items())
    utils = [g.util_percent for g in healthy if g.util_percent is not None]
    util = f"{sum(utils) / len(utils):.0f}%" if utils else "-%"
    used = sum(g.mem_used for g in healthy) / 2 ** 30
    total = sum(g.mem_total for g in healthy) / 2 ** 30
    extra = f" +{lost}✗" if lost else ""
    if compact:
        return f"{models}{extra} {util} {used:.0f}/{total:.0f}G"
    return f"GPU {models}{extra} {util} · {used:.0f}/{total:.0f} GB"
