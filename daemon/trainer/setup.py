"""Builds the pieces of a run (tokenizer, data, model, callbacks, Trainer) and turns the Trainer's end into a result."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as hf_logging

from daemon.core import auto
from daemon.core.as_trained import adapter_token_rows
from daemon.core.atomic import write_json
from daemon.core.datasets import PROMPT_SCHEMAS, TEXT_SCHEMAS, ExampleKind, kind_of
from daemon.core.probes import early_stopping_inert, held_out_count, no_eval_split, probe_shortfall
from daemon.core.rundir import TRAINER_STATE, newest_complete, step_of
from daemon.core.options import LiveSetting
from daemon.core.preflight import Shape, Sizing, plan_memory
from daemon.core.states import Outcome, Phase
from daemon.trainer import ddp, objectives, trackers
from daemon.core.tokenbatches import Budget
from daemon.trainer.batching import padding_line
from daemon.trainer.board import Board
from daemon.trainer.callbacks import CheckpointCallback, CommandCallback, Progress, ReportCallback, RunStatus
from daemon.trainer.rung import rung_callback
from daemon.trainer.config import RunError, TrainOptions
from daemon.trainer.console import say
from daemon.trainer.sequences import Prepared
from daemon.trainer.diskspace import DiskSpaceCallback
from daemon.trainer.finish import model_card, save_adapter
from daemon.trainer.objectives import Objective
from daemon.trainer.model import (Device, add_lora, add_template_tokens, choose_attention, continue_lora,
                                  fit_embeddings, load_model, load_tokenizer, trainable_summary)
from daemon.trainer.session import Session, planned_steps

if TYPE_CHECKING:
    from daemon.trainer.commands import Commands


class EarlyStopping(EarlyStoppingCallback):
    """transformers' early stopping, minus its warning about load_best_model_at_end.

    That option would look for the best `checkpoint-N` folder, which our checkpoints no longer are once renamed
    `step-N`; `Built.finish` loads the best checkpoint's adapter itself. `objectives.sft.training_arguments` always sets the
    metric and the eval interval this callback needs.
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        return None


@dataclass
class Built:
    """Everything a run needs to make a Trainer (again, after an out-of-memory retry)."""

    session: Session
    device: Device
    source: str
    tokenizer: Any
    data: Prepared
    progress: Progress
    commands: "Commands"
    attention: str = "sdpa"
    batching: str = "padded"
    opts: TrainOptions | None = None  # the options as planned for the first attempt (checkpointing decided)
    new_tokens: list[int] = field(default_factory=list)  # special tokens the chat template added
    model: Any = None
    status: RunStatus = field(default_factory=RunStatus)
    extra_callbacks: list[TrainerCallback] = field(default_factory=list)
    board: Board | None = None  # the run's TensorBoard event files
    stops: list[int] = field(default_factory=list)  # what generation stops on (`stop_ids`), once the model is loaded
    _trainer: Trainer | None = None
    _initial_adapter: dict[str, Any] = field(default_factory=dict)

    def budget(self, opts: TrainOptions | None = None) -> Budget | None:
        """The attempt's token budget (its options as planned: batch_tokens decided, 0 when off)."""
        tokens = (opts or self.opts or self.session.cfg.options).batch_tokens
        return Budget(tokens, self.batching, self.device.kind == "cuda") if isinstance(tokens, int) and tokens else None

    def planned_steps(self, opts: TrainOptions) -> int:
        """The optimizer steps this attempt's options take (session.planned_steps, with its token budget)."""
        budget = self.budget(opts)
        batches = len(budget.batches(self.data.train.lengths(), opts.seed)) if budget else None
        return planned_steps(len(self.data.train), opts, batches)

    def load(self) -> None:
        """Load the base model and add a fresh (seeded) LoRA adapter."""
        cfg = self.session.cfg
        base = load_model(self.source, self.device, cfg.options, self.attention)
        self.stops = stop_ids(self.tokenizer, self.session.chat, base.generation_config.eos_token_id)
        base.generation_config.eos_token_id = self.stops  # the adapter's generation_config.json: ask and export stop
        fit_embeddings(base, self.tokenizer)
        if cfg.init_adapter:
            _check_parent_rows(cfg.init_adapter, self.new_tokens, self.tokenizer)
        self.model = (continue_lora(base, cfg.init_adapter, cfg.options) if cfg.init_adapter else
                      add_lora(base, cfg.options, self.new_tokens))
        from peft import get_peft_model_state_dict

        self._initial_adapter = {k: v.detach().to("cpu", copy=True)
                                 for k, v in get_peft_model_state_dict(self.model).items()}

    def restart_adapter(self) -> None:
        """Before an out-of-memory retry: the Trainer goes (its optimizer state and batches with it), the model stays
        loaded (a 4-bit base is not quantised again) with its adapter back at its initial weights; a retry from a
        checkpoint then loads that checkpoint's adapter over them."""
        from peft import set_peft_model_state_dict

        self._trainer = None
        self.model.zero_grad(set_to_none=True)
        # accelerate wrapped forward in an autocast for the failed attempt's Trainer; the next one wraps it again
        for name in ("forward", "_original_forward"):
            self.model.__dict__.pop(name, None)
        set_peft_model_state_dict(self.model, self._initial_adapter)

    def make_trainer(self, opts: TrainOptions) -> Trainer:
        """This attempt's Trainer: the objective's own (arguments, collator, loss) with overnight's callbacks."""
        paths = self.session.cfg.paths
        callbacks: list[TrainerCallback] = [
            ReportCallback(paths.metrics, self.progress, self.status, say, self.board,
                           tokens=lambda: ddp.total(self._trainer.tokens_real if self._trainer else 0)),
            *filter(None, [rung_callback(self.session.cfg.file.options, self.commands, self.data.eval is not None,
                                         say)]),  # before CommandCallback: it saves the rung's checkpoint
            CommandCallback(self.commands, self.progress, self.status, self._nonfinite, say),
            # min_free_gb is live: read from the home's overnight.toml (runs/RUN is in the home) at each check
            DiskSpaceCallback(paths.checkpoints, LiveSetting(paths.root.parent.parent / "overnight.toml", "min_free_gb",
                                                             say), self.commands, self.progress, self.status, say),
            CheckpointCallback(paths.checkpoints, opts.keep_checkpoints, self.status, self.progress, say),
            *self.extra_callbacks,
        ]
        if opts.early_stopping_patience > 0 and self.data.eval is not None:
            callbacks.append(EarlyStopping(early_stopping_patience=opts.early_stopping_patience))
        self._trainer = self.session.objective.trainer(self, opts, callbacks)
        trackers.guard(self._trainer, say)  # report_to: a tracker that raises never stops the run
        self._trainer.remove_callback(PrinterCallback)  # ReportCallback writes our own progress lines
        return self._trainer

    def trainer_at(self, folder: Path, opts: TrainOptions) -> Trainer:
        """A Trainer standing at a checkpoint of the run's last step, for finish(): its state and adapter weights
        loaded, nothing left to train."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import TrainerState

        trainer = self.make_trainer(opts)
        trainer.state = TrainerState.load_from_json(str(folder / TRAINER_STATE))
        set_peft_model_state_dict(self.model, load_file(str(folder / "adapter_model.safetensors")))
        self.status.last_loss = next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None)
        return trainer

    def _nonfinite(self) -> bool:
        return self._trainer is not None and self._trainer.loss_nonfinite()

    def finish(self, trainer: Trainer) -> None:
        """Decide the outcome from how training ended; on completion save adapter/ with its model card."""
        s, state = self.session, trainer.state
        paths, opts, result = s.cfg.paths, s.cfg.options, s.result
        if self.board is not None:
            self.board.close()  # the last snapshot is in: the event files are complete
        result.step, result.max_steps = state.global_step, state.max_steps
        # every rank's tokens (collective calls under torchrun: before anything only rank 0 does)
        result.tokens_seen, result.tokens_computed = ddp.total(trainer.tokens_real), ddp.total(trainer.tokens_computed)
        if self.device.kind == "cuda":
            result.peak_gpu_memory = torch.cuda.max_memory_allocated()
        result.final_loss, result.eval_loss = self.status.last_loss, self.status.last_eval_loss
        best = self.status.best_step or state.best_global_step
        result.best_checkpoint = paths.checkpoint(best).name if best and paths.checkpoint(best).is_dir() else None
        newest = newest_complete(paths.checkpoints)
        result.last_checkpoint = newest.name if newest else None
        if self.status.nonfinite_step is not None:
            kept = f"the last good checkpoint {newest.name} is kept" if newest else "no checkpoint was saved before it"
            result.outcome = Outcome.FAILED
            result.reason = (f"loss became NaN/inf by step {self.status.nonfinite_step}; {kept}. Fix: lower "
                             f"learning_rate (now {opts.learning_rate}) or check the data, then resume or re-run.")
            return
        finished = state.global_step >= state.max_steps
        if self.commands.stop.is_set() and not finished:  # a stop that came after the last step changes nothing
            result.outcome, result.reason = Outcome.STOPPED, self.commands.stop_reason
            return
        note = None
        if not finished:
            note = f"Early stopping: eval loss stopped improving at step {state.global_step}."
            if result.best_checkpoint:
                self._load_best(paths.checkpoints / result.best_checkpoint)
                result.eval_loss, result.adapter_step = state.best_metric, step_of(result.best_checkpoint)
                note += f" The adapter holds the best checkpoint, {result.best_checkpoint}."
            result.reason = note
        if s.cfg.schema in PROMPT_SCHEMAS and not s.prompt_chat:  # a chat server would prompt it another way
            note = ((note + "\n\n") if note else "") + (
                "Trained on raw prompts (prompt_format raw): send the prompt as plain text (tokenizer(prompt)), not "
                "through the tokenizer's chat template, which this adapter never trained with.")
        card = model_card(run_id=s.cfg.run_id, base_model=opts.base_model, dataset=s.cfg.dataset_path,
                          schema=s.cfg.schema, steps=state.global_step, final_loss=result.final_loss,
                          eval_loss=result.eval_loss, note=note,
                          options={**s.cfg.file.options, "objective": s.objective.name})  # "auto" resolved
        self.progress.update(Phase.SAVING)
        if ddp.is_main():
            save_adapter(self.model, paths.adapter, card, self.tokenizer)
        result.outcome, result.adapter = Outcome.COMPLETED, str(paths.adapter)
        say(f"adapter saved to {paths.adapter}")

    def _load_best(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(folder / "adapter_model.safetensors"))
        set_peft_model_state_dict(self.model, weights)
        say(f"loaded the best checkpoint's adapter weights from {folder.name}")


def _check_parent_rows(parent: Path, new_tokens: list[int], tokenizer: Any) -> None:
    """The adapter a run continues from carries rows for exactly the tokens this run's chat template added (the
    queue refuses another template than the parent's; this catches a parent that added none, or another base)."""
    rows = adapter_token_rows(parent)
    if rows == sorted(new_tokens):
        return
    names = ", ".join(tokenizer.convert_ids_to_tokens(sorted(set(new_tokens) ^ set(rows))))
    raise RunError(f"the adapter this run continues from carries embedding rows for {len(rows)} added token(s) and "
                   f"this run's chat template needs {len(new_tokens)} ({names} differ): a continuation must train "
                   f"through its parent's chat template. Fix: remove chat_template from the sidecar (the parent's is "
                   f"taken over), or remove init_adapter to train a fresh adapter with this template.")


def build_everything(s: Session, source: str, device: Device, stats: dict[str, Any], progress: Progress,
                     commands: "Commands") -> Built:
    """Tokenizer, tokenised data (+ stats.json), probes, then the base model with its LoRA adapter."""
    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()
    opts = s.cfg.options
    tokenizer = load_tokenizer(source, opts.trust_remote_code)
    if s.chat is not None:  # probes, the adapter folder and export render with the template the run trains with
        tokenizer.chat_template = s.chat.template
    # a template the user chose may need tokens the base lacks (a model's own is trusted to have them); plain text
    # trains through no template: nothing to add
    # (a continuation adds its parent's, whose rows the adapter it loads carries)
    parent_rows = bool(s.cfg.init_adapter and adapter_token_rows(s.cfg.init_adapter))
    chosen = opts.chat_template != "auto" and (s.cfg.schema not in TEXT_SCHEMAS or parent_rows)
    new_tokens = add_template_tokens(tokenizer, s.chat) if chosen else []
    if new_tokens:
        say(f"chat template: added the special tokens {', '.join(tokenizer.convert_ids_to_tokens(new_tokens))} the "
            f"base model lacks; their embeddings are trained and the adapter carries them")
    s.objective = choose_objective(s)
    data = _prepare_data(s, tokenizer, stats)
    _say_missing_eval(s, data)
    attention, why = choose_attention(opts.attn_implementation, device)
    say(f"attention: {attention} ({why})")
    batching, batching_why = auto.batching(opts.batching, data.kind, attention)
    free = torch.cuda.mem_get_info()[0] if device.kind == "cuda" else None  # before the model takes its share
    built = Built(s, device, source, tokenizer, data, progress, commands, attention=attention, batching=batching,
                  new_tokens=new_tokens, board=Board(s.cfg.paths.tensorboard, say))
    if commands.sync().stop:
        return built
    built.load()
    lora = (f"the adapter of {s.cfg.parent} (its own rank and targets), trainable" if s.cfg.init_adapter else
            f"LoRA r={opts.lora_r} alpha={opts.lora_alpha} dropout={opts.lora_dropout} targets={opts.lora_targets}")
    say(f"model: {source}{_quantized(opts, device)} with {lora}; {trainable_summary(built.model)}")
    planned = plan_options(opts, device, built.model.config.to_dict(), max(data.train.lengths()), free,
                           s.objective, batch_size_set=s.cfg.file.sources.get("batch_size", "default") != "default")
    # under torchrun every rank trains rank 0's plan (their GPUs' free memory may differ by a few MB)
    built.opts = ddp.from_main(planned)
    budget = built.budget()
    say(f"batching: {batching.replace('_', '-')} ({batching_why}); one epoch: "
        f"{padding_line(batching, data.train, opts.batch_size, opts.max_length, opts.seed, budget)}")
    if opts.report_to:
        built.opts = replace(built.opts, report_to=trackers.available(opts.report_to, s.cfg.paths.root, say))
    steps = built.planned_steps(built.opts)
    if data.eval is not None:
        inert = early_stopping_inert(opts.early_stopping_patience, opts.save_every, steps)
        if inert:
            say(f"eval: {inert}")
    evolution = _evolution_callback(s, built, steps)
    if evolution is not None:
        built.extra_callbacks.append(evolution)
    return built


def stop_ids(tokenizer: Any, chat: Any, model_eos: int | list[int] | None = None) -> list[int]:
    """What generation stops on: the end-of-turn tokens of the chat template (a ChatML template on a model whose eos
    is <|endoftext|> ends turns with <|im_end|>), the tokenizer's eos, and those the base model's generation config
    stops on (`model_eos`: Llama 3.1 ends a tool call's turn with <|eom_id|>)."""
    specials = [t.content for t in tokenizer.added_tokens_decoder.values()]
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (chat.stop_strings(specials) if chat else [])]
    listed = model_eos if isinstance(model_eos, list) else [model_eos]
    return sorted({i for i in [*ids, tokenizer.eos_token_id, *listed] if isinstance(i, int)})


def _quantized(opts: TrainOptions, device: Device) -> str:
    if opts.quantization == "4bit":
        return f" (4-bit nf4, double quantisation, {str(device.dtype).removeprefix('torch.')} compute)"
    return " (8-bit)" if opts.quantization == "8bit" else ""


def plan_options(opts: TrainOptions, device: Device, config: dict[str, Any], longest: int,
                 free_bytes: int | None, objective: Objective, *, batch_size_set: bool = False) -> TrainOptions:
    """Decide what "auto" and the GPU-only options mean on this device (the memory plan: checkpointing, the
    micro-batch and accumulation); log each decision with its reason. The objective says how many sequences each
    example puts through the model (DPO's chosen and rejected) and whether it batches by tokens."""
    liger, why = auto.liger(opts.use_liger_kernel, device.kind == "cuda", auto.liger_installed())
    say(f"Liger kernels: {'on' if liger else 'off'} ({why})")
    plan = plan_memory(Shape.from_config(config), free_bytes, Sizing(
        opts.gradient_checkpointing, opts.batch_tokens, opts.batch_size, opts.grad_accum,
        min(longest, opts.max_length), opts.lora_r, opts.quantization, device.dtype.itemsize, liger,
        batch_size_set=batch_size_set, rows=objective.rows, budgets=objective.name == "sft"))
    say(f"gradient checkpointing: {'on' if plan.checkpointing else 'off'} ({plan.checkpointing_why})")
    say(f"batches: {plan.batch_line()}")
    if opts.torch_compile:
        say("torch.compile: on (set in the options; the first two batch shapes compile first, later ones reuse "
            "the second's dynamic-shape graph)")
    if opts.optim.startswith("paged_") and device.kind != "cuda":
        raise RunError(f"optim = \"{opts.optim}\" pages optimizer state through CUDA memory, and this run is on "
                       f"the CPU. Fix: use optim = \"adamw_torch\" on the CPU, or run on a GPU.")
    say(f"optimizer: {opts.optim}, lr {opts.learning_rate:g} ({opts.lr_scheduler}, warmup {opts.warmup_ratio:g} of "
        f"the steps), weight_decay {opts.weight_decay:g}, max_grad_norm {opts.max_grad_norm:g}"
        + ("; Liger kernels on" if liger else ""))
    return replace(opts, gradient_checkpointing=plan.checkpointing, use_liger_kernel=liger,
                   batch_tokens=plan.batch_tokens, batch_size=plan.batch_size, grad_accum=plan.grad_accum)


def _prepare_data(s: Session, tokenizer: Any, stats: dict[str, Any]) -> Prepared:
    from daemon.core.datasets import DatasetError

    _check_bytes(s.cfg)
    try:
        return _tokenise(s, tokenizer, stats)
    except DatasetError as e:  # the daemon validated the file; it changed or is damaged since
        raise RunError(str(e)) from None


def _check_bytes(cfg: Any) -> None:
    """The bytes trained are the bytes validated: a dataset changed after intake fails the run, with the fix."""
    from daemon.core.fsutil import sha256_file

    want = cfg.file.dataset.get("sha256")
    if want and sha256_file(cfg.dataset_path) != want:
        raise RunError(f"{cfg.dataset_path}: changed since it was validated (its sha256 differs from config.json's), "
                       f"so lines that were never checked would be trained. Fix: drop the finished file again "
                       f"(overnight add FILE, or mv it into the inbox once it is complete).")


def choose_objective(s: Session) -> Objective:
    """The run's objective: `objective` as set, or from the kind of its examples ("auto", daemon/core/auto.py), known
    from the schema the intake recorded (no need to read the dataset for it; `check` decides from the same)."""
    try:
        name, why = auto.objective(s.cfg.options.objective, kind_of(s.cfg.schema))
    except ValueError as e:  # intake refuses such a drop; a config.json edited since is told the same way
        raise RunError(str(e)) from None
    say(f"objective: {name} ({why})")
    return objectives.for_name(name)


def _tokenise(s: Session, tokenizer: Any, stats: dict[str, Any]) -> Prepared:
    """The splits, tokenised once per run: rank 0 tokenises (or reads tokens.npz), the other ranks read its file."""
    from daemon.trainer import token_cache

    cfg, opts = s.cfg, s.cfg.options
    if s.objective.name != "sft":  # preference pairs are not kept in tokens.npz (yet): each process encodes them
        data = s.objective.encode(s, tokenizer, stats)
        if ddp.is_main():
            write_json(cfg.paths.stats, {**stats, **data.stats, "objective": s.objective.name})
        return data
    cache_key = token_cache.key(cfg, tokenizer, s.chat, s.prompt_chat)
    data = token_cache.load(cfg.paths.tokens, cache_key) if ddp.is_main() else None
    if data is not None:
        say(f"data: read the tokenised splits from {cfg.paths.tokens.name} (tokenised once for this run)")
    elif ddp.is_main():
        started = time.perf_counter()
        data = s.objective.encode(s, tokenizer, stats)
        say(f"data: tokenised in {time.perf_counter() - started:.1f} s; kept in {cfg.paths.tokens.name} for a "
            f"resume" + (" and the other ranks" if ddp.distributed() else ""))
        try:
            token_cache.save(cfg.paths.tokens, cache_key, data)
        except OSError as e:  # a full disk: a resume tokenises again, nothing else is lost
            say(f"data: could not keep the tokens ({e.strerror or e}); a resume tokenises again")
    ddp.barrier()
    if data is None:  # another rank: rank 0's file (it tokenises again itself only if that file is missing)
        data = token_cache.load(cfg.paths.tokens, cache_key) or s.objective.encode(s, tokenizer, stats)
    if ddp.is_main():
        write_json(cfg.paths.stats, {**stats, **data.stats, "objective": s.objective.name})
    t, sp, seqs = data.stats["tokens"], data.stats["split"], data.stats["sequences"]
    say(f"data: {data.kind} examples; records train {sp['train']}, eval {sp['eval']}, probes {sp['probes']}; "
        f"sequences train {seqs['train']}, eval {seqs['eval']}; tokens per record min {t['min']} p50 {t['p50']} "
        f"p95 {t['p95']} max {t['max']}{' or more' if data.stats.get('counted_in_part') else ''}; "
        f"{data.stats['truncated']} truncated at max_length {opts.max_length}")
    return data


def _records_split(s: Session, data: Prepared) -> tuple[int, int]:
    """(the dataset's records, those the probe hold-out set aside before the eval split was drawn): the split's
    parts add up to the records (a held-out record that could be no probe trains), whatever stats.json was told."""
    split = data.stats["split"]
    records = split["train"] + split["eval"] + (split["probes"] if s.cfg.probes_path is None else 0)
    held = held_out_count(records, s.cfg.options.probe_count) if s.cfg.probes_path is None else 0
    return records, held


def _say_missing_eval(s: Session, data: Prepared) -> None:
    """A run without an eval split says why, and what it loses (its eval loss, early stopping): `records train 18,
    eval 0` alone left early_stopping_patience silently off."""
    opts, split = s.cfg.options, data.stats["split"]
    if split["eval"] and data.eval is None:
        say(f"eval: its {split['eval']} eval record(s) left no sequence to score (cut to max_length "
            f"{opts.max_length}, nothing of their answers was left): no eval loss"
            + (f"; early_stopping_patience = {opts.early_stopping_patience} is off"
               if opts.early_stopping_patience else ""))
        return
    if split["eval"]:
        return
    records, held = _records_split(s, data)
    why = no_eval_split(records, opts.eval_fraction, held, opts.early_stopping_patience)
    if why:
        say(f"eval: {why}")


def _evolution_callback(s: Session, built: Built, steps: int) -> TrainerCallback | None:
    from daemon.core.evolution import no_probes, resolve_probe_every
    from daemon.trainer.snapshots import EvolutionCallback

    opts, data = s.cfg.options, built.data
    if not data.probes:
        # the words `overnight evolution` says it in (the reason, from what the run was given and held out)
        why = no_probes(s.cfg.paths.root) if ddp.is_main() else None
        say(f"evolution: {why.removeprefix('this run has ')}" if why else
            "evolution: no probes (plain text has no question to ask; drop NAME.probes.jsonl beside the dataset "
            "to watch some)" if data.kind == ExampleKind.TEXT else "evolution: no probes (probe_count = 0 and no probe file)")
        return None
    every, budget = resolve_probe_every(opts.probe_every, steps)
    short = probe_shortfall(_records_split(s, data)[0], opts.probe_count) if s.cfg.probes_path is None else None
    say(f"evolution: {len(data.probes)} probe(s), a snapshot every {every} steps"
        + (f" (thinned to stay under {budget:.0%} of the training time, never below 5 a run)" if budget else "")
        + (f"; {short}" if short else ""))
    callback = EvolutionCallback(data.probes, built.tokenizer, s.cfg.paths.evolution, every,
                                 max_new_tokens=opts.probe_max_new_tokens, log=say, max_overhead=budget,
                                 max_length=opts.max_length, stop_ids=built.stops, board=built.board)
    _fit_answers(callback, opts, built.stops, s.cfg.paths.stats, budgeted=budget is not None)
    return callback


def _fit_answers(callback: Any, opts: TrainOptions, stops: list[int], stats_path: Path, budgeted: bool) -> None:
    """Probes whose reference is longer than probe_max_new_tokens could never be answered word for word. With the
    automatic interval (probe_every = 0) each snapshot generates as far as the longest reference needs (+ a
    margin, at most max_length): the budget measures each snapshot's cost and spaces them out, so they stay within
    their share of the training time. A fixed probe_every has no budget: the answers stay cut at
    probe_max_new_tokens, and the console says which probes can then never be exact."""
    from daemon.trainer.report import answer_budget

    # a preference probe is judged by its margin, not by what it generates
    floor, cap = opts.probe_max_new_tokens, opts.max_length
    needs = {enc.probe["id"]: answer_budget(enc, stops, floor, cap) for enc in callback.encoded
             if enc.probe.get("kind") is None}
    longer = sorted(i for i, n in needs.items() if n > floor)
    if longer and budgeted:
        callback.max_new_tokens = max(needs[i] for i in longer)
        say(f"evolution: {len(longer)} probe reference(s) longer than probe_max_new_tokens = {floor} tokens: "
            f"snapshots generate up to {callback.max_new_tokens} tokens so that they can be answered in full (the "
            f"snapshot budget spaces the snapshots out to pay for it)")
    cut = [] if budgeted else longer
    _note_cut(stats_path, floor, cut)
    if cut:
        ids = ", ".join(str(i) for i in cut[:10]) + (", …" if len(cut) > 10 else "")
        say(f"evolution: the answers of {len(cut)} probe(s) ({ids}) are cut at {floor} tokens "
            f"(probe_max_new_tokens), shorter than their references: they can never be exact. Fix: set "
            f"probe_max_new_tokens = {max(needs[i] for i in cut)}, or probe_every = 0 (the automatic interval "
            f"generates them in full)")


def _note_cut(stats_path: Path, tokens: int, probes: list[int]) -> None:
    """stats.json says which probes' answers are cut short of their references (`overnight evolution` marks them);
    a run whose answers are whole again (a resume with other options) drops the note."""
    from daemon.core.atomic import read_json
    from daemon.core.evolution import ANSWERS_CUT

    if not ddp.is_main():
        return
    stats = read_json(stats_path, {}) or {}
    if not probes and ANSWERS_CUT not in stats:
        return
    note = {ANSWERS_CUT: {"tokens": tokens, "probes": probes}} if probes else {}
    write_json(stats_path, {**{k: v for k, v in stats.items() if k != ANSWERS_CUT}, **note})
