"""The part of a Trainer every objective shares, mixed in before the objective's own Trainer class
(`class OvernightTrainer(StepWatch, Trainer)`, `class PreferenceTrainer(StepWatch, DPOTrainer)`)."""
from __future__ import annotations

from typing import Any

import torch

from daemon.core.tokenbatches import Budget
from daemon.trainer.batching import GroupedSampler, TokenBudgetSampler


class StepWatch:
    """What every objective's Trainer adds to its own (mixed in before it): a record of whether any micro-batch loss
    was NaN/inf, the tokens fed to the model, and length-grouped batches seeded per epoch.

    The flag stays a device tensor (no sync per step); CommandCallback reads it only before anything is
    logged or saved, so weights from a diverged step are never checkpointed.
    """

    def __init__(self, *args: Any, budget: Budget | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budget = budget  # token-budget micro-batches (batch_tokens), else batch_size examples
        self._budget_sampler: TokenBudgetSampler | None = None
        self._nonfinite: torch.Tensor | None = None
        # tokens this process fed the model, padding included, and the real ones (a device tensor: no sync per step)
        self.tokens_computed = 0
        self._tokens_real: torch.Tensor | int = 0

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        self.tokens_computed += inputs["input_ids"].numel()
        mask = inputs.get("attention_mask")
        self._tokens_real = self._tokens_real + (mask.sum() if mask is not None else inputs["input_ids"].numel())
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        return loss

    @property
    def tokens_real(self) -> int:
        return int(self._tokens_real)

    def loss_nonfinite(self) -> bool:
        return bool(self._nonfinite is not None and self._nonfinite.any().item())

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.budget is not None:
            self._budget_sampler = TokenBudgetSampler(self.budget, dataset, self.args.seed, self.args.process_index,
                                                      self.args.world_size)
            return self._budget_sampler
        if self.args.train_sampling_strategy == "group_by_length":
            # megabatches of whole optimizer steps, as the stock sampler does, but seeded per epoch (exact resume)
            # under torchrun: megabatches of whole global steps (every rank draws the same order, accelerate
            # deals its batches out round-robin), so a step holds the same examples whatever the world size
            return GroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps
                                  * self.args.world_size, dataset, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def get_resumed_dataloader(self, dataloader: Any, num_batches: int) -> Any:
        if self._budget_sampler is not None:
            # accelerate's skipping wrapper hides the batch sampler from the Trainer's set_epoch: the resumed epoch
            # is the one the Trainer computes (global step // optimizer steps per epoch)
            accum = self.args.gradient_accumulation_steps
            self._budget_sampler.set_epoch(self.state.global_step // max(-(-len(dataloader) // accum), 1))
        return super().get_resumed_dataloader(dataloader, num_batches)
