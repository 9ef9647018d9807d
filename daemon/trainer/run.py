"""One training run, start to end: config → data → model + LoRA → transformers Trainer → adapter and result.

Entry: `python -m daemon.trainer RUN_DIR` (see __main__.py). Everything the run produces goes into RUN_DIR,
as described in docs/ARCHITECTURE.md ("Run folder").
"""
from __future__ import annotations

import gc
import logging
import math
import os
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.atomic import read_json, write_json
from daemon.gpus import trainer_gpu_env, under_torchrun
from daemon.models import ModelNotFound, locate_model
from daemon.rundir import RunFolder
from daemon.space import is_disk_full
from daemon.trainer import checkpoints as ckpt
from daemon.trainer.config import RunConfig, RunError, TrainOptions
from daemon.trainer.console import say
from daemon.trainer.finish import Result, header_lines
from daemon.trainer.oom import is_out_of_memory, next_rung


@dataclass
class Session:
    """What one trainer process has built so far (for the result, whatever happens)."""

    cfg: RunConfig
    result: Result


def main(run_dir: Path, *, read_stdin: bool = True) -> int:
    """Train the run in `run_dir`; write result.json; return the process exit code."""
    from daemon.trainer.commands import start_channel

    commands = start_channel(say, read_stdin=read_stdin)
    result = Result("failed")
    folder = RunFolder(Path(run_dir).resolve())
    try:
        cfg = RunConfig.load(run_dir)
        session = Session(cfg, result)
        _train(session, commands)
    except RunError as e:
        result.outcome, result.reason = "failed", str(e)
        say(f"error: {e}")
    except Exception as e:  # noqa: BLE001 - the run must end with a result.json whatever broke
        traceback.print_exc()
        result.outcome, result.reason = "failed", f"{type(e).__name__}: {e}"
        if is_disk_full(e):
            result.reason += (f". Fix: free space on the disk of {folder.root}; the daemon resumes the run "
                              f"from its last complete checkpoint once there is room")
    try:
        _final_progress(folder, result)
        result.write(folder.result)
    except OSError as e:  # a full disk: the daemon reads the reason from the console instead
        say(f"could not write result.json: {e}")
    say(result.footer())
    return result.exit_code


def _final_progress(folder: RunFolder, result: Result) -> None:
    """progress.json says how it ended; a run that died mid-way reports the steps it had done."""
    prog = read_json(folder.progress, None)
    if prog is not None:
        result.step = result.step or int(prog.get("step") or 0)
        result.max_steps = result.max_steps or prog.get("max_steps")
        write_json(folder.progress, {**prog, "state": result.outcome, "step": result.step})


def _train(s: Session, commands: Any) -> None:
    cfg, opts, paths = s.cfg, s.cfg.options, s.cfg.paths
    stats = read_json(paths.stats, {}) or {}
    for line in header_lines(cfg.run_id, opts.base_model, cfg.dataset_path, cfg.schema, stats.get("records"),
                             cfg.raw.get("options") or {}):
        say(line)
    # checked before torch is imported (~5 s): a wrong path fails at once
    try:
        source = locate_model(opts.base_model, paths.root.parent.parent, paths.root, Path.cwd()).source
    except ModelNotFound as e:
        raise RunError(f"{e.problem}. Fix: {e.fix}, then resume the run.") from None

    import torch

    from daemon.trainer.callbacks import Progress
    from daemon.trainer.model import pick_device
    from daemon.trainer.setup import build_everything

    device = pick_device()
    s.result.device, s.result.device_name = device.kind, device.name
    say(f"device: {device.label}")
    progress = Progress(paths.progress, device.kind, device.name)
    progress.update("preparing")
    resume = _prepare_resume(s)
    built = build_everything(s, source, device, stats, progress, commands)
    if commands.stop.is_set():
        s.result.outcome, s.result.reason = "stopped", commands.stop_reason + " before training started"
        return
    attempt = built.opts or opts
    if resume is not None and _trained_out(resume, planned_steps(len(built.data.train), attempt)):
        # The Trainer takes a step before it looks at max_steps: resumed from the run's last step (its trainer was
        # killed after that checkpoint, or its daemon before it saw the run end) it would train one step too many.
        # That checkpoint holds the trained adapter: the run finishes from it.
        say(f"{resume.name} is the run's last step: nothing left to train, finishing from it")
        built.finish(built.trainer_at(resume, attempt))
        return
    while True:
        out_of_memory = False
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:  # building the Trainer moves the model to the GPU: an OOM there is retried like one in a step
            trainer = built.make_trainer(attempt)
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            out_of_memory = True  # recover outside the except block: its traceback pins the GPU tensors
        finally:
            s.result.train_seconds += time.perf_counter() - t0
            s.result.train_cpu_seconds += time.process_time() - cpu0
        if not out_of_memory:
            break
        attempt, change = next_rung(attempt)  # raises RunError when nothing cheaper is left
        trainer = None
        built.drop_model()
        gc.collect()
        torch.cuda.empty_cache()
        resume = _prepare_resume(s)
        say(f"out of memory: retrying {f'from {resume.name}' if resume else 'from the start'}, {change}")
        built.reset_model()
    built.finish(trainer)


def _prepare_resume(s: Session) -> Path | None:
    """Clear half-written checkpoints; find the newest complete one and forget log records written after it.

    With no checkpoint the run starts over: records of an earlier attempt (an out-of-memory retry, a crash before
    the first save) are dropped too, all but the step-0 snapshot, which a fresh start takes identically.
    """
    paths = s.cfg.paths
    paths.checkpoints.mkdir(exist_ok=True)
    for name in ckpt.discard_incomplete(paths.checkpoints):
        say(f"removed incomplete checkpoint {name} (left by an interrupted save)")
    resume = ckpt.newest_loadable(paths.checkpoints, say)
    step = int(resume.name.split("-")[1]) if resume is not None else 0
    s.result.step = step
    dropped = ckpt.truncate_jsonl_after(paths.metrics, step) + ckpt.truncate_jsonl_after(paths.evolution, step)
    note = f"; dropped {dropped} log record(s) written after it" if dropped else ""
    if resume is not None:
        say(f"resuming from {resume.relative_to(paths.root)} (step {step}){note}")
    elif dropped:
        say(f"starting from step 0; dropped {dropped} log record(s) of an earlier attempt")
    return resume


def _trained_out(checkpoint: Path, steps: int) -> bool:
    """The checkpoint was saved at the run's last step: its trainer_state.json's global_step is `steps` or more."""
    state = read_json(checkpoint / "trainer_state.json", {}) or {}
    return 0 < steps <= int(state.get("global_step") or 0)


def planned_steps(n_sequences: int, opts: TrainOptions) -> int:
    """Optimizer steps the run will take (the Trainer's own arithmetic for epochs, or max_steps).

    One process on one GPU: the scheduler and pick_device see to it that a run never spans several GPUs (no
    DataParallel). Once runs span GPUs through torchrun, the batches per epoch divide by the world size here.
    """
    if opts.max_steps > 0:
        return opts.max_steps
    batches = math.ceil(n_sequences / opts.batch_size)
    per_epoch = max(math.ceil(batches / opts.grad_accum), 1)
    return math.ceil(opts.epochs * per_epoch)


def environment_defaults() -> None:
    """Offline, quiet, deterministic library settings and one visible GPU (before torch is imported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the trainer never downloads; fail fast instead of timing out
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if not under_torchrun(os.environ):
        # one process trains on one GPU (the Trainer would wrap several in nn.DataParallel): the daemon already
        # chose one; this narrows a trainer started by hand the same way (pick_device still refuses several)
        os.environ.update(trainer_gpu_env(None, os.environ))
    # a deprecation inside peft/transformers that the user can do nothing about
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # bitsandbytes' CPU backend announces at import that an optional faster kernel package is missing
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
