"""Where a base model is: one rule for intake, `overnight check`, the trainer and export (torch-free).

A `base_model` is an absolute folder; else a folder relative to the home, then to the run folder, then to the
working directory (only a process a person started has one worth trying: the trainer the daemon starts runs in
the run folder); else an HF hub name (`org/name`) already in the Hugging Face cache. Nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from daemon.core.errors import ModelNotFound

HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class Model:
    """A located base model: the name as written, the folder holding its files, and whether it came from the cache."""

    name: str
    folder: Path
    cached: bool

    @property
    def source(self) -> str:
        """What from_pretrained is given: the hub name for a cache entry (so an adapter records it), else the folder."""
        return self.name if self.cached else str(self.folder)


def hf_cache_dir() -> Path:
    """Where the Hugging Face hub cache lives (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def cache_entry(name: str) -> Path:
    return hf_cache_dir() / f"models--{name.replace('/', '--')}"


def _snapshot(name: str) -> Path | None:
    """The snapshot from_pretrained would load (refs/main), else the newest one."""
    entry = cache_entry(name)
    main = entry / "refs" / "main"
    if main.is_file() and (entry / "snapshots" / main.read_text().strip()).is_dir():
        return entry / "snapshots" / main.read_text().strip()
    snapshots = sorted((entry / "snapshots").glob("*"), key=lambda d: d.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def _folders(name: str, home: Path, run_dir: Path | None, cwd: Path | None) -> list[Path]:
    p = Path(name).expanduser()
    if p.is_absolute():
        return [p]
    return list(dict.fromkeys(base / p for base in (home, run_dir, cwd) if base is not None))


def locate_model(name: str, home: Path, run_dir: Path | None = None, cwd: Path | None = None) -> Model:
    """The base model `name` names, by the rule above; ModelNotFound names every place tried and the fix."""
    folders = _folders(name, Path(home), run_dir, cwd)
    for folder in folders:
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise ModelNotFound(f"the base model folder {folder} has no config.json, so it is not a Hugging "
                                    f"Face model", "point base_model at the folder that holds config.json and the "
                                    "weights")
            return Model(name, folder, cached=False)
    hub = bool(HUB_NAME.match(name))
    snapshot = _snapshot(name) if hub else None
    if snapshot is not None:
        return Model(name, snapshot, cached=True)
    tried = f"no folder {', '.join(map(str, folders))}"
    if hub:
        tried += f" and no downloaded entry in the Hugging Face cache ({cache_entry(name)})"
    fix = "set base_model (in overnight.toml or the dataset's sidecar) to a local model folder with config.json"
    fix += f", or download the model into the cache first (hf download {name})" if hub else \
        ", or to the name of a model already in the Hugging Face cache (org/name)"
    raise ModelNotFound(f"base model '{name}' was not found: {tried}", fix)


def model_folder(name: str, home: Path) -> Path | None:
    """The folder of a base model's files, or None: for reading its config or tokenizer before any training."""
    try:
        return locate_model(name, home).folder
    except ModelNotFound:
        return None


WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def has_weights(folder: Path) -> bool:
    """Whether a model folder holds weights from_pretrained can load (a config.json alone fails at load)."""
    return any(p.exists() for pattern in WEIGHTS for p in folder.glob(pattern))  # exists: a cache link's blob too


def layer_names(folder: Path) -> set[str] | None:
    """The names of a model's layers LoRA can adapt (those with a 2-D weight: linear layers, embeddings), read from
    its safetensors headers without loading a weight (milliseconds); None where they cannot be read that way (.bin
    weights only, a quantised checkpoint, an unreadable file): the trainer's PEFT then judges."""
    import json
    import struct

    names: set[str] = set()
    files = sorted({*folder.glob("*.safetensors")})
    for path in files:
        try:
            with open(path, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                if size > 100 * 2**20:
                    return None
                header = json.loads(f.read(size))
        except (OSError, ValueError, struct.error):
            return None
        for key, info in header.items():
            if key.endswith(".weight") and isinstance(info, dict) and len(info.get("shape") or ()) == 2:
                names.add(key.removesuffix(".weight"))
    if not names:
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if not any(n == "lm_head" or n.endswith(".lm_head") for n in names) and \
            (config.get("tie_word_embeddings", True) or (config.get("text_config") or {}).get("tie_word_embeddings")):
        names.add("lm_head")  # tied to the input embeddings: not stored, but a module of the loaded model
    return names


def targets_missing(targets: str | list[str], names: set[str]) -> bool:
    """True when `lora_targets` matches none of `names` by PEFT's rule for a list (a name, or a name's last dotted
    parts): PEFT fails then ("Target modules ... not found in the base model"), after the model is loaded. A string
    other than "all-linear" is a regular expression over the loaded model's full module names, whose prefixes the
    stored names may lack (GPT-2's h.0... is transformer.h.0...): only one that does not compile is sure to fail."""
    if isinstance(targets, str):
        if targets == "all-linear":
            return False
        try:
            re.compile(targets)
        except re.error:
            return True
        return False
    return not any(n == t or n.endswith("." + t) for n in names for t in targets)


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
