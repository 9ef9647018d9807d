"""The trainer supervisor against a real (temporary) state DB: what a run shows once its trainer exits, a stop the
trainer ignores escalated to SIGTERM and SIGKILL, shutdown, and recovery after a dead daemon. Exits are stub
trainers (like test_controller.py's); escalation, shutdown and a leftover trainer use short real processes (a
`python -c` standing in for the trainer), since signals and process groups are the point there.

The end-to-end tests (test_daemon_e2e.py, test_stall.py, test_kill_loop.py) prove the same with the real trainer.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from daemon.core.home import Home
from daemon.core.rundir import RunFolder
from daemon.core.states import State, StopRequest
from daemon.engine.endstate import MAX_ATTEMPTS
from daemon.engine.executors.local import LocalJob
from daemon.engine.runner import TrainerProcess
from daemon.engine.stall import StallWatch
from daemon.engine.store import Store
from daemon.engine.supervisor import Supervisor
from tests.conftest import budget, wait_until


@dataclass
class Exited:
    """A trainer that has exited with `rc`, having written what the test put in its run folder."""

    run_id: str
    run_dir: Path
    rc: int
    requested: StopRequest | None = None
    stall: StallWatch | None = None
    escalation: None = None
    saw_disk_full: bool = False
    job: Any = field(default_factory=lambda: LocalJob(SimpleNamespace(pid=4242)))  # the local executor's handle
    pid = property(lambda self: self.job.pid)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    def poll(self) -> int:
        return self.rc

    def ingest(self, _store: Store) -> dict[str, Any]:
        return {}

    def progress(self) -> dict[str, Any]:
        return self.folder.read_progress()


class Bench:
    """A home with runs in the DB and a Supervisor over it; records what it tells the owner."""

    def __init__(self, root: Path) -> None:
        self.home = Home(root)
        self.home.create()
        self.store = Store(self.home.db)
        self.told: list[tuple[str, str]] = []  # (event, subject) of each notification
        self.hooks: list[tuple[str, str]] = []  # (hook, run id) of each hook run
        self.beats = 0
        self.sup = Supervisor(self.home, self.store, self._transition, options=lambda: {"min_free_gb": 0},
                              guard=lambda _name, fn: fn(),  # a fault fails the test
                              notifier=SimpleNamespace(send=self._send),
                              hooks=SimpleNamespace(run_hooks=self._hook), beat=self._beat, disk=lambda _s: None)

    def _transition(self, run_id: str, state: str, reason: str | None, **fields: Any) -> None:
        self.store.set_state(run_id, state, reason, **fields)

    def _send(self, event: str, _title: str, _body: str, subject: str) -> None:
        self.told.append((event, subject))

    def _hook(self, name: str, _table: dict, run: dict[str, Any]) -> None:
        self.hooks.append((name, run["id"]))

    def _beat(self) -> None:
        self.beats += 1

    def run(self, run_id: str, state: str = State.TRAINING, attempts: int = 1, **fields: Any) -> Path:
        run_dir = self.home.runs / run_id
        run_dir.mkdir()
        self.store.insert_run({"id": run_id, "name": run_id.split("-")[0], "dataset": f"inbox/{run_id}.jsonl",
                               "state": state, "priority": 0, "seq": self.store.next_seq(), "run_dir": str(run_dir),
                               "attempts": attempts, "base_model": "tiny", **fields})
        return run_dir

    def row(self, run_id: str) -> dict[str, Any]:
        return self.store.get_run(run_id)

    def events(self, status: str) -> list[dict[str, Any]]:
        return [dict(e) for e in self.store.db.query("SELECT * FROM control_events WHERE status = ?", [status])]


@pytest.fixture
def bench(tmp_path: Path):
    b = Bench(tmp_path / "home")
    yield b
    b.store.close()


def _checkpoint(run_dir: Path, step: int) -> None:
    folder = run_dir / "checkpoints" / f"step-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")


def _exits(b: Bench, run_id: str, rc: int, result: dict | None = None, console: str = "",
           request: str | None = None, **run: Any) -> dict[str, Any]:
    """The run's trainer exits as described; one pass of the supervisor sees it. Returns the run's row."""
    run_dir = b.run(run_id, **run)
    if result is not None:
        RunFolder(run_dir).result.write_text(json.dumps(result))
    RunFolder(run_dir).console.write_text(console)
    b.sup.trainers[run_id] = Exited(run_id, run_dir, rc, StopRequest(request) if request else None)  # type: ignore
    b.sup.watch()
    assert run_id not in b.sup.trainers, "an exited trainer no longer holds its slot"
    return b.row(run_id)


def test_a_trainer_that_trained_out_completes_its_run_and_registers_its_model(bench: Bench) -> None:
    row = _exits(bench, "talk-1", 0, {"outcome": "completed", "final_loss": 1.5})
    assert (row["state"], row["reason"], row["pid"]) == ("completed", None, None) and row["finished"]
    assert [(m["version"], m["run_id"], m["active"]) for m in bench.store.models("talk")] == [(1, "talk-1", 1)]
    assert ("completed", "talk-1") in bench.told and ("on_complete", "talk-1") in bench.hooks
    console = RunFolder(row["run_dir"]).console.read_text()
    assert "overnight: trainer exited with code 0; run completed" in console


@pytest.mark.parametrize("request_, state", [("stop", "stopped"), ("skip", "skipped"), ("preempt", "queued"),
                                              ("shutdown", "queued")])
def test_a_stop_the_trainer_honoured_ends_the_run_as_asked(bench: Bench, request_: str, state: str) -> None:
    row = _exits(bench, "talk-1", 0, {"outcome": "stopped"}, request=request_)
    assert (row["state"], row["reason"]) == (state, f"{request_} requested")
    assert not bench.told and not bench.hooks, "a stop is no failure: nothing to tell"
    assert bool(row["finished"]) == (state in ("stopped", "skipped"))


def test_a_user_stop_outlives_a_trainer_that_died_honouring_it(bench: Bench) -> None:
    row = _exits(bench, "talk-1", -9, request="stop")
    assert row["state"] == "stopped"
    assert row["reason"].startswith("stop requested; trainer killed by signal SIGKILL before it checkpointed")


def test_a_trainer_killed_from_outside_is_resumed_then_failed_in_a_crash_loop(bench: Bench) -> None:
    row = _exits(bench, "talk-1", -9, attempts=1)
    assert row["state"] == "queued" and row["attempts"] == 1
    assert row["reason"] == (f"trainer killed by signal SIGKILL; starting again from step 0 (no checkpoint yet) "
                             f"(attempt 2 of {MAX_ATTEMPTS} without a new checkpoint)")
    run_dir = bench.run("talk-3", attempts=1)
    _checkpoint(run_dir, 4)
    bench.sup.trainers["talk-3"] = Exited("talk-3", run_dir, -9)  # type: ignore[assignment]
    bench.sup.watch()
    assert bench.row("talk-3")["reason"].startswith("trainer killed by signal SIGKILL; resuming from its last "
                                                    "checkpoint (attempt")
    row = _exits(bench, "talk-2", -9, attempts=MAX_ATTEMPTS)
    assert row["state"] == "failed" and row["reason"].startswith(
        f"trainer killed by signal SIGKILL, {MAX_ATTEMPTS} times in a row without a new checkpoint. Fix:")
    assert ("failed", "talk-2") in bench.told and ("on_fail", "talk-2") in bench.hooks


def test_a_checkpoint_since_its_last_start_counts_the_attempts_afresh(bench: Bench) -> None:
    run_dir = bench.run("talk-1", attempts=MAX_ATTEMPTS, resume_from="step-2")
    _checkpoint(run_dir, 4)  # this attempt made progress: no crash loop
    bench.sup.trainers["talk-1"] = Exited("talk-1", run_dir, -9)  # type: ignore[assignment]
    bench.sup.watch()
    assert (bench.row("talk-1")["state"], bench.row("talk-1")["attempts"]) == ("queued", 0)


def test_a_trainer_that_crashed_fails_its_run_with_its_last_words(bench: Bench) -> None:
    row = _exits(bench, "talk-1", 1, console="loading\nRuntimeError: boom\n\n")
    assert (row["state"], row["reason"]) == ("failed", "trainer exited with code 1: RuntimeError: boom")
    assert row["finished"] and bench.told == [("failed", "talk-1")] and bench.hooks == [("on_fail", "talk-1")]
    row = _exits(bench, "talk-2", 1, {"outcome": "failed", "reason": "dataset has no rows"})
    assert (row["state"], row["reason"]) == ("failed", "dataset has no rows")


def test_a_trainer_that_filled_the_disk_waits_for_space(bench: Bench) -> None:
    row = _exits(bench, "talk-1", 1, {"outcome": "failed", "reason": "OSError: [Errno 28] No space left on device"})
    assert row["state"] == "queued" and row["reason"].startswith("the disk filled up while it trained")
    assert not bench.told


def test_a_trainer_whose_last_words_did_not_fit_on_the_full_disk_waits_for_space(bench: Bench) -> None:
    """The disk filled during a checkpoint: the trainer died with its traceback cut short and no result.json, and
    space was freed before the daemon looked; the daemon's own writes had found the disk full while it ran."""
    run_dir = bench.run("talk-1")
    RunFolder(run_dir).console.write_text("    with open(f")
    a = Exited("talk-1", run_dir, 1)  # type: ignore[arg-type]
    a.saw_disk_full = True
    bench.sup.trainers["talk-1"] = a  # type: ignore[assignment]
    bench.sup.watch()
    row = bench.row("talk-1")
    assert row["state"] == "queued" and row["reason"].startswith("the disk filled up while it trained"), row


def test_the_run_follows_its_trainer_into_training_and_a_pause(bench: Bench) -> None:
    run_dir = bench.run("talk-1", state=State.PREPARING)
    a = Exited("talk-1", run_dir, rc=None)  # type: ignore[arg-type]  # still running
    bench.sup.trainers["talk-1"] = a  # type: ignore[assignment]
    progress = RunFolder(run_dir).progress
    bench.sup.watch()
    assert bench.row("talk-1")["state"] == "preparing", "loading: no progress.json yet"
    progress.write_text(json.dumps({"state": "training", "step": 3, "pid": 4242}))
    bench.sup.watch()
    assert bench.row("talk-1")["state"] == "training" and "talk-1" in bench.sup.trainers
    progress.write_text(json.dumps({"state": "paused", "step": 3, "pid": 4242, "reason": "disk_low: 1 GB free"}))
    bench.sup.watch()
    assert (bench.row("talk-1")["state"], bench.row("talk-1")["reason"]) == ("paused", "disk_low: 1 GB free")
    assert bench.told == [("disk_low", "talk-1")]


def test_a_frozen_trainer_is_reported_once(bench: Bench) -> None:
    run_dir = bench.run("talk-1")
    a = Exited("talk-1", run_dir, rc=None, stall=StallWatch(0.05))  # type: ignore[arg-type]
    bench.sup.trainers["talk-1"] = a  # type: ignore[assignment]
    RunFolder(run_dir).progress.write_text(json.dumps({"state": "training", "step": 3, "pid": 4242}))
    wait_until(lambda: bench.sup.watch() or bench.sup.stalled(), budget(10), 0.01, what="the stall")
    assert "talk-1 stalled: no training step" in bench.sup.stalled()[0]
    bench.sup.watch()
    assert bench.told == [("stalled", "talk-1")] and len(bench.events("stalled")) == 1 and bench.beats == 1


# A stand-in trainer: says it is ready once its handlers are set, then never shows progress (no progress.json).
IGNORES_STOP = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path("ready").write_text("")
while True:
    time.sleep(1)
"""
# ...and one that checkpoints and exits when asked on stdin, as the real trainer does
HONOURS_STOP = """
import json, pathlib, sys
pathlib.Path("ready").write_text("")
for line in sys.stdin:
    if line.strip() in ("stop", "skip", "preempt", "shutdown"):  # why the daemon asks
        pathlib.Path("result.json").write_text(json.dumps({"outcome": "stopped"}))
        sys.exit(0)
"""


def _start(b: Bench, run_id: str, script: str, stall_s: float = 60) -> TrainerProcess:
    run_dir = b.run(run_id)
    a = TrainerProcess.start(run_id, run_dir, command=[sys.executable, "-c", script], stall=StallWatch(stall_s))
    b.sup.trainers[run_id] = a
    wait_until(lambda: (run_dir / "ready").exists() or a.poll() is not None, budget(30), 0.01, what="started")
    assert a.poll() is None, RunFolder(run_dir).console.read_text()
    return a


def test_a_stop_the_trainer_ignores_escalates_to_sigterm_then_sigkill(bench: Bench) -> None:
    a = _start(bench, "talk-1", IGNORES_STOP, stall_s=0.2)  # its grace: its stall window, 0.2 s
    try:
        assert a.request_stop("stop") == "stop"
        wait_until(lambda: bench.sup.watch() or "talk-1" not in bench.sup.trainers, budget(30), 0.02,
                   what="the trainer ended")
    finally:
        if a.poll() is None:
            a.kill()
    row = bench.row("talk-1")
    assert row["state"] == "stopped" and "trainer killed by signal SIGKILL" in row["reason"]
    assert [e["message"].rsplit(" ", 1)[-1] for e in bench.events("escalated")] == ["SIGTERM", "SIGKILL"]
    console = RunFolder(row["run_dir"]).console.read_text()
    assert console.index("after the stop request; sending SIGTERM") < console.index("sending SIGKILL")


def test_shutdown_checkpoints_each_trainer_and_queues_its_run(bench: Bench) -> None:
    a = _start(bench, "talk-1", HONOURS_STOP)
    try:
        bench.sup.stop_all()
    finally:
        if a.poll() is None:
            a.kill()
    assert a.poll() == 0 and not bench.sup.trainers
    assert (bench.row("talk-1")["state"], bench.row("talk-1")["reason"]) == ("queued", "shutdown requested")


def test_recovery_requeues_the_runs_a_dead_daemon_left_active(bench: Bench) -> None:
    _checkpoint(bench.run("talk-1", state=State.TRAINING, attempts=2, pid=999999), 4)
    bench.run("chat-1", state=State.PREPARING)
    bench.run("done-1", state=State.COMPLETED)
    bench.sup.recover()
    row = bench.row("talk-1")
    assert (row["state"], row["reason"], row["pid"]) == ("queued", "interrupted (daemon restart); resumes from "
                                                                    "step-4", None)
    assert row["attempts"] == 0, "it checkpointed past where it started: no crash loop"
    assert "overnight: interrupted (daemon restart)" in RunFolder(row["run_dir"]).console.read_text()
    assert bench.row("chat-1")["reason"] == "interrupted (daemon restart); resumes from the start"
    assert bench.row("done-1")["state"] == "completed"


def test_recovery_keeps_a_stop_or_skip_the_trainer_carried_out_before_the_daemon_died(bench: Bench) -> None:
    """`overnight stop RUN`, then the daemon is killed before it saw the trainer exit: the trainer's result.json says
    it stopped as asked, so the run ends stopped (skipped), not resumed as if nothing had been asked."""
    for run, asked, state in (("talk-1", "stop", "stopped"), ("chat-1", "skip", "skipped"),
                              ("odd-1", "shutdown", "queued")):
        folder = bench.run(run, state=State.TRAINING, pid=999999)
        (folder / "result.json").write_text(json.dumps({"outcome": "stopped", "reason": f"{asked} requested",
                                                        "step": 7, "final_loss": 2.5}))
    bench.sup.recover()
    assert [bench.row(r)["state"] for r in ("talk-1", "chat-1", "odd-1")] == ["stopped", "skipped", "queued"]
    row = bench.row("talk-1")
    assert row["reason"] == "stop requested (carried out before the daemon restarted)" and row["finished"]
    assert (row["step"], row["loss"]) == (7, 2.5)  # where the trainer ended, not the last step the daemon saw
    assert "overnight: run stopped (stop requested" in RunFolder(row["run_dir"]).console.read_text()


def test_a_queued_run_whose_folder_was_removed_fails_and_the_queue_goes_on(bench: Bench) -> None:
    """`rm -rf runs/RUN` of a queued run: it fails with the reason and the fix (it blocked the whole queue with a
    traceback at every pass), and nothing makes its folder again."""
    import shutil
    shutil.rmtree(bench.run("gone-1", state=State.QUEUED))
    bench.sup.start_next()
    row = bench.row("gone-1")
    assert row["state"] == "failed" and "is gone" in row["reason"] and "Fix: drop the dataset again" in row["reason"]
    assert not (bench.home.runs / "gone-1").exists() and ("failed", "gone-1") in bench.told


def test_recovery_ends_a_trainer_an_earlier_daemon_left_running(bench: Bench) -> None:
    """Never two trainers on one run folder: the leftover is asked to checkpoint and exit before its run requeues."""
    run_dir = bench.run("talk-1")
    # its command line ends like a trainer's (`-m daemon.trainer RUN_DIR`); it exits on SIGTERM as a trainer does
    script = "import pathlib, time; pathlib.Path('ready').write_text(''); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", script, "-m", "daemon.trainer", str(run_dir)], cwd=run_dir,
                            start_new_session=True)
    try:
        wait_until(lambda: (run_dir / "ready").exists(), budget(30), 0.01, what="the leftover started")
        bench.sup.recover()
        assert proc.wait(budget(10)) == -15, "ended by SIGTERM (its checkpoint-and-exit signal)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert bench.row("talk-1")["state"] == "queued"
    assert "left running by an earlier daemon" in RunFolder(run_dir).console.read_text()



def test_an_executor_that_does_not_answer_leaves_the_run_queued_and_waits_before_the_next_try(
        bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """slurmctld down for a minute at night: the runs submitted meanwhile wait for it (they failed for good, each
    with a notification and the advice to fix overnight.toml), and the daemon does not retry at every pass."""
    from daemon.core.errors import ExecutorUnreachable
    from daemon.engine import supervisor

    tries: list[str] = []

    def unreachable(run_id: str, *_a: Any, **_k: Any) -> None:
        tries.append(run_id)
        raise ExecutorUnreachable("sbatch: error: Unable to contact slurm controller (connect failure)")
    monkeypatch.setattr(supervisor.TrainerProcess, "start", unreachable)
    (bench.run("z-1", state=State.QUEUED, attempts=0) / "config.json").write_text("{}")
    bench.sup.start_next()
    bench.sup.start_next()  # within the minute: not tried again
    row = bench.row("z-1")
    assert row["state"] == "queued" and row["attempts"] == 0 and tries == ["z-1"] and bench.told == []
    assert "Unable to contact slurm controller" in row["reason"] and "submitted when it does" in row["reason"]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: bench.sup.retry_at + 1)
    bench.sup.start_next()
    assert tries == ["z-1", "z-1"]


def test_sbatch_words_for_a_controller_that_did_not_answer_and_a_timeout_that_submitted(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from daemon.core.errors import ExecutorError, ExecutorUnreachable
    from daemon.engine.executors import slurmctl

    def answers(argv: list[str], **_k: Any) -> subprocess.CompletedProcess:
        if argv[0] == "sbatch":
            return subprocess.CompletedProcess(argv, 1, "", said)
        return subprocess.CompletedProcess(argv, 0, "1234\n", "")
    monkeypatch.setattr(slurmctl.subprocess, "run", answers)
    said = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"
    with pytest.raises(ExecutorUnreachable):
        slurmctl.sbatch(tmp_path / "job.sh", [], {}, "overnight-x")
    said = "sbatch: error: invalid partition specified: nosuch"
    with pytest.raises(ExecutorError, match="Slurm refused the job: sbatch: error: invalid partition") as refused:
        slurmctl.sbatch(tmp_path / "job.sh", [], {}, "overnight-x")
    assert not isinstance(refused.value, ExecutorUnreachable)

    def slow(argv: list[str], **_k: Any) -> subprocess.CompletedProcess:
        if argv[0] == "sbatch":
            raise subprocess.TimeoutExpired(argv, 30)
        return subprocess.CompletedProcess(argv, 0, "1234\n", "")  # squeue: it went through after all
    monkeypatch.setattr(slurmctl.subprocess, "run", slow)
    assert slurmctl.sbatch(tmp_path / "job.sh", [], {}, "overnight-x") == "1234"


def test_a_run_the_rebuild_queued_while_its_slurm_job_runs_is_followed_not_submitted_again(
        bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """overnight.db lost while a Slurm job trains: the rebuilt DB says queued (interrupted); the next daemon follows
    the job it finds in job.json while Slurm runs it, and queues only runs whose job has ended."""
    from daemon.engine.executors import slurmctl
    from daemon.engine.rebuild import INTERRUPTED

    states = {"11": "RUNNING", "12": "COMPLETED"}
    monkeypatch.setattr(slurmctl, "available", lambda: None)
    monkeypatch.setattr(slurmctl, "job_info", lambda j: slurmctl.JobInfo(states[j], "None", None, "n1", 0))
    for run_id, job in (("live-1", "11"), ("over-1", "12")):
        run_dir = bench.run(run_id, state=State.QUEUED, reason=f"{INTERRUPTED}; resumes from step-100")
        (run_dir / "job.json").write_text(json.dumps({"executor": "slurm", "job_id": job}))
    bench.sup.recover()
    assert list(bench.sup.trainers) == ["live-1"]
    assert (bench.row("live-1")["state"], bench.row("live-1")["job_id"]) == ("preparing", "11")
    assert bench.row("over-1")["state"] == "queued"


def test_a_job_slurm_suspends_reads_paused_with_why_and_is_no_stall(bench: Bench) -> None:
    """PreemptMode=SUSPEND: the trainer is held still; the run reads paused (not training with a frozen ETA), no
    stall is reported, and it reads training again once Slurm resumes it."""
    from daemon.engine.executors.slurm import SlurmJob
    from daemon.engine.executors.slurmctl import JobInfo

    run_dir = bench.run("s-1", state=State.TRAINING)
    job = SlurmJob("12", run_dir)
    job.info, job.asked = JobInfo("SUSPENDED", "None", None, "n1", 0), 1e18  # asked just now: not asked again
    (run_dir / "progress.json").write_text(json.dumps({"state": "training", "step": 5, "job_id": "12"}))
    a = TrainerProcess("s-1", run_dir, job, stall=StallWatch(0.0, "report"))
    bench.sup.trainers["s-1"] = a
    bench.sup.watch()
    bench.sup.watch()
    row = bench.row("s-1")
    assert row["state"] == "paused" and row["reason"].startswith("Slurm suspended Slurm job 12") and bench.told == []
    job.info = JobInfo("RUNNING", "None", None, "n1", 0)
    bench.sup.watch()
    assert bench.row("s-1")["state"] == "training"


def test_a_run_over_several_machines_says_it_waits_for_them_and_a_rendezvous_timeout_says_the_fix(
        bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.engine import supervisor

    torchrun = {"nproc_per_node": 1, "nnodes": 2, "node_rank": 0, "rdzv_endpoint": "127.0.0.1:29400"}
    bench.sup.options = lambda: {"min_free_gb": 0, "torchrun": torchrun}
    run_dir = bench.run("m-1", state=State.QUEUED, attempts=0)
    (run_dir / "config.json").write_text("{}")
    monkeypatch.setattr(supervisor.TrainerProcess, "start", lambda run_id, run_dir, **_k: TrainerProcess(
        run_id, run_dir, LocalJob(SimpleNamespace(pid=4242, poll=lambda: None))))
    bench.sup.start_next()
    row = bench.row("m-1")
    assert row["state"] == "preparing" and "waits for the other machines of [torchrun] (nnodes = 2) to join at " \
        "127.0.0.1:29400" in row["reason"]
    (run_dir / "console.log").write_text("torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError\n")
    said = bench.sup._crash_reason(bench.sup.trainers["m-1"], 1)
    assert said.startswith("the other machines of [torchrun] never joined its rendezvous") and "Fix: start" in said
