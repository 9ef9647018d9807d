"""Direct preference optimisation (DPO) through TRL's `DPOTrainer`: each pair's chosen and rejected answers to one
prompt, the loss rewarding the policy for preferring the chosen one more than the reference does.

The pairs are encoded here, with the run's chat format exactly as SFT encodes its examples (`preference.py`), and
handed to TRL as token ids (its own tokenisation is skipped). The reference is the model as training started: for a
fresh adapter the base model (the adapter switched off, as with TRL's own `peft_config`), for a continued one
(`init_adapter`) the parent, TRL's frozen copy of it ("ref"); no second model is loaded.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from daemon.trainer.config import TrainOptions
from daemon.trainer.objectives.preference import base_as_reference, prepare_pairs
from daemon.trainer.objectives.sft import argument_values
from daemon.trainer.objectives.watch import StepWatch
from daemon.trainer.sequences import Prepared
from daemon.trainer.session import Session


# the label smoothing a loss type needs to be itself (overnight has no label_smoothing option): EXO's ε > 0 (TRL
# refuses 0.0; the paper's 1e-3, arXiv 2402.00856); Robust DPO's flip rate (at 0.0 it is sigmoid; its paper's 0.1)
LABEL_SMOOTHING = {"exo_pair": 1e-3, "robust": 0.1}


class PreferenceTrainer(StepWatch, DPOTrainer):
    """TRL's DPOTrainer with overnight's step watch, fed pairs overnight encoded."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        return dataset  # already token ids: prompt_ids, chosen_ids, rejected_ids (preference.PreferenceEncoder)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        return None  # the adapter's own card is written when the run completes (finish.model_card)

    # TRL logs an eval's reward accuracy (and margins, rewards, log-probs) as the mean of its batches' means: with
    # a last batch smaller than the others (5 pairs in batches of 4: (2/4 + 0/1) / 2 = 0.25, not 2/5) it is not the
    # share of the eval pairs that select_metric = "reward_accuracy" ranks by. Each batch is weighted by its pairs.
    _eval_pairs: tuple[int, ...] = ()  # the pairs of each eval batch since the last log

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not self.model.training:
            pairs = torch.tensor([len(inputs["input_ids"]) // 2], device=self.accelerator.device)  # chosen, rejected
            self._eval_pairs = (*self._eval_pairs, int(self.accelerator.gather(pairs).sum()))
        return out

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        counts, self._eval_pairs = self._eval_pairs, ()
        if not self.model.training and counts:
            metrics = self._metrics["eval"]
            for key, values in metrics.items():
                if len(values) == len(counts):
                    metrics[key] = [sum(v * n for v, n in zip(values, counts)) / sum(counts)]
        super().log(logs, start_time)


class Dpo:
    name = "dpo"
    rows = 2  # chosen and rejected go through the model together (and once more, without gradients, the reference)

    def encode(self, s: Session, tokenizer: Any, stats: dict[str, Any]) -> Prepared:
        return prepare_pairs(s, tokenizer, stats)

    def trainer(self, built: Any, opts: TrainOptions, callbacks: list[TrainerCallback]) -> PreferenceTrainer:
        values = argument_values(opts, str(built.session.cfg.paths.checkpoints), built.device,
                                 built.data.eval is not None, "padded")
        values.pop("label_names")  # pairs carry no labels: the loss comes from the chosen/rejected log-probabilities
        args = DPOConfig(**values, beta=opts.beta, loss_type=[opts.loss_type], max_length=None,
                         precompute_ref_log_probs=False, label_smoothing=LABEL_SMOOTHING.get(opts.loss_type, 0.0))
        trainer = PreferenceTrainer(model=built.model, args=args, train_dataset=built.data.train.hf(),
                                    eval_dataset=built.data.eval.hf() if built.data.eval is not None else None,
                                    processing_class=built.tokenizer, callbacks=callbacks)
        return base_as_reference(trainer, continued=built.session.cfg.init_adapter is not None)
