"""The GPU check's baselines, one per process (clean GPU memory): a plain transformers Trainer and TRL's SFTTrainer
on the very sequences an overnight run trained (its run folder's tokens.npz), on the same model and GPU.

    python bench/gpu_baselines.py trainer|trl --model DIR --tokens RUN/tokens.npz --out result.json
        [--epochs 1] [--batch 8] [--quantization none|4bit] [--checkpointing]

- trainer: `Trainer` + `DataCollatorForSeq2Seq` (random batches padded to their longest row), what a plain script
  does;
- trl: `SFTTrainer` at its best stock setting: `padding_free=True` with flash-attention 2 when flash_attn imports,
  else length-grouped batches (`group_by_length`); completion-only loss from the same prompt masks.
Both: LoRA r16 alpha 32 dropout 0 on all linear layers (overnight's defaults), AdamW (fused), lr 2e-4 linear, bf16
on a GPU that has it (fp16 else, fp32 on the CPU); 4-bit: nf4 with double quantisation through bitsandbytes and
peft's `prepare_model_for_kbit_training`, as the QLoRA recipes do. Neither saves a checkpoint (overnight's wall
includes its last one).

Measured as overnight is: useful tokens (non-padding input tokens, counted by wrapping the collator) over the wall
time of `trainer.train()`; computed tokens (padding included); `torch.cuda.max_memory_allocated()` of the process
(model loading included, as overnight's; reset after an attempt that ran out of memory). An out-of-memory error
halves the micro-batch and doubles gradient accumulation (the same effective batch) and trains again in the same
process, as a user would retry; the figures are those of the attempt that finished, and the retries are counted.
Writes one JSON object to --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}
LR, SEED = 2e-4, 1234


def load_sequences(path: Path) -> list[dict[str, list[int]]]:
    """The train split of an overnight run's tokens.npz (daemon/trainer/token_cache.py's layout): ids and labels."""
    with np.load(path, allow_pickle=False) as z:
        ids, labels = z["train_ids"], z["train_labels"]
        lengths, has_labels = z["train_lengths"].tolist(), z["train_has_labels"].tolist()
    out, at, at_label = [], 0, 0
    for n, has in zip(lengths, has_labels):
        row = ids[at:at + n].tolist()
        out.append({"input_ids": row, "labels": labels[at_label:at_label + n].tolist() if has else row})
        at += n
        at_label += n if has else 0
    return out


class Counting:
    """Wraps a collator: adds up the useful (attention-masked, else all) and computed tokens of every batch."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.useful, self.computed = inner, 0, 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        ids = batch["input_ids"]
        self.computed += int(ids.numel())
        mask = batch.get("attention_mask")
        self.useful += int(mask.sum()) if mask is not None else int(ids.numel())  # padding-free rows: all real
        return batch


def precision() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float16 if cuda else torch.float32
    return {"cuda": cuda, "dtype": dtype, "args": {"use_cpu": not cuda, "bf16": bf16, "fp16": cuda and not bf16}}


def lora_model(model: Path, quantization: str, checkpointing: bool, attention: str) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, set_seed

    p = precision()
    kw: dict[str, Any] = {"dtype": p["dtype"], "attn_implementation": attention}
    if quantization == "4bit":
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True,
                                                       bnb_4bit_compute_dtype=p["dtype"])
        kw["device_map"] = {"": 0 if p["cuda"] else "cpu"}
    base = AutoModelForCausalLM.from_pretrained(model, **kw)
    base.config.use_cache = False
    if quantization == "4bit":
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing)
    set_seed(SEED)
    net = get_peft_model(base, LoraConfig(**LORA, target_modules="all-linear", task_type="CAUSAL_LM"))
    if p["cuda"] and quantization == "none":
        net = net.to(torch.device("cuda"))
    return net


def common_args(a: argparse.Namespace, batch: int, accum: int, work: Path) -> dict[str, Any]:
    return {"output_dir": tempfile.mkdtemp(dir=work), "per_device_train_batch_size": batch,
            "gradient_accumulation_steps": accum, "num_train_epochs": a.epochs, "learning_rate": LR,
            "lr_scheduler_type": "linear", "weight_decay": 0.0, "max_grad_norm": 1.0, "optim": "adamw_torch_fused",
            "logging_steps": 10, "save_strategy": "no", "seed": SEED, "report_to": "none", "disable_tqdm": True,
            "gradient_checkpointing": a.checkpointing, "dataloader_num_workers": 0, **precision()["args"]}


def grouped(config_class: Any) -> dict[str, Any]:
    """Length-grouped batches, by the name this transformers version has for it."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names else \
        {"group_by_length": True}


def plain_trainer(a: argparse.Namespace, net: Any, rows: list[dict[str, Any]], batch: int, accum: int,
                  work: Path) -> tuple[Any, str]:
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    data = [{**r, "attention_mask": [1] * len(r["input_ids"])} for r in rows]
    collate = DataCollatorForSeq2Seq(AutoTokenizer.from_pretrained(a.model), label_pad_token_id=-100)
    args = TrainingArguments(**common_args(a, batch, accum, work), label_names=["labels"])
    return Trainer(model=net, args=args, train_dataset=data, data_collator=collate), "random batches, padded"


def trl_trainer(a: argparse.Namespace, net: Any, rows: list[dict[str, Any]], batch: int, accum: int,
                work: Path, flash: bool) -> tuple[Any, str]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    # token ids already cut by overnight: TRL keeps them (max_length=None) and trains the completion mask
    data = Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": [int(x != -100) for x in r["labels"]]}
                              for r in rows])
    best = {"padding_free": True} if flash else grouped(SFTConfig)
    cfg = SFTConfig(**common_args(a, batch, accum, work), max_length=None, completion_only_loss=True, **best)
    note = "padding_free=True (flash_attention_2)" if flash else "length-grouped (flash_attn not installed)"
    tok = AutoTokenizer.from_pretrained(a.model)
    return SFTTrainer(model=net, args=cfg, train_dataset=data, processing_class=tok), note


def train(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    rows = load_sequences(a.tokens)
    cuda = torch.cuda.is_available()
    flash = a.kind == "trl" and cuda and importlib.util.find_spec("flash_attn") is not None
    net = lora_model(a.model, a.quantization, a.checkpointing, "flash_attention_2" if flash else "sdpa")
    work = Path(tempfile.mkdtemp(prefix=f"gpu-check-{a.kind}-"))
    batch, accum, retries = a.batch, 1, 0
    while True:
        make = plain_trainer if a.kind == "trainer" else trl_trainer
        trainer, note = make(a, net, rows, batch, accum, work, *((flash,) if a.kind == "trl" else ()))
        counter = Counting(trainer.data_collator)
        trainer.data_collator = counter
        started = time.perf_counter()
        try:
            out = trainer.train()
            break
        except torch.OutOfMemoryError:
            if batch == 1:
                return {"outcome": "out of memory", "reason": f"out of memory at batch 1 ({note})",
                        "oom_retries": retries, "batch": batch, "grad_accum": accum, "note": note}
        trainer = None  # outside the except block: its traceback pins the GPU tensors
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the peak of the attempt that fits, not of the one that did not
        batch, accum, retries = batch // 2, accum * 2, retries + 1
    wall = time.perf_counter() - started
    return {"outcome": "completed", "useful_tokens": counter.useful, "computed_tokens": counter.computed,
            "wall_s": wall, "steps": trainer.state.global_step, "final_loss": out.training_loss,
            "peak_gpu_memory": torch.cuda.max_memory_allocated() if cuda else None,
            "device_name": torch.cuda.get_device_name() if cuda else None, "batch": batch, "grad_accum": accum,
            "oom_retries": retries, "sequences": len(rows), "note": note}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("trainer", "trl"))
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--tokens", type=Path, required=True, help="an overnight run's tokens.npz")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--quantization", choices=("none", "4bit"), default="none")
    p.add_argument("--checkpointing", action="store_true")
    a = p.parse_args()
    try:
        result = train(a)
    except Exception as e:  # noqa: BLE001 - the check reports a baseline that broke and goes on with the others
        traceback.print_exc()
        result = {"outcome": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
    a.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0 if result["outcome"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
