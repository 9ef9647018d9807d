"""The Slurm executor across nodes: tests/slurm/start.sh's cluster has two nodes on this one machine (n1, n2: a
slurmd each), so a node can die while the other runs jobs, and a job can span both.

A node failure is the node's death (tests/slurm/node.sh fail: its slurmd and every process of its jobs killed with
SIGKILL, nothing checkpoints; the node marked DOWN, as slurmctld does once it stops answering): the job ends
NODE_FAIL, and the run resumes on the other node from its newest checkpoint, both ways Slurm lets a job end so:
requeued by Slurm itself (the job allows it: overnight submits with --requeue), then, with the job's requeue turned
off (`scontrol update JobId=… Requeue=0`, as on a cluster that forbids it), ended for good and submitted again by the
daemon. It ends with the uninterrupted run's losses and adapter. The node comes back (node.sh return) in any case.

A run over two nodes (`nodes_per_run = 2`: `srun torchrun`, the rendezvous on the job's first node) trains like two
processes of torchrun on one machine.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from bench import kill_loop
from tests.conftest import REFERENCE_STEPS, budget, overnight, unavailable
from tests.test_slurm import (SCRIPTS, cluster_held, console, end, job_state, paused_in, runs, slurm_home, submitted,
                              wait_run)
from tests.test_slurm import slow_steps, slurm_session  # noqa: F401 - fixtures: slower steps, the session's cluster

pytestmark = pytest.mark.e2e
ROOT = [] if os.geteuid() == 0 else ["sudo", "-n"]


def nodes() -> dict[str, str]:
    """The cluster's nodes and their states, as `sinfo` shows them."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True).stdout
    return dict(line.split() for line in sorted(set(out.splitlines())) if line.strip())


def _two_nodes(request: pytest.FixtureRequest, exclusive: bool) -> Iterator[str]:
    """The session's cluster (its partition), which must have two nodes, shared or held alone for the test."""
    partition, root = request.getfixturevalue("slurm_session")
    if len(nodes()) < 2:
        unavailable(f"the running Slurm cluster has one node ({nodes()}); these tests need tests/slurm/start.sh's "
                    f"two. Fix: tests/slurm/stop.sh, then tests/slurm/start.sh")
    with cluster_held(root, exclusive):
        yield partition


@pytest.fixture
def two_nodes(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _two_nodes(request, exclusive=False)


@pytest.fixture
def two_nodes_alone(request: pytest.FixtureRequest) -> Iterator[str]:
    """No other test's job runs on the cluster while this test fails its nodes (as root: tests/slurm/node.sh)."""
    if ROOT and subprocess.run([*ROOT, "true"], capture_output=True).returncode != 0:
        unavailable("failing a node of the test cluster (tests/slurm/node.sh kills its slurmd) needs root, or sudo "
                    "without a password")
    yield from _two_nodes(request, exclusive=True)


def node(what: str, name: str) -> None:
    """tests/slurm/node.sh: the node fails, or comes back."""
    res = subprocess.run([*ROOT, str(SCRIPTS / "node.sh"), what, name], capture_output=True, text=True,
                         timeout=budget(120))
    assert res.returncode == 0, f"node.sh {what} {name}: {res.stdout}{res.stderr}"


def jobcomp(job: str) -> list[str]:
    """How each run of the job ended, from Slurm's job completion log (`sacct -c`: no accounting database)."""
    out = subprocess.run(["sacct", "-c", "-n", "-P", "-j", job, "-o", "JobID,State,NodeList"], capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if line.startswith(f"{job}|")]


def newest_checkpoint(run: dict[str, Any]) -> int:
    return max(kill_loop.checkpoint_steps(Path(run["run_dir"]) / "checkpoints"), default=0)


@pytest.mark.usefixtures("slow_steps")
def test_a_node_dies_under_the_job_and_the_run_resumes_on_the_other_node(two_nodes_alone, tiny_model, reference_run,
                                                                         tmp_path):
    home = slurm_home(tmp_path / "home", tiny_model, two_nodes_alone, max_parallel_runs=1)
    home.start_daemon()
    name, failed = "crash", []
    try:
        home.drop(kill_loop.write_drop(home.root / ".staging" / name, name, REFERENCE_STEPS))
        run = wait_run(home, name, "training past its first checkpoint",
                       lambda r: r["state"] == "training" and r["job_id"] and newest_checkpoint(r) >= 5)
        overnight("pause", run["id"], home=home.root, check=True)  # so that the node dies mid-run on any machine
        run = paused_in(home, name, "paused")
        job, first = run["job_id"], run["node"]
        other = next(n for n in nodes() if n != first)

        # 1. its node dies: the job ends NODE_FAIL, Slurm requeues it, it runs again on the other node and resumes
        failed.append(first)
        node("fail", first)
        run = paused_in(home, name, "paused in the requeued job on the other node", job=lambda j: j == job,
                        restarts=1, timeout=180)
        assert run["node"] == other and runs(home)[name]["node"] == other  # what `overnight runs --json` shows
        assert f"Slurm requeued Slurm job {job} (restart 1) after node {first} failed under it" in console(run)
        assert jobcomp(job) == [f"{job}|NODE_FAIL|{first}"]
        node("return", first)
        failed.remove(first)

        # 2. with the job's requeue off, its new node dies: the job ends NODE_FAIL for good, the daemon submits a
        #    new job, which runs on the node that came back and resumes
        #    (still paused: a resume and a new pause raced the tiny model, which trained out in between on a fast host)
        subprocess.run(["scontrol", "update", f"JobId={job}", "Requeue=0"], check=True)
        failed.append(other)
        node("fail", other)
        run = paused_in(home, name, "paused in a new job after the node failure", job=lambda j: j != job,
                        timeout=180)
        assert run["node"] == first
        assert f"Slurm job {job} ended; run queued (node {other} failed under Slurm job {job}; resumes" in \
            console(run), console(run)[-3000:]
        assert job_state(job) == "NODE_FAIL" and jobcomp(job)[-1] == f"{job}|NODE_FAIL|{other}"
        node("return", other)
        failed.remove(other)

        overnight("resume", run["id"], home=home.root, check=True)
        run = wait_run(home, name, "completed", lambda r: r["state"] in ("completed", "failed"), timeout=180)
        assert run["state"] == "completed", run["reason"]
    finally:
        end(home)
        for n in failed:
            node("return", n)
    assert set(nodes().values()) <= {"idle", "mixed", "allocated", "completing"}, nodes()  # the cluster is whole
    losses, twice = kill_loop.losses_of(kill_loop.jsonl(Path(run["run_dir"]) / "metrics.jsonl"))
    assert not twice and losses == reference_run.losses
    assert kill_loop.same_adapter(Path(run["run_dir"]) / "adapter", reference_run.run_dir / "adapter")
    assert submitted(run) == [job, run["job_id"]]  # the requeue kept the job; the end for good took a new one


def test_a_run_over_two_nodes_trains_like_two_processes_on_one_machine(two_nodes, tiny_model, tmp_path):
    steps = 8
    cluster = slurm_home(tmp_path / "cluster", tiny_model, two_nodes, nodes_per_run=2)
    local = kill_loop.Home(tmp_path / "local", tiny_model)  # torchrun on this machine: 2 processes
    toml = local.root / "overnight.toml"
    toml.write_text(toml.read_text() + "[torchrun]\nnproc_per_node = 2\n")
    try:
        for home in (cluster, local):
            home.start_daemon()
            home.drop(kill_loop.write_drop(home.root / ".staging" / "pair", "pair", steps))
        done = {h.root.name: wait_run(h, "pair", "ended", lambda r: r["state"] in ("completed", "failed"),
                                      timeout=240) for h in (cluster, local)}
    finally:
        end(cluster)
        local.stop_daemon()
    run, alone = done["cluster"], done["local"]
    assert run["state"] == "completed" and alone["state"] == "completed", (run["reason"], alone["reason"])
    job = subprocess.run(["scontrol", "show", "job", "-o", run["job_id"]], capture_output=True, text=True).stdout
    assert "NumNodes=2 " in job and "NodeList=n[1-2] " in job, job  # one job, both nodes
    text = console(run)
    assert "srun --ntasks-per-node=1" in (Path(run["run_dir"]) / "job.sh").read_text()
    assert text.count("=== overnight trainer: run") == 1 and "rank 1: " not in text  # rank 0 writes, once
    losses, twice = kill_loop.losses_of(kill_loop.jsonl(Path(run["run_dir"]) / "metrics.jsonl"))
    reference, _ = kill_loop.losses_of(kill_loop.jsonl(Path(alone["run_dir"]) / "metrics.jsonl"))
    assert not twice and sorted(losses) == list(range(1, steps + 1)) and losses == reference
    assert kill_loop.same_adapter(Path(run["run_dir"]) / "adapter", Path(alone["run_dir"]) / "adapter")
