"""Checkpoint folders: `checkpoint-N` (being written by the Trainer) → `step-N` (complete), retention, resume.

Only complete checkpoints carry the `step-N` name (daemon/core/rundir.py's `newest_complete` is the daemon's view of
the newest); a resume starts from the newest one that also loads (`newest_loadable`: every file an exact resume needs,
read back), the damaged ones moved aside. Here are that load test, the renames and the deletions. Retention keeps the
newest `keep` plus the best by eval loss; the final adapter/ is never touched.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from daemon.core.atomic import fsync_dir, share_weights, write_text
from daemon.core.rundir import TRAINER_STATE, step_dirs, step_name


def damage(folder: Path) -> str | None:
    """Why a checkpoint cannot be resumed from exactly (a file missing, or one that does not read back), or None
    when it loads. The Trainer resumes without an optimizer, scheduler or RNG file it does not find, silently: the
    losses would then differ from the uninterrupted run's."""
    import torch
    from safetensors import safe_open

    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            return f"{TRAINER_STATE} is not a trainer state (no global_step)"
        missing = [name for name in ("optimizer.pt", "scheduler.pt") if not (folder / name).is_file()]
        if missing or not any(folder.glob("rng_state*.pth")):
            return f"{', '.join(missing) or 'rng_state.pth'} is missing: the resume would not be exact"
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
            for key in f.keys():
                f.get_tensor(key)
        for name in ("optimizer.pt", "scheduler.pt"):
            torch.load(folder / name, map_location="cpu", weights_only=True)
        # rng_state.pth (one process) or rng_state_RANK.pth (one per rank under torchrun: each resumes its own)
        for rng in sorted(folder.glob("rng_state*.pth")):
            torch.load(rng, map_location="cpu", weights_only=False)  # our own file: numpy state
    except Exception as e:  # noqa: BLE001 - safetensors, torch and json each fail in their own way
        return f"{type(e).__name__}: {e}".strip().rstrip(":") or type(e).__name__
    return None


def newest_loadable(checkpoints: Path, log: Callable[[str], None]) -> Path | None:
    """The newest checkpoint that loads; damaged ones newer than it (a trainer state missing too) are moved aside,
    never deleted (retention would have removed a step-N it passed by) and named."""
    while steps := step_dirs(checkpoints):
        newest = steps[max(steps)]
        problem = damage(newest)
        if problem is None:
            return newest
        aside = checkpoints / f"damaged-{newest.name}"
        n = 2
        while aside.exists():
            aside, n = checkpoints / f"damaged-{newest.name}-{n}", n + 1
        os.rename(newest, aside)
        log(f"checkpoint {newest.name} is damaged ({problem[:300]}): moved aside to {aside.name}, not deleted; "
            f"trying the one before it")
    return None


def discard_incomplete(checkpoints: Path) -> list[str]:
    """Remove `checkpoint-N` folders and half-deleted leftovers a crash left behind; return their names."""
    if not checkpoints.is_dir():
        return []
    removed = []
    for p in checkpoints.iterdir():
        if p.name.startswith("checkpoint-") or p.name.startswith(".trash-"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _remove(path: Path) -> None:
    # Rename first: a half-deleted folder must not keep its step-N name and pass for complete.
    trash = path.with_name(f".trash-{path.name}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def finalize(checkpoints: Path, step: int) -> Path | None:
    """Rename the Trainer's freshly written `checkpoint-{step}` to `step-{step}` (replacing an older copy)."""
    src = checkpoints / f"checkpoint-{step}"
    if not src.is_dir():
        return None
    dest = checkpoints / step_name(step)
    if dest.exists():
        _remove(dest)
    _rename_best(src / TRAINER_STATE, checkpoints)
    share_weights(src)
    os.rename(src, dest)
    fsync_dir(checkpoints)
    return dest


def _rename_best(state_file: Path, checkpoints: Path) -> None:
    """The Trainer records its best checkpoint as `checkpoint-K`, a name that lives only until `finalize` renames it:
    record `step-K`, or a resume warns that the best checkpoint "does not exist anymore" (retention keeps it)."""
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    best = state.get("best_model_checkpoint") if isinstance(state, dict) else None
    name = Path(best).name if isinstance(best, str) else ""
    if name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit():
        state["best_model_checkpoint"] = str(checkpoints / step_name(int(name[len("checkpoint-"):])))
        write_text(state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


def apply_retention(checkpoints: Path, keep: int, best_step: int | None) -> list[int]:
    """Delete all but the newest `keep` checkpoints and the best one; return the deleted steps."""
    steps = sorted(step_dirs(checkpoints))
    keep_set = set(steps[-keep:]) if keep > 0 else set()
    if best_step is not None:
        keep_set.add(best_step)
    deleted = [s for s in steps if s not in keep_set]
    for s in deleted:
        _remove(checkpoints / step_name(s))
    return deleted


def truncate_jsonl_after(path: Path, step: int) -> int:
    """Drop records with `step` > `step` from a JSONL file (a resume repeats those steps); return how many.

    Torn lines (a crash mid-write) are dropped too. The file is replaced atomically.
    """
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        write_text(path, "".join(line + "\n" for line in kept))
    return dropped
