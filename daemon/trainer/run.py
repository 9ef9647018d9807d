"""One training run, start to end: config → data → model + LoRA → transformers Trainer → adapter and result.

Entry: `python -m daemon.trainer RUN_DIR` (see __main__.py). Everything the run produces goes into RUN_DIR,
as described in docs/ARCHITECTURE.md ("Run folder").
"""
from __future__ import annotations

import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

from daemon.core import gpus
from daemon.core.atomic import read_json, write_json
from daemon.core.gpus import under_torchrun
from daemon.core.launch import OOM_RETRY_EXIT, PEER_LOST_EXIT
from daemon.core.basemodel import ModelNotFound, locate_model
from daemon.core.rundir import TRAINER_STATE, RunFolder, step_of
from daemon.core.space import is_disk_full
from daemon.core.states import Outcome, Phase
from daemon.trainer import checkpoints as ckpt
from daemon.trainer import ddp
from daemon.trainer.config import RunConfig, RunError, TrainOptions
from daemon.trainer.console import say
from daemon.trainer.finish import Result, header_lines
from daemon.trainer.oom import free_memory, is_out_of_memory, next_rung
from daemon.trainer.session import Session


def main(run_dir: Path, *, read_stdin: bool = True) -> int:
    """Train the run in `run_dir`; write result.json; return the process exit code.

    Under torchrun rank 0 writes result.json, except in two cases: another rank failed on its own (it writes its
    reason: it alone knows it), or another rank vanished (killed: nobody writes one, as for a killed trainer, and
    the launcher ends by the signal that killed it, daemon/trainer/torchrun.py)."""
    from daemon.trainer.commands import start_channel

    commands = start_channel(say, read_stdin=read_stdin)
    result = Result(Outcome.FAILED)
    try:
        return _run(Path(run_dir), commands, result)
    finally:
        # every way out, under torchrun: leave the process group while the interpreter is whole (ddp.shutdown);
        # after a last barrier when every rank ends here together (completed, or stopped at an agreed step)
        ddp.shutdown(together=result.outcome.ended_well)


def _run(run_dir: Path, commands: Any, result: Result) -> int:
    """`main` without the process group's end: the outcome into `result` (and result.json), the exit code back."""
    folder = RunFolder(run_dir.resolve())
    try:
        cfg = RunConfig.load(run_dir)
        session = Session(cfg, result)
        _train(session, commands)
    except GroupRetry:
        return OOM_RETRY_EXIT  # no outcome: the launcher starts the group again (daemon/trainer/torchrun.py)
    except RunError as e:
        result.outcome, result.reason = Outcome.FAILED, str(e)
        say(f"error: {e}") if ddp.is_main() else print(f"error: {e}", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - the run must end with a result.json whatever broke
        result.outcome, result.reason = Outcome.FAILED, f"{type(e).__name__}: {e}"
        peer_lost = ddp.distributed() and _peer_lost(e)
        if peer_lost:  # not this process's failure: one line, and the launcher decides what follows
            say(f"another process of this run (torchrun) went away ({result.reason[:160]}…): its own lines "
                f"(`rank N: ...`) or torchrun's summary below say why")
            return PEER_LOST_EXIT
        traceback.print_exc()
        if is_disk_full(e):
            result.reason += (f". Fix: free space on the disk of {folder.root}; the daemon resumes the run "
                              f"from its last complete checkpoint once there is room")
        elif isinstance(e, PermissionError):  # a run folder made read-only (chattr +i, a changed owner)
            result.reason += (f". Fix: make {e.filename or folder.root} writable for this user again, then "
                              f"overnight resume {folder.root.name} (it goes on from its last checkpoint)")
    if result.outcome is Outcome.FAILED and not ddp.is_main() and ddp.initialised():
        result.reason = f"rank {ddp.rank()}: {result.reason}"
    if ddp.is_main() or (result.reason or "").startswith(f"rank {ddp.rank()}: "):
        try:
            _final_progress(folder, result)
            result.write(folder.result)
        except OSError as e:  # a full disk: the daemon reads the reason from the console instead
            say(f"could not write result.json: {e}")
    say(result.footer())
    return result.exit_code


def _peer_lost(e: BaseException) -> bool:
    """A collective that failed because another rank died (gloo: the connection closed; NCCL: aborted)."""
    text = f"{type(e).__name__}: {e}"
    return any(t in text for t in ("DistBackendError", "Connection closed by peer", "Connection reset by peer",
                                   "NCCL communicator was aborted", "Broken pipe"))


def _final_progress(folder: RunFolder, result: Result) -> None:
    """progress.json says how it ended; a run that died mid-way reports the steps it had done."""
    prog = read_json(folder.progress, None)
    if prog is not None:
        result.step = result.step or int(prog.get("step") or 0)
        result.max_steps = result.max_steps or prog.get("max_steps")
        write_json(folder.progress, {**prog, "state": result.outcome, "step": result.step})


def _adapt_defaults(s: Session, folder: Path) -> None:
    """A default max_length longer than the model's context becomes the context (an explicit one was refused)."""
    from dataclasses import replace

    from daemon.core.basemodel import context_note, model_context

    opts = s.cfg.options
    if s.cfg.file.sources.get("max_length", "default") != "default":
        return
    context = model_context(folder)
    note = context_note(opts.max_length, context, opts.base_model)
    if note:
        say(note)
        s.cfg.options = replace(opts, max_length=context)


def _once(start: str) -> Callable[[logging.LogRecord], bool]:
    """A logging filter that lets the first record starting with `start` through, and none after it."""
    seen: list[bool] = []

    def keep(record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(start):
            return True
        seen.append(True)
        return len(seen) == 1
    return keep


def _choose_chat_format(s: Session, folder: Path) -> None:
    """The chat template and prompt format (torch-free, so a bad template fails before the ~5 s of imports)."""
    from daemon.core.datasets import TEXT_SCHEMAS
    from daemon.core.templating import TemplateError, for_run, prompt_as_chat

    opts, root = s.cfg.options, s.cfg.paths.root
    try:
        s.chat = for_run(opts.chat_template, folder, (root.parent.parent,))  # a relative path: from the home
        s.prompt_chat = prompt_as_chat(opts.prompt_format, s.chat)
    except TemplateError as e:
        raise RunError(str(e)) from None
    template = s.chat.describe() if s.chat else "none (the model has none; chat_template = \"auto\")"
    if s.cfg.schema in TEXT_SCHEMAS:
        say(f"chat template: {template}; unused: text records are trained as they are, with no prompt format")
        return
    say(f"chat template: {template}; prompt format: "
        f"{'chat (one user turn, one assistant turn)' if s.prompt_chat else 'raw (prompt text + answer)'}"
        f"{' (auto)' if opts.prompt_format == 'auto' else ''}")


def _train(s: Session, commands: Any) -> None:
    cfg, opts, paths = s.cfg, s.cfg.options, s.cfg.paths
    stats = read_json(paths.stats, {}) or {}
    for line in header_lines(cfg.run_id, opts.base_model, cfg.dataset_path, cfg.schema, stats.get("records"),
                             cfg.file.options):
        say(line)
    # checked before torch is imported (~5 s): a wrong path fails at once
    try:
        model = locate_model(opts.base_model, paths.root.parent.parent, paths.root, Path.cwd())
    except ModelNotFound as e:
        raise RunError(f"{e.problem}. Fix: {e.fix}, then resume the run.") from None
    source = model.source
    _adapt_defaults(s, model.folder)
    _choose_chat_format(s, model.folder)

    import torch

    from daemon.trainer.callbacks import Progress
    from daemon.trainer.model import pick_device
    from daemon.trainer.setup import build_everything

    device = pick_device()
    s.result.device, s.result.device_name = device.kind, device.name
    ddp.init(device.kind)  # under torchrun: the process group, before anything the ranks must agree on
    world = f"; torchrun: {ddp.world_size()} process(es), {ddp.backend(device.kind)}" if ddp.initialised() else ""
    say(f"device: {device.label}{world}")
    progress = Progress(paths.progress, device.kind, device.name)
    progress.update(Phase.PREPARING)
    resume = _agreed_resume(s)
    built = build_everything(s, source, device, stats, progress, commands)
    if commands.sync().stop:
        s.result.outcome, s.result.reason = Outcome.STOPPED, commands.stop_reason + " before training started"
        return
    attempt, retries = _rung_from_launcher(built.opts or opts)
    if resume is not None and _trained_out(resume, built.planned_steps(attempt)):
        # The Trainer takes a step before it looks at max_steps: resumed from the run's last step (its trainer was
        # killed after that checkpoint, or its daemon before it saw the run end) it would train one step too many.
        # That checkpoint holds the trained adapter: the run finishes from it.
        say(f"{resume.name} is the run's last step: nothing left to train, finishing from it")
        built.finish(built.trainer_at(resume, attempt))
        _report(built, progress)
        return
    longest = max(built.data.train.lengths())
    while True:
        out_of_memory = False
        s.result.plan = {"batch_tokens": attempt.batch_tokens, "batch_size": attempt.batch_size,
                         "grad_accum": attempt.grad_accum, "gradient_checkpointing": attempt.gradient_checkpointing,
                         "out_of_memory_retries": retries}
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:  # building the Trainer moves the model to the GPU: an OOM there is retried like one in a step
            trainer = built.make_trainer(attempt)
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            if ddp.distributed():  # the other ranks wait in a collective this one will never join
                _retry_group(attempt, longest, retries, e)
            out_of_memory = True  # recover outside the except block: its traceback pins the GPU tensors
        finally:
            s.result.train_seconds += time.perf_counter() - t0
            s.result.train_cpu_seconds += time.process_time() - cpu0
        if not out_of_memory:
            break
        attempt, change = next_rung(attempt, longest)  # raises RunError when nothing cheaper is left
        retries += 1
        trainer = None
        built.restart_adapter()
        free_memory()
        resume = _prepare_resume(s)
        say(f"out of memory: retrying {f'from {resume.name}' if resume else 'from the start'}, {change} "
            f"(the model stays loaded)")
    built.finish(trainer)
    _report(built, progress)


def _report(built: Any, progress: Any) -> None:
    """A completed run's eval report (daemon/trainer/report.py), by the process that saved the adapter."""
    if built.session.result.outcome is not Outcome.COMPLETED or not ddp.is_main():
        return
    from daemon.trainer.report import write_report

    progress.update(Phase.EVALUATING)
    write_report(built, say)


class GroupRetry(Exception):
    """Under torchrun: this rank ran out of memory and handed the next rung to the launcher (OOM_RETRY_EXIT)."""


def _retry_group(attempt: TrainOptions, longest: int, retries: int, error: BaseException) -> None:
    """Out of memory under torchrun: the other ranks wait in a collective this one will never join, so the whole
    group restarts. The next rung goes to the launcher (single node), which starts every worker again with it;
    with no launcher to restart them (several nodes), or no rung left, the run fails with the fix."""
    import json

    from daemon.core.launch import RETRY_FILE_ENV

    where = f"out of memory on rank {ddp.rank()} of {ddp.world_size()} (torchrun)"
    target = os.environ.get(RETRY_FILE_ENV)
    nxt, change = next_rung(attempt, longest)  # RunError when nothing cheaper is left
    if not target:
        raise RunError(f"{where}: {error}"[:600] + f". Fix: {change} (batch_size, grad_accum or "
                       f"gradient_checkpointing in the options), then resume the run.") from None
    with open(target, "w", encoding="utf-8") as f:
        json.dump({"batch_size": nxt.batch_size, "grad_accum": nxt.grad_accum, "batch_tokens": nxt.batch_tokens,
                   "retries": retries + 1,
                   "gradient_checkpointing": nxt.gradient_checkpointing, "change": change}, f)
    print(f"{where}: every process restarts from the last checkpoint, {change}", file=sys.stderr, flush=True)
    raise GroupRetry(change)


def _rung_from_launcher(opts: TrainOptions) -> tuple[TrainOptions, int]:
    """The retry ladder's rung a restarted torchrun group trains on (none: the options as planned), and how many
    out-of-memory retries led there."""
    import json
    from dataclasses import replace

    from daemon.core.launch import RETRY_OPTIONS_ENV

    raw = os.environ.get(RETRY_OPTIONS_ENV)
    if not raw:
        return opts, 0
    rung = json.loads(raw)
    say(f"out of memory in the last attempt: retrying, {rung.get('change')}")
    return replace(opts, batch_size=int(rung["batch_size"]), grad_accum=int(rung["grad_accum"]),
                   batch_tokens=int(rung.get("batch_tokens") or 0),
                   gradient_checkpointing=rung["gradient_checkpointing"]), int(rung.get("retries") or 1)


def _agreed_resume(s: Session) -> Path | None:
    """The resume point of every rank: rank 0 clears, checks and chooses (under torchrun), the others take it."""
    chosen = _prepare_resume(s) if ddp.is_main() else None
    chosen = ddp.from_main(str(chosen) if chosen else None)
    if chosen is not None:
        s.result.step = step_of(chosen)
    return Path(chosen) if chosen else None


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
    step = step_of(resume)
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
    state = read_json(checkpoint / TRAINER_STATE, {}) or {}
    return 0 < steps <= int(state.get("global_step") or 0)


def environment_defaults() -> None:
    """Offline, quiet, deterministic library settings and one visible GPU (before torch is imported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the trainer never downloads; fail fast instead of timing out
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # batches of varying shapes (length-grouped, padding-free) would fragment CUDA's caching allocator
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if not under_torchrun(os.environ):
        # one process trains on one GPU (the Trainer would wrap several in nn.DataParallel): the daemon already
        # chose one; this narrows a trainer started by hand the same way (pick_device still refuses several)
        os.environ.update(gpus.plan({"gpus_per_run": 1, "max_parallel_runs": 1}, os.environ)[0].env(os.environ))
    # a deprecation inside peft/transformers that the user can do nothing about
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if not ddp.is_main():
        # under torchrun rank 0 says it once (console.log is shared): a replica's library warnings and notices (e.g.
        # the `kernels` package's offline-hub notice) are copies of rank 0's. Its errors and our own lines still show.
        warnings.filterwarnings("ignore")
        logging.disable(logging.WARNING)
    # bitsandbytes' CPU backend announces at import that an optional faster kernel package is missing
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # the `kernels` package (through transformers) says on every start that offline mode skips its hub trust check
    logging.getLogger("kernels").setLevel(logging.ERROR)
    # bitsandbytes' 8-bit matmul says at every call of every layer that it casts its input: once is enough
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_once("MatMul8bitLt: inputs will be cast"))
