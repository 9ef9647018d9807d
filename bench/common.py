"""What the benchmarks share: the LoRA job's constants, the model sizes, a run folder as intake leaves it,
overnight's trainer as a subprocess, and the baselines' LoRA model.

Import it as `from bench.common import ...` after putting the repository root on sys.path (as the scripts do).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

BATCH, SEED, LR = 8, 1234, 2e-4
LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
SIZES = {"27m": {"vocab_size": 2048, "hidden_size": 512, "layers": 6, "heads": 8},  # ~26M parameters
         "tiny": {}}  # the embedded 1M-parameter model: steps of milliseconds magnify any per-step overhead


def build_model(folder: Path, size: str) -> Path:
    """The random-init Qwen2 of `size` with its tokenizer, built offline by daemon/client/tinymodel.py."""
    from daemon.client.tinymodel import build_tiny_model

    return build_tiny_model(folder, **SIZES[size], seed=SEED)


def thread_env(threads: int | None) -> dict[str, str]:
    """The environment of a child process, with OMP_NUM_THREADS set when `threads` is given."""
    return {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}


def make_run(root: Path, model: Path, dataset: Path, *, schema: str, records: int, **options: Any) -> Path:
    """A run folder as the daemon's intake leaves it, for the common LoRA job; `options` add to or override it."""
    run = root / f"run-{time.monotonic_ns()}"
    (run / "dataset").mkdir(parents=True)
    (run / "dataset" / dataset.name).write_bytes(dataset.read_bytes())
    opts = {"base_model": str(model), "batch_size": BATCH, "grad_accum": 1, "learning_rate": LR, **LORA,
            "lora_targets": "all-linear", "seed": SEED, "eval_fraction": 0.0, "probe_count": 0,
            "save_every": 10**6, "keep_checkpoints": 1, **options}
    fmt = {".txt": "txt", ".json": "json", ".jsonl": "jsonl"}[dataset.suffix]
    config = {"run_id": run.name, "options": opts, "sources": {},
              "dataset": {"path": f"dataset/{dataset.name}", "format": fmt, "schema": schema}, "probes": None}
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (run / "stats.json").write_text(json.dumps({"records": records}), encoding="utf-8")
    return run


def train_overnight(run: Path, threads: int | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`python -m daemon.trainer RUN --ignore-stdin` (output in console.log); its result.json and metrics.jsonl."""
    with open(run / "console.log", "w", encoding="utf-8") as out:
        rc = subprocess.run([sys.executable, "-m", "daemon.trainer", str(run), "--ignore-stdin"], cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT, env=thread_env(threads)).returncode
    result = json.loads((run / "result.json").read_text())
    if rc != 0 or result["outcome"] != "completed":
        raise SystemExit(f"overnight trainer failed (exit {rc}): {result.get('reason')} (see {run}/console.log)")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return result, records


def lora_model(model: Path) -> Any:
    """The base model in fp32 on the CPU (bf16 on a GPU) with a LoRA adapter, seeded right before it is made."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    base.config.use_cache = False
    set_seed(SEED)
    config = LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                        target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def step_clock() -> tuple[Any, list[float], list[float]]:
    """A baseline's timing: a TrainerCallback noting when each step ends and each logged loss (into the two lists)."""
    from transformers import TrainerCallback

    ends: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            ends.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    return Clock(), ends, losses
