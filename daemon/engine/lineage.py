"""Continuing from an adapter: `init_adapter` resolved to a folder and checked against the run's base model.

`init_adapter = "support"` (the active version of a registered model; none active is an error), `"support:3"`
(a version) or a path to an adapter folder. At intake the adapter is copied into the new run's folder
(`init_adapter/`), so the parent is never touched, and a later delete of the parent cannot break the run or its exact
resume.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from daemon.core.as_trained import adapter_token_rows
from daemon.core.fsutil import model_name, stored_name_problem
from daemon.core.basemodel import model_folder
from daemon.core.options import Resolved
from daemon.core.queries import Reader
from daemon.core.rundir import ADAPTER_WEIGHTS
from daemon.core.versionpick import NoVersion, pick_version
from daemon.core.errors import SubmissionError

# NAME or NAME:VERSION, NAME a registered name (fsutil.stored_name_problem): letters of any script, NFC
_REGISTERED = re.compile(r"^(?P<name>[^\W_][\w.-]*)(?::[vV]?(?P<version>[0-9]+))?$")  # NAME:V or NAME:vV, as ask
ADAPTER_FILES = ("adapter_config.json", *ADAPTER_WEIGHTS, "README.md")


@dataclass(frozen=True)
class Parent:
    """The adapter a run continues from."""

    folder: Path
    label: str  # "support:3" for a registered version, else the folder
    base_model: str  # what it was trained on (adapter_config.json's base_model_name_or_path)


def resolve_parent(spec: str, root: Path) -> Parent:
    """The adapter `spec` names; SubmissionError with the fix when there is none."""
    m = _REGISTERED.match(model_name(spec))
    # the registry's own rule, not the `name` option's 64 characters: a name taken from a long file name is longer
    if m and stored_name_problem(m["name"]) is None:
        return _registered(m["name"], int(m["version"]) if m["version"] else None, root)
    folder = Path(spec).expanduser()
    folder = folder if folder.is_absolute() else root / folder
    return _folder(folder, _trash_label(folder, root) or str(folder))


def _trash_label(folder: Path, root: Path) -> str | None:
    """`support:2 (deleted)` for the adapter of a version `overnight delete` moved into this home's trash: the
    lineage reads as versions, not as a trash path."""
    if folder.name != "adapter" or folder.parent.parent != root / "trash":
        return None
    try:
        row = json.loads((folder.parent / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(row, dict) and isinstance(row.get("name"), str) and isinstance(row.get("version"), int)
    return f"{row['name']}:{row['version']} (deleted)" if ok else None


def _registered(name: str, version: int | None, root: Path) -> Parent:
    reader = Reader(root / "overnight.db")
    try:
        every = reader.models()
    finally:
        reader.close()
    spec = f"{name}:{version}" if version is not None else name
    try:
        row = pick_version(every, name, version)
    except NoVersion as e:
        if e.trashed:
            raise SubmissionError(_trashed(name, version, e.trashed, root)) from None
        also = ", or the path of an adapter folder" if e.fix.startswith("use a name") else ""
        raise SubmissionError(f"init_adapter = \"{spec}\": {e.why}. Fix: {e.fix}{also}.") from None
    return _folder(Path(row["adapter_path"]), f"{name}:{row['version']}")


def _trashed(name: str, version: int | None, row: dict, root: Path) -> str:
    """init_adapter naming a version `overnight delete` moved to the trash: where its adapter is, and how to use it
    (there is no undelete: the folder itself is the way back)."""
    from daemon.core.home import Home
    from daemon.engine.registry import trashed_adapter

    spec = f"{name}:{version}" if version is not None else name
    label = f"{name} v{row['version']}" if version is not None else f"every version of {name} (the newest: v{row['version']})"
    found = trashed_adapter(Home(root).trash, row["run_id"]) if row.get("run_id") else None
    found = found or Path(row["adapter_path"])
    if not (found / "adapter_config.json").is_file():
        return (f"init_adapter = \"{spec}\": {label} was deleted (overnight delete), and its adapter is no longer in "
                f"{found}. Fix: continue from another version (overnight models), or remove init_adapter.")
    return (f"init_adapter = \"{spec}\": {label} was deleted (overnight delete); its adapter is kept in the trash, "
            f"at {found}. Fix: continue from that folder (init_adapter = \"{found}\"): there is no undelete, the "
            f"folder is the adapter.")


def _folder(folder: Path, label: str) -> Parent:
    config = folder / "adapter_config.json"
    if not folder.exists():
        raise SubmissionError(f"init_adapter {label}: {folder} does not exist. Fix: point init_adapter at "
                              f"a run's adapter/ folder or a registered model (overnight models lists them).")
    if not config.is_file():
        raise SubmissionError(f"init_adapter {label}: {folder} holds no adapter_config.json, so it is not a PEFT "
                              f"adapter. Fix: point init_adapter at a run's adapter/ folder or a registered model.")
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    except (OSError, json.JSONDecodeError) as e:
        raise SubmissionError(f"init_adapter {label}: {config} cannot be read ({e}). Fix: use another adapter.")
    return Parent(folder, label, base)


def same_model(a: str, b: str, root: Path) -> bool:
    """Two base-model specs name the same model (the same folder, or the same hub name)."""
    fa, fb = model_folder(a, root), model_folder(b, root)
    if fa is not None and fb is not None:
        return os.path.realpath(fa) == os.path.realpath(fb)
    return a.rstrip("/") == b.rstrip("/")


def check_parent(opts: Resolved, home_toml: Path) -> Parent | None:
    """The adapter the options continue from, checked against every base model they name (None: a fresh LoRA)."""
    spec = opts.values.get("init_adapter")
    if not spec:
        return None
    root = home_toml.parent
    # every message starts with the file init_adapter is set in, as the options' own messages do
    where = opts.origin("init_adapter") or (home_toml if opts.sources.get("init_adapter") == "toml" else None)
    said = f"{where}: " if where else ""
    try:
        parent = resolve_parent(spec, root)
    except SubmissionError as e:
        raise SubmissionError(f"{said}{e}") from None
    for model in opts.base_models:
        if not same_model(parent.base_model, model, root):
            model_where = opts.origin("base_model")
            set_in = f" (set in {model_where})" if model_where and model_where != where else ""
            if os.path.isabs(parent.base_model) and not os.path.exists(parent.base_model):
                fix = (f"put that model back at {parent.base_model} (or a symbolic link there to where it is now), "
                       f"or continue from an adapter trained on {model}")
                gone = ", a folder no longer there"
            else:
                fix, gone = f"set base_model = \"{parent.base_model}\", or continue from an adapter trained on {model}", ""
            raise SubmissionError(f"{said}init_adapter {parent.label} was trained on base model "
                                  f"{parent.base_model!r}{gone}, but this run's base_model is {model!r}{set_in}: an "
                                  f"adapter only fits the model it was trained on. Fix: {fix}.")
    return parent


def inherit_template(opts: Resolved, parent: Parent) -> str | None:
    """A continuation trains through its parent's chat template when it names none itself: the parent's adapter
    holds rows for the tokens that template added (and was taught its turns), so the base model's own template
    would leave the run without them. Returns the value taken over (set in `opts`, source "parent"), else None."""
    if opts.sources.get("chat_template", "default") != "default":
        return None
    from daemon.core.runconfig import RunConfig
    try:
        chosen = RunConfig.read(parent.folder.parent).options.get("chat_template")
    except (OSError, ValueError):
        return None  # an adapter folder overnight did not train: nothing recorded
    if not isinstance(chosen, str) or chosen == "auto":
        return None
    opts.values["chat_template"], opts.sources["chat_template"] = chosen, "parent"
    return chosen


LORA_KEYS = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
             "lora_targets": "target_modules"}  # overnight's option: its adapter_config.json key


def inherit_lora(opts: Resolved, parent: Parent) -> None:
    """A continuation trains its parent's adapter as it was made: its LoRA shape is taken over (source "parent",
    whatever the options said), so that config.json and compare say what was trained."""
    from daemon.core.atomic import read_json
    made = read_json(parent.folder / "adapter_config.json", {}) or {}
    for key, theirs in LORA_KEYS.items():
        if theirs in made and key not in opts.swept:
            value = made[theirs]
            opts.values[key] = sorted(value) if isinstance(value, list) else value
            opts.sources[key] = "parent"


def check_template_fits(opts: Resolved, parent: Parent) -> None:
    """A continuation that names another chat template than its parent's, whose adapter carries rows for the tokens
    its own template added, is refused: those rows would be loaded at the ids the new template's tokens take."""
    if opts.sources.get("chat_template", "default") in ("default", "parent"):
        return
    from daemon.core.runconfig import RunConfig
    try:
        parents = RunConfig.read(parent.folder.parent).options.get("chat_template")
    except (OSError, ValueError):
        return  # an adapter folder overnight did not train: nothing recorded
    chosen = opts.values["chat_template"]
    others = [c for c in (chosen if isinstance(chosen, list) else [chosen]) if c != parents]
    rows = adapter_token_rows(parent.folder)
    if not others or not rows:
        return
    where = opts.origin("chat_template")
    raise SubmissionError(f"{f'{where}: ' if where else ''}chat_template = {others[0]!r}, but init_adapter "
                          f"{parent.label} was trained through chat template {parents!r}, and its adapter carries "
                          f"the embedding rows of the {len(rows)} token(s) that template added: a continuation must "
                          f"train through the same template. Fix: remove chat_template (the parent's is taken over), "
                          f"or train a fresh adapter (remove init_adapter) to use {others[0]!r}.")


def copy_adapter(parent: Parent, dest: Path) -> dict[str, str]:
    """Copy the parent's adapter files into `dest`; return what config.json records about it."""
    dest.mkdir(parents=True)
    for name in ADAPTER_FILES:
        if (parent.folder / name).exists():
            shutil.copy2(parent.folder / name, dest / name)
    return {"parent": parent.label, "source": str(parent.folder), "path": dest.name}
