"""`overnight export`: hand an adapter (or a merged model) to whatever serves models elsewhere."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from daemon.core.atomic import share_weights
from daemon.core.runconfig import RunConfig
from daemon.core.rundir import ADAPTER_WEIGHTS, RunFolder, has_weights
from daemon.core.errors import ExportError
from daemon.trainer.libquiet import quiet_model_loading


def export(run_dir: Path, home: Path, out: Path, merge: bool, *, base_model: str | None = None,
           log: Callable[[str], None] = lambda line: None) -> str | None:
    """Copy RUN/adapter to `out`, or with `merge` save the base model with the adapter merged into it.

    The base model is the one the run trained on (config.json), resolved as the trainer resolves it
    (`base_model`: the DB's, when config.json lacks it), and loaded with the run's own trust_remote_code (fixed when
    the run was queued, as for training: overnight.toml today may say otherwise). Returns a note for the user about
    a merge, else None.
    """
    folder = RunFolder(run_dir)
    adapter = folder.adapter
    _check_adapter(folder, home)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder. Fix: choose a new folder (nothing is "
                          f"overwritten).")
    _outside_working_folders(out, home)
    blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:  # said before a merge loads its model
        raise ExportError(f"{out} cannot be made: {blocked} is a file, not a folder. Fix: choose another folder.")
    options = RunConfig.read(folder.root).options
    spec = options.get("base_model") or base_model
    if not merge:
        with _written_aside(out, "the adapter") as partial:
            shutil.copytree(adapter, partial, dirs_exist_ok=True)
            _point_at_base(partial, spec, home, run_dir)
        return None
    if not isinstance(spec, str) or not spec:
        raise ExportError(f"{folder.config} names no base model. Fix: export without --merge (the adapter "
                          f"alone) and merge it onto its base model yourself.")
    source = _resolve(spec, home, run_dir)
    trusted = options.get("trust_remote_code") is True
    return _merge(source, adapter, out, trusted, str(options.get("quantization") or "none"), log, folder.config)


def _check_adapter(folder: RunFolder, home: Path) -> None:
    """The run's adapter is whole (its config and its weights), else why not, with the fix."""
    adapter = folder.adapter
    if not folder.root.is_dir():
        raise ExportError(f"the run folder {folder.root} is missing (moved or removed by hand). Fix: put it back "
                          f"(overnight doctor lists what the DB misses).")
    if not (adapter / "adapter_config.json").exists():
        _deleted(folder, home)
        raise ExportError(f"{adapter} holds no adapter: only completed runs have one (checkpoints of others are in "
                          f"{folder.checkpoints}). Fix: export a completed run (see overnight runs).")
    if not has_weights(adapter):
        raise ExportError(f"{adapter} holds adapter_config.json but no weights ({' or '.join(ADAPTER_WEIGHTS)}). Fix: put "
                          f"the weights file back, or export another version (its last checkpoint is in "
                          f"{folder.checkpoints}).")


@contextlib.contextmanager
def _written_aside(out: Path, what: str) -> Iterator[Path]:
    """A folder of this export's own beside OUT to write into, renamed to OUT once complete: a half-written export
    never sits at OUT, and a failed one leaves nothing (only the folder made here is removed)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        mask = os.umask(0)
        os.umask(mask)
        partial.chmod(0o777 & ~mask)  # as a folder made by mkdir: mkdtemp's is private
    except OSError as e:
        raise ExportError(f"cannot make the folder {out}: {_first_line(e)}. Fix: choose a folder whose parents are "
                          f"folders you can write to.") from None
    try:
        yield partial
        share_weights(partial)
        if out.exists():
            out.rmdir()  # checked empty before
        partial.rename(out)
    except (OSError, shutil.Error) as e:
        shutil.rmtree(partial, ignore_errors=True)
        why = e.args[0][0][2] if isinstance(e, shutil.Error) and e.args and e.args[0] else _first_line(e)
        raise ExportError(f"cannot write {what} to {out}: {why}. Fix: free disk space, or choose another "
                          f"folder.") from None


def _outside_working_folders(out: Path, home: Path) -> None:
    """OUT inside inbox/, control/ or runs/ is refused: the daemon would take it for a drop or a command, or nest it
    in a run's own files."""
    from daemon.core.home import Home

    h = Home(home)
    for folder in (h.inbox, h.control, h.runs):
        if out == folder or folder in out.parents:
            raise ExportError(f"{out} is inside the home's {folder.name}/, which overnight reads and moves. Fix: "
                              f"export to a folder outside inbox/, control/ and runs/ (e.g. {home / 'exports'}).")


def _point_at_base(out: Path, spec: str | None, home: Path, run_dir: Path) -> None:
    """The exported adapter names its base model where it is now (a home moved since, a path relative to the home):
    a loader outside the home finds it. Left as trained when the base cannot be found here."""
    config = out / "adapter_config.json"
    try:
        source = _resolve(spec, home, run_dir) if spec else None
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ExportError, OSError, ValueError):
        return
    if source and Path(source).is_dir() and data.get("base_model_name_or_path") != source:
        data["base_model_name_or_path"] = source
        config.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _deleted(folder: RunFolder, home: Path) -> None:
    """A completed run whose version `overnight delete` moved to the trash: say where its adapter is now."""
    from daemon.core.home import Home
    from daemon.engine.registry import trashed_adapter

    found = trashed_adapter(Home(home).trash, folder.root.name)
    if found is None:
        return
    raise ExportError(f"the adapter of {folder.root.name} was deleted (overnight delete): it is in the trash, at "
                      f"{found}. Fix: export it from there (cp -r {found} OUT), or restore it into the run "
                      f"(cp -r {found} {folder.adapter}) and run overnight export again (--merge works then too).")


def _resolve(spec: str, home: Path, run_dir: Path) -> str:
    """The run's base model, found the way the trainer found it (daemon/core/basemodel.py: one rule for both)."""
    from daemon.core.basemodel import ModelNotFound, locate_model

    try:
        return locate_model(spec, home, run_dir, Path.cwd()).source
    except ModelNotFound as e:  # its fix (edit the options) does not apply to a finished run
        raise ExportError(f"cannot merge: {e.problem} (the run's base model, named in {RunFolder(run_dir).config}). "
                          f"Fix: put that model back where the run found it (or into the Hugging Face cache), or "
                          f"export without --merge to get the adapter alone.") from None


def _merge_dtype() -> tuple[Any, str]:
    """bf16 where a GPU computes it natively (as the trainer would have loaded the base), else fp32."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16, "bf16"
    return torch.float32, "fp32"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300].rstrip(".") if text else type(e).__name__


def _merge(source: str, adapter: Path, out: Path, trust_remote_code: bool, quantization: str,
           log: Callable[[str], None], config: Path) -> str:
    """Load the unquantised base, merge the adapter in, save model + tokenizer (written aside, then renamed)."""
    quiet_model_loading()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype, dtype_name = _merge_dtype()
    log(f"loading base model {source} ({dtype_name}) …")
    try:
        base = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=dtype,
                                                    trust_remote_code=trust_remote_code)
        # the serving contract the run trained with (its chat template, its end-of-turn stops) lives in the adapter
        # folder; an adapter from before overnight wrote it there falls back to the base model's
        contract = adapter if (adapter / "tokenizer_config.json").is_file() else source
        tokenizer = AutoTokenizer.from_pretrained(contract, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any load failure is the user's to fix, never a traceback
        hint = (f"; its code runs only for a run queued with trust_remote_code = true in overnight.toml, and {config} "
                f"records false (the run trained without the model's code; export uses the value the run trained "
                f"with)" if "trust_remote_code" in str(e) else "")
        raise ExportError(f"cannot load base model {source}: {_first_line(e)}. Fix: check that the folder (or the HF "
                          f"cache entry) is a complete causal-LM download (export never downloads){hint}.") from None
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:  # tokens the run's chat template added
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    try:
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"cannot apply the adapter {adapter} to {source}: {_first_line(e)}. Fix: merge onto the base "
                          f"model the run trained on (its config.json names it).") from None
    if (adapter / "generation_config.json").is_file():
        from transformers import GenerationConfig
        merged.generation_config = GenerationConfig.from_pretrained(adapter)
    with _written_aside(out, "the merged model (as large as its base)") as partial:
        merged.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        (partial / "README.md").write_text(merged_card(adapter, source), encoding="utf-8")
    if quantization in ("4bit", "8bit"):  # QLoRA: the adapter goes onto the full-precision weights it approximated
        return f"merged into the unquantised base ({dtype_name}); the run trained on a {quantization[0]}-bit base"
    return f"merged into the base ({dtype_name})"


def merged_card(adapter: Path, source: str) -> str:
    """README.md of a merged export: the adapter card's facts (run, dataset, losses, any prompting note) and options,
    with how to load a standalone model instead of an adapter."""
    try:
        card = (adapter / "README.md").read_text(encoding="utf-8")
    except OSError:  # an adapter from before overnight wrote cards
        card = ""
    facts, _, rest = card.partition("\n## Load it")
    options = rest.partition("\n## Options")[2]
    facts = facts.rpartition("---\n")[2].partition("\n")[2].strip()  # below the front matter and the title
    return f"""---
base_model: {source}
library_name: transformers
tags: [lora, overnight, merged]
---
# overnight run `{adapter.parent.name}`: its LoRA adapter merged into `{source}`

{facts}

## Load it

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "PATH/TO/merged"
tokenizer = AutoTokenizer.from_pretrained(path)  # the run's: its chat template and any tokens it added
model = AutoModelForCausalLM.from_pretrained(path)  # generation_config.json: stops where the run's answers stop
```
""" + (f"\n## Options\n\n{options.strip()}\n" if options else "")
