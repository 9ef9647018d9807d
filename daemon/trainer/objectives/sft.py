"""Supervised fine-tuning: the loss on the answer tokens (prompt, chat and text examples; daemon/trainer/sequences.py
encodes them), through the stock transformers Trainer."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback, TrainingArguments

from daemon.trainer import ddp
from daemon.trainer.batching import collator
from daemon.trainer.config import TrainOptions
from daemon.trainer.model import Device
from daemon.trainer.objectives.watch import StepWatch
from daemon.trainer.sequences import Encoder, Prepared, count_records, dataset_examples, prepare
from daemon.trainer.session import Session
from daemon.trainer.console import say


class OvernightTrainer(StepWatch, Trainer):
    """The stock Trainer with overnight's step watch (NaN flag, tokens, seeded length groups)."""


class Sft:
    name = "sft"
    rows = 1

    def encode(self, s: Session, tokenizer: Any, stats: dict[str, Any]) -> Prepared:
        from daemon.core.probes import holdout_indices, load_probe_file, probe_from_example

        cfg, opts = s.cfg, s.cfg.options
        examples = dataset_examples(cfg.dataset_path)
        records = stats.get("records")
        n_records = int(records) if isinstance(records, int) else count_records(examples())
        file_probes = None
        if cfg.probes_path is not None:
            file_probes = [{**p, "id": p.get("id", i)} for i, p in enumerate(load_probe_file(cfg.probes_path))]
        holdout = set(holdout_indices(n_records, opts.probe_count, opts.seed)) if file_probes is None else set()
        encoder = Encoder(tokenizer, opts.max_length, opts.base_model, s.chat, s.prompt_chat)
        if s.prompt_chat and file_probes:  # asked the way training asks: as a user turn
            file_probes = [p if p.get("messages") else {**p, "messages": [{"role": "user", "content": p["prompt"]}]}
                           for p in file_probes]
        data = prepare(examples, n_records, encoder, eval_fraction=opts.eval_fraction, seed=opts.seed,
                       probe_holdout=holdout, probe_from_example=probe_from_example, file_probes=file_probes, log=say)
        data.stats.update(chat_template=s.chat.label if s.chat else None,
                          prompt_format="chat" if s.prompt_chat else "raw")
        return data

    def trainer(self, built: Any, opts: TrainOptions, callbacks: list[TrainerCallback]) -> OvernightTrainer:
        args = training_arguments(opts, str(built.session.cfg.paths.checkpoints), built.device,
                                  built.data.eval is not None, built.batching)
        pad_id = built.tokenizer.pad_token_id if built.tokenizer.pad_token_id is not None else 0
        return OvernightTrainer(model=built.model, args=args, train_dataset=built.data.train,
                                eval_dataset=built.data.eval, callbacks=callbacks, budget=built.budget(opts),
                                data_collator=collator(built.batching, pad_id, built.device.kind == "cuda"))


def training_arguments(opts: TrainOptions, output_dir: str, device: Device, has_eval: bool,
                       batching: str = "padded") -> TrainingArguments:
    """The Trainer's arguments from overnight's options (logging/progress are our callbacks' job)."""
    return TrainingArguments(**argument_values(opts, output_dir, device, has_eval, batching))


def argument_values(opts: TrainOptions, output_dir: str, device: Device, has_eval: bool,
                    batching: str = "padded") -> dict[str, Any]:
    """`training_arguments` as keyword values, which TRL's configs (DPOConfig, KTOConfig) take too.

    `opts.gradient_checkpointing` is already decided (a bool) here: see `plan_checkpointing`.
    """
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        learning_rate=opts.learning_rate,
        lr_scheduler_type=opts.lr_scheduler,
        warmup_steps=float(opts.warmup_ratio),  # transformers 5: a float below 1 is a share of the steps
        weight_decay=opts.weight_decay,
        max_grad_norm=opts.max_grad_norm,
        optim=opts.optim,
        **_checkpointing_arguments(opts.gradient_checkpointing is True),
        train_sampling_strategy="group_by_length" if batching == "length_grouped" else "random",
        use_liger_kernel=opts.use_liger_kernel,
        # inductor in its default mode: "reduce-overhead" records a CUDA graph per batch shape (and keeps its memory),
        # "max-autotune" compiles for far longer. Shapes are torch's automatic dynamic (the Trainer passes dynamic=None):
        # the second batch shape compiles once more with dynamic sizes, the ones after it reuse that graph.
        torch_compile=opts.torch_compile,
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps if opts.max_steps > 0 else -1,
        logging_steps=opts.log_every,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN must fail the run, not be averaged away
        save_strategy="steps",
        save_steps=opts.save_every,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=opts.save_every if has_eval else None,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        seed=opts.seed,
        bf16=device.bf16,
        fp16=device.fp16,
        use_cpu=device.kind == "cpu",
        **_loader_arguments(device),
        report_to=list(opts.report_to) or "none",  # already the installed ones (trackers.available)
        run_name=Path(output_dir).parent.name,  # the run id, as the trackers show it
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        # the Trainer's own count gathers and reads a device tensor every micro-batch (a host sync per step, a
        # collective under torchrun): StepWatch counts on the device, read when a record is logged
        include_num_input_tokens_seen="no",
        log_level="warning",
        **_ddp_arguments(device),
    )


def _loader_arguments(device: Device) -> dict[str, Any]:
    """On a GPU a worker process collates the next batches (and a thread pins them for an asynchronous copy) while
    the GPU works, instead of the main thread between steps; it lives for the whole run (no start per epoch).
    One is enough: collating a batch takes milliseconds, and prefetching (2 batches) hides it. The sampler stays in
    the main process, so the order, and a resume's skip, are as without it. On the CPU the main process collates:
    a worker would take a core from the training threads."""
    if device.kind != "cuda":
        return {"dataloader_num_workers": 0}
    return {"dataloader_num_workers": 1, "dataloader_pin_memory": True, "dataloader_persistent_workers": True}


def _ddp_arguments(device: Device) -> dict[str, Any]:
    """Under torchrun: the process group's backend, and no search for unused parameters (every LoRA weight takes
    part in every forward; the search would cost a pass over the graph each step and breaks with checkpointing)."""
    if not ddp.initialised():
        return {}
    # the other ranks' library warnings would repeat rank 0's in the shared console.log
    return {"ddp_backend": ddp.backend(device.kind), "ddp_find_unused_parameters": False,
            "log_level_replica": "error"}


def _checkpointing_arguments(on: bool) -> dict[str, Any]:
    # non-reentrant: works with frozen inputs (LoRA) and keeps dropout's RNG, so the losses do not change.
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing; older 5.x has only the former.
    names = {f.name for f in fields(TrainingArguments)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    return {f"{prefix}_checkpointing": on, f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}}
