"""What a run leaves behind when it ends: result.json, the final adapter with its model card, the console footer."""
from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from daemon.core.atomic import share_weights, write_json, write_text
from daemon.core.templating import serving_template
from daemon.core.states import Outcome, StopRequest


def versions() -> dict[str, str]:
    """Versions of everything that shapes a run's numbers."""
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for dist in ("overnight", "torch", "transformers", "peft", "accelerate", "tokenizers"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return found


@dataclass
class Result:
    """result.json: how the run ended and why (written atomically just before exit)."""

    outcome: Outcome
    reason: str | None = None
    step: int = 0
    max_steps: int | None = None
    final_loss: float | None = None
    eval_loss: float | None = None
    best_checkpoint: str | None = None
    adapter_step: int | None = None  # the step the adapter's weights are from, when not the last (early stopping)
    last_checkpoint: str | None = None
    adapter: str | None = None
    device: str | None = None
    device_name: str | None = None
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0  # CPU time of the process while training (all threads)
    tokens_seen: int = 0  # real (non-padding) input tokens trained on by this process
    tokens_computed: int = 0  # input tokens the model computed, padding included
    peak_gpu_memory: int | None = None  # bytes, torch.cuda.max_memory_allocated()
    # how the last attempt batched (the memory plan, after any out-of-memory rungs): batch_tokens (0: batch_size
    # examples a micro-batch), batch_size, grad_accum, gradient_checkpointing, out_of_memory_retries
    plan: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=versions)

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome.ended_well else 1

    def write(self, path: Path) -> None:
        write_json(path, {**asdict(self), "exit_code": self.exit_code})

    def footer(self) -> str:
        """The console.log footer: end state, exit code and a one-line summary."""
        parts = [f"{self.step}/{self.max_steps or '?'} steps in {self.train_seconds:.1f} s"]
        if self.final_loss is not None:
            parts.append(f"final loss {self.final_loss:.4f}")
        if self.eval_loss is not None:
            parts.append(f"eval loss {self.eval_loss:.4f}")
        if self.tokens_computed:
            parts.append(f"{self.tokens_seen:,} tokens trained, {self.tokens_computed:,} computed")
        if self.peak_gpu_memory:
            parts.append(f"peak GPU memory {self.peak_gpu_memory / 2**30:.1f} GiB")
        if self.best_checkpoint:
            parts.append(f"best checkpoint {self.best_checkpoint}")
        if self.adapter:
            parts.append(f"adapter {self.adapter}")
        why = f" ({self.reason})" if self.reason else ""
        return f"=== end: {self._end_state()}{why}, exit code {self.exit_code}; {', '.join(parts)} ==="

    def _end_state(self) -> str:
        """The state the run takes, where the daemon's request decides it (a skip ends skipped, a preemption or
        the daemon's shutdown sends it back to the queue); else the attempt's outcome."""
        asked = StopRequest.named_in(self.reason)
        if self.outcome is not Outcome.STOPPED or asked not in (StopRequest.SKIP, StopRequest.PREEMPT,
                                                                 StopRequest.SHUTDOWN):
            return str(self.outcome)
        return "skipped" if asked is StopRequest.SKIP else "queued again, to resume from its last checkpoint"


def header_lines(run_id: str, base_model: str, dataset: Path, schema: str, records: int | None,
                 options: dict[str, Any]) -> list[str]:
    """The console.log header: what is trained on what, by which command and versions (the device follows)."""
    v = versions()
    return [
        f"=== overnight trainer: run {run_id} ===",
        f"command: {' '.join([sys.executable, *sys.argv])}  (pid {os.getpid()})",
        f"model: {base_model}",
        f"dataset: {dataset} (schema {schema}, {records if records is not None else '?'} records)",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "options: " + ", ".join(f"{k}={options[k]}" for k in sorted(options)),
    ]


def save_adapter(model: Any, adapter_dir: Path, card: str, tokenizer: Any = None) -> None:
    """Save the PEFT adapter (safetensors), its model card and the serving contract — the tokenizer with the chat
    template the run trained with, and a generation_config.json that stops at the end of a turn; built beside
    adapter/ and renamed into place."""
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # only the trained adapter: a preference run also holds TRL's frozen copy of the starting one ("ref")
    model.save_pretrained(tmp, safe_serialization=True, selected_adapters=[model.active_adapter])
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
        if isinstance(tokenizer.chat_template, str):
            write_text(tmp / "chat_template.jinja", serving_template(tokenizer.chat_template))
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(tmp)
    write_text(tmp / "README.md", card)
    share_weights(tmp)
    if adapter_dir.exists():
        old = adapter_dir.with_name(f".{adapter_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(adapter_dir, old)
        os.rename(tmp, adapter_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, adapter_dir)


def model_card(*, run_id: str, base_model: str, dataset: Path, schema: str, steps: int, final_loss: float | None,
               eval_loss: float | None, options: dict[str, Any], note: str | None) -> str:
    """README.md for adapter/: what it was trained from, and how to load it."""
    loss = f"{final_loss:.4f}" if final_loss is not None else "n/a"
    ev = f"{eval_loss:.4f}" if eval_loss is not None else "n/a"
    opts = "\n".join(f"| {k} | {options[k]} |" for k in sorted(options))
    extra = f"\n{note}\n" if note else ""
    return f"""---
base_model: {base_model}
library_name: peft
tags: [lora, overnight]
---
# LoRA adapter from overnight run `{run_id}`

- base model: `{base_model}`
- dataset: `{dataset.name}` (schema `{schema}`)
- steps: {steps}
- final training loss: {loss}
- eval loss: {ev}
{extra}
## Load it

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

adapter = "PATH/TO/adapter"
tokenizer = AutoTokenizer.from_pretrained(adapter)  # the run's: its chat template and any tokens it added
base = AutoModelForCausalLM.from_pretrained("{base_model}")
if len(tokenizer) > base.get_input_embeddings().num_embeddings:  # the run added tokens (its chat template's)
    base.resize_token_embeddings(len(tokenizer))
model = PeftModel.from_pretrained(base, adapter)
model.generation_config = GenerationConfig.from_pretrained(adapter)  # stops where the run's answers stop
```

## Options

| option | value |
| --- | --- |
{opts}
"""
