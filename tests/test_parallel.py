"""Several runs side by side (`max_parallel_runs` on the CPU): the real daemon, trainers and tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from tests.conftest import overnight, wait_until
from tests.test_control_e2e import drop_all, losses, progress_step, run_of, state, write_dataset

pytestmark = pytest.mark.e2e


def alive(pid: int | None) -> bool:
    return bool(pid) and psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def test_two_runs_train_side_by_side_steered_one_by_one(home: Path, tiny_model: Path, daemon_proc,
                                                         tmp_path: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmax_parallel_runs = 2\n')
    daemon_proc()
    drop_all(write_dataset(tmp_path, "low", 120), home / "inbox")
    drop_all(write_dataset(tmp_path, "long", 100000, priority=5), home / "inbox")
    wait_until(lambda: state(home, "low") == state(home, "long") == "training", 120, what="both runs training")
    overnight("pause", home=home, check=True)  # every running job halts at its next step
    wait_until(lambda: state(home, "low") == state(home, "long") == "paused", 120, what="both runs paused")
    low, long = run_of(home, "low"), run_of(home, "long")
    assert low["pid"] != long["pid"] and alive(low["pid"]) and alive(long["pid"])  # two trainers at once
    status = json.loads(overnight("status", "--json", home=home, check=True).stdout)
    assert {r["id"]: r["gpu_set"] for r in status["runs"] if r["state"] == "paused"} == {low["id"]: [], long["id"]: []}
    halted_at = progress_step(home, "low")

    overnight("resume", long["id"], home=home, check=True)  # now only low is held
    wait_until(lambda: state(home, "long") == "training" and progress_step(home, "long") > 3, 60,
               what="long goes on")
    assert state(home, "low") == "paused" and progress_step(home, "low") == halted_at

    drop_all(write_dataset(tmp_path, "urgent", 6, priority=3), home / "inbox")
    wait_until(lambda: state(home, "low") == "queued", 60, what="low preempted for urgent")
    wait_until(lambda: state(home, "urgent") == "completed", 120, what="urgent completes")
    assert state(home, "long") == "training" and run_of(home, "long")["attempts"] == 1  # the higher one kept its slot

    (home / "control" / "pause").unlink()
    wait_until(lambda: state(home, "low") == "completed", 120, what="low resumes and completes")
    assert sorted(losses(home, "low")) == list(range(1, 121))
    low_console = (Path(run_of(home, "low")["run_dir"]) / "console.log").read_text()
    assert low_console.count("overnight: starting trainer") == 2  # preempted, then resumed
    overnight("stop", long["id"], home=home, check=True)
    wait_until(lambda: state(home, "long") == "stopped", 60, what="long stopped")


def test_the_daemon_trains_one_run_over_two_processes_and_resumes_it_when_a_rank_dies(
        home: Path, tiny_model: Path, daemon_proc, tmp_path: Path) -> None:
    """`[torchrun] nproc_per_node = 2` on the CPU: two gloo processes through the daemon; kill -9 of one rank ends
    the group, and the daemon resumes the run from its last checkpoint."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n[torchrun]\nnproc_per_node = 2\n')
    daemon_proc()
    drop_all(write_dataset(tmp_path, "ddp", 40, batch_size=2), home / "inbox")
    wait_until(lambda: progress_step(home, "ddp") >= 7, 180, what="ddp past its first checkpoint")
    launcher = psutil.Process(run_of(home, "ddp")["pid"])
    ranks = [p for p in launcher.children(recursive=True) if "daemon.trainer" in " ".join(p.cmdline())]
    assert len(ranks) == 2
    ranks[-1].kill()
    wait_until(lambda: state(home, "ddp") == "completed", 240, what="ddp resumes and completes")
    run = run_of(home, "ddp")
    assert sorted(losses(home, "ddp")) == list(range(1, 41))
    console = (Path(run["run_dir"]) / "console.log").read_text()
    assert console.count("overnight: starting trainer") == 2
    assert "trainer killed by signal SIGKILL; resuming from its last checkpoint" in console
    assert console.count("step 1/40") == 1  # rank 0 alone writes the console
