"""Token-budget micro-batches (`batch_tokens`): which examples go together, without torch.

A micro-batch holds as many examples as fit in the budget: padding-free rows count their tokens, padded rows their
padded size (the longest row, rounded up to the collator's multiple, times the rows). The batches are made once per
run from a seeded order, grouped by length within mega-batches (as transformers' length grouping does), and only
their order is shuffled each epoch (as fairseq's batch_by_size does): every epoch has the same number of batches, so
the Trainer's epoch and resume arithmetic holds, and every example is seen once per epoch.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

MEGA_BATCHES = 50  # batches' worth of examples sorted together: little padding, still a shuffled mix


def pad_multiple(on_gpu: bool) -> int | None:
    """Padded rows are rounded up to a multiple of 8 on a GPU (tensor-core friendly shapes)."""
    return 8 if on_gpu else None


@dataclass(frozen=True)
class Budget:
    """Token-budget micro-batches (`batch_tokens`): the budget, and how `batching` counts a batch against it."""

    tokens: int
    batching: str
    on_gpu: bool

    @property
    def multiple_of(self) -> int:
        return pad_multiple(self.on_gpu) or 1

    def batches(self, lengths: Sequence[int], seed: int) -> list[list[int]]:
        return token_batches(lengths, self.tokens, padded=self.batching != "padding_free",
                             grouped=self.batching != "padded", seed=seed, multiple_of=self.multiple_of)


def cost(lengths: Sequence[int], *, padded: bool, multiple_of: int = 1) -> int:
    """The tokens a micro-batch of sequences of these lengths puts through the model."""
    return _cost(max(lengths, default=0), sum(lengths), len(lengths), padded, multiple_of)


def _cost(widest: int, total: int, rows: int, padded: bool, multiple_of: int) -> int:
    return -(-widest // multiple_of) * multiple_of * rows if padded else total


def token_batches(lengths: Sequence[int], budget: int, *, padded: bool, grouped: bool, seed: int,
                  multiple_of: int = 1) -> list[list[int]]:
    """Indices of `lengths` cut into micro-batches of at most `budget` tokens (a longer example is a batch alone).

    `grouped`: sorted by length within mega-batches of about MEGA_BATCHES budgets of tokens (little padding);
    otherwise in the seeded random order (what padded batching means)."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    if grouped:
        order = _grouped(order, lengths, MEGA_BATCHES * budget)
    batches: list[list[int]] = []
    batch: list[int] = []
    widest = total = 0
    for i in order:
        n = lengths[i]
        if batch and _cost(max(widest, n), total + n, len(batch) + 1, padded, multiple_of) > budget:
            batches.append(batch)
            batch, widest, total = [], 0, 0
        batch.append(i)
        widest, total = max(widest, n), total + n
    if batch:
        batches.append(batch)
    return batches


def _grouped(order: list[int], lengths: Sequence[int], mega_tokens: int) -> list[int]:
    """Sort runs of `order` holding about `mega_tokens` tokens by length, longest first."""
    out: list[int] = []
    chunk: list[int] = []
    tokens = 0
    for i in order:
        chunk.append(i)
        tokens += lengths[i]
        if tokens >= mega_tokens:
            out += sorted(chunk, key=lambda k: lengths[k], reverse=True)
            chunk, tokens = [], 0
    return out + sorted(chunk, key=lambda k: lengths[k], reverse=True)


def epoch_order(n_batches: int, seed: int, epoch: int) -> list[int]:
    """The order the batches are taken in during `epoch`: the same in every process and after a resume."""
    order = list(range(n_batches))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def for_rank(order: list[int], rank: int, world: int) -> list[int]:
    """This process's share of an epoch under torchrun: every world-th batch, the shortest shares topped up from the
    epoch's start (as torch's DistributedSampler does) so that every process takes the same number of steps."""
    per_rank = -(-len(order) // world)
    return [order[j % len(order)] for j in range(rank, per_rank * world, world)]
