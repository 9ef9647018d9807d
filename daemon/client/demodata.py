"""The demo's learnable task: reverse a short list of words (no torch).

`overnight demo` drops these files into a home's inbox. The task is small enough that the embedded tiny model
(a random-init Qwen2, hidden 128, 4 layers, vocab 512) learns it with LoRA in a couple of minutes on a laptop CPU,
so the evolution view shows probes going from wrong to exactly right while the user watches.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

# Each word is one token (with its leading space) in the tiny model's vocabulary, so the task is reversing
# 3 tokens: learnable in a couple of hundred LoRA steps from a random init. The answer starts with a space so that
# every word is the same token in the prompt and in the answer.
WORDS = ("star", "tea", "back", "part", "show", "open", "good", "first")
LIST_LENGTH = 3  # reversing 3 words is learned in ~100 steps; 4-word lists took 200-300 and failed on some seeds
PROBES = 8

# Options chosen for the tiny model (FINDINGS: LoRA r32, lr 3e-3, batch 16 learns word reversal; at lr 2e-4
# nothing is learned). base_model is deliberately absent: the caller names it (the home's overnight.toml, or
# write_demo_files' `options`).
# probe_every is left automatic, so the demo shows the default: snapshots kept under 5% of the run's time.
DEMO_OPTIONS: dict[str, Any] = {
    "max_steps": 200,
    "learning_rate": 3e-3,
    "batch_size": 16,
    "lora_r": 32,
    "lora_alpha": 64,
    "lora_dropout": 0.0,
    "max_length": 64,
    "eval_fraction": 0.02,
    "log_every": 5,
    "save_every": 100,
    "probe_max_new_tokens": 8,  # an answer is 3 tokens + eos: room to show over-long answers, cheap snapshots
    "seed": 0,
}


def make_prompt(words: list[str]) -> str:
    """The prompt for one list of words (its answer is `make_answer`)."""
    return "reverse: " + " ".join(words)  # no newline: what a user types into ask or the Try tab


def make_answer(words: list[str]) -> str:
    """The words in reverse order (after a space): what the model must learn to answer."""
    return " " + " ".join(reversed(words))


def _sequences(rng: random.Random, count: int, exclude: set[tuple[str, ...]]) -> list[tuple[str, ...]]:
    out = []
    while len(out) < count:
        seq = tuple(rng.choice(WORDS) for _ in range(LIST_LENGTH))
        if seq not in exclude:
            out.append(seq)
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def write_demo_files(dest_dir: Path, *, name: str = "reverse", n_train: int = 2000, seed: int = 0,
                     options: dict[str, Any] | None = None) -> list[Path]:
    """Write NAME.jsonl (prompt/completion), NAME.probes.jsonl (8 probes never in the training set), NAME.toml.

    Same `seed`, same files. `options` overrides entries of DEMO_OPTIONS in the sidecar. Returns the three paths,
    dataset first; the sidecar and probes are written first, so a watcher sees the dataset complete with its
    companions already beside it.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    probes = list(dict.fromkeys(_sequences(rng, PROBES * 4, set())))[:PROBES]
    train = _sequences(rng, n_train, set(probes))

    dataset = dest_dir / f"{name}.jsonl"
    probe_file = dest_dir / f"{name}.probes.jsonl"
    sidecar = dest_dir / f"{name}.toml"
    sidecar.write_text("# overnight demo: options for the embedded tiny model\n" + "".join(
        f"{k} = {_toml_value(v)}\n" for k, v in {**DEMO_OPTIONS, **(options or {})}.items()), encoding="utf-8")
    probe_file.write_text("".join(
        json.dumps({"prompt": make_prompt(list(s)), "reference": make_answer(list(s))}) + "\n" for s in probes),
        encoding="utf-8")
    tmp = dest_dir / f".{name}.jsonl.tmp"  # dot-name + rename: the inbox never sees a half-written dataset
    tmp.write_text("".join(
        json.dumps({"prompt": make_prompt(list(s)), "completion": make_answer(list(s))}) + "\n" for s in train),
        encoding="utf-8")
    tmp.replace(dataset)
    return [dataset, probe_file, sidecar]
