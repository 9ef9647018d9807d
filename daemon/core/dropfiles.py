"""What each file of a drop is, by its name: the dataset, its sidecar (NAME.toml), its probes
(NAME.probes.jsonl) or its eval file (NAME.eval.jsonl). Shared by the intake, `overnight check`, `overnight add` and the HTTP upload."""
from __future__ import annotations

from pathlib import Path

from daemon.core.datasets import SUPPORTED_SUFFIXES

PROBES_SUFFIX = ".probes.jsonl"
EVAL_SUFFIX = ".eval.jsonl"  # scored at the end of each run (daemon/core/evalfile.py)


def stem_of(path: Path) -> str:
    """The dataset name a file belongs to: `x.probes.jsonl`, `x.eval.jsonl` and `x.toml` all belong to `x`."""
    name = path.name
    for suffix in (PROBES_SUFFIX, EVAL_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def role_of(path: Path) -> str:
    """'probes', 'eval', 'sidecar', 'dataset' or 'unsupported'."""
    if path.name.endswith(PROBES_SUFFIX):
        return "probes"
    if path.name.endswith(EVAL_SUFFIX):
        return "eval"
    if path.suffix == ".toml":
        return "sidecar"
    if path.suffix.lower() in SUPPORTED_SUFFIXES:
        return "dataset"
    return "unsupported"


def companion_hint(path: Path) -> str | None:
    """A sidecar, probe or eval file named for a dataset NAME.jsonl (`NAME.jsonl.toml`): it goes with a dataset
    `NAME.jsonl.jsonl`, never with NAME.jsonl; the name it needs. None for any other file."""
    role, stem = role_of(path), stem_of(path)
    dataset = Path(stem)
    if role not in ("sidecar", "probes", "eval") or dataset.suffix.lower() not in SUPPORTED_SUFFIXES:
        return None
    ending = {"sidecar": ".toml", "probes": PROBES_SUFFIX, "eval": EVAL_SUFFIX}[role]
    return (f"{path.name} goes with a dataset named {stem}.jsonl (or .json, .csv, .parquet, .txt), not with {stem}: "
            f"for {stem}, name it {dataset.stem}{ending}")


def dataset_waiting(inbox: Path, name: str) -> bool:
    """Whether a dataset named `name` waits in the inbox (being written, settling or checked)."""
    return any(p.is_file() and role_of(p) == "dataset" and stem_of(p) == name for p in inbox.iterdir())
