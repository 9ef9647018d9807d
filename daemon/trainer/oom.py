"""Out-of-memory: how to recognise one, how to give the memory back, and the retry ladder (checkpointing first, then
smaller micro-batches). Training and evolution snapshots use the same rule."""
from __future__ import annotations

import gc
from dataclasses import replace

from daemon.trainer.config import RunError, TrainOptions

# cuBLAS, cuDNN and the driver report exhaustion as a plain RuntimeError; accelerate matches the same texts
# (accelerate.utils.memory.should_reduce_batch_size).
_OOM_TEXTS = ("out of memory", "CUDNN_STATUS_NOT_SUPPORTED", "CUBLAS_STATUS_ALLOC_FAILED",
              "DefaultCPUAllocator: can't allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's OutOfMemoryError and for the RuntimeErrors that mean the same."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and len(error.args) == 1 and any(
        text in str(error.args[0]) for text in _OOM_TEXTS)


def free_memory() -> None:
    """Give cached device memory back: after an out-of-memory error (call it outside the `except` block), or once
    models are dropped (the answers process, before it loads others)."""
    import torch

    gc.collect()  # tensors held only by the failed attempt's frames go first
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def next_rung(opts: TrainOptions, longest: int = 0) -> tuple[TrainOptions, str]:
    """The next, cheaper way to run the same optimizer steps; RunError when none is left.

    First gradient checkpointing (same batches, ~30% more compute); then a smaller micro-batch with as much more
    accumulation, so the effective batch is unchanged (batch 6 → 3 × 2, batch 3 → 1 × 3; a token budget halves,
    down to the `longest` sequence, which is then a micro-batch alone).
    """
    if opts.gradient_checkpointing is not True:
        return replace(opts, gradient_checkpointing=True), "turning gradient checkpointing on"
    if isinstance(opts.batch_tokens, int) and opts.batch_tokens:
        return _halve_budget(opts, longest)
    b = opts.batch_size
    if b <= 1:
        raise RunError(f"CUDA out of memory at batch_size 1 with gradient checkpointing on (max_length "
                       f"{opts.max_length}). Fix: lower max_length, set quantization = \"4bit\", or use a GPU with "
                       f"more memory or a smaller base model.")
    smaller = max(d for d in range(1, b // 2 + 1) if b % d == 0)
    accum = opts.grad_accum * (b // smaller)
    return (replace(opts, batch_size=smaller, grad_accum=accum),
            f"batch_size {b} → {smaller} and grad_accum {opts.grad_accum} → {accum} "
            f"(the effective batch stays {b * opts.grad_accum})")


def _halve_budget(opts: TrainOptions, longest: int) -> tuple[TrainOptions, str]:
    tokens = opts.batch_tokens
    if tokens <= longest or tokens < 128:
        raise RunError(f"CUDA out of memory with micro-batches of {tokens:,} tokens (the longest sequence, "
                       f"{longest:,} tokens, alone) and gradient checkpointing on. Fix: lower max_length, set "
                       f"quantization = \"4bit\", or use a GPU with more memory or a smaller base model.")
    half, accum = max(tokens // 2, longest), opts.grad_accum * 2
    return (replace(opts, batch_tokens=half, grad_accum=accum),
            f"batch_tokens {tokens:,} → {half:,} and grad_accum {opts.grad_accum} → {accum} "
            f"(a step keeps its {tokens * opts.grad_accum:,} tokens; the rest of this epoch is batched anew)")
