"""A run's GPU set as the DB stores it ("0,1"; "" for the CPU) and as everything else reads it (a list of NVML
indices): shared by the daemon, the run folder, the rebuild and the clients, so it imports nothing of theirs."""
from __future__ import annotations

from typing import Iterable


def parse_gpu_set(text: str | Iterable[int] | None) -> list[int]:
    """The runs.gpu_set column (or metadata.json's list) as a list of NVML indices; [] for the CPU, NULL, or junk."""
    if text is None:
        return []
    if not isinstance(text, str):
        items: Iterable[object] = text
    else:
        items = (p.strip() for p in text.split(",") if p.strip())
    try:
        return sorted({int(i) for i in items if not isinstance(i, bool)})  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return []


def format_gpu_set(indices: Iterable[int] | None) -> str:
    """`[0, 1]` → "0,1" (the runs.gpu_set column); None or [] → "" (the CPU)."""
    return ",".join(str(int(i)) for i in sorted(set(indices or ())))
