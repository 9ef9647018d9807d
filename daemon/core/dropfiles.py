"""What each file of a drop is, by its name: the dataset, its sidecar (NAME.toml) or its probes
(NAME.probes.jsonl). Shared by the intake, `overnight check`, `overnight add` and the HTTP upload."""
from __future__ import annotations

from pathlib import Path

from daemon.core.datasets import SUPPORTED_SUFFIXES

PROBES_SUFFIX = ".probes.jsonl"


def stem_of(path: Path) -> str:
    """The dataset name a file belongs to: `x.probes.jsonl` and `x.toml` both belong to `x`."""
    name = path.name
    if name.endswith(PROBES_SUFFIX):
        return name[: -len(PROBES_SUFFIX)]
    return path.stem


def role_of(path: Path) -> str:
    """'probes', 'sidecar', 'dataset' or 'unsupported'."""
    if path.name.endswith(PROBES_SUFFIX):
        return "probes"
    if path.suffix == ".toml":
        return "sidecar"
    if path.suffix.lower() in SUPPORTED_SUFFIXES:
        return "dataset"
    return "unsupported"
