"""Run options: a typed schema, defaults < overnight.toml < sidecar, with where each value came from."""
from __future__ import annotations

import difflib
import json
import math
import os
import threading
import tomllib
import unicodedata
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from daemon.core.errors import OptionsError
from daemon.core.evalreport import RANKINGS
from daemon.core.search import SAMPLERS, check_range, check_search
from daemon.core.fsutil import MODEL_NAME_RULE, file_version, model_name, model_name_problem, suggested_model_name


@dataclass(frozen=True)
class Option:
    """One option: its type, default, allowed values and whether only the machine owner may set it."""

    name: str
    kind: type | tuple[type, ...]
    default: Any
    help: str
    check: Callable[[Any], bool] = lambda v: True
    allowed: str = ""
    owner_only: bool = False
    # A table's own validation (raises OptionsError naming the key inside the table and the fix); replaces `check`.
    validate: Callable[[Path | str, Any], None] | None = None
    # Kept out of a run's config.json (it may hold secrets, e.g. notification URLs with tokens).
    private: bool = False
    sweep: bool = False  # a list in a sidecar queues one run per value (daemon/core/sweep.py)
    trainer: bool = False  # the trainer reads it: TrainOptions (daemon/trainer/config.py) has a field for it
    normal: Callable[[Any], Any] | None = None  # the stored form of a valid value (e.g. a name in NFC)
    # When a value applies (one value per option, never two): False, fixed when the drop is queued (the run's
    # config.json records it and wins everywhere: the trainer, export, a resume); True, read live from overnight.toml
    # by every process that needs it, each time it needs it (the run's config.json leaves it out).
    live: bool = False


# An option the trainer reads as well as the daemon: declaring it is all it takes to reach the trainer (fixed when
# queued: the trainer reads it from the run's config.json).
Train = partial(Option, trainer=True)
# An owner-only option read live from overnight.toml by every process (the daemon, the trainer, the CLI).
Live = partial(Option, owner_only=True, live=True)


def _rng(lo: float, hi: float, lo_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: (lo < v if lo_open else lo <= v) and v <= hi and not (isinstance(v, float) and math.isnan(v))


QUANTIZATIONS = ("none", "4bit", "8bit")
SELECTS = ("none", "best")
PRUNES = ("none", "asha")
BATCHINGS = ("auto", "padding_free", "length_grouped", "padded")
ATTENTIONS = ("auto", "sdpa", "eager", "flash_attention_2", "flex_attention")
PROMPT_FORMATS = ("auto", "chat", "raw")
OBJECTIVES = ("auto", "sft", "dpo", "kto")
TRACKERS = ("trackio", "mlflow", "wandb")  # report_to: the Trainer's integrations overnight sets up
# TRL 1.16 DPOConfig's loss_type names; ORPO, SimPO and CPO live in trl.experimental and are not offered.
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
EXPERIMENTAL_LOSSES = ("orpo", "simpo", "cpo")
# transformers' SchedulerType and OptimizerNames (5.x), copied so the daemon validates without importing torch;
# tests/test_options.py fails when they drift from the installed transformers.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "adamw_anyprecision", "adamw_torch_4bit",
              "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit", "adamw_8bit", "ademamix_8bit",
              "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit",
              "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb",
              "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "grokadamw", "schedule_free_radam", "schedule_free_adamw",
              "schedule_free_sgd", "stable_adamw")


def _choices(values: tuple[str, ...]) -> str:
    return "one of " + ", ".join(f'"{v}"' for v in values)


OPTIONS: dict[str, Option] = {o.name: o for o in [
    Train("base_model", (str, list), None, "base model: a local folder or an HF cache name, or a list of them",
          lambda v: (isinstance(v, str) and bool(v.strip())) or
          (isinstance(v, list) and bool(v) and all(isinstance(x, str) and x.strip() for x in v)),
          "a non-empty string or a non-empty list of strings"),
    Train("epochs", (int, float), 3.0, "passes over the training data", _rng(0, 1000, True), "> 0 and <= 1000",
          sweep=True),
    Train("max_steps", int, 0, "optimizer steps; wins over epochs when > 0", _rng(0, 10**9), "0 (use epochs) .. 1e9",
          sweep=True),
    Train("learning_rate", (int, float), 2e-4, "peak learning rate", _rng(0, 1, True), "> 0 and <= 1", sweep=True),
    Train("batch_size", int, 8, "micro-batch size per device", _rng(1, 4096), "1 .. 4096", sweep=True),
    Train("batch_tokens", (str, int), "auto", "tokens per micro-batch (a token budget instead of batch_size; auto: "
          "on a GPU sized by the memory plan unless batch_size is set, off on the CPU)",
          lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 64 <= v <= 1 << 24),
          '"auto" or a number of tokens, 64 .. 16777216', sweep=True),
    Train("grad_accum", int, 1, "gradient accumulation steps", _rng(1, 4096), "1 .. 4096", sweep=True),
    Train("max_length", int, 1024, "tokens per example (longer ones are truncated)", _rng(8, 1 << 20), "8 .. 1048576",
          sweep=True),
    Option("allow_truncation", bool, False, "take a drop even when max_length would leave more than half its records "
           "with nothing of their answer to learn (they are dropped from training)"),
    Train("chat_template", str, "auto", 'the chat template chat data is trained with: "auto" (the model\'s own, or '
          'its training version), a family name (chatml, llama3, qwen2_5, qwen3, gemma, mistral, phi3, …) or a '
          '.jinja file', lambda v: bool(v.strip()), '"auto", a family name or the path of a .jinja file'),
    Train("prompt_format", str, "auto", 'how prompt/completion and alpaca records are shown to the model: "auto" '
          '(as one chat exchange when the run has a chat template), "chat" (always; needs a template) or "raw" '
          '(prompt text + answer)', lambda v: v in PROMPT_FORMATS, _choices(PROMPT_FORMATS)),
    Train("objective", str, "auto", 'what the run optimises: "auto" (from the dataset: preference pairs train with '
          'DPO, labelled completions with KTO, everything else with SFT), "sft", "dpo" or "kto"',
          lambda v: v in OBJECTIVES, _choices(OBJECTIVES)),
    Train("beta", (int, float), 0.1, "DPO/KTO: how far the policy may move from the reference model (higher: "
          "closer)", _rng(0, 1e6, True), "> 0", sweep=True),
    Train("loss_type", str, "sigmoid", "DPO's loss (TRL's DPOConfig names)", allowed=_choices(DPO_LOSS_TYPES),
          validate=lambda source, v: _check_loss_type(source, v), sweep=True),
    Train("lora_r", int, 16, "LoRA rank", _rng(1, 1024), "1 .. 1024", sweep=True),
    Train("lora_alpha", (int, float), 32, "LoRA alpha", _rng(0, 1e6, True), "> 0", sweep=True),
    Train("lora_dropout", (int, float), 0.0, "LoRA dropout (0: PEFT's default, and no extra kernels per step)",
          lambda v: 0 <= v < 1, ">= 0 and < 1", sweep=True),
    Train("lora_targets", (str, list), "all-linear", "modules LoRA adapts",
          lambda v: (isinstance(v, str) and bool(v)) or (isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)),
          '"all-linear" or a list of module names such as ["q_proj", "v_proj"]'),
    Train("seed", int, 42, "random seed (data order, LoRA init, dropout)", _rng(0, 2**32 - 1), "0 .. 4294967295",
          sweep=True),
    Train("eval_fraction", (int, float), 0.05, "held-out share of records for eval loss", _rng(0, 0.5), "0 .. 0.5"),
    Train("early_stopping_patience", int, 0, "evals without improvement before stopping; 0 = off", _rng(0, 10**6), "0 .. 1e6"),
    Train("log_every", int, 10, "steps between metric records", _rng(1, 10**6), "1 .. 1e6"),
    Train("save_every", int, 200, "steps between checkpoints (and eval)", _rng(1, 10**9), "1 .. 1e9"),
    Train("probe_every", int, 0, "steps between evolution snapshots; 0 = about 20 per run", _rng(0, 10**9), "0 (auto) .. 1e9"),
    Train("probe_count", int, 8, "probes held out when no probe file is given", _rng(0, 256), "0 .. 256"),
    Train("probe_max_new_tokens", int, 32, "tokens generated per probe", _rng(1, 4096), "1 .. 4096"),
    Train("quantization", str, "none", "load the base model quantised (QLoRA through bitsandbytes)",
          lambda v: v in QUANTIZATIONS, _choices(QUANTIZATIONS), sweep=True),
    Train("gradient_checkpointing", (str, bool), "auto",
          "recompute activations in the backward pass (less memory, ~30% more compute)",
          lambda v: v == "auto" or isinstance(v, bool), '"auto", true or false', sweep=True),
    Train("batching", str, "auto", "how prompt and chat examples are batched (text blocks are always full)",
          lambda v: v in BATCHINGS, _choices(BATCHINGS), sweep=True),
    Train("attn_implementation", str, "auto", "the attention kernel",
          lambda v: v in ATTENTIONS, _choices(ATTENTIONS), sweep=True),
    Train("lr_scheduler", str, "linear", "learning-rate schedule (the Trainer's names)",
          lambda v: v in LR_SCHEDULERS, _choices(LR_SCHEDULERS), sweep=True),
    Train("warmup_ratio", (int, float), 0.0, "share of the steps spent warming the learning rate up",
          lambda v: 0 <= v < 1, ">= 0 and < 1", sweep=True),
    Train("weight_decay", (int, float), 0.0, "AdamW weight decay", _rng(0, 1), "0 .. 1", sweep=True),
    Train("max_grad_norm", (int, float), 1.0, "gradient clipping norm; 0 = off", _rng(0, 1e6), "0 .. 1e6", sweep=True),
    Train("optim", str, "adamw_torch_fused", "optimizer (the Trainer's names, e.g. paged_adamw_8bit with QLoRA)",
          lambda v: v in OPTIMIZERS, _choices(OPTIMIZERS), sweep=True),
    Train("use_liger_kernel", (bool, str), "auto", "Liger's Triton kernels, whose fused loss never builds the logits "
          "(auto: on with a CUDA GPU and liger-kernel installed, which overnight[gpu] brings)",
          lambda v: v == "auto" or isinstance(v, bool), '"auto", true or false', sweep=True),
    Train("torch_compile", bool, False, "compile the model with torch.compile (faster steps after a warm-up of a "
          "few minutes; the second batch shape compiles once more, with dynamic sizes)", sweep=True),
    Option("init_adapter", str, None, "continue from an adapter: a registered model (NAME or NAME:VERSION) or a "
           "folder", lambda v: bool(v.strip()), "a model name, NAME:VERSION, or the path of an adapter folder"),
    Option("priority", int, 0, "queue priority; higher runs first", _rng(-10**6, 10**6), "-1000000 .. 1000000"),
    Option("name", str, None, "model name (default: the dataset's file stem)", allowed=MODEL_NAME_RULE,
           validate=lambda source, v: _check_name(source, v), normal=model_name),
    Option("select", str, "none", 'after a sweep or a base_model list: "best" activates the best version of the group',
           lambda v: v in SELECTS, _choices(SELECTS)),
    Option("prune", str, "none", 'a sweep\'s pruning: "asha" stops the worse trials at rungs (checkpoint kept)',
           lambda v: v in PRUNES, _choices(PRUNES)),
    Option("eta", int, 3, "ASHA: of n trials at a rung the best n/eta go on", _rng(2, 100), "2 .. 100"),
    Option("prune_rungs", int, 2, "ASHA: rungs before the end, at 1/eta^k of each trial's steps", _rng(1, 10),
           "1 .. 10"),
    Option("min_steps", int, None, "ASHA: the first rung's step (then eta times further each); default: a share "
           "of each trial's steps", _rng(1, 10**9), "1 .. 1e9"),
    Option("search", str, "none", 'a sweep drawn by Optuna instead of a grid: "tpe" or "random" over the ranges '
           '(learning_rate = {low = 1e-5, high = 1e-3, log = true}) and lists of the sidecar', lambda v: v in SAMPLERS,
           _choices(SAMPLERS)),
    Option("trials", int, None, "a search's number of trials (runs), at most max_sweep_runs", _rng(1, 10**4),
           "1 .. 10000"),
    Option("select_metric", str, "eval_loss", 'what select = "best" ranks a group\'s versions by: "eval_loss", '
           'the eval report\'s "exact", "similarity", "rougeL" (higher is better) or "forgetting" (lower is better), '
           'or a DPO run\'s "reward_accuracy" (eval pairs whose chosen answer it prefers; higher is better)',
           lambda v: v in RANKINGS, _choices(tuple(RANKINGS))),
    Train("eval_file", str, None, "an eval file (JSONL: prompt + reference) every run is scored on at its end, "
          "unless NAME.eval.jsonl is dropped with its dataset or its parent had one; relative to the home",
          lambda v: bool(v.strip()), "the path of a .jsonl file", owner_only=True),
    Train("forgetting_sample", str, None, "general text whose loss before and after training is the forgetting "
          "score (default: a few KB of English prose shipped with overnight); relative to the home",
          lambda v: bool(v.strip()), "the path of a UTF-8 text file", owner_only=True),
    Train("forgetting_alarm", (int, float), 0.1, "a version is regressed when its general-text loss rises past this "
          "share of its parent's (else the base's), or when it gets wrong a probe or eval record its parent got right",
          _rng(0, 1e6), ">= 0 (0.1: 10% higher)", owner_only=True),
    Option("allow_regressed", bool, False, "let select = \"best\" and the automatic activation of a new version "
           "pick a regressed one"),
    Train("trust_remote_code", bool, False, "run a model's own Python code", owner_only=True),
    Train("report_to", list, [], "experiment trackers every run also logs to (the Trainer's report_to): "
          "trackio, mlflow (a sqlite store in the home), wandb (offline unless set otherwise)",
          lambda v: all(t in TRACKERS for t in v), 'a list of "trackio", "mlflow", "wandb" (e.g. ["mlflow"])',
          owner_only=True),
    Live("hooks", dict, {}, "commands run when a run ends or a drop is rejected ([hooks] on_complete / on_fail / "
         "on_reject)", allowed="a table with on_complete / on_fail / on_reject, each a list of strings",
         validate=lambda source, v: _check_hooks(source, v)),
    Live("hook_timeout_s", (int, float), 600, "seconds a hook may run before it is killed (its whole process group)",
         _rng(0, 10**6, True), "> 0"),
    Live("notify", dict, None, "notifications through apprise ([notify] urls = [...], on = [...])",
         allowed='a table: urls = ["ntfys://TOPIC", ...], on = ["failed", "completed", ...]',
         validate=lambda source, v: _check_notify(source, v), private=True),
    Train("keep_checkpoints", int, 2, "newest intermediate checkpoints kept (the best is kept too)", _rng(1, 10**6),
          "1 .. 1e6", owner_only=True),
    Live("stall_minutes", (int, float), 30, "minutes without a training step before a run is reported as stalled",
         _rng(0, 10**6, True), "> 0 (fractions allowed)"),
    Live("stall_action", str, "report", "what a stall does: report it, or restart the run from its last checkpoint",
         lambda v: v in ("report", "restart"), 'one of "report", "restart"'),
    Live("min_free_gb", (int, float), 1.0, "free disk space (GB) a checkpoint must leave; short of it the run pauses, "
         "and goes on by itself once there is room (the trainer reads the value anew at each check)", _rng(0, 10**6),
         "0 .. 1e6"),
    Live("gpus", (str, int, list), None, 'GPUs a run uses: "all", a count or a list of indices',
         lambda v: v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1) or
         (isinstance(v, list) and bool(v) and all(isinstance(x, int) and x >= 0 for x in v)),
         '"all", a positive count, or a list of GPU indices'),
    Live("gpus_per_run", int, None, "GPUs one run trains on (several: through torchrun); default all of gpus",
         _rng(1, 4096), "1 .. 4096"),
    Live("max_parallel_runs", int, None, "runs trained side by side (on the CPU each gets cores / N threads); "
         "default one per GPU set, one on the CPU", _rng(1, 4096), "1 .. 4096"),
    Option("max_sweep_runs", int, 16, "the most runs one sidecar's sweep (lists of values) may queue", _rng(1, 10**4),
           "1 .. 10000", owner_only=True),
]}

HOOK_EVENTS = ("on_complete", "on_fail", "on_reject")


def _check_hooks(source: Path | str, table: dict[str, Any]) -> None:
    """[hooks]: known events only, each an argument list (run without a shell)."""
    for key, argv in table.items():
        if key not in HOOK_EVENTS:
            close = next(iter(difflib.get_close_matches(key, HOOK_EVENTS, n=1)), None)
            raise OptionsError(f"{source}: [hooks] has no event '{key}'{f' (did you mean {close!r}?)' if close else ''}; "
                               f"allowed: {', '.join(HOOK_EVENTS)}. Fix: rename or remove '{key}' under [hooks].")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) and a for a in argv)):
            raise OptionsError(f"{source}: [hooks] {key} = {argv!r} must be a non-empty list of strings: an argument "
                               f"list, run without a shell. Fix: e.g. {key} = {_HOOK_EXAMPLES.get(key, _HOOK_EXAMPLES['on_complete'])} "
                               f"(or [\"sh\", \"-c\", \"...\"] for shell syntax).")


# each hook runs where its files are: on_complete and on_fail in the run folder, on_reject in the home
_HOOK_EXAMPLES = {"on_complete": '["rsync", "-a", "adapter/", "backup:/adapters/"]',
                  "on_fail": '["sh", "-c", "tail -n 20 console.log | mail -s failed me@example.com"]',
                  "on_reject": '["sh", "-c", "cat \\"$OVERNIGHT_ERROR_FILE\\" | mail -s rejected me@example.com"]'}


def _check_name(source: Path | str, value: str) -> None:
    """`name`: a model name (daemon/core/fsutil.py): letters of any script, NFC; never a path or a control character."""
    problem = model_name_problem(model_name(value))
    if problem:
        shown = repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
        raise OptionsError(f"{source}: option 'name' = {shown} cannot name a model: {problem}; allowed: "
                           f"{MODEL_NAME_RULE}. Fix: name = \"{suggested_model_name(value)}\", or remove name to "
                           f"use the dataset's file name.")


def _check_loss_type(source: Path | str, value: str) -> None:
    if value in DPO_LOSS_TYPES:
        return
    allowed = ", ".join(DPO_LOSS_TYPES)
    if value.lower() in EXPERIMENTAL_LOSSES:
        raise OptionsError(f"{source}: option 'loss_type' = {value!r}: {value.upper()} is one of TRL's experimental "
                           f"trainers (trl.experimental), which overnight does not offer. Fix: use one of DPO's "
                           f"stable losses ({allowed}), or remove loss_type to use the default (\"sigmoid\").")
    close = difflib.get_close_matches(value, DPO_LOSS_TYPES, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise OptionsError(f"{source}: option 'loss_type' = {value!r} is not one of DPO's losses; allowed: {allowed} "
                       f"(the experimental orpo, simpo and cpo are not offered).{hint} Fix: set loss_type to an "
                       f"allowed value, or remove it to use the default (\"sigmoid\").")


def _check_notify(source: Path | str, table: dict[str, Any]) -> None:
    from daemon.core.notifytable import check_table  # apprise is imported only when a [notify] table exists
    check_table(source, table)


def _check_torchrun(source: Path | str, table: dict[str, Any]) -> None:
    """[torchrun]: torchrun's own options (daemon/core/launch.py passes them on), each of its type."""
    from daemon.core.launch import TORCHRUN_KEYS

    for key, value in table.items():
        kinds = TORCHRUN_KEYS.get(key)
        if kinds is None:
            close = next(iter(difflib.get_close_matches(key.replace("-", "_"), TORCHRUN_KEYS, n=1)), None)
            raise OptionsError(f"{source}: [torchrun] has no option '{key}'{f' (did you mean {close!r}?)' if close else ''}; "
                               f"allowed: {', '.join(TORCHRUN_KEYS)}. Fix: rename or remove '{key}' under [torchrun] "
                               f"(keys are torchrun's options with underscores: --node-rank is node_rank).")
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not isinstance(value, kinds) or isinstance(value, bool) or (numeric and value < 0) or \
                (key in ("nproc_per_node", "nnodes") and numeric and value < 1):
            names = " or ".join(_TYPE_NAMES[k] for k in kinds)
            least = "positive " if key in ("nproc_per_node", "nnodes") else "non-negative " if int in kinds else ""
            raise OptionsError(f"{source}: [torchrun] {key} = {value!r} must be a {least}{names}. Fix: e.g. "
                               f"{_TORCHRUN_EXAMPLES.get(key, key + ' = ...')} under [torchrun].")


_TORCHRUN_EXAMPLES = {"nproc_per_node": "nproc_per_node = 2", "nnodes": "nnodes = 2", "node_rank": "node_rank = 0",
                      "rdzv_endpoint": 'rdzv_endpoint = "node0.example:29400"', "rdzv_backend": 'rdzv_backend = "c10d"',
                      "rdzv_id": 'rdzv_id = "overnight"', "master_addr": 'master_addr = "node0.example"',
                      "master_port": "master_port = 29500", "max_restarts": "max_restarts = 0"}

# The owner's [torchrun] table: one run over several processes or machines (SPEC §12; daemon/core/launch.py).
OPTIONS["torchrun"] = Option(
    "torchrun", dict, None, "torchrun's options for a run over several processes or machines ([torchrun] nnodes, "
    "node_rank, rdzv_endpoint, ...)", allowed="a table of torchrun options: nproc_per_node, nnodes, node_rank, "
    "rdzv_backend, rdzv_endpoint, rdzv_id, rdzv_conf, master_addr, master_port, local_addr, max_restarts, "
    "monitor_interval", owner_only=True, live=True, validate=lambda source, v: _check_torchrun(source, v))

# The owner's [executor] table: where runs train, this machine or a Slurm cluster (SPEC §12;
# daemon/core/executortable.py, daemon/engine/executors/).
OPTIONS["executor"] = Option(
    "executor", dict, None, "where runs train: this machine (kind = \"local\") or a Slurm cluster, each run an sbatch "
    "job ([executor] kind = \"slurm\", partition, account, qos, time_limit, gpus_per_run, nodes_per_run, "
    "max_parallel_runs, extra_args)", allowed='a table: kind = "local" | "slurm", partition, account, qos, '
    "time_limit, gpus_per_run, nodes_per_run, max_parallel_runs, extra_args (a list of sbatch options)",
    owner_only=True, live=True, validate=lambda source, v: _check_executor(source, v))


def _check_executor(source: Path | str, table: dict[str, Any]) -> None:
    from daemon.core.executortable import check_table
    check_table(source, table)


def _check_serve(source: Path | str, table: dict[str, Any]) -> None:
    """[serve]: where `overnight serve` listens (daemon/web/server.py)."""
    for key, value in table.items():
        if key == "host" and isinstance(value, str) and value:
            continue
        if key == "port" and isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
            continue
        if key not in ("host", "port"):
            raise OptionsError(f"{source}: [serve] has no key '{key}'; allowed: host, port. Fix: remove '{key}' under "
                               f"[serve] (max_upload_mb is a top-level option).")
        wanted, example = ("a host name or address", 'host = "127.0.0.1"') if key == "host" else \
            ("a port, 1 .. 65535", "port = 8642")
        raise OptionsError(f"{source}: [serve] {key} = {value!r} must be {wanted}. Fix: e.g. {example} under [serve].")


# `overnight serve`: the HTTP API and the dashboard in a browser (daemon/web/).
OPTIONS["serve"] = Option("serve", dict, None, "where overnight serve listens ([serve] host, port; read when it "
                          "starts; default 127.0.0.1:8642)", allowed='a table: host = "127.0.0.1", port = 8642', owner_only=True, live=True,
                          validate=lambda source, v: _check_serve(source, v))
OPTIONS["max_upload_mb"] = Option("max_upload_mb", (int, float), 1024, "the largest upload overnight serve takes "
                                  "(MB); a larger one is refused with 413 before anything is kept",
                                  _rng(0, 10**7, True), "> 0", owner_only=True, live=True)


def _type_ok(opt: Option, value: Any) -> bool:
    kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # TOML true is not a number
    return isinstance(value, kinds)


_TYPE_NAMES = {int: "integer", float: "number", str: "string", list: "list", dict: "table", bool: "true/false"}
# Names other tools use for our options (Axolotl, LLaMA-Factory, TRL), suggested when a sidecar uses them.
_ALIASES = {"lr": "learning_rate", "num_train_epochs": "epochs", "num_epochs": "epochs",
            "per_device_train_batch_size": "batch_size", "micro_batch_size": "batch_size",
            "gradient_accumulation_steps": "grad_accum", "cutoff_len": "max_length", "sequence_len": "max_length",
            "max_seq_length": "max_length", "model_name_or_path": "base_model", "base_model_name_or_path": "base_model",
            "val_set_size": "eval_fraction", "val_size": "eval_fraction", "logging_steps": "log_every",
            "save_steps": "save_every", "lora_rank": "lora_r", "load_in_4bit": "quantization",
            "load_in_8bit": "quantization", "adapter": "quantization", "lr_scheduler_type": "lr_scheduler",
            "flash_attention": "attn_implementation", "flash_attn": "attn_implementation",
            "sample_packing": "batching", "packing": "batching", "padding_free": "batching",
            "group_by_length": "batching", "optimizer": "optim", "max_norm": "max_grad_norm", "lora_target": "lora_targets",
            "lora_target_modules": "lora_targets", "seed_value": "seed"}


# a table option's Fix: how its table is written (a list or a string where a table belongs is no value of it)
_TABLE_EXAMPLES = {"hooks": 'on_complete = ["sh", "-c", "…"]', "notify": 'urls = ["ntfys://my-topic"]',
                   "executor": 'kind = "slurm"', "torchrun": "nproc_per_node = 2", "serve": "port = 8642"}


def _table_fix(key: str) -> str:
    return (f"Fix: write it as a table: a line [{key}] at the end of the file, and under it its keys, e.g. "
            f"{_TABLE_EXAMPLES.get(key, 'KEY = VALUE')}.")


def _example(opt: Option) -> str:
    """A value of the option's type for a Fix: its default where that reads as an example (not 0, "" or none)."""
    if opt.default not in (None, {}, 0, "", []) and not isinstance(opt.default, bool):
        return _toml(opt.default)
    kind = opt.kind[0] if isinstance(opt.kind, tuple) else opt.kind
    return {int: "100", float: "0.5", bool: "true", str: '"…"', list: '["…"]'}.get(kind, "…")


def _type_name(opt: Option) -> str:
    kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
    return " or ".join(dict.fromkeys(_TYPE_NAMES[k] for k in kinds))


def _unknown_key_hint(key: str, value: Any, sidecar: bool) -> str:
    settable = [k for k, o in OPTIONS.items() if not (sidecar and o.owner_only)]
    if isinstance(value, dict):
        tables = [k for k in settable if OPTIONS[k].kind is dict]
        close = next(iter(difflib.get_close_matches(key, tables, n=1)), None)
        if close:
            return f" Did you mean [{close}]?"
        return (f" Keys are flat: write them at the top of the file (learning_rate = 3e-4), not under a "
                f"[{key}] table.")
    close = _ALIASES.get(key.lower()) or next(iter(difflib.get_close_matches(key, settable, n=1)), None)
    return f" Did you mean '{close}'?" if close else ""


# Options naming a file, a folder or a model: a control character (a NUL above all, which no path can hold) is refused
# here, with the file it is in, rather than failing later where the path is opened.
PATH_OPTIONS = ("base_model", "chat_template", "init_adapter", "eval_file", "forgetting_sample")


def _control_char(text: str) -> str | None:
    return next((c for c in text if unicodedata.category(c) == "Cc"), None)


def _check_path_text(source: Path | str, key: str, value: Any, item: str) -> None:
    for text in (value if isinstance(value, list) else [value]):
        bad = _control_char(text) if isinstance(text, str) else None
        if bad is None:
            continue
        what = "a NUL character" if bad == "\0" else f"the control character U+{ord(bad):04X}"
        shown = json.dumps(text, ensure_ascii=False)
        clean = json.dumps("".join(c for c in text if unicodedata.category(c) != "Cc"), ensure_ascii=False)
        raise OptionsError(f"{source}: option '{key}' = {shown}{item} holds {what} (\\u{ord(bad):04x}), which no "
                           f"file path or model name can hold. Fix: remove it, e.g. {key} = {clean}.")


def check_value(source: Path | str, key: str, value: Any, item: str = "") -> None:
    """Raise OptionsError when `value` is not allowed for `key` (`item`: where in a sweep's list it stands)."""
    opt = OPTIONS[key]
    if not _type_ok(opt, value):
        kind = _TYPE_NAMES.get(type(value), type(value).__name__)
        fix = _table_fix(key) if opt.kind is dict else (f"Fix: e.g. {key} = {_example(opt)} (TOML: strings in "
                                                        f"quotes, numbers and true/false bare).")
        raise OptionsError(f"{source}: option '{key}' = {value!r}{item} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}; "
                           f"expected {_type_name(opt)}{' (' + opt.allowed + ')' if opt.allowed else ''}. {fix}")
    if key in PATH_OPTIONS:
        _check_path_text(source, key, value, item)
    if key == "chat_template" and isinstance(value, str) and value.strip():
        from daemon.core.templating import option_problem  # noqa: PLC0415

        problem = option_problem(value)
        if problem:
            raise OptionsError(f"{source}: {problem}")
    if opt.validate is not None:
        opt.validate(source, value)
    elif not opt.check(value):
        what = "is not one of the allowed values" if isinstance(value, str) else "is out of range"
        default = "" if opt.default is None else f", or remove it to use the default ({_toml(opt.default)})"
        close = difflib.get_close_matches(value, opt.allowed.replace('"', "").replace(",", "").split(), n=1) \
            if isinstance(value, str) else []
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise OptionsError(f"{source}: option '{key}' = {value!r}{item} {what}; allowed: {opt.allowed}.{hint} "
                           f"Fix: set {key} to an allowed value{default}.")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _table(value: Any) -> str:
    """An inline table as TOML writes it: {low = 0.01, high = 0.1}."""
    if not isinstance(value, dict):
        return _toml(value)
    return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"


# Options are flat keys and a few small tables: nothing needs more levels than this. Deeper nesting is refused before
# the values are looked at (Python's TOML parser recurses: arrays or inline tables ~500 deep raise RecursionError,
# and dotted keys build dicts as deep as the line is long).
MAX_DEPTH = 16


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; syntax errors, unreadable files and nesting deeper than MAX_DEPTH name the file, the place
    and the fix."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        # a UTF-8 byte-order mark (Windows Notepad writes one) is not TOML, but it is no mistake either: skipped
        table = tomllib.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as e:
        raise OptionsError(f"{path}: not valid TOML: {e}{_opened_at(raw, e)}. Fix: correct that place (text goes in "
                           f'double quotes, closed on the same line: name = "mydata"; numbers and true/false bare; '
                           f"one key = value per line, e.g. learning_rate = 3e-4)") from None
    except UnicodeDecodeError:
        raise OptionsError(f"{path}: not UTF-8 text. Fix: save it as UTF-8.") from None
    except RecursionError:
        raise _too_deep(path, raw.decode("utf-8", "replace")) from None
    except OSError as e:
        raise OptionsError(f"{path}: cannot be read ({e.strerror or e}). Fix: make it a readable file "
                           f"(or remove it).") from None
    if _depth(table) > MAX_DEPTH:
        raise _too_deep(path, raw.decode("utf-8", "replace"))
    return table


def _opened_at(raw: bytes, e: tomllib.TOMLDecodeError) -> str:
    """For an error tomllib finds only at the end of the file (a bracket or a quote never closed): the line that
    opened it, the last before which the file still reads as TOML."""
    if "end of document" not in str(e):
        return ""
    lines = raw.decode("utf-8", "replace").removeprefix("\ufeff").splitlines(keepends=True)[:2000]
    for n in range(len(lines) - 1, 0, -1):
        try:
            tomllib.loads("".join(lines[:n]))
        except tomllib.TOMLDecodeError:
            continue
        return f"; left open on line {n + 1}: {lines[n].strip()[:80]}"
    return f"; left open on line 1: {lines[0].strip()[:80]}" if lines else ""


def _depth(table: dict[str, Any]) -> int:
    """How deep the values of a parsed file nest lists and tables (`a = [[1]]`: 2), measured without recursion, so
    any depth is; stops counting past MAX_DEPTH."""
    deepest, stack = 0, [(v, 0) for v in table.values()]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d + 1)
            if d + 1 > MAX_DEPTH:
                break
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _too_deep(path: Path, text: str) -> OptionsError:
    """The nesting error, at the first line that goes deeper than MAX_DEPTH."""
    lines = text.splitlines()
    line, depth = 0, 0
    for number, row in enumerate(lines, 1):  # brackets and braces (a value over several lines: where it goes deep)
        for ch in row:  # brackets inside strings miscount, which only moves the line shown
            depth = depth + 1 if ch in "[{" else max(0, depth - 1) if ch in "]}" else depth
        if depth > MAX_DEPTH:
            line = number
            break
    for k in range(1, len(lines) + 1 if not line and len(lines) <= 2000 else 0):  # dotted keys, table headers
        try:
            if _depth(tomllib.loads("\n".join(lines[:k]))) > MAX_DEPTH:
                line = k
                break
        except RecursionError:
            line = k
            break
        except tomllib.TOMLDecodeError:
            continue
    return OptionsError(f"{path}: line {line or 1}: values nested more than {MAX_DEPTH} levels deep (lists in lists, "
                        f"tables in tables or dotted keys). Options are flat keys, a sweep's list of values and the "
                        f"tables [hooks], [notify] and [torchrun]. Fix: write flat keys, e.g. learning_rate = 3e-4 "
                        f"or lora_r = [8, 16].")


def validate_table(source: Path, table: dict[str, Any], *, sidecar: bool) -> dict[str, Any]:
    """Check every key and value of one options file; return it when good (values in their stored form).

    Every bad key is reported at once (one line each, each with its fix): a user fixing a file learns all that
    is wrong with it in one go, not one error per drop."""
    errors: list[str] = []
    for key, value in table.items():
        try:
            _check_entry(source, key, value, sidecar)
        except OptionsError as e:
            errors.append(str(e))
    if sidecar and not errors:
        try:
            check_search(source, table)
        except OptionsError as e:
            errors.append(str(e))
    if not sidecar and not errors:
        from daemon.core.executortable import scope_problems
        errors += scope_problems(source, table)
    if errors:
        err = OptionsError("\n".join(errors))
        err.each = errors
        raise err
    return OptionTable({k: OPTIONS[k].normal(v) if OPTIONS[k].normal and isinstance(v, str) else v
                        for k, v in table.items()}, source)


class OptionTable(dict):
    """A validated options file's table (a plain dict of its values) that knows its file: a later check of a value
    (the adapter continued from, the model) names the file the value was set in, as the checks here do."""

    def __init__(self, values: dict[str, Any], source: Path | str | None = None) -> None:
        super().__init__(values)
        self.source = source

    def __reduce__(self):  # pickled (to a worker process) as what it is: values and source
        return (OptionTable, (dict(self), self.source))


# a search only means something with the ranges a sidecar gives (a list or range is refused in overnight.toml)
_SIDECAR_ONLY = ("search", "trials")


def _check_entry(source: Path, key: str, value: Any, sidecar: bool) -> None:
    if key not in OPTIONS:
        hint = _unknown_key_hint(key, value, sidecar)
        if "Did you mean" in hint:  # the one it most likely is, not a wall of ~75 names
            raise OptionsError(f"{source}: unknown option '{key}'.{hint} Fix: rename it, or remove it (every option: "
                               f"the README's Options table).")
        valid = sorted(k for k, o in OPTIONS.items() if not (sidecar and o.owner_only))
        raise OptionsError(f"{source}: unknown option '{key}'.{hint} Valid options: {', '.join(valid)}. "
                           f"Fix: rename '{key}' to one of these, or remove it.")
    if not sidecar and key in _SIDECAR_ONLY and value not in (None, "none"):
        raise OptionsError(f"{source}: option '{key}' = {_toml(value)} starts a search, which draws from the ranges "
                           f"of a dataset's sidecar; in overnight.toml it would make every drop a study of identical "
                           f"trials. Fix: remove '{key}' from overnight.toml and put search and trials in the sidecar "
                           f"of the dataset to search (NAME.toml).")
    if sidecar and OPTIONS[key].owner_only:
        raise OptionsError(f"{source}: option '{key}' may only be set by the machine owner in overnight.toml, "
                           f"never in a dataset's sidecar (it runs code or shapes the machine). "
                           f"Fix: remove '{key}' from {Path(source).name}.")
    if isinstance(value, list) and not _type_ok(OPTIONS[key], value):
        check_sweep(source, key, value, sidecar=sidecar)
    elif isinstance(value, dict) and not _type_ok(OPTIONS[key], value):  # a search's range (daemon/core/search.py)
        check_sweep(source, key, [value], sidecar=sidecar, item_check=False)
        check_range(source, key, value, check_value)
    else:
        check_value(source, key, value)
        twice = [v for i, v in enumerate(value) if v in value[:i]] if isinstance(value, list) else []
        if twice:  # base_model's list: one run per model
            raise OptionsError(f"{source}: option '{key}' = {value!r} lists {_toml(twice[0])} twice. "
                               f"Fix: list each value once.")


def check_sweep(source: Path | str, key: str, values: list, *, sidecar: bool, item_check: bool = True) -> None:
    """A list for an option whose value is not a list: a sweep (one run per value), allowed in a sidecar only
    (`item_check` False: a search's range, whose own rules are daemon/core/search.py's)."""
    opt = OPTIONS[key]
    one = _toml(values[0]) if values and not isinstance(values[0], (list, dict)) else \
        _toml(opt.default) if opt.default is not None else "…"
    # a search's range {low = …, high = …} is said as the table it is written as, not as the list it is checked as
    shown, what = (values, "a list") if item_check else (_table(values[0]), "a range")
    if opt.kind is dict:
        raise OptionsError(f"{source}: option '{key}' = {shown} is {what}, but {key} is a table. {_table_fix(key)}")
    if not opt.sweep:
        sweepable = ", ".join(k for k, o in OPTIONS.items() if o.sweep)
        raise OptionsError(f"{source}: option '{key}' = {shown} is {what}, but {key} cannot be swept: a list "
                           f"queues one run per value, and a range draws one per trial, only for the training "
                           f"options {sweepable}. Fix: give {key} one value ({key} = {one}).")
    if not sidecar:
        raise OptionsError(f"{source}: option '{key}' = {shown} is {what}, but sweeps belong in a dataset's "
                           f"sidecar (NAME.toml beside the dataset: one run per value), not in overnight.toml. "
                           f"Fix: set one value here ({key} = {one}) and put the list in the sidecar of the "
                           f"dataset to sweep.")
    if not item_check:
        return
    if not values:
        raise OptionsError(f"{source}: option '{key}' = [] is an empty list. Fix: list the values to sweep "
                           f"({key} = [{_toml(opt.default)}, …]), or remove {key} to use the default.")
    for i, v in enumerate(values):
        check_value(source, key, v, item=f" (item {i + 1} of the list {values!r})")
        if any(type(v) is type(w) and v == w for w in values[:i]):
            raise OptionsError(f"{source}: option '{key}' = {values!r} lists {_toml(v)} twice. "
                               f"Fix: list each value once.")


@dataclass
class Resolved:
    """The options of one run, and where each came from (default, toml or sidecar)."""

    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    swept: list[str] = field(default_factory=list)  # options a sidecar lists several values of, in its order
    files: dict[str, Path | str] = field(default_factory=dict)  # "toml", "sidecar": the file read, when known

    def origin(self, key: str) -> Path | str | None:
        """The file `key` was set in (overnight.toml or the sidecar); None for a default, or when not known."""
        return self.files.get(self.sources.get(key, "default"))

    @property
    def base_models(self) -> list[str]:
        v = self.values.get("base_model")
        return [] if v is None else [v] if isinstance(v, str) else list(v)

    def to_config(self) -> dict[str, Any]:
        """What a run's config.json records; private options (notification URLs) only say where they are set."""
        live = {k for k, o in OPTIONS.items() if o.live}  # read from overnight.toml each time: not fixed by the run
        values = {k: ("(set in overnight.toml; not recorded here)" if OPTIONS[k].private and v is not None else v)
                  if k in OPTIONS else v for k, v in self.values.items() if k not in live}
        return {"options": values, "sources": {k: v for k, v in self.sources.items() if k not in live}}


def resolve(toml: dict[str, Any] | None, sidecar: dict[str, Any] | None) -> Resolved:
    """Merge defaults < overnight.toml < sidecar (both already validated)."""
    values = {k: o.default for k, o in OPTIONS.items()}
    sources = {k: "default" for k in OPTIONS}
    for origin, table in (("toml", toml or {}), ("sidecar", sidecar or {})):
        for k, v in table.items():
            values[k], sources[k] = v, origin
    swept = [k for k, v in (sidecar or {}).items() if isinstance(v, (list, dict)) and OPTIONS[k].sweep]
    files = {origin: table.source for origin, table in (("toml", toml), ("sidecar", sidecar))
             if getattr(table, "source", None) is not None}
    return Resolved(values, sources, swept, files)


def load_home_toml(path: Path) -> dict[str, Any]:
    """The owner's overnight.toml, validated ({} when absent)."""
    if not path.exists():
        return {}
    return validate_table(path, read_toml(path), sidecar=False)


def load_sidecar(path: Path | None) -> dict[str, Any]:
    """A dataset's NAME.toml, validated ({} when absent)."""
    if path is None:
        return {}
    return validate_table(path, read_toml(path), sidecar=True)


@dataclass(frozen=True)
class OwnerOptions:
    """The owner's overnight.toml as a long-lived process uses it: `values` are the last good ones ({} before any,
    or while there is no file), `problem` why the file as it is now cannot be used (None when it can), `version`
    the file's (mtime, size, inode) that was read (None: no file)."""

    values: dict[str, Any]
    problem: str | None = None
    version: tuple[int, int, int] | None = None


class OwnerToml:
    """The one reader of an owner's overnight.toml in a process that lives on (the daemon, the trainer): parsed again
    only when the file's mtime, size or inode changed; a broken file keeps the last good values and says why in
    `problem` (each caller tells it once per `version`). Shared per path: `owner_toml(path)`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._state: OwnerOptions | None = None
        self._stale = False  # parse again at the next read, changed or not (forget)

    def read(self) -> OwnerOptions:
        """The options now (one stat; one parse when the file changed)."""
        key = file_version(self.path)
        with self._lock:
            state = self._state
            if state is not None and state.version == key and not self._stale:
                return state
            self._stale = False
            last = state.values if state is not None else {}
            try:
                state = OwnerOptions(load_home_toml(self.path), None, key)
            except OptionsError as e:
                state = OwnerOptions(last, str(e), key)
            self._state = state
            return state

    def forget(self) -> None:
        """Parse the file again at the next read, changed or not (the daemon's SIGHUP)."""
        with self._lock:
            self._stale = True


_readers: dict[Path, OwnerToml] = {}
_readers_lock = threading.Lock()


def owner_toml(path: Path) -> OwnerToml:
    """This process's reader of the overnight.toml at `path` (one per file: the daemon's loop, its intake and its
    notifier thread share it)."""
    path = Path(os.path.abspath(path))
    with _readers_lock:
        reader = _readers.get(path)
        if reader is None:
            reader = _readers[path] = OwnerToml(path)
        return reader


def owner_options(path: Path) -> dict[str, Any]:
    """The owner's options from overnight.toml at `path`: the last good ones while the file is broken."""
    return owner_toml(path).read().values


class LiveSetting:
    """One live option (Live(...)) as any process reads it: from the owner's overnight.toml, parsed again only when
    the file changed; while the file is broken the last good value stays (the default before any), and the error is
    told once per version of the file through `on_error` (the daemon shows it as its PROBLEM line)."""

    def __init__(self, toml: Path, name: str, on_error: Callable[[str], None] = lambda message: None) -> None:
        assert OPTIONS[name].live, f"{name} is fixed when a run is queued: read it from the run's config.json"
        self.toml, self.name, self.on_error = Path(toml), name, on_error
        self._told: tuple[tuple[int, int, int] | None, str] | None = None  # the version and problem last told

    def __call__(self) -> Any:
        state = owner_toml(self.toml).read()
        value = state.values.get(self.name, OPTIONS[self.name].default)
        if state.problem is not None and self._told != (state.version, state.problem):
            self._told = (state.version, state.problem)
            self.on_error(f"{state.problem}\n(overnight keeps {self.name} = {_toml(value)} until the file is fixed)")
        return value


# --- the README's options table --------------------------------------------------------------------------
README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_BEGIN = "<!-- options:begin (generated by python -m daemon.core.options --readme; do not edit by hand) -->"
TABLE_END = "<!-- options:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default_text(opt: Option) -> str:
    if opt.default is None or opt.default == {}:
        return "unset"
    return f"`{_toml(opt.default)}`"


def _allowed_text(opt: Option) -> str:
    if opt.allowed:
        return opt.allowed
    return "true or false" if opt.kind is bool else _type_name(opt)


def options_table() -> str:
    """Every option of OPTIONS as a Markdown table: the README shows this, so it cannot drift from the schema."""
    rows = ["| option | default | allowed values | sweep | owner-only | applies | what it does |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for opt in OPTIONS.values():
        name = f"`[{opt.name}]`" if opt.kind is dict else f"`{opt.name}`"
        # fixed when the drop is queued (the run's config.json), or read live from overnight.toml by every process
        applies = "live" if opt.live else "when queued"
        rows.append("| " + " | ".join(_cell(c) for c in (
            name, _default_text(opt), _allowed_text(opt), "yes" if opt.sweep else "", "yes" if opt.owner_only else "",
            applies, opt.help)) + " |")
    return "\n".join(rows)


def readme_with_table(text: str) -> str:
    """`text` (the README) with the table between its markers replaced by options_table()."""
    begin, end = text.index(TABLE_BEGIN), text.index(TABLE_END)
    return text[:begin] + TABLE_BEGIN + "\n" + options_table() + "\n" + text[end:]


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["--readme"]:
        README.write_text(readme_with_table(README.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"rewrote the options table in {README}")
    elif not sys.argv[1:]:
        print(options_table())
    else:
        sys.exit("usage: python -m daemon.core.options [--readme]  (print the options table, or rewrite README.md's)")
