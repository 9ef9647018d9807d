"""The trainer's view of a run folder: its paths and the resolved options from config.json."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class RunError(Exception):
    """A failure with a message for the user: it ends the run as failed with this reason (no traceback)."""


@dataclass
class TrainOptions:
    """The options the trainer uses (names and defaults as in daemon/options.py and SPEC.md)."""

    base_model: str = ""
    epochs: float = 3.0
    max_steps: int = 0
    learning_rate: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 1024
    lora_r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    lora_targets: str | list[str] = "all-linear"
    seed: int = 42
    eval_fraction: float = 0.05
    early_stopping_patience: int = 0
    log_every: int = 10
    save_every: int = 200
    probe_every: int = 0
    probe_count: int = 8
    probe_max_new_tokens: int = 32
    trust_remote_code: bool = False
    keep_checkpoints: int = 2

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> "TrainOptions":
        """Known keys are taken, the daemon's other keys (priority, name, hooks, …) ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in options.items() if k in known and v is not None}
        opts = cls(**values)
        if not isinstance(opts.base_model, str) or not opts.base_model.strip():
            raise RunError("config.json: options.base_model must be one model (a folder or an HF cache name); "
                           f"got {options.get('base_model')!r}. Fix: the daemon queues one run per base model.")
        return opts


@dataclass
class RunPaths:
    """Every file the trainer reads or writes in its run folder."""

    root: Path

    config = property(lambda self: self.root / "config.json")
    stats = property(lambda self: self.root / "stats.json")
    console = property(lambda self: self.root / "console.log")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    evolution = property(lambda self: self.root / "evolution.jsonl")
    progress = property(lambda self: self.root / "progress.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    adapter = property(lambda self: self.root / "adapter")
    result = property(lambda self: self.root / "result.json")


@dataclass
class RunConfig:
    """config.json, parsed: options, the dataset file and schema, the probe file."""

    paths: RunPaths
    options: TrainOptions
    run_id: str
    dataset_path: Path
    schema: str
    probes_path: Path | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        """Read RUN_DIR/config.json; a missing or malformed file is a RunError naming it."""
        paths = RunPaths(Path(run_dir).resolve())
        try:
            raw = json.loads(paths.config.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunError(f"{paths.config} does not exist. Fix: the trainer runs on a run folder the daemon "
                           f"prepared (python -m daemon.trainer RUN_DIR).") from None
        except json.JSONDecodeError as e:
            raise RunError(f"{paths.config}: not valid JSON ({e}).") from None
        dataset = raw.get("dataset") or {}
        if not dataset.get("path"):
            raise RunError(f"{paths.config}: 'dataset.path' is missing.")
        probes = raw.get("probes")
        return cls(
            paths=paths,
            options=TrainOptions.from_dict(raw.get("options") or {}),
            run_id=str(raw.get("run_id") or paths.root.name),
            dataset_path=paths.root / dataset["path"],
            schema=str(dataset.get("schema") or "unknown"),
            probes_path=paths.root / probes if probes else None,
            raw=raw,
        )


def resolve_model_source(spec: str, home: Path, run_dir: Path) -> str:
    """A local folder for `spec`, or `spec` itself when it names an HF cache entry; RunError when neither.

    Relative paths are relative to the home (as in overnight.toml), then to the run folder.
    """
    p = Path(spec).expanduser()
    for candidate in ([p] if p.is_absolute() else [home / p, run_dir / p, Path.cwd() / p]):
        if candidate.is_dir():
            if not (candidate / "config.json").exists():
                raise RunError(f"base model folder {candidate} has no config.json, so it is not a Hugging Face "
                               f"model. Fix: point base_model at the folder that holds config.json and the weights.")
            return str(candidate)
    if re.match(r"^[\w.-]+/[\w.-]+$", spec):
        return spec  # an HF hub name: from_pretrained(local_files_only=True) finds it in the cache or says why
    where = p if p.is_absolute() else home / p
    raise RunError(f"base model '{spec}' was not found: no folder {where}. Fix: set base_model (in overnight.toml "
                   f"or the dataset's sidecar) to a local model folder with config.json, or to the name of a model "
                   f"already in the Hugging Face cache, then resume the run.")
