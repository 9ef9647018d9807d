"""Under torchrun the ranks agree on pause and stop at every optimizer step without waiting for each other
(daemon/trainer/commands.py): two real processes over gloo on the CPU drive the real CommandCallback through a few
hundred step ends, the way the Trainer calls it."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import torch.multiprocessing as mp

CALLS = 260
PAUSE_AT = 100  # rank 0 is paused just before this step's end (the daemon's "pause"), resumed 1 s later
STOP_AT = 200  # rank 1 is told to stop just before this step's end (SIGTERM reaches each rank)
RESUME_AFTER_S = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str) -> None:
    """One rank: CALLS step ends through CommandCallback.on_step_end; what it saw goes to out/rank-N.json."""
    import os
    import threading
    import time

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch.distributed as dist
    from transformers import TrainerControl, TrainerState

    from daemon.trainer import ddp
    from daemon.trainer.callbacks import CommandCallback, Progress, RunStatus
    from daemon.trainer.commands import Commands

    ddp.init("cpu")
    step = 0
    gathers: list[int] = []  # the steps at which all_gather_object (pickle + TCP) was called
    real_gather = dist.all_gather_object

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        gathers.append(step)
        return real_gather(*args, **kwargs)

    dist.all_gather_object = counted
    commands, lines = Commands(), []
    callback = CommandCallback(commands, Progress(Path(out) / "progress.json", "cpu", "cpu"), RunStatus(),
                               nonfinite=lambda: False, log=lines.append)
    state, held, stopped_at = TrainerState(max_steps=10_000), [], None
    for step in range(1, CALLS + 1):
        if rank == 0 and step == PAUSE_AT:
            commands.paused.set()
            threading.Timer(RESUME_AFTER_S, commands.paused.clear).start()  # what the reader thread does on resume
        if rank == 1 and step == STOP_AT:
            commands.request_stop("SIGTERM received")
        state.global_step = step
        control = TrainerControl()
        control.should_log = step % 10 == 0  # log steps: the non-finite check's own collective
        began = time.perf_counter()
        callback.on_step_end(None, state, control)
        if any(line.startswith(f"paused at step {step} ") for line in lines):
            held.append((step, time.perf_counter() - began))
        if control.should_training_stop:
            stopped_at = step
            assert control.should_save
            break
    callback.on_train_end(None, state, control)
    Path(out, f"rank-{rank}.json").write_text(json.dumps(
        {"gathers": gathers, "held": held, "stopped_at": stopped_at, "reason": commands.stop_reason,
         "lines": lines}), encoding="utf-8")
    ddp.shutdown(together=True)
    ddp.exit_now(0)


def test_two_ranks_agree_on_pause_and_stop_at_the_same_step_and_pickle_nothing_until_a_stop(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    # the pause set on rank 0 before step 100's end holds both ranks at the same step, one step later at most
    assert len(seen[0]["held"]) == len(seen[1]["held"]) == 1, seen
    (paused_at, waited), (also_at, also_waited) = seen[0]["held"][0], seen[1]["held"][0]
    assert paused_at == also_at and min(waited, also_waited) >= RESUME_AFTER_S * 0.9, seen
    assert PAUSE_AT <= paused_at <= PAUSE_AT + 1
    assert f"paused at step {paused_at} (overnight resume lifts it)" in seen[0]["lines"]
    assert f"resumed at step {paused_at}" in seen[1]["lines"]
    # the stop set on rank 1 stops both at the same step, one step later at most, with rank 1's reason
    assert seen[0]["stopped_at"] == seen[1]["stopped_at"], seen
    assert STOP_AT <= seen[0]["stopped_at"] <= STOP_AT + 1
    assert seen[0]["reason"] == "SIGTERM received (rank 1)" and seen[1]["reason"] == "SIGTERM received"
    # nothing was pickled while nothing was pending: one exchange of reasons, at the stop
    assert seen[0]["gathers"] == seen[1]["gathers"] == [seen[0]["stopped_at"]], seen
