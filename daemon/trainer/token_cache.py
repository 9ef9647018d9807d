"""A run's tokenised splits, kept in its folder (`tokens.npz`): tokenised once per run, read back by a resume and by
every torchrun rank instead of rendering and tokenising the dataset again.

The file records the key it was made for: everything that shapes the tokens (the dataset's bytes, the probe file,
the tokenizer, the chat template, the options that cut and split). Another key re-tokenises and replaces it.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from daemon.core.fsutil import sha256_file
from daemon.trainer.sequences import Encoded, Prepared, SequenceDataset

VERSION = 1  # bump when the layout of the sequences changes
_SHAPING = ("max_length", "eval_fraction", "seed", "probe_count", "prompt_format", "chat_template")


def key(cfg: Any, tokenizer: Any, chat: Any, prompt_chat: bool) -> str:
    """What the tokens depend on, hashed."""
    opts = cfg.options
    parts = {
        "version": VERSION,
        "dataset": cfg.file.dataset.get("sha256") or sha256_file(cfg.dataset_path),
        "probes": sha256_file(cfg.probes_path) if cfg.probes_path else None,
        "options": {name: getattr(opts, name) for name in _SHAPING},
        "template": chat.template if chat is not None else None,
        "prompt_chat": prompt_chat,
        "tokenizer": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
        "eos": tokenizer.eos_token_id,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def save(path: Path, cache_key: str, data: Prepared) -> None:
    """Write the splits (atomically: a reader never sees half a file)."""
    arrays: dict[str, np.ndarray] = {}
    for split, items in (("train", data.train), ("eval", data.eval)):
        arrays.update(_pack(split, items.items if items is not None else None))
    meta = {"key": cache_key, "kind": data.kind, "probes": data.probes, "stats": data.stats,
            "has_eval": data.eval is not None}
    arrays["meta"] = np.array(json.dumps(meta, ensure_ascii=False))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, cache_key: str) -> Prepared | None:
    """The splits saved for `cache_key`; None when there are none, or they were made for another key."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("key") != cache_key:
                return None
            train = SequenceDataset(_unpack(z, "train"))
            evals = SequenceDataset(_unpack(z, "eval")) if meta["has_eval"] else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # absent or damaged: tokenised again
    return Prepared(train, evals, meta["probes"], meta["kind"], meta["stats"])


def _pack(split: str, items: list[Encoded] | None) -> dict[str, np.ndarray]:
    items = items or []
    lengths = np.array([len(i.input_ids) for i in items], dtype=np.int64)
    empty = np.zeros(0, dtype=np.int32)
    return {
        f"{split}_ids": np.concatenate([i.input_ids for i in items]) if items else empty,
        # text blocks train on every token (labels None): flagged per sequence, their labels not stored twice
        f"{split}_labels": np.concatenate([i.labels for i in items if i.labels is not None] or [empty]),
        f"{split}_lengths": lengths,
        f"{split}_has_labels": np.array([i.labels is not None for i in items], dtype=bool),
    }


def _unpack(z: Any, split: str) -> list[Encoded]:
    ids, labels = z[f"{split}_ids"], z[f"{split}_labels"]
    out: list[Encoded] = []
    at = at_label = 0
    for length, has in zip(z[f"{split}_lengths"].tolist(), z[f"{split}_has_labels"].tolist()):
        row = ids[at:at + length]
        out.append(Encoded(row, labels[at_label:at_label + length] if has else None))
        at += length
        at_label += length if has else 0
    return out
