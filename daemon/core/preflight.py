"""What a run will cost before it starts, without torch: padding per batching strategy and a GPU memory estimate.

Shared by `overnight check` (torch-free) and the trainer's console header, so both say the same thing.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from daemon.core.tokenbatches import cost

GIB = 2**30
# The share of free GPU memory a run may plan to use before gradient checkpointing is turned on: the rest is
# the CUDA caching allocator's fragmentation and the peaks the estimate does not model.
FIT_SHARE = 0.8


# ------------------------------------------------------------------------------------------ padding

def length_grouped_order(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[int]:
    """transformers' `get_length_grouped_indices`: shuffle, cut into mega-batches of up to 50 batches, sort each
    by length (longest first), and put the mega-batch holding the longest sequence first (an OOM shows at once)."""
    n = len(lengths)
    order = list(range(n))
    rng.shuffle(order)
    mult = max(min(n // (batch_size * 4), 50), 1)
    size = mult * batch_size
    megas = [sorted(order[i:i + size], key=lambda k: lengths[k], reverse=True) for i in range(0, n, size)]
    longest = max(range(len(megas)), key=lambda m: lengths[megas[m][0]]) if megas else 0
    if megas:
        megas[0][0], megas[longest][0] = megas[longest][0], megas[0][0]
    return [i for mega in megas for i in mega]


def computed_tokens(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> int:
    """Tokens the model computes when batches of `order` are padded to their longest sequence."""
    total = 0
    for i in range(0, len(order), batch_size):
        batch = order[i:i + batch_size]
        total += max(lengths[k] for k in batch) * len(batch)
    return total


@dataclass(frozen=True)
class PaddingReport:
    """Tokens computed in one epoch: useful ones, and what random padded batches and the chosen batching cost."""

    batching: str
    useful: int
    padded: int
    chosen: int
    batches: Sequence[int] = ()  # under a token budget: examples per micro-batch

    @property
    def padding_share(self) -> float:
        return 1 - self.useful / self.chosen if self.chosen else 0.0

    def line(self) -> str:
        if self.batches:
            return (f"micro-batches of {min(self.batches)}–{max(self.batches)} examples, "
                    f"{_m(self.chosen)} tokens computed for {_m(self.useful)} useful ({self.padding_share:.0%} "
                    f"padding instead of {1 - self.useful / max(self.padded, 1):.0%} in random batches)")
        if self.batching == "padded":
            return (f"padded: {_m(self.padded)} tokens computed for {_m(self.useful)} useful "
                    f"({self.padding_share:.0%} padding)")
        return (f"{self.batching.replace('_', '-')}: {_m(self.chosen)} tokens computed instead of {_m(self.padded)} "
                f"padded ({self.padding_share:.0%} padding instead of {1 - self.useful / max(self.padded, 1):.0%})")


def padding_report(lengths: Sequence[int], batch_size: int, max_length: int, batching: str, seed: int = 42, *,
                   batches: list[list[int]] | None = None, multiple_of: int = 1) -> PaddingReport:
    """One epoch of `lengths` (cut to max_length) under random padded batches and under `batching` (in `batches`
    of indices when a token budget made them)."""
    cut = [min(n, max_length) for n in lengths]
    useful = sum(cut)
    padded = computed_tokens(cut, random.Random(seed).sample(range(len(cut)), len(cut)), batch_size)
    if batches:
        chosen = sum(cost([cut[i] for i in b], padded=batching != "padding_free", multiple_of=multiple_of)
                     for b in batches)
        return PaddingReport(batching, useful, padded, chosen, [len(b) for b in batches])
    if batching == "padding_free":
        chosen = useful
    elif batching == "length_grouped":
        chosen = computed_tokens(cut, length_grouped_order(cut, batch_size, random.Random(seed)), batch_size)
    else:
        chosen = padded
    return PaddingReport(batching, useful, padded, chosen)


def _m(tokens: int) -> str:
    return f"{tokens / 1e6:.1f}M" if tokens >= 100_000 else f"{tokens / 1e3:.1f}K" if tokens >= 1000 else str(tokens)


# ------------------------------------------------------------------------------------------ memory

@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder-only transformer that decide its memory (from its config.json)."""

    vocab: int
    hidden: int
    layers: int
    intermediate: int
    q_dim: int
    kv_dim: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Shape | None":
        """None when the config lacks the usual Llama/Qwen/Mistral fields (the estimate is then skipped)."""
        c = config.get("text_config") or config
        try:
            hidden, layers = int(c["hidden_size"]), int(c["num_hidden_layers"])
            heads = int(c["num_attention_heads"])
            head_dim = int(c.get("head_dim") or hidden // heads)
            return cls(vocab=int(c["vocab_size"]), hidden=hidden, layers=layers,
                       intermediate=int(c.get("intermediate_size") or 4 * hidden), q_dim=heads * head_dim,
                       kv_dim=int(c.get("num_key_value_heads") or heads) * head_dim,
                       tied=bool(config.get("tie_word_embeddings", c.get("tie_word_embeddings", False))))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None

    @property
    def linear_params(self) -> int:
        """Weights of the layers' linear projections (what 4/8-bit quantisation shrinks)."""
        h, i = self.hidden, self.intermediate
        per_layer = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h + 3 * h * i
        return self.layers * per_layer

    @property
    def other_params(self) -> int:
        """Embeddings, the output layer and norms (kept in 16/32 bit)."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + (2 * self.layers + 1) * self.hidden

    def lora_params(self, r: int) -> int:
        """LoRA on every linear projection (all-linear): r × (in + out) per module."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        return self.layers * r * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))


@dataclass(frozen=True)
class MemoryEstimate:
    """GPU bytes a LoRA run needs, by part."""

    weights: int
    adapter: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits

    def describe(self) -> str:
        return (f"{self.total / GIB:.1f} GiB = weights {self.weights / GIB:.1f} + LoRA and optimizer "
                f"{self.adapter / GIB:.1f} + activations {self.activations / GIB:.1f} + logits "
                f"{self.logits / GIB:.1f}")


def estimate_memory(shape: Shape, *, batch_size: int, seq_len: int, lora_r: int, quantization: str,
                    dtype_bytes: int, checkpointing: bool, liger: bool = False) -> MemoryEstimate:
    """A preflight estimate (Korthikanti et al.'s activation count, adapted to LoRA and SwiGLU MLPs).

    Per token and layer without checkpointing a LoRA step keeps about 10h + 2q + 2kv + 5i activations (norm
    outputs, q/k/v, attention output, residuals, the MLP's four i-wide tensors, dropout copies feeding LoRA);
    flash/sdpa attention keeps no seq² matrix. With checkpointing only each layer's input is kept, plus one
    layer recomputed at a time. Logits: bf16 output + fp32 upcast + its gradient, unless Liger fuses them away.
    """
    linear_bytes = {"4bit": 0.53, "8bit": 1.02}.get(quantization, dtype_bytes)
    # prepare_model_for_kbit_training keeps what it does not quantise (embeddings, output layer, norms) in fp32
    other_bytes = 4 if quantization in ("4bit", "8bit") else dtype_bytes
    weights = int(shape.linear_params * linear_bytes + shape.other_params * other_bytes)
    adapter = shape.lora_params(lora_r) * 16  # fp32 weight + gradient + two Adam moments
    tokens = batch_size * seq_len
    h, i = shape.hidden, shape.intermediate
    per_layer = (10 * h + 2 * shape.q_dim + 2 * shape.kv_dim + 5 * i) * dtype_bytes
    if checkpointing:
        activations = tokens * (shape.layers * h * dtype_bytes + per_layer)
    else:
        activations = tokens * shape.layers * per_layer
    logits = 0 if liger else tokens * shape.vocab * (dtype_bytes + 8)
    return MemoryEstimate(weights, adapter, activations, logits)


def needs_checkpointing(estimate_without: MemoryEstimate, free_bytes: int) -> bool:
    """Gradient checkpointing is worth its ~30% extra compute only when the run would not fit otherwise."""
    return estimate_without.total > FIT_SHARE * free_bytes


def checkpointing_decision(setting: str | bool, shape: Shape | None, free_bytes: int | None, *, batch_size: int,
                           seq_len: int, lora_r: int, quantization: str, dtype_bytes: int,
                           liger: bool = False) -> tuple[bool, str]:
    """Whether gradient checkpointing is on, and why ("auto": only when the run would not fit without it)."""
    if isinstance(setting, bool):
        return setting, "set in the options"
    if free_bytes is None:
        return False, "auto: no GPU, so memory does not limit the batch"
    if shape is None:
        return False, "auto: no memory estimate for this architecture; the out-of-memory retry turns it on if needed"
    est = estimate_memory(shape, batch_size=batch_size, seq_len=seq_len, lora_r=lora_r, quantization=quantization,
                          dtype_bytes=dtype_bytes, checkpointing=False, liger=liger)
    room = f"{FIT_SHARE:.0%} of the {free_bytes / GIB:.1f} GiB free on the GPU"
    at = f"at batch {batch_size} × {seq_len} tokens"
    if needs_checkpointing(est, free_bytes):
        return True, f"auto: without it the estimate {at} is {est.describe()}, more than {room}"
    return False, f"auto: the estimate {at}, {est.describe()}, fits within {room}"


# ------------------------------------------------------------------------------------------ the memory plan

# A micro-batch of this many tokens keeps a GPU's kernels busy (a 0.5B LoRA step at ~3K tokens is bound by launching
# its ~5,000 kernels, bench/README.md): what batch_tokens = "auto" aims at, in one micro-batch when memory allows.
AUTO_TOKENS = 16_384
# Tokens × weights of a micro-batch whose compute outlasts launching its kernels (a 0.5B at 8K tokens, an 8B at
# 500): below it, checkpointing's ~30% extra compute costs less than micro-batches too small to keep the GPU busy.
BUSY_WORK = 4e12


def busy_tokens(shape: Shape) -> int:
    """The micro-batch, in tokens, from which this model's steps are bound by compute rather than kernel launches."""
    return min(AUTO_TOKENS, int(BUSY_WORK / (shape.linear_params + shape.other_params)))


@dataclass(frozen=True)
class MemoryPlan:
    """How a run's micro-batches are sized, decided before the first step, and why (one line each)."""

    checkpointing: bool
    batch_tokens: int  # 0: micro-batches of batch_size examples
    batch_size: int
    grad_accum: int
    checkpointing_why: str
    batch_why: str

    def batch_line(self) -> str:
        micro = (f"up to {self.batch_tokens:,} tokens" if self.batch_tokens else f"{self.batch_size} example(s)")
        return f"micro-batches of {micro} × grad_accum {self.grad_accum} ({self.batch_why})"


@dataclass(frozen=True)
class Sizing:
    """What a plan needs to know of the run: its options as set, and its data."""

    checkpointing: str | bool
    batch_tokens: str | int
    batch_size: int
    grad_accum: int
    longest: int  # the longest training sequence, cut to max_length
    lora_r: int
    quantization: str
    dtype_bytes: int
    liger: bool = False
    batch_size_set: bool = False  # batch_size came from a sidecar or overnight.toml: batch_tokens "auto" keeps it
    rows: int = 1  # sequences per example (DPO: chosen and rejected)
    budgets: bool = True  # the objective batches by tokens (SFT; TRL's preference trainers batch by examples)


def plan_memory(shape: Shape | None, free_bytes: int | None, s: Sizing) -> MemoryPlan:
    """Gradient checkpointing, the micro-batch (tokens or examples) and gradient accumulation so that the estimate
    fits FIT_SHARE of the free GPU memory, keeping the effective batch the options ask for."""
    if isinstance(s.batch_tokens, int) and s.budgets:
        return _budget_plan(shape, free_bytes, s, s.batch_tokens, "set in the options")
    if not s.budgets:
        why = "TRL's preference trainers batch by examples"
    elif free_bytes is None:
        why = "batch_tokens auto: no GPU, so batches of batch_size"
    elif s.batch_size_set:
        why = "batch_tokens auto: batch_size is set, and keeps its meaning"
    elif shape is None:
        why = "batch_tokens auto: no memory estimate for this architecture, so batches of batch_size"
    else:
        return _auto_plan(shape, free_bytes, s)
    return _examples_plan(shape, free_bytes, s, why)


def _estimate(shape: Shape, s: Sizing, tokens: int, checkpointing: bool) -> MemoryEstimate:
    return estimate_memory(shape, batch_size=1, seq_len=tokens, lora_r=s.lora_r, quantization=s.quantization,
                           dtype_bytes=s.dtype_bytes, checkpointing=checkpointing, liger=s.liger)


def _capacity(shape: Shape, free_bytes: int, s: Sizing, checkpointing: bool) -> int:
    """The most tokens one micro-batch may hold for the estimate to fit (the estimate is linear in tokens)."""
    fixed = _estimate(shape, s, 0, checkpointing).total
    per_token = _estimate(shape, s, 1, checkpointing).total - fixed
    return max(0, int((FIT_SHARE * free_bytes - fixed) // max(per_token, 1)))


def _room(free_bytes: int) -> str:
    return f"{FIT_SHARE:.0%} of the {free_bytes / GIB:.1f} GiB free on the GPU"


def _auto_plan(shape: Shape, free_bytes: int, s: Sizing) -> MemoryPlan:
    """batch_tokens "auto" on a GPU: AUTO_TOKENS a micro-batch (fewer when memory is short, with as much more
    accumulation), checkpointing only when without it a micro-batch would be too small to keep the GPU busy."""
    without = _capacity(shape, free_bytes, s, False)
    if isinstance(s.checkpointing, bool):
        checkpointing, ck_why = s.checkpointing, "set in the options"
    elif without >= max(busy_tokens(shape), s.longest):
        checkpointing = False
        ck_why = f"auto: without it a micro-batch of up to {min(without, AUTO_TOKENS):,} tokens fits {_room(free_bytes)}"
    else:
        checkpointing = True
        ck_why = (f"auto: without it only {without:,} tokens a micro-batch would fit {_room(free_bytes)} "
                  f"({_estimate(shape, s, AUTO_TOKENS, False).describe()} at {AUTO_TOKENS:,})")
    cap = _capacity(shape, free_bytes, s, checkpointing) if checkpointing else without
    split = -(-AUTO_TOKENS // max(cap // 64 * 64, s.longest, 64))  # micro-batches a step of AUTO_TOKENS needs
    tokens = max(-(-AUTO_TOKENS // split // 64) * 64, s.longest)
    accum = s.grad_accum * split
    if tokens >= AUTO_TOKENS:
        why = f"batch_tokens auto: {AUTO_TOKENS:,} tokens keep the GPU busy and fit"
    elif tokens > cap:
        why = (f"batch_tokens auto: even one sequence of {s.longest:,} tokens is estimated over {_room(free_bytes)}; "
               f"the out-of-memory ladder is the backstop")
    else:
        why = (f"batch_tokens auto: {tokens:,} tokens fit {_room(free_bytes)}, accumulated to "
               f"{tokens * accum // s.grad_accum:,} a step")
    return MemoryPlan(checkpointing, tokens, s.batch_size, accum, ck_why, why)


def _budget_plan(shape: Shape | None, free_bytes: int | None, s: Sizing, budget: int, how: str) -> MemoryPlan:
    """An integer batch_tokens: checkpointing when the budget would not fit without it; a budget that does not fit
    even then is split into micro-batches with as much more accumulation (the step keeps its tokens)."""
    note = "; a sequence longer than it is a micro-batch alone" if budget < s.longest else ""
    # the largest micro-batch is the budget, or one sequence longer than it (which is a micro-batch alone)
    on, ck_why = checkpointing_decision(s.checkpointing, shape, free_bytes, batch_size=1,
                                        seq_len=max(budget, s.longest),
                                        lora_r=s.lora_r, quantization=s.quantization, dtype_bytes=s.dtype_bytes,
                                        liger=s.liger)
    if free_bytes is None or shape is None:
        return MemoryPlan(on, budget, s.batch_size, s.grad_accum, ck_why, how + note)
    cap, split = _capacity(shape, free_bytes, s, on), 1
    while budget // split > cap and budget // (split * 2) >= s.longest:
        split *= 2
    if split > 1:
        how += (f"; {budget:,} tokens would not fit {_room(free_bytes)}, so {budget // split:,} × {split} "
                f"accumulated (a step keeps its {budget * s.grad_accum:,} tokens)")
    return MemoryPlan(on, budget // split, s.batch_size, s.grad_accum * split, ck_why, how + note)


def _examples_plan(shape: Shape | None, free_bytes: int | None, s: Sizing, why: str) -> MemoryPlan:
    """Micro-batches of batch_size examples; halved, with as much more accumulation, while the estimate does not
    fit even with checkpointing."""
    on, ck_why = checkpointing_decision(s.checkpointing, shape, free_bytes, batch_size=s.batch_size * s.rows,
                                        seq_len=s.longest, lora_r=s.lora_r, quantization=s.quantization,
                                        dtype_bytes=s.dtype_bytes, liger=s.liger)
    batch = s.batch_size
    if shape is not None and free_bytes is not None:
        fits = _capacity(shape, free_bytes, s, on) // max(s.longest * s.rows, 1)
        while batch > max(fits, 1):
            batch = max(d for d in range(1, batch // 2 + 1) if batch % d == 0)
    accum = s.grad_accum * (s.batch_size // batch)
    if batch < s.batch_size:
        why += (f"; batch_size {s.batch_size} would not fit {_room(free_bytes or 0)}, so {batch} × "
                f"{s.batch_size // batch} accumulated (the effective batch stays {s.batch_size * s.grad_accum})")
    return MemoryPlan(on, 0, batch, accum, ck_why, why)


def gpu_free_bytes(index: int = 0) -> int | None:
    """Free memory of one GPU through NVML (no torch); None without a GPU or a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - pynvml raises its own error classes for every way of having no GPU
        return None
