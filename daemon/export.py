"""`overnight export`: hand an adapter (or a merged model) to whatever serves models elsewhere."""
from __future__ import annotations

import shutil
from pathlib import Path


def export(run_dir: Path, base_model: str, out: Path, merge: bool) -> Path:
    """Copy RUN/adapter to `out`, or with `merge` save the base model with the adapter merged into it."""
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter} holds no adapter: only completed runs have one "
                                f"(checkpoints of others are in {run_dir / 'checkpoints'}).")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder (nothing is overwritten).")
    if not merge:
        shutil.copytree(adapter, out, dirs_exist_ok=True)
        return out
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    base = AutoModelForCausalLM.from_pretrained(base_model, local_files_only=True)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model, local_files_only=True).save_pretrained(out)
    return out
