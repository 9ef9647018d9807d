"""A run's config.json, typed: what the intake fixed when it queued the run (the resolved options and where each
came from, the dataset, the adapter continued from, the probe and sidecar files, the sweep point).

The intake writes it once (`write`); the trainer, the run folder, rebuild, the registry, sweeps and export read it
(`read`: never raises, as the other run-folder readers; `load`: for the trainer, a missing or damaged file is an
error naming it). Torch-free and below `daemon.core.rundir` (which takes the file name from here): no cycle.

The file format is the one every earlier version wrote: the keys in `FIELDS` order, then any key this version does
not know (kept, so a newer file read and written back loses nothing); a key an older file lacks reads as its
default (None, or {} for the option tables and the dataset).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from daemon.core.atomic import read_json, write_json
from daemon.core.errors import ConfigError

FILE = "config.json"  # in the run folder (daemon/core/rundir.py's RunFolder.config)
_MISSING = object()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _table(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class RunConfig:
    """config.json of one run; `from_json(to_json())` gives it back, and `to_json()` is what the file holds."""

    run_id: str | None = None
    name: str | None = None  # the model name its version registers under
    group: str | None = None  # the sweep (or several base models) it belongs to
    sweep: dict[str, Any] | None = None  # this run's values of the swept options; None outside a sweep
    options: dict[str, Any] = field(default_factory=dict)  # the resolved options (Resolved.to_config)
    sources: dict[str, str] = field(default_factory=dict)  # option -> "default" | "toml" | "sidecar"
    dataset: dict[str, Any] = field(default_factory=dict)  # path (in the run folder), file, format, schema, records, sha256
    init_adapter: dict[str, Any] | None = None  # the adapter continued from: path (in the run folder), parent, …
    probes: str | None = None  # the probe file, relative to the run folder
    sidecar: str | None = None  # the sidecar file, relative to the run folder
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # keys this version does not know, kept as is

    @property
    def parent(self) -> str | None:
        """What the run continued from ("support:3", or the adapter folder); None for a fresh adapter."""
        return (self.init_adapter or {}).get("parent")

    @property
    def eval_file(self) -> str | None:
        """The eval file dropped with the dataset (NAME.eval.jsonl), relative to the run folder: a key written only
        when there is one (`extra={"eval_file": …}`), so the files of runs without one keep their bytes."""
        return _text(self.extra.get("eval_file"))

    @property
    def empty(self) -> bool:
        """Nothing recorded: no config.json (or `{}`, or one that could not be read)."""
        return self == RunConfig()

    def to_json(self) -> dict[str, Any]:
        """The JSON object config.json holds, keys in their written order."""
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**known, **{k: v for k, v in self.extra.items() if k not in known}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        """The parsed object of a config.json, of any version: missing keys take their default, a value of the
        wrong type (a hand-edited file) reads as missing, unknown keys are kept in `extra`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{FILE} must hold a JSON object, not {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(run_id=_text(data.get("run_id")), name=_text(data.get("name")), group=_text(data.get("group")),
                   sweep=_table(data.get("sweep")), options=_table(data.get("options")) or {},
                   sources=_table(data.get("sources")) or {}, dataset=_table(data.get("dataset")) or {},
                   init_adapter=_table(data.get("init_adapter")), probes=_text(data.get("probes")),
                   sidecar=_text(data.get("sidecar")),
                   extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def load(cls, run_dir: Path | str) -> RunConfig:
        """RUN_DIR/config.json for the run about to train: FileNotFoundError when absent, ConfigError (naming the
        file) when it is not valid JSON or not an object."""
        path = Path(run_dir) / FILE
        try:
            data = read_json(path, _MISSING)
        except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
            raise ConfigError(f"{path}: not valid JSON ({e}).") from None
        if data is _MISSING:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: not valid JSON (a JSON object was expected, found {type(data).__name__}).")
        return cls.from_json(data)

    @classmethod
    def read(cls, run_dir: Path | str) -> RunConfig:
        """RUN_DIR/config.json, or an empty RunConfig when it is absent or unreadable: a reader of a run folder
        never stops on it (a file cut short by a full disk, a folder being removed)."""
        try:
            return cls.load(run_dir)
        except (OSError, ValueError):
            return cls()

    def write(self, run_dir: Path | str) -> None:
        """Write RUN_DIR/config.json atomically (daemon/core/atomic.py)."""
        write_json(Path(run_dir) / FILE, self.to_json())
