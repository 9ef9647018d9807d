"""Kahneman-Tversky optimisation (KTO) through TRL's `KTOTrainer`: answers judged one by one (a thumbs-up or down,
`label`), the loss pushing the policy's reward for each above or below a KL baseline against the reference.

The examples are encoded as the pairs are (`preference.py`). KTO estimates its baseline from mismatched answers:
each prompt beside the answer of its neighbour in the same batch, so batches are drawn in a fixed order,
shuffled once with the run's seed (exact resume holds: the order is the same after a restart).
"""
from __future__ import annotations

import random
from typing import Any

from transformers import TrainerCallback
from trl import KTOConfig, KTOTrainer

from daemon.trainer.config import RunError, TrainOptions
from daemon.trainer.objectives.preference import PreferenceDataset, base_as_reference, prepare_pairs
from daemon.trainer.objectives.sft import argument_values
from daemon.trainer.objectives.watch import StepWatch
from daemon.trainer.sequences import Prepared
from daemon.trainer.session import Session


class JudgedTrainer(StepWatch, KTOTrainer):
    """TRL's KTOTrainer with overnight's step watch, fed examples overnight encoded."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        return dataset  # already token ids: prompt_ids, completion_ids, KL_completion_ids, label (with_baseline)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        return None  # the adapter's own card is written when the run completes (finish.model_card)


class Kto:
    name = "kto"
    rows = 2  # each answer, and the mismatched one the KL baseline is measured on

    def encode(self, s: Session, tokenizer: Any, stats: dict[str, Any]) -> Prepared:
        return prepare_pairs(s, tokenizer, stats)

    def trainer(self, built: Any, opts: TrainOptions, callbacks: list[TrainerCallback]) -> JudgedTrainer:
        if opts.batch_size < 2:
            raise RunError(f"batch_size = {opts.batch_size}: KTO measures its baseline on the other answers of a "
                           f"batch, so a batch needs at least 2. Fix: set batch_size = 2 or more (grad_accum keeps "
                           f"the effective batch).")
        values = argument_values(opts, str(built.session.cfg.paths.checkpoints), built.device,
                                 built.data.eval is not None, "padded")
        values.pop("label_names")
        values["train_sampling_strategy"] = "sequential"  # the baseline pairs are fixed within each batch
        args = KTOConfig(**values, beta=opts.beta, max_length=None, precompute_ref_log_probs=False)
        evals = built.data.eval
        trainer = JudgedTrainer(model=built.model, args=args,
                                train_dataset=with_baseline(built.data.train.items, opts.batch_size, opts.seed),
                                eval_dataset=with_baseline(evals.items, opts.batch_size, opts.seed) if evals else None,
                                processing_class=built.tokenizer, callbacks=callbacks)
        return base_as_reference(trainer, continued=built.session.cfg.init_adapter is not None)


def with_baseline(items: list[dict[str, Any]], batch_size: int, seed: int) -> Any:
    """The examples in a seeded order, each with the answer of its predecessor in the same batch (the first with
    the batch's last) as `KL_completion_ids`: the mismatched answers KTO's KL baseline is measured on."""
    order = list(items)
    random.Random(seed).shuffle(order)
    out = []
    for at in range(0, len(order), batch_size):
        batch = order[at:at + batch_size]
        shifted = [batch[-1]["completion_ids"]] + [b["completion_ids"] for b in batch[:-1]]
        out += [{**b, "KL_completion_ids": kl} for b, kl in zip(batch, shifted)]
    return PreferenceDataset(out).hf()
