"""How examples become batches: padded, length-grouped or padding-free (and which one "auto" picks, and why).

- padded: random batches padded to their longest sequence (the plain Trainer's way);
- length_grouped: shuffled, then sorted within mega-batches (transformers' LengthGroupedSampler), so a batch holds
  sequences of similar length and little padding; every example is still seen once per epoch;
- padding_free: a batch's sequences concatenated in one row with `position_ids` restarting at 0 and no attention
  mask (DataCollatorWithFlattening); exact, and fast only with a variable-length attention kernel.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers import DataCollatorWithFlattening
from transformers.trainer_pt_utils import BatchRebalanceSampler, LengthGroupedSampler

from daemon.core.preflight import padding_report
from daemon.core.tokenbatches import Budget, epoch_order, for_rank, pad_multiple
from daemon.trainer.sequences import PadCollator, SequenceDataset


def collator(batching: str, pad_id: int, on_gpu: bool) -> Any:
    """The data collator for `batching` (padding-free rows need no pad id)."""
    if batching == "padding_free":
        return DataCollatorWithFlattening(return_tensors="pt")
    return PadCollator(pad_id, pad_multiple(on_gpu))


class TokenBudgetSampler(BatchRebalanceSampler):
    """The DataLoader's batch sampler for token-budget micro-batches (daemon/core/tokenbatches.py): the batches are
    made once, their order seeded by (seed, epoch), and under torchrun each process takes its share.

    A BatchRebalanceSampler is what transformers' Trainer passes to the DataLoader as its `batch_sampler`, and keeps
    accelerate from sharding again: this is the same kind of sampler (batches of indices, already per process)."""

    def __init__(self, budget: Budget, dataset: SequenceDataset, seed: int, rank: int, world: int) -> None:
        self.batches = budget.batches(dataset.lengths(), seed)
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # type: ignore[no-untyped-def]
        order = for_rank(epoch_order(len(self.batches), self.seed, self.epoch), self.rank, self.world)
        return (self.batches[i] for i in order)

    def __len__(self) -> int:
        return -(-len(self.batches) // self.world)


class GroupedSampler(LengthGroupedSampler):
    """LengthGroupedSampler with a seeded order per epoch.

    The stock sampler draws from the global torch RNG when iterated, which a resumed run has restored to the
    checkpoint's moment rather than the epoch's start: the resumed epoch would see a different order. Seeding
    from (seed, epoch), as accelerate's SeedableRandomSampler does, makes the order the same in every process.
    """

    def __init__(self, batch_size: int, dataset: SequenceDataset, seed: int) -> None:
        super().__init__(batch_size, lengths=dataset.lengths())
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


def padding_line(batching: str, dataset: SequenceDataset, batch_size: int, max_length: int, seed: int,
                 budget: Budget | None = None) -> str:
    """"length-grouped: 2.1M tokens computed instead of 4.1M padded (…)" for one epoch of the training split."""
    batches = budget.batches(dataset.lengths(), seed) if budget else None
    return padding_report(dataset.lengths(), batch_size, max_length, batching, seed, batches=batches,
                          multiple_of=budget.multiple_of if budget else 1).line()
