"""One run over two processes through torchrun (DDP, gloo on the CPU), driven the way the daemon drives a trainer.

The slow tests train the tiny model for a few steps with `torchrun --nproc-per-node 2` (daemon/core/launch.py's
command, started by daemon/engine/runner.py's TrainerProcess); the first ones check the launcher's argv and the
[torchrun] option table.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from daemon.core.launch import nproc_for, trainer_command
from daemon.core.options import OptionsError, validate_table
from tests.conftest_trainer import (jsonl, make_run, metrics, read_json, reversal_records, send, start, tiny_model,
                                    train_losses, wait_for)

# ------------------------------------------------------------------------------------- the launcher's argv


def test_one_process_is_the_plain_trainer() -> None:
    assert trainer_command(Path("/h/runs/r1"), 1, None) == [sys.executable, "-m", "daemon.trainer", "/h/runs/r1"]
    assert trainer_command("/h/runs/r1", 1, {"max_restarts": 2}) == [sys.executable, "-m", "daemon.trainer",
                                                                      "/h/runs/r1"]
    # the owner who writes nproc_per_node = 1 asks for torchrun (one NCCL process on a one-GPU box)
    assert trainer_command("/r", 1, {"nproc_per_node": 1})[2:6] == ["daemon.trainer.torchrun", "--nproc-per-node",
                                                                    "1", "--standalone"]


def test_several_processes_on_one_node_get_a_free_port() -> None:
    argv = trainer_command(Path("/h/runs/r1"), 4, None)
    assert argv == [sys.executable, "-m", "daemon.trainer.torchrun", "--nproc-per-node", "4", "--standalone",
                    "--max-restarts", "0", "-m", "daemon.trainer", "/h/runs/r1"]


def test_multi_node_options_pass_through_with_dashes() -> None:
    table = {"nnodes": 2, "node_rank": 1, "rdzv_backend": "c10d", "rdzv_endpoint": "node0:29400",
             "rdzv_id": "night", "nproc_per_node": 8}
    argv = trainer_command(Path("/h/runs/r1"), nproc_for(8, table), table)
    assert argv[:5] == [sys.executable, "-m", "daemon.trainer.torchrun", "--nproc-per-node", "8"]
    assert "--standalone" not in argv and argv[-3:] == ["-m", "daemon.trainer", "/h/runs/r1"]
    pairs = dict(zip(argv[5:-3:2], argv[6:-3:2]))
    assert pairs == {"--max-restarts": "0", "--nnodes": "2", "--node-rank": "1", "--rdzv-backend": "c10d",
                     "--rdzv-endpoint": "node0:29400", "--rdzv-id": "night"}
    # one process per node is still torchrun when the table joins other machines
    assert trainer_command("/r", 1, {"nnodes": 2, "master_addr": "n0", "master_port": 29500})[2] == \
        "daemon.trainer.torchrun"


def test_nproc_for() -> None:
    assert nproc_for(0, None) == 1  # the CPU
    assert nproc_for(4, None) == 4  # one per GPU of the run's set
    assert nproc_for(4, {"nproc_per_node": 2}) == 2
    assert nproc_for(1, {"nnodes": 2}) == 1


def test_torchrun_table_is_validated_and_owner_only(tmp_path: Path) -> None:
    toml = tmp_path / "overnight.toml"
    good = {"torchrun": {"nnodes": 2, "node_rank": 0, "rdzv_endpoint": "node0:29400", "max_restarts": 0}}
    assert validate_table(toml, good, sidecar=False) == good
    with pytest.raises(OptionsError, match=r"no option 'node-rank' \(did you mean 'node_rank'\?\).*Fix:"):
        validate_table(toml, {"torchrun": {"node-rank": 1}}, sidecar=False)
    with pytest.raises(OptionsError, match="nproc_per_node = 0 must be a positive integer. Fix:"):
        validate_table(toml, {"torchrun": {"nproc_per_node": 0}}, sidecar=False)
    with pytest.raises(OptionsError, match="only be set by the machine owner"):
        validate_table(tmp_path / "data.toml", good, sidecar=True)


# ------------------------------------------------------------------------------------- two processes, gloo

OPTS = {"max_steps": 10, "save_every": 4, "batch_size": 2, "learning_rate": 1e-3, "eval_fraction": 0.1}
ONE_PROC = {**OPTS, "batch_size": 4}  # the same global batch as 2 processes × 2


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp(), "qwen2")


def new_run(root: Path, qwen: Path, **options: object) -> Path:
    return make_run(root, qwen, dataset_name="rev.jsonl", content=jsonl(reversal_records(80, seed=5)),
                    schema="prompt_completion", records=80, options={**OPTS, **options})


def start_ddp(run: Path):  # -> TrainerProcess
    """The daemon's way: TrainerProcess.start with launch.trainer_command (its own session, stdin pipe)."""
    from daemon.engine.runner import TrainerProcess

    return TrainerProcess.start(run.name, run, env={"OMP_NUM_THREADS": "1"}, command=trainer_command(run, 2))


def workers(launcher: int) -> dict[int, psutil.Process]:
    """torchrun's workers of a launcher, by rank."""
    found = {}
    for child in psutil.Process(launcher).children(recursive=True):
        try:
            if child.cmdline()[-2:-1] == ["daemon.trainer"]:
                found[int(child.environ()["RANK"])] = child
        except (psutil.Error, KeyError):
            continue
    return found


def run_to_end(run: Path, timeout: float = 240) -> int:
    t = start_ddp(run)
    rc = t.wait(timeout)
    t.close_stdin()
    return rc


def console(run: Path) -> str:
    return (run / "console.log").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, qwen: Path) -> Path:
    """An uninterrupted 2-process run with LoRA dropout (each rank draws its own masks): the reference."""
    run = new_run(tmp_path_factory.mktemp("straight"), qwen)
    assert run_to_end(run) == 0, console(run)[-3000:]
    return run


def test_two_processes_train_like_one_and_only_rank_0_writes(tmp_path: Path, qwen: Path) -> None:
    """(a) the per-step losses of 2 × batch 2 equal 1 × batch 4; (e) one writer: no line or record twice."""
    ddp = new_run(tmp_path / "ddp", qwen, lora_dropout=0.0)
    one = new_run(tmp_path / "one", qwen, lora_dropout=0.0, batch_size=4)
    assert run_to_end(ddp) == 0, console(ddp)[-3000:]
    proc = start(one)
    assert proc.wait(240) == 0
    proc.stdin.close()  # type: ignore[union-attr]

    a, b = train_losses(ddp), train_losses(one)
    assert sorted(a) == list(range(1, 11)) and a.keys() == b.keys()
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4, (a, b)
    result = read_json(ddp / "result.json")
    assert result["outcome"] == "completed" and result["step"] == 10
    assert result["tokens_seen"] == read_json(one / "result.json")["tokens_seen"]  # both ranks' tokens counted
    assert (ddp / "adapter" / "adapter_model.safetensors").exists()
    # one writer: every step once in metrics.jsonl and in the console, nothing from rank 1, no stray files
    records = [m["step"] for m in metrics(ddp) if "loss" in m]
    assert records == sorted(set(records))
    text = console(ddp)
    for step in range(1, 11):
        assert text.count(f"] step {step}/10 ") == 1
    assert text.count("=== overnight trainer: run") == 1 and text.count("=== end: completed") == 1
    assert "rank 1: " not in text
    names = {p.name for p in ddp.iterdir()}
    assert names == {"dataset", "config.json", "stats.json", "console.log", "metrics.jsonl", "progress.json",
                     "checkpoints", "adapter", "result.json", "tokens.npz", "tensorboard", "eval_report.json"}, names
    assert len(list((ddp / "tensorboard").iterdir())) == 1  # one event file: rank 0's
    assert text.count("data: tokenised in ") == 1 and "kept in tokens.npz for a resume and the other ranks" in text
    last = ddp / "checkpoints" / "step-10"
    assert (last / "rng_state_0.pth").exists() and (last / "rng_state_1.pth").exists()
    assert read_json(ddp / "progress.json")["pid"] != read_json(ddp / "progress.json")["trainer_pid"]


def test_pause_holds_both_ranks_sigterm_stops_them_and_resume_is_exact(tmp_path: Path, qwen: Path,
                                                                       straight: Path) -> None:
    """(c) paused: no rank steps; resumed: on. (b) SIGTERM to the trainer's group: a checkpoint and exit 0 on
    every rank; the resumed run logs the uninterrupted run's losses exactly (per-rank RNG states restored)."""
    from daemon.engine.runner import leftover_trainers, signal_group

    run = new_run(tmp_path, qwen)
    t = start_ddp(run)
    wait_for(lambda: any(m.get("step", 0) >= 2 for m in metrics(run)), 180, "step 2", t.proc)
    assert read_json(run / "progress.json")["pid"] == t.proc.pid  # what the daemon compares: the launcher
    ranks = workers(t.proc.pid)
    assert sorted(ranks) == [0, 1]
    found = leftover_trainers(run.parent)  # one entry per run folder: the launcher, not its workers
    assert [(p.pid, d.name) for p, d in found] == [(t.proc.pid, run.name)]

    send(t.proc, "pause")
    wait_for(lambda: (read_json(run / "progress.json") or {}).get("state") == "paused", 60, "paused", t.proc)
    frozen = read_json(run / "progress.json")["step"]
    n = len(metrics(run))
    cpu = {r: p.cpu_times().user for r, p in ranks.items()}
    time.sleep(2)
    assert read_json(run / "progress.json")["step"] == frozen and len(metrics(run)) == n
    assert all(p.status() != psutil.STATUS_ZOMBIE for p in ranks.values())
    assert all(p.cpu_times().user - cpu[r] < 1.0 for r, p in ranks.items())  # both wait (polling), neither trains
    send(t.proc, "resume")
    wait_for(lambda: any(m.get("step", 0) > frozen for m in metrics(run)), 60, "a step after resuming", t.proc)
    send(t.proc, "pause")  # held again, so the stop below lands midway however fast this machine steps
    wait_for(lambda: (read_json(run / "progress.json") or {}).get("state") == "paused", 60, "paused again", t.proc)
    held = read_json(run / "progress.json")["step"]
    assert frozen < held < 10
    signal_group(t.proc.pid, "SIGTERM")  # what the daemon's escalation sends: reaches each worker's session
    assert t.wait(120) == 0, console(run)[-3000:]
    t.close_stdin()
    stopped = read_json(run / "result.json")
    assert stopped["outcome"] == "stopped" and "SIGTERM" in stopped["reason"], stopped
    at = stopped["step"]
    assert at == held and (run / "checkpoints" / f"step-{at}" / "rng_state_1.pth").exists()
    assert f"paused at step {frozen}" in console(run) and f"resumed at step {frozen}" in console(run)

    assert run_to_end(run) == 0, console(run)[-3000:]
    assert f"resuming from checkpoints/step-{at}" in console(run)
    assert console(run).count("data: tokenised in ") == 1  # the resume read tokens.npz
    assert "data: read the tokenised splits from tokens.npz" in console(run)
    resumed, reference = train_losses(run), train_losses(straight)
    assert sorted(resumed) == list(range(1, 11)) == sorted(reference)
    assert max(abs(resumed[s] - reference[s]) for s in reference) < 1e-6, (resumed, reference)
    assert read_json(run / "result.json")["outcome"] == "completed"


def test_a_rank_killed_ends_the_group_like_a_killed_trainer_and_the_run_resumes(tmp_path: Path, qwen: Path,
                                                                              straight: Path) -> None:
    """(d) kill -9 of rank 1: torchrun ends rank 0 and the launcher ends by SIGKILL (what the daemon resumes); no
    result.json claims an outcome; the next launch resumes from the last checkpoint and ends exactly."""
    run = new_run(tmp_path, qwen)
    t = start_ddp(run)
    wait_for(lambda: (run / "checkpoints" / "step-4").is_dir(), 180, "checkpoint step-4", t.proc)
    send(t.proc, "pause")  # a fixed moment: both ranks wait in the pause's collective poll
    wait_for(lambda: (read_json(run / "progress.json") or {}).get("state") == "paused", 60, "paused", t.proc)
    ranks = workers(t.proc.pid)
    ranks[1].send_signal(signal.SIGKILL)
    rc = t.wait(120)
    t.close_stdin()
    assert rc == -signal.SIGKILL, console(run)[-3000:]
    assert not (run / "result.json").exists()
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in ranks.values())
    assert "rank 1 (PID" in console(run) and "killed by SIGKILL" in console(run)
    assert "another process of this run (torchrun) went away" in console(run) and "=== end: failed" not in console(run)

    assert run_to_end(run) == 0, console(run)[-3000:]
    assert "resuming from checkpoints/step-" in console(run)
    resumed, reference = train_losses(run), train_losses(straight)
    assert sorted(resumed) == list(range(1, 11))
    assert max(abs(resumed[s] - reference[s]) for s in reference) < 1e-6, (resumed, reference)
    assert read_json(run / "result.json")["outcome"] == "completed"


def test_how_the_group_died() -> None:
    """The launcher's verdict from torchrun's failures: rank → (exit code, time, pid)."""
    from daemon.core.launch import PEER_LOST_EXIT
    from daemon.trainer.torchrun import killing_signal

    kill, term = -signal.SIGKILL, -signal.SIGTERM
    assert killing_signal({1: (kill, 5.0, 11), 0: (term, 5.0, 10)}) == (1, signal.SIGKILL, 11)  # kill -9 of rank 1
    assert killing_signal({1: (kill, 5.0, 11), 0: (PEER_LOST_EXIT, 5.0, 10)}) == (1, signal.SIGKILL, 11)
    assert killing_signal({1: (1, 5.0, 11), 0: (term, 5.0, 10)}) is None  # rank 1 failed (OOM): torchrun ended 0
    assert killing_signal({1: (1, 5.0, 11), 0: (kill, 40.0, 10)}) is None  # … and escalated to SIGKILL
    assert killing_signal({0: (term, 5.0, 10), 1: (term, 5.0, 11)}) == (0, signal.SIGTERM, 10)


OOM_ON_RANK_1 = '''
import importlib.abc, importlib.util, os, sys

class _Inject(importlib.abc.MetaPathFinder):
    """On rank 1 of the first group only: step 6 runs out of memory (a real OOM needs a GPU)."""

    def find_spec(self, name, path, target=None):
        if name != "daemon.trainer.objectives.sft":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            step = module.OvernightTrainer.training_step

            def training_step(self, *args, **kwargs):
                if self.state.global_step + 1 == 6:
                    import torch
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return step(self, *args, **kwargs)

            module.OvernightTrainer.training_step = training_step

        spec.loader.exec_module = exec_module
        return spec

if os.environ.get("RANK") == "1" and not os.environ.get("OVERNIGHT_OOM_RETRY_OPTIONS"):
    sys.meta_path.insert(0, _Inject())
'''


def test_out_of_memory_on_one_rank_restarts_the_group_on_the_next_rung(tmp_path: Path, qwen: Path) -> None:
    """SPEC §4's ladder for the run as a whole: rank 1 runs out of memory at step 6; the launcher starts both
    workers again with gradient checkpointing on, from step-4; the daemon sees one trainer that completes."""
    from daemon.engine.runner import TrainerProcess

    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(OOM_ON_RANK_1, encoding="utf-8")
    run = new_run(tmp_path, qwen)
    t = TrainerProcess.start(run.name, run, command=trainer_command(run, 2),
                             env={"OMP_NUM_THREADS": "1", "PYTHONPATH": f"{inject}:{Path(__file__).parents[1]}"})
    rc = t.wait(300)
    t.close_stdin()
    text = console(run)
    assert rc == 0, text[-3000:]
    assert "rank 1: out of memory on rank 1 of 2 (torchrun): every process restarts from the last checkpoint, " \
           "turning gradient checkpointing on" in text
    assert "out of memory in the last attempt: retrying, turning gradient checkpointing on" in text
    assert "resuming from checkpoints/step-4" in text
    assert sorted(train_losses(run)) == list(range(1, 11))
    assert read_json(run / "result.json")["outcome"] == "completed"


def test_the_launcher_restarts_the_group_only_for_an_out_of_memory_rung(tmp_path: Path) -> None:
    from daemon.core.launch import OOM_RETRY_EXIT, PEER_LOST_EXIT
    from daemon.trainer.torchrun import retry_rung

    rung = tmp_path / "rung.json"
    assert retry_rung({1: (OOM_RETRY_EXIT, 5.0, 11), 0: (PEER_LOST_EXIT, 5.0, 10)}, str(rung)) is None  # no file
    rung.write_text('{"batch_size": 1}')
    assert retry_rung({1: (OOM_RETRY_EXIT, 5.0, 11), 0: (-signal.SIGTERM, 5.0, 10)}, str(rung)) == '{"batch_size": 1}'
    assert retry_rung({1: (OOM_RETRY_EXIT, 5.0, 11), 0: (1, 5.0, 10)}, str(rung)) is None  # rank 0 failed too
    assert retry_rung({1: (1, 5.0, 11)}, str(rung)) is None


ABORT_AT_EXIT_ON_RANK_1 = '''
import os
import sys

if os.environ.get("RANK"):  # torchrun's workers
    import daemon.trainer.ddp as _ddp

    _exit_now = _ddp.exit_now

    def _exit(code):
        names = sorted({open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")})
        print(f"threads at exit: {' '.join(names)}", file=sys.stderr, flush=True)
        if os.environ["RANK"] == "1":
            os.abort()  # what a library's C++ thread did on the way out: "terminate called ...", SIGABRT
        _exit_now(code)

    _ddp.exit_now = _exit
'''


def test_the_group_is_gone_at_exit_and_a_replica_dying_then_leaves_the_run_completed(tmp_path: Path,
                                                                                      qwen: Path) -> None:
    """Each worker has left the process group before it exits: gloo's threads are gone (one left running into the
    interpreter's shutdown aborted a worker now and then). And when rank 1 aborts at exit anyway, after rank 0
    wrote result.json (completed), the launcher exits 0 and says which rank exited how."""
    from daemon.engine.runner import TrainerProcess

    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(ABORT_AT_EXIT_ON_RANK_1, encoding="utf-8")
    run = new_run(tmp_path, qwen, max_steps=2)
    t = TrainerProcess.start(run.name, run, command=trainer_command(run, 2),
                             env={"OMP_NUM_THREADS": "1", "PYTHONPATH": f"{inject}:{Path(__file__).parents[1]}"})
    rc = t.wait(240)
    t.close_stdin()
    text = console(run)
    assert rc == 0, text[-3000:]
    assert read_json(run / "result.json")["outcome"] == "completed"
    threads = [line.split("threads at exit: ")[1] for line in text.splitlines() if "threads at exit: " in line]
    assert len(threads) == 2 and not any("gloo" in names for names in threads), threads
    assert "torchrun: the run had ended (completed, result.json) when rank 1 (PID " in text
    assert "exited by SIGABRT: it stays completed" in text and "the launcher ends by" not in text


def test_the_launcher_believes_only_this_launchs_result(tmp_path: Path) -> None:
    import json
    import os

    from daemon.trainer.torchrun import ended_run, exits

    result = tmp_path / "result.json"
    assert ended_run([str(tmp_path)], 0.0) is None  # none written (a rank killed before the end)
    for outcome, code, expected in (("completed", 0, "completed"), ("stopped", 0, "stopped"), ("failed", 1, None)):
        result.write_text(json.dumps({"outcome": outcome, "exit_code": code}))
        assert ended_run([str(tmp_path)], 0.0) == expected
    os.utime(result, (1000.0, 1000.0))
    assert ended_run([str(tmp_path)], 2000.0) is None  # an earlier launch's
    assert ended_run([], 0.0) is None
    assert exits({1: (-signal.SIGABRT, 5.0, 12), 0: (3, 5.0, 11)}) == \
        "rank 0 (PID 11) exited with code 3, rank 1 (PID 12) exited by SIGABRT"


def test_eof_on_rank_0s_stdin_stops_every_rank_with_a_checkpoint(tmp_path: Path, qwen: Path) -> None:
    """The daemon went away: rank 0 reads EOF, and every rank saves and stops at the same step (exit 0)."""
    run = new_run(tmp_path, qwen, max_steps=40)
    t = start_ddp(run)
    wait_for(lambda: any(m.get("step", 0) >= 1 for m in metrics(run)), 180, "step 1", t.proc)
    t.close_stdin()
    assert t.wait(120) == 0, console(run)[-3000:]
    stopped = read_json(run / "result.json")
    assert stopped["outcome"] == "stopped" and "stdin closed" in stopped["reason"], stopped
    last = run / "checkpoints" / f"step-{stopped['step']}"
    assert 1 <= stopped["step"] < 40 and (last / "rng_state_0.pth").exists() and (last / "rng_state_1.pth").exists()
