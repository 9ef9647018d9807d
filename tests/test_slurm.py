"""The Slurm executor against a real Slurm: a Slurm 22.05 cluster on this machine (tests/slurm/start.sh, Debian's
slurm-wlm + munge; two nodes, a slurmd each: tests/test_slurm_nodes.py fails one and spans both), the real daemon,
real sbatch jobs running the real trainer on the tiny model.

One run lives through the five Slurm events of the issue (scancel from outside, `scontrol requeue`, its time limit,
a daemon restart, a preemption by priority), held between them by a pause sent through control files, and ends
with the losses and the adapter of the uninterrupted local run (conftest's reference_run). Stop through control
files, and jobs Slurm refuses or can never start, are their own tests.

Without Slurm (no sbatch, and not root to install and start it) the tests skip with the reason; under CI (`.ci/run`
installs slurm-wlm and munge) they must run.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from bench import kill_loop
from tests.conftest import REFERENCE_STEPS, REPO, budget, overnight, unavailable, wait_until

pytestmark = pytest.mark.e2e
SCRIPTS = REPO / "tests" / "slurm"


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return res.returncode == 0 and bool(res.stdout.split())  # slurmctld answers and has a node


@pytest.fixture(scope="session")
def slurm_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A running cluster: the one up already, or one started (and installed, as root) by
    tests/slurm/start.sh; stopped at the end by tests/slurm/stop.sh when this session started it (left up under
    xdist, where another worker may still use it). Its partition, and the session's folder (every worker's)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    started = False
    with open(root / "slurm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _cluster_up():
            root_cmd = [] if os.geteuid() == 0 else ["sudo", "-n"]
            if root_cmd and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
                unavailable("no Slurm cluster is running, and starting one (tests/slurm/start.sh: installs slurm-wlm "
                            "and munge, starts munged, slurmctld, slurmd) needs root (or sudo without a password)")
            res = subprocess.run([*root_cmd, str(SCRIPTS / "start.sh")], capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                unavailable(f"tests/slurm/start.sh could not start Slurm: {(res.stderr or res.stdout)[-1500:]}")
            started = True
    yield "debug", root
    if started and not os.environ.get("PYTEST_XDIST_WORKER"):
        subprocess.run([*([] if os.geteuid() == 0 else ["sudo", "-n"]), str(SCRIPTS / "stop.sh")],
                       capture_output=True, timeout=120)


@contextmanager
def cluster_held(root: Path, exclusive: bool) -> Iterator[None]:
    """The cluster shared with the other tests (xdist's workers run theirs at the same time), or held alone by a
    test that fails a node (tests/test_slurm_nodes.py): no other test's job may run on a node that dies."""
    with open(root / "slurm-nodes.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)  # released when the file closes
        yield


@pytest.fixture
def slurm_cluster(slurm_session: tuple[str, Path]) -> Iterator[str]:
    """The running cluster's partition, shared with other tests for this test's length."""
    partition, root = slurm_session
    with cluster_held(root, exclusive=False):
        yield partition


@pytest.fixture
def slow_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step of the trainers of the daemons this test starts takes 0.3 s longer (tests/faults: a loaded machine):
    the tiny model trains 60 steps in under 2 s on a fast host, before a pause sent after its first checkpoint can
    reach the job (the CLI, the daemon's pass, the trainer's read of commands.txt)."""
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "slow").write_text("0.3")
    monkeypatch.setenv("OVERNIGHT_TEST_FAULTS", str(faults))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests" / "faults"), str(REPO),
                                                      os.environ.get("PYTHONPATH", "")]))


def slurm_home(root: Path, tiny_model: Path, partition: str, **table: Any) -> kill_loop.Home:
    """kill_loop's home (retention off, the tiny model) with an [executor] table for Slurm."""
    home = kill_loop.Home(root, tiny_model)
    rows = {"kind": "slurm", "partition": partition, **table}
    (root / "overnight.toml").write_text((root / "overnight.toml").read_text() + "[executor]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in rows.items()))
    return home


def runs(home: kill_loop.Home) -> dict[str, dict[str, Any]]:
    """`overnight runs --json`, by run name, as a user reads it."""
    out = overnight("runs", "--json", home=home.root, check=True).stdout
    return {r["name"]: r for r in json.loads(out)}


def wait_run(home: kill_loop.Home, name: str, what: str, pred: Any, timeout: float = 120) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        run = home.run(name)
        return run if run and pred(run) else None
    try:
        return wait_until(check, budget(timeout), interval=0.3, what=f"{name}: {what}")
    except AssertionError as e:
        raise AssertionError(f"{e} (now {home.run(name)})") from None  # the run as it is at the timeout


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    m = re.search(r"JobState=(\S+)", out)
    return m.group(1) if m else "UNKNOWN"


def console(run: dict[str, Any]) -> str:
    return (Path(run["run_dir"]) / "console.log").read_text(errors="replace")


def submitted(run: dict[str, Any]) -> list[str]:
    """The job ids the daemon submitted for this run, from its console.log."""
    return re.findall(r"overnight: submitted Slurm job (\d+)", console(run))


def progress(run: dict[str, Any]) -> dict[str, Any]:
    return kill_loop.read_json(Path(run["run_dir"]) / "progress.json")


def paused_in(home: kill_loop.Home, name: str, what: str, job: Any = None, restarts: int = 0,
              timeout: float = 120) -> dict[str, Any]:
    """The run paused by a trainer of the job that `job(run)` accepts (and of that run of the job)."""
    def ok(r: dict[str, Any]) -> bool:
        p = progress(r)
        return (r["state"] == "paused" and p.get("state") == "paused" and (job is None or job(r["job_id"]))
                and str(p.get("job_id")) == r["job_id"] and int(p.get("restarts") or 0) == restarts)
    return wait_run(home, name, what, ok, timeout)


def end(home: kill_loop.Home) -> None:
    """Stop the daemon, then cancel what it left in the cluster (a Slurm job outlives its daemon by design)."""
    home.stop_daemon()
    for folder in (home.root / "runs").iterdir():
        job = kill_loop.read_json(folder / "job.json").get("job_id")
        if job and job_state(job) in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED"):
            subprocess.run(["scancel", job])


@pytest.mark.usefixtures("slow_steps")
def test_a_run_through_five_slurm_events_trains_like_the_uninterrupted_run(slurm_cluster, tiny_model, reference_run,
                                                                          tmp_path):
    home = slurm_home(tmp_path / "home", tiny_model, slurm_cluster, max_parallel_runs=1)
    home.start_daemon()
    name = "events"
    try:
        home.drop(kill_loop.write_drop(home.root / ".staging" / name, name, REFERENCE_STEPS))
        run = wait_run(home, name, "training in a Slurm job", lambda r: r["state"] == "training" and r["job_id"])
        assert run["node"] and runs(home)[name]["job_id"] == run["job_id"]  # what `overnight runs --json` shows
        assert "JOB" in overnight("runs", home=home.root, check=True).stdout
        overnight("pause", run["id"], home=home.root, check=True)  # the command file reaches the job
        run = paused_in(home, name, "paused")
        assert "command received: pause" in console(run)

        # 1. scancel from outside: the trainer checkpoints, the job ends CANCELLED, a new job resumes the run
        first = run["job_id"]
        subprocess.run(["scancel", first], check=True)
        run = paused_in(home, name, "paused in a new job after scancel", job=lambda j: j != first)
        assert "cancelled from outside (scancel)" in console(run) and job_state(first) == "CANCELLED"

        # 2. scontrol requeue: the same job runs again (restart 1) and the trainer resumes
        job = run["job_id"]
        subprocess.run(["scontrol", "requeue", job], check=True)
        wait_until(lambda: job_state(job) == "PENDING", budget(60), what=f"job {job} pending after its requeue")
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)  # skip cred_expire's wait
        run = paused_in(home, name, "paused in the requeued job", job=lambda j: j == job, restarts=1)
        assert f"Slurm requeued Slurm job {job} (restart 1)" in console(run)

        # 3. its time limit, reached mid-run: Slurm's warning (or the limit itself) ends the job, a new job resumes
        subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=1"], check=True)
        run = paused_in(home, name, "paused in a new job after the time limit", job=lambda j: j != job, timeout=180)
        assert re.search(rf"Slurm job {job} (neared|reached) its time limit", console(run)), console(run)[-3000:]

        # 4. the daemon restarts while the job runs: the job runs on and the new daemon follows it, no second job
        job, jobs = run["job_id"], submitted(run)
        home.stop_daemon()
        assert job_state(job) == "RUNNING"
        home.start_daemon()
        wait_until(lambda: f"following Slurm job {job} again" in console(run), budget(30), what="the job followed")
        run = paused_in(home, name, "paused, followed again after the daemon restart", job=lambda j: j == job)
        time.sleep(2)  # a few passes of the new daemon: still the one job
        assert submitted(home.run(name)) == jobs and job_state(job) == "RUNNING"

        # 5. a run of higher priority preempts it: checkpoint, the job ends, the other run trains, then it resumes
        side, data = kill_loop.write_drop(home.root / ".staging" / "urgent", "urgent", 3)
        side.write_text(side.read_text() + "priority = 5\n")
        home.drop([side, data])
        wait_run(home, "urgent", "completed", lambda r: r["state"] == "completed", timeout=180)
        run = paused_in(home, name, "paused in a new job after the preemption", job=lambda j: j != job)
        assert f"Slurm job {job} exited with code 0; run queued (preempt requested)" in console(run)

        overnight("resume", home=home.root, check=True)
        run = wait_run(home, name, "completed", lambda r: r["state"] in ("completed", "failed"), timeout=240)
        assert run["state"] == "completed", run["reason"]
    finally:
        end(home)
    losses, twice = kill_loop.losses_of(kill_loop.jsonl(Path(run["run_dir"]) / "metrics.jsonl"))
    assert not twice and losses == reference_run.losses
    assert kill_loop.same_adapter(Path(run["run_dir"]) / "adapter", reference_run.run_dir / "adapter")
    assert len(submitted(run)) == 4  # the first, after the scancel, the time limit and the preemption (not requeue)


def test_stop_through_a_control_file_ends_the_slurm_job_cleanly(slurm_cluster, tiny_model, reference_run, tmp_path):
    home = slurm_home(tmp_path / "home", tiny_model, slurm_cluster)
    home.start_daemon()
    try:
        home.drop(kill_loop.write_drop(home.root / ".staging" / "halt", "halt", REFERENCE_STEPS))
        run = wait_run(home, "halt", "training", lambda r: r["state"] == "training" and (r["step"] or 0) >= 3)
        res = overnight("stop", run["id"], home=home.root)
        assert res.returncode == 0, res.stdout + res.stderr
        run = wait_run(home, "halt", "stopped", lambda r: r["state"] == "stopped")
    finally:
        end(home)
    assert run["reason"] == "stop requested" and job_state(run["job_id"]) == "COMPLETED"  # not cancelled: it exited
    assert "command received: stop" in console(run)
    losses, twice = kill_loop.losses_of(kill_loop.jsonl(Path(run["run_dir"]) / "metrics.jsonl"))
    assert not twice and losses and losses == {s: reference_run.losses[s] for s in losses}


def test_jobs_slurm_refuses_or_can_never_start_fail_the_run_with_slurms_reason(slurm_cluster, tiny_model, tmp_path):
    home = slurm_home(tmp_path / "home", tiny_model, "nosuchpartition")
    toml = home.root / "overnight.toml"
    home.start_daemon()
    try:
        home.drop(kill_loop.write_drop(home.root / ".staging" / "badpart", "badpart", 3))
        run = wait_run(home, "badpart", "failed", lambda r: r["state"] == "failed", timeout=60)
        assert "Slurm refused the job" in run["reason"] and "nosuchpartition" in run["reason"] \
            and "Fix:" in run["reason"], run["reason"]
        # a job pending for a reason waiting cannot clear: it depends on a job that failed
        dead = subprocess.run(["sbatch", "--parsable", "--wrap", "exit 1", "--output=/dev/null"], capture_output=True,
                              text=True, check=True).stdout.strip()
        wait_until(lambda: job_state(dead) == "FAILED", budget(60), what=f"job {dead} failed")
        toml.write_text(toml.read_text().replace('"nosuchpartition"', json.dumps(slurm_cluster))
                        + f'extra_args = ["--dependency=afterok:{dead}"]\n')
        home.drop(kill_loop.write_drop(home.root / ".staging" / "never", "never", 3))
        run = wait_run(home, "never", "failed", lambda r: r["state"] == "failed", timeout=120)
        assert "DependencyNeverSatisfied" in run["reason"] and "Fix:" in run["reason"], run["reason"]
        assert job_state(run["job_id"]) == "CANCELLED"
        status = overnight("status", home=home.root).stdout
        assert "DependencyNeverSatisfied" in status  # failed runs are listed with their reasons
    finally:
        end(home)


def test_stop_and_skip_of_a_job_still_pending_cancel_it_at_once(slurm_cluster, tiny_model, tmp_path):
    """A job waiting in Slurm's queue (here: not to begin for ten minutes) is cancelled when its run is stopped or
    skipped: the run ends as asked now, not once the cluster starts the job (hours, on a busy cluster)."""
    home = slurm_home(tmp_path / "home", tiny_model, slurm_cluster, extra_args=["--begin=now+600"])
    home.start_daemon()
    try:
        for name in ("p", "s"):
            home.drop(kill_loop.write_drop(home.root / ".staging" / name, name, 3))
        pending = {name: wait_run(home, name, "pending", lambda r: r["state"] == "preparing" and r["job_id"]
                                  and "pending" in (r["reason"] or ""), timeout=60) for name in ("p", "s")}
        overnight("stop", pending["p"]["id"], home=home.root, check=True)
        overnight("skip", pending["s"]["id"], home=home.root, check=True)
        for name, state in (("p", "stopped"), ("s", "skipped")):
            run = wait_run(home, name, state, lambda r, s=state: r["state"] == s, timeout=30)
            assert "requested while its job was pending: cancelled before it started" in run["reason"], run
            assert job_state(pending[name]["job_id"]) == "CANCELLED"
            assert "while it was pending (scancel)" in console(run)
    finally:
        end(home)
