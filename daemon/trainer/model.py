"""The base model, its tokenizer, the device, and the LoRA adapter around it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from daemon.trainer.config import RunError, TrainOptions


@dataclass(frozen=True)
class Device:
    """Where training runs: `cuda` with bf16 when the GPU supports it, else `cpu` in fp32."""

    kind: str
    name: str
    bf16: bool

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.name}, {'bf16' if self.bf16 else 'fp32'})"


def pick_device() -> Device:
    """CUDA when available, else CPU."""
    if torch.cuda.is_available():
        return Device("cuda", torch.cuda.get_device_name(0), torch.cuda.is_bf16_supported())
    return Device("cpu", _cpu_name(), False)


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def load_tokenizer(source: str, trust_remote_code: bool) -> Any:
    """The base model's tokenizer, with pad = eos when it has no pad token."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise RunError(f"cannot load the tokenizer of base model {source}: {e}. Fix: check that the folder (or the "
                       f"HF cache entry) is a complete model download; the trainer never downloads.") from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(source: str, device: Device, trust_remote_code: bool) -> Any:
    """The base causal LM, in bf16 on a bf16-capable GPU, else fp32."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.bf16 else torch.float32
    try:
        return AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=dtype,
                                                    trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise RunError(f"cannot load base model {source}: {e}. Fix: check that the folder (or the HF cache entry) "
                       f"is a complete causal-LM download; the trainer never downloads.") from None


def add_lora(model: Any, opts: TrainOptions) -> Any:
    """Wrap the model with a fresh LoRA adapter.

    The seed is set right before: LoRA's A matrices are drawn from the global RNG here, and exact resume
    (FINDINGS.md) needs them identical in the first run and in every resumed one.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    targets = opts.lora_targets
    config = LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    set_seed(opts.seed)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        raise RunError(f"lora_targets = {targets!r} does not fit this model: {e}. Fix: use \"all-linear\" or "
                       f"names of the model's linear layers (e.g. [\"q_proj\", \"v_proj\"]).") from None
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # the KV cache is for generation; training never reuses it
    return peft_model


def trainable_summary(model: Any) -> str:
    """`trainable N of M parameters (x%)`."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"
