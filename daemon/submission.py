"""One drop = a dataset plus its optional sidecar and probe file, validated exactly as `overnight check` does."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from daemon import datasets, sweep
from daemon.fsutil import model_name
from daemon.models import ModelNotFound, locate_model, model_folder
from daemon.options import OptionsError, Resolved, load_home_toml, load_sidecar, resolve

PROBES_SUFFIX = ".probes.jsonl"


class SubmissionError(Exception):
    """Why a drop is rejected: one complete, user-facing message."""


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
    if path.suffix.lower() in datasets.SUPPORTED_SUFFIXES:
        return "dataset"
    return "unsupported"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Submission:
    """A validated drop, ready to become one run per base model."""

    dataset: Path
    sidecar: Path | None
    probes: Path | None
    report: datasets.DatasetReport
    options: Resolved
    probe_count: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.options.values.get("name") or model_name(stem_of(self.dataset))


def validate(dataset: Path, sidecar: Path | None, probes: Path | None, home_toml: Path,
             require_model: bool = True,
             token_counter: Callable[[Resolved], Callable[[str], int] | None] | None = None) -> Submission:
    """Validate a dataset with its sidecar and probes; raise SubmissionError with the first problem found.

    `token_counter`, given the resolved options, may return a function counting an example's tokens.
    """
    try:
        toml = load_home_toml(home_toml)
        side = load_sidecar(sidecar)
        opts = resolve(toml, side)
        sweep.check_cap(opts, sidecar)
    except OptionsError as e:
        raise SubmissionError(str(e)) from None
    try:
        report = datasets.inspect_dataset(dataset, token_counter(opts) if token_counter else None)
    except datasets.DatasetError as e:
        raise SubmissionError(str(e)) from None
    probe_count = None
    if probes is not None:
        from daemon.probes import load_probe_file
        try:
            probe_count = len(load_probe_file(probes))
        except datasets.DatasetError as e:
            raise SubmissionError(str(e)) from None
    if require_model:
        check_base_models(opts, sidecar, home_toml)
        from daemon.lineage import check_parent  # lineage reads the registry, which imports this module

        check_parent(opts, home_toml)
    return Submission(dataset, sidecar, probes, report, opts, probe_count)


def check_base_models(opts: Resolved, sidecar: Path | None, home_toml: Path) -> None:
    """Every named base model must exist locally; none named at all is an error with the fix."""
    if not opts.base_models:
        raise SubmissionError(
            f"no base model is named for this dataset: neither {sidecar.name if sidecar else 'a sidecar NAME.toml'} "
            f"nor {home_toml} sets base_model. Fix: add base_model = \"/path/to/model\" to {home_toml} "
            f"(the machine's default) or to the dataset's sidecar.")
    for spec in opts.base_models:
        try:
            locate_model(spec, home_toml.parent)  # not the daemon's cwd: the trainer it starts runs in the run folder
        except ModelNotFound as e:
            where = sidecar if opts.sources.get("base_model") == "sidecar" else home_toml
            raise SubmissionError(f"{where}: {e}") from None
        _check_context(opts, spec, sidecar, home_toml)


def model_context(folder: Path | None) -> int | None:
    """A model's context in positions (max_position_embeddings of its config.json), where it can be read."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if folder else {}
    except (OSError, ValueError):
        return None  # the trainer reports an unreadable config when it loads the model
    context = (config.get("text_config") or config).get("max_position_embeddings")
    return context if isinstance(context, int) and context > 0 else None


def context_note(max_length: int, context: int | None, spec: str) -> str | None:
    """What a default max_length longer than the model's context becomes (said by check and the console)."""
    if context is None or max_length <= context:
        return None
    return (f"max_length: the default {max_length} is longer than the context of {spec} ({context} positions), so "
            f"this run uses max_length = {context}")


def _check_context(opts: Resolved, spec: str, sidecar: Path | None, home_toml: Path) -> None:
    """An explicit max_length within the model's context (a default one adapts: context_note)."""
    context = model_context(model_folder(spec, home_toml.parent))
    max_length = opts.values["max_length"]
    max_length = max(max_length) if isinstance(max_length, list) else max_length  # a sweep: its longest
    if context is not None and max_length > context and opts.sources.get("max_length") != "default":
        where = sidecar if opts.sources.get("max_length") == "sidecar" else home_toml
        raise SubmissionError(f"{where}: max_length = {max_length} is longer than the context of {spec} "
                              f"({context} positions, max_position_embeddings in its config.json). Fix: set "
                              f"max_length = {context} or less (or leave it unset: the default adapts).")