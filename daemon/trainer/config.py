"""The trainer's view of a run folder: the resolved options from config.json (its paths: daemon/rundir.py)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from daemon.options import OPTIONS
from daemon.rundir import RunFolder


def _default(name: str) -> Any:
    return OPTIONS[name].default  # one schema: daemon/options.py


class RunError(Exception):
    """A failure with a message for the user: it ends the run as failed with this reason (no traceback)."""


@dataclass
class TrainOptions:
    """The options the trainer uses: the training options of daemon/options.py, with their defaults."""

    base_model: str = ""
    epochs: float = _default("epochs")
    max_steps: int = _default("max_steps")
    learning_rate: float = _default("learning_rate")
    batch_size: int = _default("batch_size")
    grad_accum: int = _default("grad_accum")
    max_length: int = _default("max_length")
    lora_r: int = _default("lora_r")
    lora_alpha: float = _default("lora_alpha")
    lora_dropout: float = _default("lora_dropout")
    lora_targets: str | list[str] = _default("lora_targets")
    seed: int = _default("seed")
    eval_fraction: float = _default("eval_fraction")
    early_stopping_patience: int = _default("early_stopping_patience")
    log_every: int = _default("log_every")
    save_every: int = _default("save_every")
    probe_every: int = _default("probe_every")
    probe_count: int = _default("probe_count")
    probe_max_new_tokens: int = _default("probe_max_new_tokens")
    quantization: str = _default("quantization")
    gradient_checkpointing: str | bool = _default("gradient_checkpointing")
    batching: str = _default("batching")
    attn_implementation: str = _default("attn_implementation")
    lr_scheduler: str = _default("lr_scheduler")
    warmup_ratio: float = _default("warmup_ratio")
    weight_decay: float = _default("weight_decay")
    max_grad_norm: float = _default("max_grad_norm")
    optim: str = _default("optim")
    use_liger_kernel: bool = _default("use_liger_kernel")
    trust_remote_code: bool = _default("trust_remote_code")
    keep_checkpoints: int = _default("keep_checkpoints")
    min_free_gb: float = _default("min_free_gb")

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
class RunConfig:
    """config.json, parsed: options, the dataset file and schema, the probe file."""

    paths: RunFolder
    options: TrainOptions
    run_id: str
    dataset_path: Path
    schema: str
    probes_path: Path | None
    init_adapter: Path | None = None  # the parent adapter, copied into the run folder at intake
    parent: str | None = None  # "support:3", or the folder it came from
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        """Read RUN_DIR/config.json; a missing or malformed file is a RunError naming it."""
        paths = RunFolder(Path(run_dir).resolve())
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
        init = raw.get("init_adapter") or {}
        return cls(
            paths=paths,
            options=TrainOptions.from_dict(raw.get("options") or {}),
            run_id=str(raw.get("run_id") or paths.root.name),
            dataset_path=paths.root / dataset["path"],
            schema=str(dataset.get("schema") or "unknown"),
            probes_path=paths.root / probes if probes else None,
            init_adapter=paths.root / init["path"] if init.get("path") else None,
            parent=init.get("parent"),
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
