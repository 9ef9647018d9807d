"""The trainer's view of a run folder: the resolved options from config.json (its format: daemon/core/runconfig.py,
its paths: daemon/core/rundir.py)."""
from __future__ import annotations

import copy
import functools
import operator
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from daemon.core import runconfig
from daemon.core.options import OPTIONS, Option
from daemon.core.rundir import RunFolder
from daemon.core.errors import RunError


def _field(opt: Option) -> tuple[str, Any, Any]:
    kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
    default = opt.default
    spec = field(default_factory=lambda: copy.deepcopy(default)) if isinstance(default, (list, dict)) else field(
        default=default)
    return opt.name, functools.reduce(operator.or_, kinds), spec


def _from_dict(cls: type, options: dict[str, Any]) -> Any:
    """Known keys are taken, the daemon's other keys (priority, name, hooks, …) ignored."""
    known = {f.name for f in fields(cls)}
    opts = cls(**{k: v for k, v in options.items() if k in known and v is not None})
    if not isinstance(opts.base_model, str) or not opts.base_model.strip():
        raise RunError("config.json: options.base_model must be one model (a folder or an HF cache name); "
                       f"got {options.get('base_model')!r}. Fix: the daemon queues one run per base model.")
    return opts


# One schema (after transformers' TrainingArguments): every option declared with Train(...) in daemon/core/options.py
# is a field here, typed by its `kind` and defaulting to its `default`; adding an option is one edit there.
TrainOptions = make_dataclass("TrainOptions", [_field(o) for o in OPTIONS.values() if o.trainer],
                              namespace={"from_dict": classmethod(_from_dict), "__module__": __name__})
TrainOptions.__doc__ = (  # help(TrainOptions) shows each field's type and default (the signature dataclass wrote)
    "The options the trainer uses: one field per Train(...) option of daemon/core/options.py (base_model: one model, "
    f"as the daemon queues one run per model).\n\n{TrainOptions.__doc__}")


@dataclass
class RunConfig:
    """config.json as the trainer uses it: typed options, the dataset file and schema, the probe file (`file`:
    the whole config.json, daemon/core/runconfig.py's RunConfig)."""

    paths: RunFolder
    options: TrainOptions
    run_id: str
    dataset_path: Path
    schema: str
    probes_path: Path | None
    init_adapter: Path | None = None  # the parent adapter, copied into the run folder at intake
    parent: str | None = None  # "support:3", or the folder it came from
    file: runconfig.RunConfig = field(repr=False, default_factory=runconfig.RunConfig)

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        """Read RUN_DIR/config.json; a missing or malformed file is a RunError naming it."""
        paths = RunFolder(Path(run_dir).resolve())
        try:
            file = runconfig.RunConfig.load(paths.root)
        except FileNotFoundError:
            raise RunError(f"{paths.config} does not exist. Fix: the trainer runs on a run folder the daemon "
                           f"prepared (python -m daemon.trainer RUN_DIR).") from None
        except runconfig.ConfigError as e:
            raise RunError(str(e)) from None
        dataset = file.dataset
        if not dataset.get("path"):
            raise RunError(f"{paths.config}: 'dataset.path' is missing.")
        init = file.init_adapter or {}
        return cls(
            paths=paths,
            options=TrainOptions.from_dict(file.options),
            run_id=str(file.run_id or paths.root.name),
            dataset_path=paths.root / dataset["path"],
            schema=str(dataset.get("schema") or "unknown"),
            probes_path=paths.root / file.probes if file.probes else None,
            init_adapter=paths.root / init["path"] if init.get("path") else None,
            parent=file.parent,
            file=file,
        )
